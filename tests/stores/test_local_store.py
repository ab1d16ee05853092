"""The local store's pieces at a size where they change behaviour: BM25 arrays written in
spills (checked against bm25s), the IVF index above the exact limit (recall against
exact search, filters pushed down), and reads of chunks and sentences by row."""

from pathlib import Path

import numpy as np
import pytest

from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.local import ann
from rag.stores.local.bm25 import Bm25Index, Bm25Writer
from rag.stores.local.store import LocalStore, open_local
from rag.stores.local.writer import LocalWriter
from rag.stores.manifest import new_manifest
from rag.types import Filters

DIM = 32
WORDS = ["trade", "oil", "gas", "pipeline", "arctic", "sanctions", "yuan", "ruble", "bank", "export", "import", "treaty", "summit", "army", "navy", "border", "grain", "wheat", "nuclear", "reactor", "satellite", "chip", "semiconductor", "port", "rail"]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 25))) for _ in range(n)]


def test_bm25_arrays_score_as_bm25s_does_across_spills(tmp_path: Path):
    bm25s = pytest.importorskip("bm25s")
    from rag.lexical import tokenize

    corpus = texts(500)
    writer = Bm25Writer(tmp_path / "bm25", spill_postings=300)  # many spills
    writer.add(corpus[:200])
    writer.add(corpus[200:])
    params = writer.finish()
    assert params["documents"] == 500 and not list((tmp_path / "bm25").glob(".spill-*"))
    ours = Bm25Index(tmp_path / "bm25", 500)
    reference = bm25s.BM25(k1=1.2, b=0.75)
    reference.index([tokenize(t) for t in corpus], show_progress=False)
    for question in ("oil and gas pipeline", "semiconductor chip export export", "nothing matches this"):
        expected = np.asarray(reference.get_scores(tokenize(question)), dtype=np.float32)
        np.testing.assert_allclose(ours.scores(question), expected, rtol=1e-5, atol=1e-6)


