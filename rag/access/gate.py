"""Who is calling, and may it call now: a request's `Authorization` header resolved to a
`Principal` (a name, a role, the collections it may read) and each key's rate, a token bucket.

Keys come from two places: `RAG_API_KEY`, the bootstrap admin key (principal `admin`), and
the key store (rag.access.keys: reader, writer or admin, on every collection or a list of
them). With neither, every caller is `local`, an admin: local development.

Left out: what each role may do on each route (the service's routes declare it: api.deps);
OAuth/OIDC and sessions; rates shared across processes (a bucket per key per process).
"""

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rag.access.keys import Key, KeyStore

READER, WRITER, ADMIN = "reader", "writer", "admin"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    collections: frozenset[str] | None  # None: every collection
    rate: float | None = None  # requests a second; None: unlimited

    def reads(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def writes(self, collection: str) -> bool:
        return self.role in (WRITER, ADMIN) and self.reads(collection)

    def manages(self, collection: str) -> bool:
        """May create and delete it (an admin key limited to some collections: those)."""
        return self.role == ADMIN and self.reads(collection)

    @property
    def admin(self) -> bool:
        """The whole service's admin: reload, metrics, keys, the audit log."""
        return self.role == ADMIN and self.collections is None


LOCAL = Principal("local", ADMIN, None)  # no key is configured: local development
BOOTSTRAP = Principal("admin", ADMIN, None)  # RAG_API_KEY


def principal_of(key: Key, default_rate: float) -> Principal:
    return Principal(key.name, key.role, None if key.collections is None else frozenset(key.collections),
                     key.rate or default_rate)


class Buckets:
    """A token bucket per key name: `rate` a second, holding at most one second's worth."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when)
        self._lock = threading.Lock()
        self._clock = clock

    def take(self, name: str, rate: float) -> float:
        """0 if a request may go now, else the seconds until it may."""
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.get(name, (rate, now))
            tokens = min(rate, tokens + (now - when) * rate)  # burst: one second's worth
            if tokens >= 1:
                self._buckets[name] = (tokens - 1, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1 - tokens) / rate


class Gate:
    """`resolve` a header to its principal (or why it is refused), `wait` for its rate."""

    def __init__(self, bootstrap_key: str | None, keys: KeyStore, default_rate: float):
        self.bootstrap, self.keys, self.default_rate = bootstrap_key, keys, default_rate
        self.buckets = Buckets()

    def resolve(self, given: bytes) -> Principal | str:
        """The caller, or why it is refused (StorageError while keys.json is damaged)."""
        if self.bootstrap is None and self.keys.empty():
            return LOCAL
        scheme, _, token_bytes = given.partition(b" ")
        if not given:
            return "missing API key"
        token = token_bytes.strip().decode("latin-1")
        if scheme.lower() != b"bearer" or not token:
            return "invalid API key"
        if self.bootstrap is not None and hmac.compare_digest(token.encode("latin-1"), self.bootstrap.encode()):
            return BOOTSTRAP
        key = self.keys.lookup(token)
        if key is None:
            return "invalid API key"
        if key.expired():
            return f"API key '{key.name}' has expired"
        return principal_of(key, self.default_rate)

    def wait(self, principal: Principal) -> float:
        """0 if the principal may send a request now, else the seconds until it may."""
        return 0.0 if principal.rate is None else self.buckets.take(principal.name, principal.rate)
