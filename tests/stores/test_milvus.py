"""The Milvus store against Milvus Lite (in-process, a .db folder under tmp_path), on a
tiny corpus made here: rankings against numpy and a hand-computed BM25, filters, the
records it hands back, and builds going live, aborted and pruned."""

import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from rag.errors import IndexBusyError, IndexMismatchError, IndexMissingError, StorageError
from rag.lexical import DEFAULT_B, DEFAULT_K1, tokenize
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.local.bm25 import bm25_scorer
from rag.stores.manifest import IndexSpec
from rag.stores.milvus.store import MilvusStore, open_milvus
from rag.stores.milvus.writer import milvus_writer
from rag.types import Filters

pytestmark = pytest.mark.milvus  # Milvus Lite, in process

DIM = 16
SPEC = IndexSpec("fake-model", 200, 20)
MANIFEST = {"model": {"name": "fake-model", "dimension": DIM, "vectors": "fp32"},
            "chunker": {"chunk_tokens": 200, "chunk_overlap_tokens": 20}}
LONG = "Ünïcödé ✓ 北京 🚀 " * 12_500  # 200,000 characters, 1 to 4 UTF-8 bytes each
DOCS: list[tuple[str, str, list[tuple[str | None, str]]]] = [  # doc_id, source, [(section, text)]
    ("oil", "news/oil.md", [("Exports", "Russia's oil exports rose sharply. Oil prices fell."),
                            ("Exports", "Gas exports to Europe rose. Pipelines were repaired."),
                            (None, "The oil minister spoke about oil, oil and more oil.")]),
    ("gas", 'quote"d\\path\n.md', [("Prices", "Gas prices rose in Europe during winter."),
                                   ("Prices", "Traders expect cheaper gas next year."),
                                   ("Prices", "To be or not to be.")]),  # stopwords only: no BM25 term
    ("wheat", "news/wheat.md", [("Harvest", "The wheat harvest failed after the drought."),
                                ("Trade", "Wheat exports to Egypt fell; prices of bread rose."),
                                ("Trade", "Egypt buys wheat from Russia and Ukraine.")]),
    ("long", "books/long.md", [(None, LONG[:300]), ("Ünï", LONG[300:600])]),
    ("empty", "news/empty.md", []),  # a document without chunks
]


def corpus() -> tuple[list[DocumentRecord], list[ChunkRecord], list[str], np.ndarray, list[SentenceRecord], np.ndarray]:
    rng = np.random.default_rng(7)
    documents: list[DocumentRecord] = []
    chunks: list[ChunkRecord] = []
    lexical: list[str] = []
    sentences: list[SentenceRecord] = []
    for doc_id, source, parts in DOCS:
        text = LONG if doc_id == "long" else " ".join(t for _, t in parts)
        offset = 0
        for section, part in parts:
            start = text.index(part, offset)
            offset = start + len(part)
            chunks.append(ChunkRecord(f"{doc_id}-{len(chunks)}", doc_id, section, start, offset, part,
                                      len(part.split()), len(part.split()) + 2, f"hash-{len(chunks) % 9}"))
            lexical.append(f"{doc_id} {section or ''} {part}")
            for sentence in part.split(". "):  # sentences; the first of each chunk also pokes into the previous one
                begin = text.index(sentence, start)
                sentences.append(SentenceRecord(doc_id, max(0, begin - 3), begin + len(sentence), f"s{len(sentences)}"))
        sections = [{"title": s, "char_start": 0, "char_end": len(text)} for s in dict.fromkeys(s for s, _ in parts) if s]
        if doc_id == "long":  # more than a Milvus JSON field holds (65,536 bytes)
            sections = [{"title": f"§ {i} ✓", "char_start": 16 * i, "char_end": 16 * i + 16} for i in range(2_000)]
        documents.append(DocumentRecord(doc_id, {"source": source, "title": doc_id.title()}, text, sections, f"c-{doc_id}"))
    chunk_vectors, sentence_vectors = (normalised(rng.normal(size=(n, DIM))) for n in (len(chunks), len(sentences)))
    return documents, chunks, lexical, chunk_vectors, sentences, sentence_vectors


