"""ASGI middleware around every request: the per-request deadline, CORS with JSON
refusals, requests in flight, and the access log with metrics (what refuses a request
outright, the Host allow-list, cross-site writes and the request limits, is api.guards;
the caller's key and rate, api.auth; the audit of writes, api.audit).

They are middleware rather than route dependencies because they must also cover what
FastAPI serves itself (/docs, /openapi.json) and requests that never reach a route.

Left out: rate limits per client address (a key's rate is api.auth's; a reverse proxy can limit addresses).
"""

import asyncio
import json
import logging
import time

from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_bytes, send_error

access_log = logging.getLogger("rag.access")


class Deadline:
    """A request that has not started its response within `seconds` (or its path's entry
    in `slow_paths`) is cancelled and answered 503 with Retry-After. A response already
    streaming is not cut here (a chat stream has its own total deadline)."""

    def __init__(self, app: ASGIApp, seconds: float, slow_paths: dict[str, float] | None = None):
        self.app, self.seconds, self.slow_paths = app, seconds, slow_paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seconds = self.slow_paths.get(scope["path"], self.seconds)
        started = False
        timer: asyncio.Timeout | None = None

        async def mark_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # streaming: the route bounds itself from here (an expired timer: a write that
                # outlived its deadline answers with its outcome, api.engine.writes)
                if timer is not None and not timer.expired():
                    timer.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(seconds) as timer:
                await self.app(scope, receive, mark_started)
            return
        except TimeoutError:
            if started or timer is None or not timer.expired():
                raise
        await send_error(scope, send, 503, f"no answer within {seconds:g} s; retry in a moment",
                         [(b"retry-after", b"1")])


class InFlight:
    """At most `limit` requests in flight (from their headers in to their response out);
    more: 503 with Retry-After. Connections that never finish their headers do not count
    (api.protocols bounds those apart)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit, self.count = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.count >= self.limit:
            return await send_error(scope, send, 503, f"{self.limit} requests are in flight; retry in a moment "
                                    "(RAG_LIMIT_CONCURRENCY)", [(b"retry-after", b"1")])
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


class AccessLog:
    """One JSON line per request (method, path, status, latency; for a refusal, its
    message, which names the limit) and Prometheus counters. Headers are never logged, so
    neither is the API key."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, detail = time.perf_counter(), 500, None

        async def record_status(message: Message) -> None:
            nonlocal status, detail
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and detail is None:
                detail = _detail(message.get("body", b""))
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
                **({"detail": detail} if detail else {}),
            }))


def _detail(body: bytes) -> str | None:
    """An error body's message (ours are small JSON: `detail`, or OpenAI's `error.message`)."""
    try:
        parsed = json.loads(body[:4096])
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    message = parsed.get("detail") or (parsed.get("error") or {}).get("message")
    return message[:300] if isinstance(message, str) else None


class JsonCors(CORSMiddleware):
    """Starlette's CORS, whose refused preflight ("Disallowed CORS origin") is plain text,
    answering it in JSON like every other error (OpenAI's shape under /v1), naming the
    setting to change."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else Headers()
        if (scope["type"] == "http" and scope["method"] == "OPTIONS" and "origin" in headers
                and "access-control-request-method" in headers):  # a preflight: Starlette's test
            response = self.preflight_response(request_headers=headers)
            if response.status_code >= 400:
                response = self._refusal(response, scope.get("path", ""))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    @staticmethod
    def _refusal(response: Response, path: str) -> Response:
        reason = bytes(response.body).decode(errors="replace")
        message = f"CORS preflight refused: {reason.removeprefix('Disallowed CORS ').lower()} not allowed"
        if "origin" in reason:
            message += " (RAG_CORS_ORIGINS lists the pages that may call this service)"
        kept = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
        return Response(error_bytes(path, response.status_code, message), status_code=response.status_code,
                        media_type="application/json", headers=kept)
