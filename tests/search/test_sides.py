"""Hybrid's two sides at once (rag.search.sides): the same rankings as one after the other,
errors from either side reach the caller, and a store whose lock the caller holds stays serial."""

import threading

import numpy as np
import pytest

from rag.search.sides import both_sides, in_parallel
from rag.settings import Settings
from rag.stores.local.store import open_local
from rag.types import Filters, Laps
from tests.helpers import FakeEmbedder

QUESTIONS = ["How long is the ferry crossing?", "harbour fees in winter", "Which port opened first?"]


def test_at_once_the_rankings_equal_one_after_the_other(built: Settings):
    store, embedder = open_local(built.index_dir), FakeEmbedder()
    assert not in_parallel(store)  # the seed-sized index is below PARALLEL_ROWS
    assert in_parallel(store, parallel_rows=0)
    for question in QUESTIONS:
        vector = embedder.encode([question])[0]
        for filters in (Filters(), Filters(doc_ids=[store.chunks[0].doc_id])):
            serial = both_sides(store, question, vector, 50, filters)
            laps = Laps()
            threads = both_sides(store, question, vector, 50, filters, laps, parallel_rows=0)
            for (a_rows, a_scores), (b_rows, b_scores) in zip(serial, threads):
                assert np.array_equal(a_rows, b_rows) and np.array_equal(a_scores, b_scores)
            assert list(laps.ms) == ["dense search", "lexical search"]


class Failing:
    """A store whose chosen side raises; it records the threads its sides ran on."""

    def __init__(self, side: str):
        self.side, self.threads = side, {}

    def count(self) -> int:
        return 10**6

    def dense(self, vector, depth, filters):
        return self._run("dense")

    def lexical(self, text, depth, filters):
        return self._run("lexical")

    def _run(self, side: str):
        self.threads[side] = threading.current_thread().name
        if side == self.side:
            raise RuntimeError(f"{side} failed")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)


@pytest.mark.parametrize("side", ["dense", "lexical"])
def test_an_error_on_either_side_reaches_the_caller(side: str):
    store = Failing(side)
    with pytest.raises(RuntimeError, match=f"{side} failed"):
        both_sides(store, "q", np.zeros(4, dtype=np.float32), 10, Filters())  # type: ignore[arg-type]
    if side == "lexical":  # it ran on the side thread, the dense side on the caller's
        assert store.threads["lexical"].startswith("rag-lexical")
        assert store.threads["dense"] == threading.current_thread().name


def test_a_store_with_a_lock_stays_on_the_callers_thread():
    store = Failing("none")
    store.lock = threading.RLock()  # type: ignore[attr-defined]  # a live collection's: the caller holds it
    with store.lock:  # type: ignore[attr-defined]
        both_sides(store, "q", np.zeros(4, dtype=np.float32), 10, Filters())  # type: ignore[arg-type]
    assert set(store.threads.values()) == {threading.current_thread().name}


def test_a_forked_child_gets_a_pool_of_its_own():
    import multiprocessing

    store = Failing("none")
    both_sides(store, "q", np.zeros(4, dtype=np.float32), 10, Filters())  # type: ignore[arg-type]  # the parent's pool
    context = multiprocessing.get_context("fork")
    child = context.Process(target=both_sides, args=(Failing("none"), "q", np.zeros(4, dtype=np.float32), 10,
                                                      Filters()))
    child.start()
    child.join(20)
    try:
        assert child.exitcode == 0  # without its own pool the child waited for a thread that does not exist
    finally:
        if child.is_alive():
            child.kill()