def normalised(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def build(uri: str, manifest: dict[str, Any] = MANIFEST, fail: bool = False, **kwargs: Any) -> str:
    documents, chunks, lexical, vectors, sentences, sentence_vectors = corpus()
    with milvus_writer(uri, DIM, **kwargs) as writer:
        writer.add_documents(documents)
        writer.add_chunks(chunks[:4], vectors[:4], lexical_texts=lexical[:4])  # rows continue across calls
        writer.add_chunks(chunks[4:], vectors[4:], lexical_texts=lexical[4:])
        writer.add_sentences(sentences, sentence_vectors)
        if fail:
            raise RuntimeError("the build failed")
        return writer.commit(manifest)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    build(uri)
    opened = open_milvus(uri, SPEC)
    yield opened
    opened.close()


def ranking_from(scores: np.ndarray, allowed: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(allowed)
    rows = rows[np.lexsort((rows, -scores[rows]))][:depth]
    return rows, scores[rows]


def test_dense_ranking_is_the_exact_inner_product(store: MilvusStore) -> None:
    _, chunks, _, vectors, _, _ = corpus()
    query = normalised(np.random.default_rng(1).normal(size=(1, DIM)))[0]
    for depth in (1, 5, 100):
        rows, scores = store.dense(query, depth, Filters())
        expected_rows, expected_scores = ranking_from(vectors @ query, np.ones(len(chunks), bool), depth)
        assert rows.dtype == np.int64 and scores.dtype == np.float32
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)
    assert len(store.dense(query, 0, Filters())[0]) == 0


def bm25_by_hand(documents: list[list[str]], query: list[str], k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> np.ndarray:
    """Lucene's BM25, as bm25s and Milvus compute it (a repeated query term counts again)."""
    n, avgdl = len(documents), sum(map(len, documents)) / len(documents)
    scores = np.zeros(n)
    for term in query:
        df = sum(term in d for d in documents)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(documents):
            tf = Counter(d)[term]
            scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl)) if tf else 0.0
    return scores


def test_lexical_ranking_is_bm25_over_our_tokens(store: MilvusStore) -> None:
    _, _, lexical, _, _, _ = corpus()
    tokens = [tokenize(t) for t in lexical]
    for question in ("oil exports", "Russia's wheat exports to Egypt", "gas prices rose", "oil oil gas", "Ünïcödé"):
        expected = bm25_by_hand(tokens, tokenize(question))
        rows, scores = store.lexical(question, 100, Filters())
        expected_rows, expected_scores = ranking_from(expected, expected > 0, 100)
        # Milvus Lite scores in float64 over float32 document lengths: equal to float32 precision; the
        # store divides out the (k1 + 1) of the numerator, as bm25s does
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores * (1 + DEFAULT_K1), expected_scores, rtol=1e-5)
        # and the local store's BM25 (bm25s over the same tokens) agrees
        local = bm25_scorer(lexical).scores(question)
        np.testing.assert_allclose(scores, local[rows], rtol=1e-5)
        assert len(store.lexical(question, 2, Filters())[0]) == min(2, len(expected_rows))
    for nothing in ("", "the and of", "zebra"):  # no tokens, stopwords only, no chunk has the term
        rows, scores = store.lexical(nothing, 10, Filters())
        assert len(rows) == len(scores) == 0 and rows.dtype == np.int64


