"""The rows of `rag bench scale`'s synthetic collections (rag.bench.rows), made from a small
fake-model index of the seed corpus: distinct Gaussian rows that follow the real vectors'
mean and covariance, sampled texts, exact offsets, the same rows on every call, the user's
own files and what is wrong with them; and a whole synthetic build with its recall scan."""

import json
from pathlib import Path

import numpy as np
import pytest

from rag.bench import rows as rows_module
from rag.bench.rows import FileRows, GaussianRows, NearCopies, RowsSpec, open_rows
from rag.errors import CorpusError
from rag.settings import Settings
from rag.stores.local.store import LocalStore, open_local


@pytest.fixture
def source(built: Settings) -> LocalStore:
    store = open_local(built.index_dir, None)
    assert isinstance(store, LocalStore)
    return store


def test_gaussian_rows_are_distinct_and_follow_the_real_vectors(source: LocalStore, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rows_module, "BLOCK", 4096)
    gaussian = GaussianRows(source)
    (block_rows, vectors), = list(gaussian.blocks(4096))
    assert block_rows == range(4096) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    real = np.asarray(source.matrix(), dtype=np.float64)
    # the mean direction and the spread per dimension follow the real vectors'
    assert np.corrcoef(vectors.mean(axis=0), real.mean(axis=0))[0, 1] > 0.95
    assert np.corrcoef(vectors.std(axis=0), real.std(axis=0))[0, 1] > 0.8
    similarity = vectors[:500] @ vectors[:500].T
    np.fill_diagonal(similarity, -1)
    assert similarity.max() < 0.99  # no near copies
    again = next(GaussianRows(source).blocks(10))[1]
    assert np.array_equal(again, vectors[:10])  # the same rows on every call (a child process rebuilds them)


def test_sampled_texts_are_distinct_documents_with_exact_offsets(source: LocalStore):
    documents, chunks, lexical = GaussianRows(source).records(range(0, 9))
    assert [d.doc_id for d in documents] == ["g0", "g1", "g2", "g3", "g4"] and len(chunks) == len(lexical) == 9
    by_id = {d.doc_id: d for d in documents}
    assert all({"title", "source"} <= d.metadata.keys() for d in documents)  # what a citation reads
    for chunk in chunks:
        assert by_id[chunk.doc_id].text[chunk.char_start:chunk.char_end] == chunk.text and chunk.text
    assert len({c.text for c in chunks}) == 9 and len({c.chunk_id for c in chunks}) == 9
    words = {w for c in source.chunks for w in c.text.split()}
    assert all(set(c.text.split()) <= words for c in chunks)  # the corpus's own words
    with pytest.raises(ValueError, match="inside a document"):
        GaussianRows(source).records(range(1, 3))


def test_near_copies_are_what_the_old_generator_made(source: LocalStore):
    near = NearCopies(source)
    m = len(near.chunks)
    _, vectors = next(near.blocks(2 * m))
    assert float(vectors[0] @ vectors[m]) > 0.8  # row m is a copy of row 0's chunk


def test_the_users_vectors_and_texts(source: LocalStore, tmp_path: Path):
    vectors = np.random.default_rng(1).normal(size=(10, 8)).astype(np.float16)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in
                                              [f"text {i}" if i % 2 else {"text": f"text {i}"} for i in range(10)]))
    rows = open_rows(RowsSpec("file", str(source.folder), str(tmp_path / "v.npy"), str(tmp_path / "t.jsonl")))
    assert isinstance(rows, FileRows) and rows.dimension == 8
    (got, block), = list(rows.blocks(10))
    assert got == range(10) and np.allclose(block, vectors / np.linalg.norm(vectors.astype(np.float32), axis=1,
                                                                            keepdims=True), atol=1e-3)
    _, chunks, _ = rows.records(range(4, 8))
    assert [c.text for c in chunks] == ["text 4", "text 5", "text 6", "text 7"]
    sampled = open_rows(RowsSpec("file", str(source.folder), str(tmp_path / "v.npy")))
    assert len(sampled.records(range(0, 4))[1]) == 4  # no texts given: sampled ones
    with pytest.raises(CorpusError, match="fewer than the 11"):
        list(rows.blocks(11))


