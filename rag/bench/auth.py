"""`rag bench auth`: what checking a request's key costs, per request.

A key store of `keys` keys (rag.access.keys, in a temporary folder; readers and writers,
each of one of 50 collections) and `requests` Authorization headers: a random key's
secret, one in ten a wrong secret; two in three name the key's own collection. Each is
timed through what the service runs before any route (rag.access.gate.Gate: resolve the
header to a principal, take a token from its rate bucket) and then the route's rule
(Principal.reads of a collection, and writes for one in three): p50, p99 and the mean in
microseconds, with time.perf_counter_ns around each.

Left out: the ASGI glue around it (a dict lookup of the header and one attribute set:
api.auth) and HTTP itself (rag bench serve measures whole requests).
"""

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rag.access.gate import Gate, Principal
from rag.access.keys import KeyStore
from rag.evaluation.metrics import percentile


def run_auth(keys: int = 1000, requests: int = 20000, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="rag-bench-auth-") as folder:
        store = KeyStore(Path(folder))
        secrets = []
        for i in range(keys):
            role = ("reader", "writer")[i % 2]
            secrets.append(store.create(f"key-{i}", role, [f"c{i % 50}"], rate=1e9)[1])
        # (header, the collection its request names): a key's own collection two times in three
        requests_made = []
        for i in range(requests):
            k = rng.randrange(keys)
            secret = secrets[k] if i % 10 else f"rag_wrong{i}"
            requests_made.append((f"Bearer {secret}".encode(), f"c{k % 50 if i % 3 else rng.randrange(50)}"))
        gate = Gate(None, store, default_rate=1e9)
        gate.resolve(requests_made[0][0])  # the first call loads the file
        timings: list[float] = []
        refused = 0
        for n, (header_bytes, collection) in enumerate(requests_made):
            started = time.perf_counter_ns()
            principal = gate.resolve(header_bytes)
            if isinstance(principal, Principal):
                gate.wait(principal)
                allowed = principal.reads(collection) and (n % 3 > 0 or principal.writes(collection))
            else:
                allowed = False
            timings.append((time.perf_counter_ns() - started) / 1000)
            refused += not allowed
    return {"keys": keys, "requests": requests, "refused": refused,
            "p50_us": round(statistics.median(timings), 2), "p99_us": round(percentile(timings, 0.99), 2),
            "mean_us": round(statistics.fmean(timings), 2), "target_p50_us": 100.0}


def auth_table(result: dict[str, Any]) -> str:
    return (f"{result['requests']} requests, {result['keys']} keys ({result['refused']} refused): "
            f"p50 {result['p50_us']} us, p99 {result['p99_us']} us, mean {result['mean_us']} us "
            f"(target: p50 <= {result['target_p50_us']:g} us)")
