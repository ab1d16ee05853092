"""ASGI middleware that refuses a request before any route runs: a Host outside the
allow-list (`HostGuard`), a write sent by a page on another site or a body that is not
JSON where JSON is due (`CrossSiteGuard`), and a request over its limits (`RequestGuard`:
URL, headers, body size, time to send the body, and a JSON body that is not UTF-8, nests
too deep or holds a lone surrogate).

They are middleware rather than route dependencies because they must also cover what
FastAPI serves itself (/docs, /openapi.json) and requests that never reach a route.

Left out: slow clients that trickle their headers (uvicorn reads headers before any of
this runs; its keep-alive timeout and `limit_concurrency` bound what they can hold).
"""

import asyncio
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error
from rag.text import is_unicode_text

# a JSON \u escape of a UTF-16 surrogate: only then is the body parsed to look for lone ones
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


MAX_JSON_NESTING = 64  # no request of ours nests deeper than 4; json.loads recurses at ~1000


UPLOAD_PATH = re.compile(r"/collections/[^/]+/documents|/v1/files")  # where a multipart file upload may go
# where an archive is imported: a tar body of up to RAG_MAX_IMPORT_BYTES, streamed to disk by the route
ARCHIVE_PATH = re.compile(r"/collections/[^/]+/import")


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


class CrossSiteGuard:
    """No writes from pages on other sites (CSRF), with or without a key: a page the
    operator visits can send a "simple" cross-origin request (a text/plain, form or
    multipart body, no preflight) to a service on 127.0.0.1, and CORS only hides the
    answer, the write is done. So, before any body is read:

    - a method other than GET, HEAD or OPTIONS whose `Origin` is neither the request's own
      (scheme and Host, or `public_url`'s) nor one of `allow_origins` ("*": any) is
      refused with 403, and so is one without `Origin` that the browser marks
      `Sec-Fetch-Site: cross-site`;
    - a POST, PUT or PATCH with a body must say `Content-Type: application/json` (or
      `multipart/form-data` on the upload paths) or is refused with 415: a page can send
      neither without a preflight, which CORS answers."""

    READS = frozenset({"GET", "HEAD", "OPTIONS"})
    WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app: ASGIApp, allow_origins: list[str], public_url: str | None = None):
        self.app = app
        self.any_origin = "*" in allow_origins
        self.allowed = {_origin(o) for o in allow_origins}
        self.public = _origin(public_url) if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in self.READS:
            return await self.app(scope, receive, send)
        problem = self._cross_site(scope) or self._content_type(scope)
        if problem is not None:
            return await send_error(scope, send, *problem)
        await self.app(scope, receive, send)

    def _cross_site(self, scope: Scope) -> tuple[int, str] | None:
        if self.any_origin:
            return None
        headers = scope["headers"]
        origins = [v.decode("latin-1") for k, v in headers if k == b"origin"]
        method = scope["method"]
        if origins:
            own = {self.public, *(_origin(f"{scope.get('scheme', 'http')}://{v.decode('latin-1')}")
                                  for k, v in headers if k == b"host")}
            foreign = [o for o in origins if _origin(o) not in own and _origin(o) not in self.allowed]
            if foreign:
                return 403, (f"cross-site request refused: a page on '{foreign[0][:100]}' may not send {method} "
                             "requests here (RAG_CORS_ORIGINS lists the pages that may call this service)")
        elif any(k == b"sec-fetch-site" and v.strip().lower() == b"cross-site" for k, v in headers):
            return 403, (f"cross-site request refused: the browser says this {method} was sent by a page on "
                         "another site (RAG_CORS_ORIGINS lists the pages that may call this service)")
        return None

    def _content_type(self, scope: Scope) -> tuple[int, str] | None:
        if scope["method"] not in self.WITH_BODY:
            return None
        headers = scope["headers"]
        lengths = [v.strip() for k, v in headers if k == b"content-length"]
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        if not chunked and all(n == b"0" for n in lengths):  # no body (no Content-Length is none too)
            return None
        upload = UPLOAD_PATH.fullmatch(scope["path"]) is not None
        accepted = ("application/json", "multipart/form-data") if upload else \
            ("application/x-tar", "application/json") if ARCHIVE_PATH.fullmatch(scope["path"]) else \
            ("application/json",)  # JSON reaches the import route, whose key check comes first
        given = [v.decode("latin-1") for k, v in headers if k == b"content-type"]
        if given and all(v.split(";", 1)[0].strip().lower() in accepted for v in given):
            return None
        sent = f"not '{given[0][:100]}'" if given else "none was sent"
        return 415, f"Content-Type must be {' or '.join(accepted)} ({sent})"


def _origin(url: str) -> str:
    """scheme://host[:port], lowercase, without the scheme's default port ("null" stays)."""
    url = url.strip().rstrip("/").lower()
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host = rest.split("/", 1)[0]
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host[:-len(default)]
    return f"{scheme}://{host}"


class RequestGuard:
    """Refuse what no route should see: a URL over `max_url_bytes` (414), headers over
    `max_header_bytes` (431), a body over `max_bytes` with or without Content-Length (413),
    a body that does not arrive within `body_seconds` (408), one that is not UTF-8 (400),
    and JSON text holding a lone surrogate, which no model or response can carry (422).
    Bodies are small (a question), so a body under the limit is read whole, checked and
    replayed; an archive sent to import (ARCHIVE_PATH) is passed on unread: its route
    streams it to disk with limits of its own."""

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
        if ARCHIVE_PATH.fullmatch(scope["path"]) and scope["method"] == "POST":
            return await self.app(scope, receive, send)  # the route streams it to disk, with its own limits
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