@pytest.mark.parametrize("content, problem", [
    (np.zeros(5, dtype=np.float32), "not a 2-d float"),
    (np.zeros((5, 4), dtype=np.int64), "not a 2-d float"),
    (np.full((5, 4), np.nan, dtype=np.float32), "not finite"),
    (b"not a numpy file", "not a readable .npy"),
])
def test_bad_vector_files_are_refused_with_a_reason(source: LocalStore, tmp_path: Path, content: object,
                                                    problem: str):
    path = tmp_path / "v.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(CorpusError, match=problem):
        list(open_rows(RowsSpec("file", str(source.folder), str(path))).blocks(5))


@pytest.mark.parametrize("lines, problem", [(['"a"'], "fewer than the 2"), (['"a"', "{oops"], "line 2 is not JSON"),
                                            (['"a"', '{"title": "x"}'], "line 2 is neither"),
                                            (['"a"', '"  "'], "line 2 is neither")])
def test_bad_text_files_are_refused_with_the_line(source: LocalStore, tmp_path: Path, lines: list[str], problem: str):
    np.save(tmp_path / "v.npy", np.ones((2, 4), dtype=np.float32))
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    rows = open_rows(RowsSpec("file", str(source.folder), str(tmp_path / "v.npy"), str(tmp_path / "t.jsonl")))
    with pytest.raises(CorpusError, match=problem):
        list(rows.blocks(2))
        rows.records(range(0, 2))


def test_a_synthetic_build_and_its_recall_scan(built: Settings, source: LocalStore, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch):
    from rag.bench import scale
    from rag.ingest.build import spec_of
    from rag.stores.factory import open_store

    monkeypatch.setattr(rows_module, "BLOCK", 256)
    spec = RowsSpec("gaussian", str(source.folder))
    target = built.model_copy(update={"index_dir": tmp_path / "synthetic", "highlights": False})
    seconds = scale.build_synthetic(target, 1000, spec)
    store = open_store(target, spec_of(target))
    try:
        assert seconds > 0 and store.count() == 1000 and len(store.documents) == 500
        rows = open_rows(spec)
        queries = np.stack([v for _, block in rows.blocks(1000) for v in block[:3]])  # stored rows: found first
        assert scale._recall(store, rows, 1000, queries) == 1.0  # exact below EXACT_LIMIT: recall is 1
        _, chunks, _ = rows.records(range(0, 256))
        assert store.lexical(chunks[0].text, 1, scale.Filters())[0][0] == 0  # its own text finds row 0 first
        timed = scale._search_timings(store, [c.text for c in chunks[:3]], queries[:3], scale.Fusion("convex", 0.7))
        assert set(timed) == {"dense", "lexical", "hybrid", "dense_at_fusion_depth", "lexical_at_fusion_depth",
                              "fusion"}
        assert all(0 < t["p50_ms"] <= t["p99_ms"] for t in timed.values())
    finally:
        store.close()


def test_both_stores_side_by_side():
    from rag.bench.scale import compared, compared_table

    def report(backend: str, ms: float) -> dict:
        side = {"p50_ms": ms, "p99_ms": 2 * ms}
        return {"backend": backend, "chunks": 1000, "index": {}, "build_s": 1.0, "peak_rss_mb": 1.0, "disk_mb": 1.0,
                "serve_ready_s": 1.0, "serve_rss_mb": 1.0, "dense": side, "lexical": side, "hybrid": side,
                "dense_at_fusion_depth": side, "lexical_at_fusion_depth": side, "fusion": side}

    both = compared(report("local", 2.0), report("milvus", 50.0))
    assert both["milvus_over_local"]["hybrid"] == 25.0 and both["local"]["backend"] == "local"
    assert "hybrid 25.0x" in compared_table(both)
