"""Keys and the audit log over HTTP, for admins: the same store and log as `rag keys` and
`rag audit` (rag.access): a key made or revoked here counts at once in this process, and
within a second in every other process on the index folder.

Left out: changing a key in place (revoke it and make another).
"""

from collections import deque
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ERRORS, AdminDep
from rag.access.audit import AuditLog
from rag.access.keys import ROLES, Key, KeyStore
from rag.errors import BadQueryError

router = APIRouter(prefix="/admin", tags=["admin"])


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-63 letters, digits, '_', '.' or '-'", examples=["team-a"])
    role: str = Field(description=" | ".join(ROLES), examples=["reader"])
    collections: list[str] | None = Field(None, description="the collections it may use; null: every one")
    expires_days: float | None = Field(None, gt=0)
    rate: float | None = Field(None, gt=0, description="requests a second; null: RAG_KEY_RATE_PER_SECOND")


class KeyInfo(BaseModel):
    name: str
    role: str
    collections: list[str] | None
    expires_at: float | None
    rate: float | None
    created_at: float


class CreatedKey(KeyInfo):
    key: str = Field(description="the secret: shown this once, never stored")


def _info(key: Key) -> dict[str, Any]:
    return {"name": key.name, "role": key.role, "collections": list(key.collections) if key.collections else None,
            "expires_at": key.expires_at, "rate": key.rate, "created_at": key.created_at}


def _keys(request: Request) -> KeyStore:
    """The service's own key store (the one that checks requests): a key made here works at
    once, one revoked here stops at once."""
    keys: KeyStore = request.app.state.keys
    return keys


@router.post("/keys", status_code=201, responses=ERRORS)
def create_key(body: NewKey, request: Request, admin: AdminDep) -> CreatedKey:
    key, secret = _keys(request).create(body.name, body.role, body.collections, body.expires_days, body.rate)
    return CreatedKey(key=secret, **_info(key))


@router.get("/keys", responses=ERRORS)
def list_keys(request: Request, admin: AdminDep) -> list[KeyInfo]:
    return [KeyInfo(**_info(key)) for key in _keys(request).list()]


@router.delete("/keys/{name}", status_code=204, responses=ERRORS)
def revoke_key(name: str, request: Request, admin: AdminDep) -> Response:
    _keys(request).revoke(name)
    return Response(status_code=204)


@router.get("/audit", responses=ERRORS)
def audit(request: Request, admin: AdminDep,
          since: Annotated[str | None, Query(description="ISO 8601, e.g. 2026-12-02T10:00:00Z")] = None,
          key: Annotated[str | None, Query(description="only this key's events")] = None,
          limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[dict[str, Any]]:
    """The newest `limit` events, oldest first: writes and key changes, with the key's name."""
    try:
        start = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise BadQueryError(f"since: {since!r} is not an ISO 8601 time") from None
    return list(deque(AuditLog(request.app.state.settings.index_dir).read(since=start, key=key), maxlen=limit))
