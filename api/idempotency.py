"""`Idempotency-Key`: a retried write is answered, not applied again (as Stripe's API does).

A write (POST, PUT, DELETE under /collections, /v1/files, /v1/vector_stores) sent with
`Idempotency-Key: <1-255 visible ASCII characters>` is run once; its answer (status,
content type, body) is kept, fsynced, for `KEEP_SECONDS` in `<index_dir>/idempotency.sqlite3`,
which every process sharing the index folder reads. The same key again:
- with the same request (method, path, query, content type and body, hashed): the kept
  answer, with `Idempotent-Replayed: true`, and nothing applied;
- with another request: 422;
- while the first is still running (here or in another process): 409, retry later.
Keys are per caller: the scope is a hash of the `Authorization` header, so one client
never sees another's answer. Only final answers are kept: a 5xx (a 503 "retry" above all)
and a 429 free the key, so the retry runs. A key held by a process that died (on this
host: its pid is gone or is another process now) or for longer than `LEASE_SECONDS` is
taken over.

Example: POST /collections/notes/documents, Idempotency-Key: 7f1c…, body {"text": …}
    -> 201 {"doc_id": …, "status": "created"}; the same again -> the same 201, replayed

Left out: answers over `MAX_BODY_BYTES`, and answers given before the route read a body
the server no longer holds (not kept: the key is freed, and the retry runs); streams; a crash
between a write's commit and its answer being kept (the retry runs again: a document
written again with the same content is `unchanged`, a collection made again is a 409).
"""

import asyncio
import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error

HEADER = b"idempotency-key"
WRITE_PATHS = ("/collections", "/v1/files", "/v1/vector_stores")
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
KEEP_SECONDS = 24 * 3600.0
LEASE_SECONDS = 600.0  # a key running longer than any write may (deadline, then the write itself) is stale
MAX_BODY_BYTES = 1 << 20
KEPT_HEADERS = frozenset({b"content-type", b"location", b"retry-after"})
HOST, PID, INSTANCE = socket.gethostname(), os.getpid(), uuid.uuid4().hex  # who holds a running key

SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    scope TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, started REAL NOT NULL,
    host TEXT, pid INTEGER, instance TEXT,
    fingerprint TEXT, status INTEGER, headers TEXT, body BLOB,
    PRIMARY KEY (scope, key))"""


class Answers:
    """The kept answers: one SQLite file (WAL, fsynced commits), a connection per call so
    that any thread, and any process, may use it."""

    def __init__(self, path: Path):
        self.path = path
        with self._connect() as db:
            db.execute(SCHEMA)
            db.execute("DELETE FROM answers WHERE started < ?", (time.time() - KEEP_SECONDS,))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a kept answer survives a power cut
        return db

    def claim(self, scope: str, key: str) -> tuple[str, Any] | None:
        """None: the key is this request's now. Else ("done", (fingerprint, status, headers,
        body)) or ("running", None)."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT state, started, host, pid, instance, fingerprint, status, headers, body "
                             "FROM answers WHERE scope = ? AND key = ?", (scope, key)).fetchone()
            if row is not None and row[0] == "done" and row[1] > now - KEEP_SECONDS:
                db.execute("COMMIT")
                return "done", row[5:]
            if row is not None and row[0] == "running" and not _stale(row[1], row[2], row[3], row[4], now):
                db.execute("COMMIT")
                return "running", None
            db.execute("INSERT OR REPLACE INTO answers (scope, key, state, started, host, pid, instance) "
                       "VALUES (?, ?, 'running', ?, ?, ?, ?)", (scope, key, now, HOST, PID, INSTANCE))
            db.execute("COMMIT")
            return None

    def keep(self, scope: str, key: str, fingerprint: str, status: int, headers: list[list[str]],
             body: bytes) -> None:
        with self._connect() as db:
            db.execute("UPDATE answers SET state = 'done', fingerprint = ?, status = ?, headers = ?, body = ? "
                       "WHERE scope = ? AND key = ? AND instance = ?",
                       (fingerprint, status, json.dumps(headers), body, scope, key, INSTANCE))

    def free(self, scope: str, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM answers WHERE scope = ? AND key = ? AND state = 'running' AND instance = ?",
                       (scope, key, INSTANCE))


