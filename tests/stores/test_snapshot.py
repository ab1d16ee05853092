"""Snapshots of every store (`ChunkStore.snapshot`, rag.stores.*.snapshot): a snapshot holds
exactly what the store serves (documents, chunks and sentences, vectors included) in the
promised orders; a build's reads on while newer builds replace it; a live collection's
is not touched by writes made while it is open (which go on unblocked), and the next one
sees them; a Milvus collection keeps the versions a snapshot reads until it closes."""

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.collections import Collections, text_document
from rag.ingest.build import build_index
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.settings import Settings
from rag.stores.base import Snapshot
from rag.stores.factory import open_store
from rag.stores.local.live import KnowledgeBase
from rag.stores.local.store import open_local
from tests.helpers import FakeEmbedder, article


@dataclass
class Read:
    """All a snapshot yields, its batches joined."""

    documents: list[tuple[DocumentRecord, str]]
    chunks: list[ChunkRecord]
    chunk_vectors: np.ndarray
    sentences: list[SentenceRecord]
    sentence_vectors: np.ndarray


def read(snapshot: Snapshot, batch: int = 7, documents: Iterable[tuple[DocumentRecord, str]] | None = None) -> Read:
    """Every iterator (`documents`: its own, begun already), checked as it goes: batches of at
    most `batch`, one float32 row a record."""
    dimension = int(snapshot.manifest["model"]["dimension"])
    joined: dict[str, tuple[list[Any], list[np.ndarray]]] = {}
    for kind, iterator in (("chunks", snapshot.chunks(batch)), ("sentences", snapshot.sentences(batch))):
        records, vectors = joined.setdefault(kind, ([], []))
        for part, matrix in iterator:
            assert 0 < len(part) <= batch and matrix.dtype == np.float32 and matrix.shape == (len(part), dimension)
            records += part
            vectors.append(matrix)
    stacked = {k: np.concatenate(v) if v else np.zeros((0, dimension), np.float32) for k, (_, v) in joined.items()}
    return Read(list(snapshot.documents() if documents is None else documents), joined["chunks"][0], stacked["chunks"], joined["sentences"][0],
                stacked["sentences"])


def assert_serves_the_same(got: Read, store: Any, live: bool) -> None:
    """What the snapshot read is what `store` serves now, record for record, in its orders."""
    order = list(store.documents)  # each store's listing order: the order documents were (last) written
    assert [d.doc_id for d, _ in got.documents] == order
    for doc, origin in got.documents:
        assert doc == store.documents[doc.doc_id]
        assert origin == (store.origin(doc.doc_id) if live else "build")
    assert got.chunks == [store.chunks[r] for d in order for r in store.rows_of(d)]  # grouped by document, in order
    known = store.vectors_by_hash([c.embed_hash for c in got.chunks])
    assert np.array_equal(got.chunk_vectors, np.stack([known[c.embed_hash] for c in got.chunks]))
    place = {d: i for i, d in enumerate(order)}
    assert [place[s.doc_id] for s in got.sentences] == sorted(place[s.doc_id] for s in got.sentences)
    texts = {d.doc_id: d.text for d, _ in got.documents}
    for s in got.sentences:  # each sentence of the very text the snapshot has for its document
        assert s.text_hash == hashlib.sha256(texts[s.doc_id][s.char_start:s.char_end].encode()).hexdigest()
    for row, chunk in zip((r for d in order for r in store.rows_of(d)), got.chunks):
        spans, vectors = store.sentences(row)
        mine = sorted((i for i, s in enumerate(got.sentences) if s.doc_id == chunk.doc_id
                       and s.char_start < chunk.char_end and s.char_end > chunk.char_start),
                      key=lambda i: got.sentences[i].char_start)
        assert spans == [(max(got.sentences[i].char_start, chunk.char_start),
                          min(got.sentences[i].char_end, chunk.char_end)) for i in mine]
        assert np.array_equal(vectors, got.sentence_vectors[mine].reshape(len(mine), -1))


def assert_same(a: Read, b: Read) -> None:
    assert a.documents == b.documents and a.chunks == b.chunks and a.sentences == b.sentences
    assert np.array_equal(a.chunk_vectors, b.chunk_vectors) and np.array_equal(a.sentence_vectors, b.sentence_vectors)


def upsert(collections: Collections, topic: str, version: int = 1, replace: bool = False) -> None:
    collections.upsert("notes", text_document(article(topic, version), topic, None, None), replace=replace)


