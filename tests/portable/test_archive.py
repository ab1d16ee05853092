"""Export and import (rag.portable): the round trip gives the same passages, offsets and
scores; a damaged, truncated or foreign archive is refused naming what is wrong, and nothing
is half-imported."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rag.collections import Collections, text_document
from rag.errors import ArchiveError, ConflictError
from rag.portable.archive import Archive
from rag.portable.exporting import export_collection
from rag.portable.importing import import_archive
from rag.service import retriever_for
from rag.settings import Settings
from tests.helpers import SEED_QUESTIONS, FakeEmbedder, answers, article, differs


def test_the_built_corpus_round_trips_into_a_live_collection(built: Settings, fake_embedder: FakeEmbedder,
                                                             tmp_path: Path):
    archive = tmp_path / "kb.tar"
    manifest = export_collection(built, "default", archive)
    assert manifest["counts"]["chunks"] > 20 and manifest["collection"]["kind"] == "build"
    assert tarfile.is_tarfile(archive)
    with tarfile.open(archive) as tar:  # plain members a user can read with tar and numpy
        assert sorted(tar.getnames()) == sorted(["manifest.json", *manifest["members"]])
        vectors = np.load(io.BytesIO(tar.extractfile("chunk_vectors.npy").read()))  # type: ignore[union-attr]
        assert vectors.shape == (manifest["counts"]["chunks"], fake_embedder.dimension)
    imported = import_archive(built, archive, fake_embedder, "copy")
    assert (imported.documents, imported.chunks) == (manifest["counts"]["documents"], manifest["counts"]["chunks"])
    assert differs(answers(built, "copy", fake_embedder), answers(built, "default", fake_embedder)) is None


def test_a_live_collection_round_trips_with_origins_and_its_own_files(settings: Settings,
                                                                       fake_embedder: FakeEmbedder, tmp_path: Path):
    with Collections(settings, fake_embedder) as collections:
        collections.create("notes")
        for i, topic in enumerate(["penguins", "volcanoes", "glaciers"]):
            collections.upsert("notes", text_document(article(topic), topic, None, {"source": f"s{i}"}),
                               replace=False, origin="upload" if i else "sync")
        collections.upsert("notes", text_document(article("volcanoes", 2), "volcanoes", None, None), replace=True)
        (collections.root / "notes" / "vector_store.json").write_text('{"name": "mine"}')
    export_collection(settings, "notes", tmp_path / "notes.tar")
    import_archive(settings, tmp_path / "notes.tar", fake_embedder, "notes-copy")
    assert differs(answers(settings, "notes-copy", fake_embedder), answers(settings, "notes", fake_embedder)) is None
    with Collections(settings, fake_embedder) as collections:
        copy = collections.get("notes-copy")
        assert [copy.origin(d) for d in ("penguins", "volcanoes", "glaciers")] == ["sync", "upload", "upload"]
        assert (collections.root / "notes-copy" / "vector_store.json").read_text() == '{"name": "mine"}'


def _flip(path: Path, member: str) -> None:
    """Change one byte in the middle of `member`'s data."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    with open(path, "r+b") as handle:
        handle.seek(info.offset_data + info.size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _nothing_imported(settings: Settings) -> None:
    with Collections(settings, None) as collections:
        assert collections.names(every_store=True) == ["default"]
        assert not [p for p in collections.root.iterdir() if p.name.startswith(".tmp-")] \
            if collections.root.is_dir() else True


@pytest.mark.parametrize("member", ["documents.jsonl", "chunks.jsonl", "chunk_vectors.npy", "sentence_vectors.npy"])
def test_a_damaged_member_is_named_and_nothing_is_imported(built: Settings, fake_embedder: FakeEmbedder,
                                                           tmp_path: Path, member: str):
    archive = tmp_path / "kb.tar"
    export_collection(built, "default", archive)
    _flip(archive, member)
    with pytest.raises(ArchiveError, match=f"member {member} is damaged"):
        import_archive(built, archive, fake_embedder, "copy")
    _nothing_imported(built)


def test_a_truncated_archive_is_refused(built: Settings, fake_embedder: FakeEmbedder, tmp_path: Path):
    archive = tmp_path / "kb.tar"
    export_collection(built, "default", archive)
    data = archive.read_bytes()
    for cut in (len(data) // 3, len(data) - 20_000, 700):
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        with pytest.raises(ArchiveError, match="truncated|damaged|not an archive"):
            import_archive(built, tmp_path / "cut.tar", fake_embedder, "copy")
    _nothing_imported(built)


def test_records_that_lie_about_their_text_are_refused(built: Settings, fake_embedder: FakeEmbedder, tmp_path: Path):
    """A consistent archive (digests recomputed) whose chunk does not cite its document's text."""
    archive = tmp_path / "kb.tar"
    export_collection(built, "default", archive)
    folder = tmp_path / "x"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    lines = (folder / "chunks.jsonl").read_text().splitlines()
    chunk = json.loads(lines[3])
    chunk["char_start"] += 1
    lines[3] = json.dumps(chunk)
    (folder / "chunks.jsonl").write_text("\n".join(lines) + "\n")
    _repack(folder, tmp_path / "lying.tar")
    with pytest.raises(ArchiveError, match="chunks.jsonl: chunk .* is not its document's text"):
        import_archive(built, tmp_path / "lying.tar", fake_embedder, "copy")
    _nothing_imported(built)


def _repack(folder: Path, out: Path) -> None:
    import hashlib

    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["members"]:
        data = (folder / name).read_bytes()
        manifest["members"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(out, "w") as tar:
        for name in [*manifest["members"], "manifest.json"]:
            tar.add(folder / name, name)


def test_another_model_is_refused_unless_reembedded(built: Settings, fake_embedder: FakeEmbedder, tmp_path: Path):
    archive = tmp_path / "kb.tar"
    export_collection(built, "default", archive)
    other = built.model_copy(update={"model": "other-model"})
    with pytest.raises(ArchiveError, match="model 'fake'.*--reembed"):
        import_archive(other, archive, FakeEmbedder(dimension=32), "copy")
    _nothing_imported(built)
    smaller = FakeEmbedder(dimension=32)
    imported = import_archive(other, archive, smaller, "copy", reembed=True)
    assert imported.reembedded and imported.documents == 3 and imported.chunks > 20
    with Collections(other, smaller) as collections:
        kb = collections.get("copy")
        assert kb.manifest["model"]["name"] == "other-model" and kb.manifest["model"]["dimension"] == 32
        assert retriever_for(other, kb, smaller).query(SEED_QUESTIONS[0], k=3).passages


def test_a_name_taken_is_a_conflict_and_a_newer_format_is_refused(built: Settings, fake_embedder: FakeEmbedder,
                                                                  tmp_path: Path):
    archive = tmp_path / "kb.tar"
    export_collection(built, "default", archive)
    import_archive(built, archive, fake_embedder, "copy")
    with pytest.raises(ConflictError, match="'copy' exists"):
        import_archive(built, archive, fake_embedder, "copy")
    with pytest.raises(ConflictError, match="built corpus exists"):
        import_archive(built, archive, fake_embedder, "default")
    folder = tmp_path / "x"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    _repack(folder, tmp_path / "newer.tar")
    with pytest.raises(ArchiveError, match="v99.*upgrade rag"):
        Archive(tmp_path / "newer.tar")


def test_a_foreign_tar_is_refused(tmp_path: Path, built: Settings, fake_embedder: FakeEmbedder):
    (tmp_path / "a.txt").write_text("hello")
    with tarfile.open(tmp_path / "foreign.tar", "w") as tar:
        tar.add(tmp_path / "a.txt", "../a.txt")
    with pytest.raises(ArchiveError, match="not part of this format"):
        import_archive(built, tmp_path / "foreign.tar", fake_embedder, "copy")
    (tmp_path / "text.tar").write_text("not a tar at all")
    with pytest.raises(ArchiveError, match="not an archive"):
        import_archive(built, tmp_path / "text.tar", fake_embedder, "copy")


def test_the_built_corpus_is_restored_as_a_build(built: Settings, fake_embedder: FakeEmbedder, tmp_path: Path):
    archive = tmp_path / "kb.tar"
    export_collection(built, "default", archive)
    fresh = built.model_copy(update={"index_dir": tmp_path / "fresh"})
    import_archive(fresh, archive, fake_embedder)
    assert differs(answers(fresh, "default", fake_embedder), answers(built, "default", fake_embedder)) is None
    import_archive(fresh, archive, fake_embedder, replace=True)  # replaces it, atomically
