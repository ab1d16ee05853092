"""The audit log's writer: every write (POST, PUT, PATCH, DELETE but the read-only POSTs:
a query, a chat, a search, a response, embeddings, an MCP call) becomes one JSON line
in `<index_dir>/access/audit.jsonl` (rag.access.audit), appended and fsynced before its
response is sent: the time, the key's name and role, the action (method and route), the
collection, the doc_id or file_id, and the status, and `replayed` for an answer given again for an
`Idempotency-Key`. A write refused by a route is recorded too (its status says so); one
refused before it reached the audit (no key or a bad one, a key over its rate, a
cross-site or oversized request: api.auth, api.guards) is the access log's.

No secret and no document text goes in: the line is made of the route, its path
parameters and, for the id a write made, the response's `doc_id`, `id` or `name`.

Left out: reads (the access log and /metrics count them); rotating the file (it grows
~200 bytes a write: logrotate's copytruncate suits it).
"""

import asyncio
import json
import logging
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import scope_principal
from rag.access.audit import AuditLog
from rag.errors import RagError

log = logging.getLogger("rag.audit")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_POSTS = re.compile(r"/query|/context|/v1/chat/completions|/v1/vector_stores/[^/]+/search|/v1/responses.*"
                        r"|/v1/embeddings|/mcp.*")
MAX_BODY_READ = 64 * 1024  # bytes of a response read for the id it names (write answers are ~200)


def audited(scope: Scope) -> bool:
    """A write by a known caller (an open path's request, with no key, is the access log's)."""
    return (scope["type"] == "http" and scope["method"] in WRITE_METHODS and not READ_POSTS.fullmatch(scope["path"])
            and scope_principal(scope) is not None)


def event_of(scope: Scope, status: int, body: bytes, replayed: bool = False) -> dict[str, Any]:
    principal = scope_principal(scope)
    route = scope.get("route")
    params: dict[str, Any] = dict(scope.get("path_params") or {})
    answer: dict[str, Any] = {}
    if body and len(body) <= MAX_BODY_READ and status < 300:
        try:
            parsed = json.loads(body)
            answer = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            pass
    collection = params.get("name")
    if collection is None and isinstance(store := params.get("store_id"), str) and store.startswith("vs_"):
        collection = store[3:]
    if collection is None and scope["path"] == "/collections":
        collection = answer.get("name")
    if collection is None and scope["path"] == "/v1/vector_stores" and str(answer.get("id", "")).startswith("vs_"):
        collection = str(answer["id"])[3:]
    event: dict[str, Any] = {
        "key": principal.name if principal else None, "role": principal.role if principal else None,
        "action": f"{scope['method']} {getattr(route, 'path', scope['path'])}", "collection": collection}
    for name in ("doc_id", "file_id"):
        if isinstance(params.get(name), str):
            event[name] = params[name]
    if "doc_id" not in event and isinstance(answer.get("doc_id"), str):
        event["doc_id"] = answer["doc_id"]
    if "file_id" not in event and scope["path"].startswith("/v1/") and isinstance(answer.get("id"), str) \
            and str(answer["id"]).startswith("file-"):
        event["file_id"] = answer["id"]
    if scope["path"].startswith("/admin/keys"):
        event["target"] = params.get("name") or answer.get("name")
        event["collection"] = None
    event["status"] = status
    if replayed:
        event["replayed"] = True
    return event


class Audit:
    """Holds a write's response until its audit line is on disk. An audit log that cannot be
    written (a full disk) is logged as an error with the event, and the response goes: the
    write it reports was applied already."""

    def __init__(self, app: ASGIApp, log_file: AuditLog):
        self.app, self.log = app, log_file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not audited(scope):
            return await self.app(scope, receive, send)
        held: list[Message] = []
        body = bytearray()

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            if message["type"] != "http.response.body" or not held:
                return await send(message)
            held.append(message)
            if len(body) <= MAX_BODY_READ:
                body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = held[0]["status"]
            replayed = (b"idempotent-replayed", b"true") in held[0].get("headers", [])  # api.idempotency's answer
            event = event_of(scope, status, bytes(body), replayed)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.log.append, event)
            except (RagError, ValueError) as exc:  # a full disk (StorageError), a field it refuses
                log.error("audit log not written (%r): %s", exc, json.dumps(event))
            for waiting in held:
                await send(waiting)
            held.clear()

        await self.app(scope, receive, hold)
