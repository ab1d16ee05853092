"""The caller of every request, resolved before anything else reads it (rag.access.gate:
the bootstrap key RAG_API_KEY, the keys `rag keys` makes, or local development with
neither), and its rate: no key, a wrong key or an expired key is a 401; a key past its
rate (its own, or RAG_KEY_RATE_PER_SECOND; the bootstrap and local admins have none) a
429 with Retry-After, counted in /metrics per key name. What the principal may do is the
routes' to declare, through api.deps, one rule for every route.

Left out: rates shared across replicas (N processes allow N times a key's rate).
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import scrub_paths, send_error
from rag.access.gate import Gate, Principal
from rag.errors import StorageError


class Authenticate:
    """Resolve the caller before anything else reads the request: scope["state"]["principal"].
    The open paths (/health, the chat page's HTML) need no key."""

    def __init__(self, app: ASGIApp, gate: Gate, open_paths: frozenset[str],
                 limited: Callable[[str], None] = lambda name: None):
        self.app, self.gate, self.open_paths, self.limited = app, gate, open_paths, limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        try:
            principal = self.gate.resolve(dict(scope["headers"]).get(b"authorization", b""))
        except StorageError as exc:  # a damaged keys.json locks everyone out, and says why
            return await send_error(scope, send, 503, scrub_paths(str(exc)))
        if isinstance(principal, str):
            return await send_error(scope, send, 401, f"{principal}: send 'Authorization: Bearer <key>'",
                                    [(b"www-authenticate", b"Bearer")])
        if wait := self.gate.wait(principal):
            self.limited(principal.name)
            return await send_error(scope, send, 429, f"key '{principal.name}' is over its rate of "
                                    f"{principal.rate:g} requests a second; retry in a moment",
                                    [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def scope_principal(scope: Mapping[str, Any]) -> Principal | None:
    found = scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None