@pytest.mark.parametrize("filters", [
    Filters(doc_ids=["oil"]), Filters(doc_ids=["gas", "wheat", "nope"]), Filters(sources=['quote"d\\path\n.md']),
    Filters(sources=["news/oil.md", "news/wheat.md"]), Filters(sections=["Trade"]), Filters(sections=[""]),
    Filters(doc_ids=["wheat", "oil"], sections=["Trade", "Exports"]),
    Filters(doc_ids=["oil", "gas"], sources=["news/oil.md"], sections=["Exports", "Prices"]),
    Filters(doc_ids=[]), Filters(sections=["nope"]),
])
def test_filters_are_pushed_down(store: MilvusStore, filters: Filters) -> None:
    documents, chunks, lexical, vectors, _, _ = corpus()
    source = {d.doc_id: d.metadata["source"] for d in documents}
    allowed = np.ones(len(chunks), bool)
    for values, column in ((filters.doc_ids, [c.doc_id for c in chunks]),
                           (filters.sources, [source[c.doc_id] for c in chunks]),
                           (filters.sections, [c.section or "" for c in chunks])):
        if values is not None:
            allowed &= np.isin(column, list(values))
    query = normalised(np.random.default_rng(2).normal(size=(1, DIM)))[0]
    np.testing.assert_array_equal(store.dense(query, 100, filters)[0], ranking_from(vectors @ query, allowed, 100)[0])
    expected = bm25_by_hand([tokenize(t) for t in lexical], tokenize("oil gas wheat exports prices"))
    rows, _ = store.lexical("oil gas wheat exports prices", 100, filters)
    np.testing.assert_array_equal(rows, ranking_from(expected, allowed & (expected > 0), 100)[0])


def test_unknown_values(store: MilvusStore) -> None:
    assert store.unknown("doc_ids", ["oil", "nope", "empty", "long"]) == ["nope"]  # "empty" has no chunk: still a document
    assert store.unknown("sources", ['quote"d\\path\n.md', "news/empty.md", "x"]) == ["news/empty.md", "x"]
    assert store.unknown("sections", ["Trade", "", "Ünï", "Missing"]) == ["", "Missing"]