def _stale(started: float, host: str, pid: int, instance: str, now: float) -> bool:
    if started < now - LEASE_SECONDS:
        return True
    if host != HOST or instance == INSTANCE:
        return False
    if pid == PID:  # this pid, another process: the holder died and its pid was reused (a container's 1)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _applies(scope: Scope) -> bool:
    return (scope["type"] == "http" and scope["method"] in WRITE_METHODS
            and scope["path"].startswith(WRITE_PATHS) and HEADER in dict(scope["headers"]))


class Idempotency:
    """The middleware (inside the request limits and the API key, outside the deadline, so
    that a 503 for a deadline frees the key)."""

    def __init__(self, app: ASGIApp, index_dir: Path):
        self.app, self.index_dir = app, index_dir
        self._answers: Answers | None = None

    def answers(self) -> Answers:
        if self._answers is None:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            self._answers = Answers(self.index_dir / "idempotency.sqlite3")
        return self._answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _applies(scope):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        key_bytes = headers[HEADER]
        if not 1 <= len(key_bytes) <= 255 or not all(0x21 <= b <= 0x7E for b in key_bytes):
            return await send_error(scope, send, 400, "Idempotency-Key: 1 to 255 visible ASCII characters")
        key = key_bytes.decode("ascii")
        caller = hashlib.sha256(headers.get(b"authorization", b"")).hexdigest()
        fingerprint = hashlib.sha256()
        for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"),
                     headers.get(b"content-type", b"").decode("latin-1")):
            fingerprint.update(part.encode() + b"\0")
        loop = asyncio.get_running_loop()
        answers = await loop.run_in_executor(None, self.answers)
        found = await loop.run_in_executor(None, answers.claim, caller, key)
        if found is not None:
            return await self._answer_again(scope, receive, send, found, fingerprint)
        await self._run_and_keep(scope, receive, send, answers, caller, key, fingerprint)

    async def _answer_again(self, scope: Scope, receive: Receive, send: Send, found: tuple[str, Any],
                            fingerprint: Any) -> None:
        state, kept = found
        if state == "running":
            return await send_error(scope, send, 409, "a request with this Idempotency-Key is still running; "
                                    "retry in a moment", [(b"retry-after", b"1")])
        while True:  # the whole body, hashed as it comes (RequestGuard bounds its size and time)
            message = await receive()
            fingerprint.update(message.get("body", b""))
            if not message.get("more_body", False) or message["type"] != "http.request":
                break
        kept_fingerprint, status, headers, body = kept
        if kept_fingerprint != fingerprint.hexdigest():
            return await send_error(scope, send, 422, "this Idempotency-Key was sent with another request; "
                                    "use a new key for a new request")
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(headers)]
        await send({"type": "http.response.start", "status": status, "headers": [
            *raw, (b"content-length", str(len(body)).encode()), (b"idempotent-replayed", b"true")]})
        await send({"type": "http.response.body", "body": bytes(body)})

    async def _run_and_keep(self, scope: Scope, receive: Receive, send: Send, answers: Answers, caller: str,
                            key: str, fingerprint: Any) -> None:
        started: dict[str, Any] = {}
        body = bytearray()
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        # the request's body was read to its end (a bodiless one has none to read)
        whole = (length is None and b"transfer-encoding" not in headers) or length == b"0"

        async def hashed() -> Message:
            nonlocal whole
            message = await receive()
            if message["type"] == "http.request":
                fingerprint.update(message.get("body", b""))
                whole = not message.get("more_body", False)
            return message

        async def kept(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.update(status=message["status"], headers=[
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])
                    if k.lower() in KEPT_HEADERS])
            elif message["type"] == "http.response.body" and len(body) <= MAX_BODY_BYTES:
                body.extend(message.get("body", b""))
            await send(message)

        keep: Callable[[], None] = lambda: answers.free(caller, key)  # noqa: E731
        try:
            await self.app(scope, hashed, kept)
            while not whole:  # a route that answered before reading it all: hashed whole, as a replay's is
                if (await hashed())["type"] != "http.request":
                    break
            status = started.get("status", 500)
            # kept only when its fingerprint holds the whole body, as a replay's will
            if status < 500 and status != 429 and whole and len(body) <= MAX_BODY_BYTES:
                digest = fingerprint.hexdigest()
                keep = lambda: answers.keep(caller, key, digest, status, started["headers"], bytes(body))  # noqa: E731
        finally:
            # the answer kept (or the key freed) even if this task is being cancelled
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, keep))