def clustered_vectors(n: int, seed: int = 1) -> np.ndarray:
    """Vectors around 40 centres, as embeddings of related texts are (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    v = centres[rng.integers(0, 40, size=n)] + 0.6 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_build(index_dir: Path, n: int, exact_limit: int, ann_kind: str = ann.KIND) -> np.ndarray:
    vectors = clustered_vectors(n)
    corpus = texts(n)
    docs = [DocumentRecord(f"doc-{d}", {"title": f"Doc {d}", "source": f"src-{d % 3}"}, "x" * 10_000, [], f"h{d}")
            for d in range(n // 10)]
    chunks = [ChunkRecord(f"c{i}", f"doc-{i // 10}", "Intro" if i % 2 else None, (i % 10) * 100,
                          (i % 10) * 100 + 50, corpus[i], 10, 12, f"e{i}") for i in range(n)]
    sentences = [SentenceRecord(f"doc-{i // 10}", (i % 10) * 100 + 10, (i % 10) * 100 + 30, f"s{i}") for i in range(n)]
    with LocalWriter(index_dir, DIM, exact_limit=exact_limit, ann_kind=ann_kind) as writer:
        for start in range(0, n, 1000):  # in batches, as a build streams them
            writer.add_documents(d for d in docs if start // 10 <= int(d.doc_id[4:]) < (start + 1000) // 10)
            writer.add_chunks(chunks[start:start + 1000], vectors[start:start + 1000])
            writer.add_sentences(sentences[start:start + 1000], vectors[start:start + 1000])
        writer.commit(new_manifest(model={"name": "fake", "dimension": DIM}, counts={"documents": len(docs)}))
    return vectors


@pytest.fixture(scope="module", params=["hnsw", "ivf", "ivf_pq"])
def ann_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, np.ndarray]:
    """A build above the exact limit, with each kind of ANN index."""
    index_dir = tmp_path_factory.mktemp(request.param) / "index"
    vectors = write_build(index_dir, 6000, exact_limit=1000, ann_kind=request.param)
    return open_local(index_dir), vectors


def test_above_the_exact_limit_an_ann_index_meets_its_recall_target(ann_store):
    store, vectors = ann_store
    entry = store.manifest["store"]["dense_index"]
    if entry["type"] == "ivf_flat":
        assert entry["nlist"] == 2 ** round(np.log2(4 * np.sqrt(6000)))
    elif entry["type"] == "ivf_pq_refined":
        assert entry["refine_candidates"] == 10 * ann.REFINE_FACTOR and entry["pq_codes"] == DIM // ann.PQ_DIMS_PER_CODE
    else:
        assert entry["type"] == "hnsw_flat" and entry["ef_search"] in ann.HNSW_EF_SEARCH
    assert entry["calibration"]["recall_at_10"] >= ann.RECALL_TARGET
    queries = ann.pseudo_queries(vectors, 100, np.random.default_rng(7))  # not the calibration queries
    truth = ann.exact_top(vectors, queries, 10)
    found = np.stack([store.dense(q, 10, Filters())[0] for q in queries])
    assert ann.recall_at(found, truth) >= 0.95


def test_an_unknown_index_kind_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown dense index kind 'annoy'"):
        ann.build_ann(clustered_vectors(20), tmp_path, exact_limit=10, kind="annoy")


def test_filters_are_pushed_into_the_ann_search(ann_store):
    store, vectors = ann_store
    query = vectors[123]
    rows, scores = store.dense(query, 20, Filters(sources=["src-1"], sections=["Intro"]))
    assert len(rows) == 20 and np.all(np.diff(scores) <= 0)
    assert all(store.chunks[r].section == "Intro" and int(store.chunks[r].doc_id[4:]) % 3 == 1 for r in rows)
    # a small filtered subset is searched exactly: the true top of those rows
    rows, _ = store.dense(query, 5, Filters(doc_ids=["doc-7", "doc-400"]))
    allowed = np.array([r for r in range(6000) if r // 10 in (7, 400)])
    assert rows.tolist() == allowed[np.argsort(-(vectors[allowed] @ query), kind="stable")[:5]].tolist()
    # a third of the rows, more than the exact limit: the filter goes into the ANN search itself
    allowed = np.array([r for r in range(6000) if (r // 10) % 3 == 1])
    assert len(allowed) > 1000
    truth = allowed[np.argsort(-(vectors[allowed] @ query), kind="stable")[:10]]
    rows, _ = store.dense(query, 10, Filters(sources=["src-1"]))
    assert set(rows.tolist()) <= set(allowed.tolist()) and len(set(rows.tolist()) & set(truth.tolist())) >= 9
    rows, _ = store.lexical("oil pipeline", 50, Filters(sources=["src-2"]))
    assert len(rows) and all(int(store.chunks[r].doc_id[4:]) % 3 == 2 for r in rows)


def test_chunks_documents_and_sentences_are_read_by_row(ann_store):
    store, vectors = ann_store
    assert store.count() == 6000 and len(store.documents) == 600
    chunk = store.chunks[4321]
    assert (chunk.chunk_id, chunk.doc_id, chunk.char_start) == ("c4321", "doc-432", 100)
    assert store.row_of("c4321") == 4321 and store.row_of("nope") is None
    assert store.rows_of("doc-432") == list(range(4320, 4330)) and store.chunk_count("doc-432") == 10
    spans, sentence_vectors = store.sentences(4321)
    assert spans == [(110, 130)] and np.allclose(sentence_vectors[0], vectors[4321])
    assert store.unknown("doc_ids", ["doc-1", "doc-99999"]) == ["doc-99999"]
    assert store.unknown("sources", ["src-0", "elsewhere"]) == ["elsewhere"]
    assert np.allclose(store.vectors_by_hash(["e17", "missing"])["e17"], vectors[17])
    with pytest.raises(IndexError):
        store.chunks[6000]


def test_the_live_index_scores_as_a_rebuilt_one_after_adds_and_removes():
    """rag.stores.local.live_index keeps BM25 statistics of the live rows only: after removals its
    lexical scores equal, bit for bit, a BM25 index built from the remaining texts alone (so a
    collection imported from a build ranks its ties as the build does), and dense search
    never returns a removed row."""
    from rag.stores.local.bm25 import bm25_scorer
    from rag.stores.local.live_index import LiveIndex

    corpus, vectors = texts(400, seed=3), clustered_vectors(400)
    live = LiveIndex(DIM)
    live.add(list(range(0, 250)), vectors[:250], corpus[:250])
    live.add(list(range(250, 400)), vectors[250:], corpus[250:])
    gone = list(range(0, 400, 3))
    live.remove(gone, [corpus[r] for r in gone])
    kept = [r for r in range(400) if r not in set(gone)]
    reference = bm25_scorer([corpus[r] for r in kept])
    for question in ("oil gas pipeline", "chip semiconductor export"):
        rows, scores = live.lexical(question, 1000)
        expected = reference.scores(question)
        assert set(rows.tolist()) == {kept[i] for i in np.flatnonzero(expected > 0)}
        np.testing.assert_array_equal(scores, [expected[kept.index(r)] for r in rows.tolist()])
    rows, _ = live.dense(vectors[3], 20)
    assert not set(rows.tolist()) & set(gone) and len(live) == len(kept) and live.dead == len(gone)
