"""ASGI middleware: the host allow-list, request limits (URL, headers, body size, time and
encoding), the per-request deadline, the API key, CORS with JSON refusals, and the access
log with metrics.

They are middleware rather than route dependencies because they must also cover what
FastAPI serves itself (/docs, /openapi.json) and requests that never reach a route.

Left out: rate limiting per client (put a reverse proxy in front for that), and slow
clients that trickle their headers (uvicorn reads headers before any of this runs; its
keep-alive timeout and `limit_concurrency` bound what they can hold).
"""

import asyncio
import hmac
import json
import logging
import re
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_bytes
from rag.text import is_unicode_text

access_log = logging.getLogger("rag.access")
# a JSON \u escape of a UTF-16 surrogate: only then is the body parsed to look for lone ones
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_JSON_NESTING = 64  # no request of ours nests deeper than 4; json.loads recurses at ~1000
UPLOAD_PATH = re.compile(r"/collections/[^/]+/documents|/v1/files")  # where a multipart file upload may go


async def send_error(scope: Scope, send: Send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = error_bytes(scope.get("path", ""), status, message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


class HostGuard:
    """Answer only to the allowed Host names. Bound to loopback, a page on another site
    that rebinds its DNS name to 127.0.0.1 sends its own Host, and is refused; citation
    links are built from a Host that passed this check."""

    def __init__(self, app: ASGIApp, allowed: list[str]):
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed}  # "[::1]" and "::1" alike

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.allowed or "*" in self.allowed:
            return await self.app(scope, receive, send)
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        if len(hosts) > 1:  # which one would a proxy, Starlette or a link builder believe?
            return await send_error(scope, send, 400, "more than one Host header")
        host = hosts[0].decode("latin-1").lower() if hosts else ""
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name not in self.allowed and host not in self.allowed:
            return await send_error(scope, send, 400, f"Host header '{host}' is not allowed "
                                    "(set RAG_ALLOWED_HOSTS to serve other names)")
        await self.app(scope, receive, send)


class RequestGuard:
    """Refuse what no route should see: a URL over `max_url_bytes` (414), headers over
    `max_header_bytes` (431), a body over `max_bytes` with or without Content-Length (413),
    a body that does not arrive within `body_seconds` (408), one that is not UTF-8 (400),
    and JSON text holding a lone surrogate, which no model or response can carry (422).
    Bodies are small (a question), so a body under the limit is read whole, checked and
    replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_seconds: float, max_url_bytes: int,
                 max_header_bytes: int, max_upload_bytes: int | None = None):
        self.app, self.max_bytes, self.body_seconds = app, max_bytes, body_seconds
        self.max_url_bytes, self.max_header_bytes = max_url_bytes, max_header_bytes
        self.max_upload_bytes = max_upload_bytes or max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if url_bytes > self.max_url_bytes:
            return await send_error(scope, send, 414, f"URL is longer than the limit of {self.max_url_bytes} bytes")
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            return await send_error(scope, send, 431, f"request headers are larger than the limit of "
                                    f"{self.max_header_bytes} bytes")
        headers = dict(scope["headers"])
        # a file upload (multipart, to a documents route) may be bigger, and binary
        upload = headers.get(b"content-type", b"").startswith(b"multipart/form-data") and \
            UPLOAD_PATH.fullmatch(scope["path"]) is not None
        limit = self.max_upload_bytes if upload else self.max_bytes
        too_big = f"request body is larger than the limit of {limit} bytes" + (
            " (RAG_MAX_UPLOAD_BYTES)" if upload else "")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await send_error(scope, send, 413, too_big)
        try:
            async with asyncio.timeout(self.body_seconds):
                body = await self._read(receive, limit)
        except TimeoutError:
            return await send_error(scope, send, 408, f"request body did not arrive within {self.body_seconds:g} s")
        if body is None:
            return await send_error(scope, send, 413, too_big)
        if not upload:
            problem = _text_problem(body)
            if problem is not None:
                return await send_error(scope, send, *problem)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None once it passes `limit` (nothing more is buffered)."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return None
        return b"".join(chunks)


def _text_problem(body: bytes) -> tuple[int, str] | None:
    """Why a JSON or form body cannot be taken (status, message), or None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return 400, f"request body is not valid UTF-8 (byte {exc.start})"
    if body.count(b"[") + body.count(b"{") > MAX_JSON_NESTING and _too_deep(body):
        return 400, f"request body is nested deeper than {MAX_JSON_NESTING} levels"
    if SURROGATE_ESCAPE.search(body) and _holds_lone_surrogate(body):
        return 422, ("request body holds a lone UTF-16 surrogate (\\ud800-\\udfff without its pair): send valid "
                     "Unicode text")
    return None


def _too_deep(body: bytes) -> bool:
    """Bracket depth outside strings, without parsing (a parser would recurse)."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_JSON_NESTING:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _holds_lone_surrogate(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except ValueError:
        return False  # not JSON: the route's own parsing says so
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_unicode_text(item):
                return True
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return False


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
                if timer is not None:
                    timer.reschedule(None)  # streaming: the route bounds itself from here
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


class ApiKey:
    """With a key configured, every path but the open ones needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, key: str | None, open_paths: frozenset[str]):
        self.app, self.key, self.open_paths = app, key, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key.encode()):
            detail = "missing API key" if not given else "invalid API key"
            return await send_error(scope, send, 401, f"{detail}: send 'Authorization: Bearer <key>'",
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
