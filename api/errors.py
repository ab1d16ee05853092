"""Domain errors to HTTP, in one place: status codes, the JSON body, and what a client
may see of a message.

Every error body is `{"detail": "..."}`; under /v1 it also carries OpenAI's
`{"error": {"message", "type", "code"}}`, with the type OpenAI uses for that status
(`invalid_request_error` only for a 4xx that is the request's fault). Messages are
scrubbed of filesystem paths before they leave the process (the server log keeps them
whole): a client learns which file, not where the server keeps it.

Left out: localised messages and machine-readable error codes beyond the status.
"""

import json
import re
from typing import Any

from starlette.types import Scope, Send

from rag.errors import (
    ArchiveError,
    BadQueryError,
    ConflictError,
    CorpusError,
    DeadlineError,
    ForbiddenError,
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    ModelError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    QuotaError,
    RagError,
    ReadOnlyError,
    ReloadError,
    StorageError,
    TooLargeError,
    UnsupportedError,
    UpstreamError,
)
from rag.ingest.uploads import UnsupportedTypeError

STATUS_OF: list[tuple[type[RagError], int]] = [
    (UnsupportedTypeError, 415),
    (TooLargeError, 413),
    (QuotaError, 413),
    (UnsupportedError, 400),
    (ArchiveError, 422),  # an archive sent to import that is damaged or of another model
    (CorpusError, 422),  # a document sent over HTTP that cannot be read
    (BadQueryError, 422),
    (NotFoundError, 404),
    (ReloadError, 409),
    (ConflictError, 409),
    (ReadOnlyError, 403),
    (ForbiddenError, 403),
    (OverloadedError, 503),
    (DeadlineError, 503),
    (NotReadyError, 503),
    (IndexMissingError, 503),
    (IndexCorruptError, 503),
    (IndexMismatchError, 503),
    (IndexBusyError, 503),
    (StorageError, 503),
    (ModelError, 503),
    (UpstreamError, 502),
]
RETRY_AFTER_SECONDS = {OverloadedError: 1, DeadlineError: 1, IndexBusyError: 1}
# OpenAI's API answers a 404 (no such model, vector store or file) with invalid_request_error too
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
# an absolute path: a slash not inside a word or a URL, then anything up to a space or quote
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/[^\s'\"`,;()<>]+)")


def status_of(exc: RagError) -> int:
    return next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)


def retry_after(exc: RagError) -> dict[str, str]:
    seconds = next((s for kind, s in RETRY_AFTER_SECONDS.items() if isinstance(exc, kind)), None)
    return {"Retry-After": str(seconds)} if seconds is not None else {}


def scrub_paths(message: str) -> str:
    """'/srv/rag/index/builds/x/chunks.jsonl is damaged' -> '…/chunks.jsonl is damaged'"""
    return ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1).rstrip("/").rsplit("/", 1)[-1], message)


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    message = scrub_paths(message)
    body: dict[str, Any] = {"detail": message}
    if path.startswith("/v1/"):  # OpenAI clients read error.message and error.type
        kind = OPENAI_TYPES.get(status) or ("invalid_request_error" if status < 500 else "server_error")
        body["error"] = {"message": message, "type": kind, "code": status}
    return body


def error_bytes(path: str, status: int, message: str) -> bytes:
    """The body as bytes. ASCII-escaped, so that a message quoting bad input (a lone
    surrogate) can always be sent."""
    return json.dumps(error_body(path, status, message)).encode()


async def send_error(scope: Scope, send: Send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = error_bytes(scope.get("path", ""), status, message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})
