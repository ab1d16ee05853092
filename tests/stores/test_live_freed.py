"""A released or deleted live collection gives its memory back at once (issue 22: 2,000
collections churned on the real server grew RSS 2x). Its KnowledgeBase, its retriever's
Passages and the in-memory indexes must be freed by reference counting, not left in
reference cycles for the cyclic GC's rare full collections; and an empty or released
collection's index holds no preallocated vector array (1.5 MB each at 384 dimensions)."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from rag.collections import Collections, text_document
from rag.service import retriever_for
from rag.settings import Settings
from rag.stores.local.live_index import LiveIndex
from tests.helpers import FakeEmbedder


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_deleted_and_released_collections_are_freed_without_the_cyclic_gc(settings: Settings, no_cyclic_gc: None):
    embedder, retrievers = FakeEmbedder(384), {}
    refs: list[weakref.ref[object]] = []
    bounded = settings.model_copy(update={"max_open_collections": 2})
    with Collections(bounded, embedder, dropped=lambda name: retrievers.pop(name, None)) as collections:
        for i in range(6):
            kb = collections.create(f"c{i}")
            collections.upsert(f"c{i}", text_document("Krill swarms feed the whales.", "d", None, None),
                               replace=False)
            retriever = retrievers[f"c{i}"] = retriever_for(bounded, kb, embedder)
            assert retriever.search("krill", k=1)
            refs += [weakref.ref(kb), weakref.ref(retriever.passages), weakref.ref(kb._index)]
            if i == 0:
                held = kb  # a request holds it while the LRU releases it
            del kb, retriever
        assert "c0" not in collections._open and held._index._vectors.nbytes == 0  # type: ignore[attr-defined]
        assert [type(r()).__name__ for r in refs[3:6] if r() is not None] == []  # c1: released, nothing holds it
        del held
        for i in range(6):
            collections.delete(f"c{i}")
    assert [type(r()).__name__ for r in refs if r() is not None] == []

def test_an_empty_index_holds_no_vectors_and_grows_on_demand():
    index = LiveIndex(384)
    assert index._vectors.nbytes == 0 and len(index.dense(FakeEmbedder(384).vector("krill"), 5)[0]) == 0
    embedder = FakeEmbedder(384)
    for start in range(0, 40, 7):
        texts = [f"krill note {n}" for n in range(start, start + 7)]
        index.add(list(range(start, start + 7)), embedder.encode(texts), texts)
    rows, _ = index.dense(embedder.vector("krill note 23"), 1)
    assert list(rows) == [23] and len(index) == 42