@pytest.fixture
def notes(settings: Settings) -> Iterator[Collections]:
    """A collection of three documents: penguins, walrus and krill."""
    with Collections(settings, FakeEmbedder()) as made:
        made.create("notes")
        for topic in ("penguins", "walrus", "krill"):
            upsert(made, topic)
        yield made


def write_meanwhile(collections: Collections) -> float:
    """Replace one document, add another, delete a third; the seconds it took."""
    began = time.monotonic()
    upsert(collections, "penguins", 2, replace=True)
    upsert(collections, "seals")
    collections.remove("notes", "krill")
    return time.monotonic() - began


def assert_sees_the_writes(got: Read, store: Any) -> None:
    assert [d.doc_id for d, _ in got.documents] == ["walrus", "penguins", "seals"]  # in the order last written
    assert "(version 2)" in got.documents[1][0].text and "(version 1)" not in got.documents[1][0].text
    assert_serves_the_same(got, store, live=True)


# ------------------------------------------------------------------ local


def test_a_local_build_snapshot_is_the_build_and_outlives_newer_builds(built: Settings):
    store = open_local(built.index_dir)
    with store.snapshot() as snapshot:
        got = read(snapshot)
        assert_serves_the_same(got, store, live=False)
        assert np.array_equal(got.chunk_vectors, store.matrix())  # row order, every row
        assert got.sentences == list(store.sentence_records()) and len(got.sentences) > 50
        assert np.array_equal(got.sentence_vectors, store.matrix(sentences=True))
        assert snapshot.manifest["build_id"] == store.build_id
    with store.snapshot() as snapshot:
        documents = snapshot.documents()
        first = next(documents)  # half-way through, two newer builds go live (this one is pruned), the store closes
        for _ in range(2):
            build_index(built, FakeEmbedder(), force=True)
        assert not store.folder.exists()
        store.close()
        again = read(snapshot, batch=1000, documents=chain([first], documents))
    assert_same(again, got)


def test_a_local_collection_snapshot_is_what_it_serves(notes: Collections):
    kb = notes.get("notes")
    assert isinstance(kb, KnowledgeBase)
    upsert(notes, "penguins", 2, replace=True)  # rows past the others': the order is the written one
    kb.release()  # as the LRU does: the snapshot opens it again
    with kb.snapshot() as snapshot:
        got = read(snapshot, batch=5)
    assert [d.doc_id for d, _ in got.documents] == ["walrus", "krill", "penguins"]
    assert {origin for _, origin in got.documents} == {"upload"}
    assert_serves_the_same(got, kb, live=True)
    with sqlite3.connect(kb.folder / "kb.sqlite") as db:
        assert len(got.sentences) == db.execute("SELECT count(*) FROM sentences").fetchone()[0] > 0


def test_writes_during_a_local_collection_snapshot_go_on_unseen(notes: Collections):
    kb = notes.get("notes")
    assert isinstance(kb, KnowledgeBase)
    with kb.snapshot() as snapshot:
        expected = read(snapshot)
    with kb.snapshot() as snapshot:
        documents = snapshot.documents()
        first = next(documents)  # the block is reading when the writes come
        took: list[float] = []
        writer = threading.Thread(target=lambda: took.append(write_meanwhile(notes)))
        writer.start()
        writer.join(timeout=30)
        assert took and took[0] < 5  # not blocked: a blocked writer would wait out SQLite's busy timeout (10 s)
        assert "seals" in kb.documents and "krill" not in kb.documents  # the writes are live
        got = read(snapshot, documents=chain([first], documents))
    assert_same(got, expected)
    with kb.snapshot() as snapshot:
        assert_sees_the_writes(read(snapshot), kb)


# ------------------------------------------------------------------ Milvus


@pytest.fixture
def milvus(tmp_path: Path, corpus_dir: Path) -> Settings:
    pytest.importorskip("pymilvus")
    return Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index", model="fake", vector_store="milvus",
                    milvus_uri=str(tmp_path / "milvus.db"))


@pytest.fixture
def milvus_notes(milvus: Settings) -> Iterator[Collections]:
    with Collections(milvus, FakeEmbedder()) as made:
        made.create("notes")
        for topic in ("penguins", "walrus", "krill"):
            upsert(made, topic)
        yield made


def stored(kb: Any, kind: str) -> int:
    """Rows in Milvus, of live versions or not."""
    return int(kb._query(kind, "", ["count(*)"])[0]["count(*)"])