def test_filter_values_are_checked_in_one_query(store: MilvusStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = store._query

    def counted(kind: str, expression: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(expression)
        return real(kind, expression, *args, **kwargs)

    monkeypatch.setattr(store, "_query", counted)
    for field in ("sources", "sections"):
        calls.clear()
        names = [f"nothing like it {i}" for i in range(50)]
        assert store.unknown(field, names) == sorted(names)
        assert len(calls) == 1, calls  # one query for fifty values, not fifty


def test_records_round_trip(store: MilvusStore) -> None:
    documents, chunks, _, _, sentences, sentence_vectors = corpus()
    assert store.count() == len(store.chunks) == len(chunks)
    assert list(store.chunks) == chunks and store.chunks[3] == chunks[3] and store.chunks[-1] == chunks[-1]
    assert store.chunks[2:5] == chunks[2:5] and store.chunks[2].section is None
    with pytest.raises(IndexError):
        store.chunks[len(chunks)]
    assert store.row_of(chunks[5].chunk_id) == 5 and store.row_of("nope") is None
    assert [store.chunk_count(d) for d in ("oil", "gas", "empty", "nope")] == [3, 3, 0, 0]
    assert store.rows_of("gas") == [3, 4, 5] and store.rows_of("empty") == []
    assert len(store.documents) == len(documents) and list(store.documents) == [d.doc_id for d in documents]
    assert [store.documents[d.doc_id] for d in documents] == documents
    assert store.documents["long"].text == LONG and len(LONG.encode()) > 4 * 65_535
    assert store.documents.get("nope") is None and "gas" in store.documents and "nope" not in store.documents
    assert store.chunks[3] is store.chunks[3]  # cached
    for row, chunk in enumerate(chunks):
        spans, vectors = store.sentences(row)
        inside = [i for i, s in enumerate(sentences) if s.doc_id == chunk.doc_id
                  and s.char_start < chunk.char_end and chunk.char_start < s.char_end]
        assert spans == [(max(sentences[i].char_start, chunk.char_start), min(sentences[i].char_end, chunk.char_end))
                         for i in inside]
        np.testing.assert_array_equal(vectors, sentence_vectors[inside])
    assert store.build_id == store.manifest["build_id"]
    assert store.manifest["store"]["backend"] == "milvus" and store.manifest["store"]["index"]["dense"] == "FLAT"
    assert store.manifest["counts"] == {"chunks": len(chunks), "sentences": len(sentences)}


def test_vectors_by_hash(store: MilvusStore) -> None:
    _, _, _, vectors, sentences, sentence_vectors = corpus()
    found = store.vectors_by_hash(["hash-1", "hash-4", "nope", "hash-1"])
    assert sorted(found) == ["hash-1", "hash-4"]
    np.testing.assert_array_equal(found["hash-4"], vectors[4])
    assert found["hash-1"].dtype == np.float32
    found = store.vectors_by_hash([s.text_hash for s in sentences] + ["hash-1"], sentences=True)
    assert len(found) == len(sentences)
    np.testing.assert_array_equal(found["s3"], sentence_vectors[3])


def collections(uri: str) -> set[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        return set(client.list_collections())
    finally:
        client.close()


def test_builds_go_live_at_commit_and_old_ones_are_dropped(tmp_path: Path) -> None:
    uri = str(tmp_path / "milvus.db")
    first = build(uri, manifest={**MANIFEST, "build_id": "first"})
    assert first.startswith("rag_") and first.endswith("_chunks") and first in collections(uri)
    reader = open_milvus(uri, SPEC)
    assert reader.build_id == reader.manifest["build_id"] == "first"
    before = collections(uri)
    with pytest.raises(RuntimeError, match="the build failed"):  # aborted: the live build serves, its collections go
        build(uri, manifest={**MANIFEST, "build_id": "aborted"}, fail=True)
    assert collections(uri) == before
    assert open_milvus(uri, SPEC).build_id == "first"
    second = build(uri, manifest={**MANIFEST, "build_id": "second"})
    assert open_milvus(uri, SPEC).build_id == "second"
    assert {first, second} <= collections(uri) and reader.count() == 11  # the previous build stays for its readers
    big = {f"doc-{i}": "f" * 64 for i in range(5000)}  # a real corpus's manifest lists every document's hash
    third = build(uri, manifest={**MANIFEST, "build_id": "third", "note": "3", "corpus": {"documents": big}})
    live = open_milvus(uri, SPEC)
    assert live.build_id == "third" and live.manifest["note"] == "3" and live.manifest["corpus"]["documents"] == big
    names = collections(uri)
    assert first not in names and {second, third} <= names and len(names) == 2 * 4 + 1  # two builds and the meta
    with pytest.raises(IndexBusyError):  # the build it read was dropped under it
        reader.row_of("oil-0")


def test_writer_refuses_chunks_before_their_document(tmp_path: Path) -> None:
    documents, chunks, _, vectors, _, _ = corpus()
    uri = str(tmp_path / "milvus.db")
    with milvus_writer(uri, DIM) as writer:
        writer.add_documents(documents[:1])
        with pytest.raises(ValueError, match="not added first"):
            writer.add_chunks(chunks[3:4], vectors[3:4])
        with pytest.raises(ValueError, match="dimension 16"):
            writer.add_chunks(chunks[:1], vectors[:1, :8])
    assert collections(uri) == set()  # never committed: nothing left


def test_open_refuses_other_settings_and_missing_builds(tmp_path: Path) -> None:
    uri = str(tmp_path / "milvus.db")
    with pytest.raises(IndexMissingError, match="run `rag build` first"):
        open_milvus(uri, SPEC)
    assert not Path(uri).exists()  # a failed open writes nothing
    build(uri, prefix="other")
    with pytest.raises(IndexMissingError):
        open_milvus(uri, SPEC)  # prefix "rag" has no build
    with pytest.raises(IndexMismatchError, match="model: index has 'fake-model', settings ask for 'another-model'"):
        open_milvus(uri, IndexSpec("another-model", 200, 20), prefix="other")
    with pytest.raises(IndexMismatchError, match="dimension 16"):
        open_milvus(uri, SPEC, prefix="other", dimension=384)
    assert open_milvus(uri, None, prefix="other").count() == 11


def test_storage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match=r"^cannot connect to Milvus at http://admin@127.0.0.1:1: ") as error:
        open_milvus("http://admin:secret@127.0.0.1:1", SPEC, timeout=1)
    assert "secret" not in str(error.value)
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus now raises ImportError
    with pytest.raises(StorageError, match=r"pip install '.\[milvus\]'"):
        open_milvus("http://127.0.0.1:1", SPEC)
    with pytest.raises(StorageError, match="needs pymilvus"):
        milvus_writer("http://127.0.0.1:1", DIM)
