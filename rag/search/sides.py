"""Both rankings of a hybrid search, the two sides at once where that pays.

Hybrid needs each side's top `fusion.depth` (1,000 by default), and at a million chunks that
is ~3 ms of IVF-PQ scan and ~4.5 ms of BM25 MaxScore (docs/benchmarks.md#hybrids-two-sides-at-once).
Neither needs the other's result, FAISS and numpy's array work release the GIL, and a
remote engine (Milvus) spends the time waiting: so the lexical side runs on a thread of its
own while the calling thread runs the dense one, and a query waits for the slower side
instead of both. The CPU a query costs is the same (a little more: the hand-over); what
falls is one client's latency. Under many concurrent clients the cores are busy anyway, and
the extra thread neither helps nor hurts throughput by much.

Serial where the hand-over (~0.05 ms) costs more than it saves: collections below
PARALLEL_ROWS chunks, whose sides take ~0.1 ms each. Serial too for a store with a `lock`
(a live collection): the querying thread holds it for the whole query, and the other thread
would wait on it.

Left out: splitting one side over several threads (FAISS can probe in parallel; on two
cores that would take the core the other side is using).
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rag.stores.base import ChunkStore, Ranking
from rag.types import Filters, Laps, lap

PARALLEL_ROWS = 65_536  # chunks from which the sides run at once (as rag.stores.local.bm25_top.DENSE_ROWS:
# below it BM25 scores every row in < 0.1 ms)
SIDE_THREADS = 1  # the lexical sides of all queries share this many threads: the serving path queries
# from one thread (api.engine.batching), so one is all it can use; more callers wait their turn

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the pool's thread does not exist, yet the pool would count it as idle
    and queue work for it for ever: the child makes its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _side_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=SIDE_THREADS, thread_name_prefix="rag-lexical")
        return _pool


def in_parallel(store: ChunkStore, parallel_rows: int = PARALLEL_ROWS) -> bool:
    """Whether `store`'s two sides run at once: a big enough collection (or a remote engine,
    whose calls wait on the network), and no lock the querying thread holds."""
    if getattr(store, "lock", None) is not None:
        return False
    return bool(getattr(store, "remote", False)) or store.count() >= parallel_rows


def both_sides(store: ChunkStore, question: str, vector: np.ndarray, depth: int, filters: Filters,
               laps: Laps | None = None, parallel_rows: int = PARALLEL_ROWS) -> tuple[Ranking, Ranking]:
    """The dense and the lexical ranking, each the top `depth`. With `laps`: "dense search",
    then "lexical search" (run at once, that lap is only the wait for the lexical side after
    the dense one was done)."""
    if not in_parallel(store, parallel_rows):
        dense = store.dense(vector, depth, filters)
        lap(laps, "dense search")
        return dense, _lapped(store.lexical(question, depth, filters), laps, "lexical search")
    lexical = _side_pool().submit(store.lexical, question, depth, filters)
    try:
        dense = store.dense(vector, depth, filters)
    except BaseException:
        lexical.cancel()
        raise
    lap(laps, "dense search")
    return dense, _lapped(lexical.result(), laps, "lexical search")


def _lapped(ranking: Ranking, laps: Laps | None, name: str) -> Ranking:
    lap(laps, name)
    return ranking
