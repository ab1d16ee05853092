"""ASGI middleware: body size and encoding, API key, access log and request metrics.

They are middleware rather than route dependencies because they must also cover what
FastAPI serves itself (/docs, /openapi.json) and requests that never reach a route.

Left out: rate limiting (put a reverse proxy in front for that).
"""

import hmac
import json
import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("rag.access")


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class BodyGuard:
    """Refuse bodies over `max_bytes` with 413, whether or not Content-Length is given, and
    bodies that are not UTF-8 with 400. Bodies are small (a question), so a body under the
    limit is read whole, checked and replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = {"detail": f"request body is larger than the limit of {self.max_bytes} bytes"}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await send_json(send, 413, too_big)
        body, replayed = b"".join(chunks), False
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return await send_json(send, 400, {"detail": f"request body is not valid UTF-8 (byte {exc.start})"})

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class ApiKey:
    """With a key configured, every path but the open ones needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, key: str | None, open_paths: frozenset[str]):
        self.app, self.key, self.open_paths = app, key, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key.encode()):
            detail = "missing API key" if not given else "invalid API key"
            return await send_json(send, 401, {"detail": f"{detail}: send 'Authorization: Bearer <key>'"},
                                   [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class AccessLog:
    """One JSON line per request (method, path, status, latency) and Prometheus counters.
    Headers are never logged, so neither is the API key."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            path_label = getattr(route, "path", None) or "unmatched"
            self.requests.labels(scope["method"], path_label, str(status)).inc()
            self.latency.labels(path_label).observe(seconds)
            access_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": status,
                "ms": round(seconds * 1000, 2),
                "client": (scope.get("client") or ("-",))[0],
            }))
