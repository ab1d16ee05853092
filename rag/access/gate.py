"""Who is calling, and may it call now: a request's `Authorization` header resolved to a
`Principal` (a name, a role, the collections it may read) and each key's rate, a token bucket.

Keys come from two places: `RAG_API_KEY`, the bootstrap admin key (principal `admin`), and
the key store (rag.access.keys: reader, writer or admin, on every collection or a list of
them). With neither (no RAG_API_KEY, and no keys.json: no key ever made), every caller is
`local`, an admin: local development. Once keys.json exists, revoking every key locks the
service rather than opening it.

Left out: what each role may do on each route (the service's routes declare it: api.deps);
OAuth/OIDC and sessions; rates shared across processes (a bucket per key per process).
"""

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rag.access.keys import Key, KeyStore, hash_secret

READER, WRITER, ADMIN = "reader", "writer", "admin"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    collections: frozenset[str] | None  # None: every collection
    rate: float | None = None  # requests a second; None: unlimited
    id: str = ""  # unique to the key, unlike its name (which a later key may reuse): owns files, holds a bucket

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


LOCAL = Principal("local", ADMIN, None, id="local")  # no key was ever made: local development
BOOTSTRAP = Principal("admin", ADMIN, None, id="admin")  # RAG_API_KEY


def principal_of(key: Key, secret: str, default_rate: float) -> Principal:
    return Principal(key.name, key.role, None if key.collections is None else frozenset(key.collections),
                     key.rate or default_rate, id="key-" + hash_secret(secret)[:16])


class Buckets:
    """A token bucket per key: `rate` a second, holding one second's worth (at least one
    request: a key of 0.5 a second may send one every 2 s)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when)
        self._lock = threading.Lock()
        self._clock = clock

    def take(self, name: str, rate: float) -> float:
        """0 if a request may go now, else the seconds until it may."""
        now = self._clock()
        with self._lock:
            capacity = max(1.0, rate)
            tokens, when = self._buckets.get(name, (capacity, now))
            tokens = min(capacity, tokens + (now - when) * rate)  # burst: one second's worth
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
        if self.bootstrap is None and not self.keys.in_use():
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
        return principal_of(key, token, self.default_rate)

    def wait(self, principal: Principal) -> float:
        """0 if the principal may send a request now, else the seconds until it may."""
        return 0.0 if principal.rate is None else self.buckets.take(principal.id, principal.rate)