@pytest.mark.milvus
def test_a_milvus_build_snapshot_is_the_build(tmp_path: Path):
    pytest.importorskip("pymilvus")
    from rag.stores.milvus.store import open_milvus
    from tests.stores.test_milvus import SPEC, build, corpus

    uri = str(tmp_path / "milvus.db")
    build(uri)
    store = open_milvus(uri, SPEC)
    try:
        with store.snapshot() as snapshot:
            got = read(snapshot, batch=4)
        documents, chunks, _, vectors, sentences, sentence_vectors = corpus()
        assert got.documents == [(d, "build") for d in documents]  # the long one in many parts, the empty one
        assert got.chunks == chunks and np.array_equal(got.chunk_vectors, vectors)
        assert got.sentences == sentences and np.array_equal(got.sentence_vectors, sentence_vectors)
        assert snapshot.manifest["build_id"] == store.build_id
    finally:
        store.close()


@pytest.mark.milvus
def test_a_milvus_build_of_the_corpus_snapshots_as_it_serves(milvus: Settings):
    build_index(milvus, FakeEmbedder())
    store = open_store(milvus, None)
    try:
        with store.snapshot() as snapshot:
            got = read(snapshot, batch=50)
        assert_serves_the_same(got, store, live=False)
        assert len(got.sentences) > 50
    finally:
        store.close()


@pytest.mark.milvus
def test_writes_during_a_milvus_collection_snapshot_are_unseen_and_its_versions_kept(milvus_notes: Collections):
    from rag.stores.milvus.live import MilvusCollection

    kb = milvus_notes.get("notes")
    assert isinstance(kb, MilvusCollection)
    with kb.snapshot() as snapshot:
        expected = read(snapshot)
    assert [d.doc_id for d, _ in expected.documents] == ["penguins", "walrus", "krill"]
    assert_serves_the_same(expected, kb, live=True)
    with kb.snapshot() as snapshot:
        documents = snapshot.documents()
        first = next(documents)
        write_meanwhile(milvus_notes)
        assert "seals" in kb.documents and "krill" not in kb.documents  # the writes are live
        assert stored(kb, "pending") == 2  # the replace's and the delete's intents wait for the snapshot
        assert stored(kb, "chunks") > kb.count()  # and so do the old versions, hidden from queries
        got = read(snapshot, documents=chain([first], documents))
    assert_same(got, expected)
    assert stored(kb, "pending") == 0 and stored(kb, "chunks") == kb.count()  # removed at close
    assert stored(kb, "sentences") == sum(kb.pointer(d).sentences for d in kb.documents)  # type: ignore[union-attr]
    with kb.snapshot() as snapshot:
        assert_sees_the_writes(read(snapshot), kb)


@pytest.mark.milvus
def test_versions_a_closed_snapshot_left_are_recovered_on_open(milvus_notes: Collections):
    """The process dies (here: the collection closes) with a snapshot open: the old versions
    stay, named by their intents, and the next open removes them."""
    kb = milvus_notes.get("notes")
    live_rows = kb.count()
    with kb.snapshot():
        upsert(milvus_notes, "penguins", 2, replace=True)
        kb.close()
    assert stored(kb, "pending") == 1 and stored(kb, "chunks") > live_rows
    reopened = Collections(milvus_notes.settings, FakeEmbedder())
    try:
        again = reopened.get("notes")
        assert stored(again, "pending") == 0 and stored(again, "chunks") == again.count()
    finally:
        reopened.close()


@pytest.mark.milvus
def test_a_version_another_replica_removes_mid_snapshot_is_read_whole_at_its_newer_one(
        milvus_notes: Collections, milvus: Settings):
    """The documented limit: another process's writes do not wait for this one's snapshots.
    A document whose version went is read at its current version, whole, or left out if deleted."""
    kb = milvus_notes.get("notes")
    replica = Collections(milvus, FakeEmbedder())  # a second client of the file stands in for another process
    other = replica.get("notes")
    assert other is not kb
    kb._shared = other._shared = True  # type: ignore[attr-defined]  # as a server's collections are
    try:
        with kb.snapshot() as snapshot:
            replica.upsert("notes", text_document(article("walrus", 2), "walrus", None, None), replace=True)
            replica.remove("notes", "krill")
            got = read(snapshot, batch=3)
        assert [d.doc_id for d, _ in got.documents] == ["penguins", "walrus"]  # krill: deleted, left out
        assert "(version 2)" in got.documents[1][0].text  # walrus's newer version, whole
        assert {c.doc_id for c in got.chunks} == {"penguins", "walrus"}
        assert_serves_the_same(got, kb, live=True)  # chunks and sentences of that same version
    finally:
        replica.close()
