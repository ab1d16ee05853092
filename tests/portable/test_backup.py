"""Backup and restore (rag.portable.backup), and the snapshot an export takes while writes
go on: every write acknowledged before it started is in it, none is half in it."""

import threading
import time
from pathlib import Path

import pytest

from rag.access.audit import AuditLog
from rag.access.keys import KeyStore
from rag.collections import Collections, text_document
from rag.errors import ArchiveError, ConflictError
from rag.portable.archive import Archive
from rag.portable.backup import backup, restore
from rag.portable.exporting import export_collection
from rag.portable.importing import import_archive
from rag.settings import Settings
from tests.helpers import FakeEmbedder, answers, article, differs


def _world(settings: Settings, embedder: FakeEmbedder) -> None:
    """A built corpus, two live collections (one a vector store's, with its file), a key, an audit line."""
    with Collections(settings, embedder) as collections:
        for name, topics in (("notes", ["penguins", "volcanoes"]), ("vs_abc", ["glaciers"])):
            collections.create(name)
            for topic in topics:
                collections.upsert(name, text_document(article(topic), topic, None, None), replace=False)
        (collections.root / "vs_abc" / "vector_store.json").write_text('{"name": "docs"}')
    KeyStore(settings.index_dir).create("team-a", "reader", ["notes"])
    AuditLog(settings.index_dir).append({"event": "key.create", "key": "team-a"})
    (settings.index_dir / "files" / "file-" ).mkdir(parents=True)
    (settings.index_dir / "files" / "file-" / "content").write_bytes(b"stored bytes")


def test_a_backup_restored_on_an_empty_machine_gives_the_same_answers(built: Settings, fake_embedder: FakeEmbedder,
                                                                      tmp_path: Path):
    _world(built, fake_embedder)
    done = backup(built, tmp_path / "backup")
    assert done.collections == ["default", "notes", "vs_abc"]
    fresh = built.model_copy(update={"index_dir": tmp_path / "fresh"})
    restored = restore(fresh, tmp_path / "backup", fake_embedder)
    assert [r.name for r in restored] == ["default", "notes", "vs_abc"]
    for name in ("default", "notes", "vs_abc"):
        assert differs(answers(fresh, name, fake_embedder), answers(built, name, fake_embedder)) is None, name
    for relative in ("access/keys.json", "access/audit.jsonl", "files/file-/content",
                     "collections/vs_abc/vector_store.json"):
        assert (fresh.index_dir / relative).read_bytes() == (built.index_dir / relative).read_bytes(), relative
    assert [k.name for k in KeyStore(fresh.index_dir).list()] == ["team-a"]
    with pytest.raises(ConflictError, match="not empty"):  # never over what is there
        restore(fresh, tmp_path / "backup", fake_embedder)


def test_a_damaged_backup_is_refused_before_anything_is_restored(built: Settings, fake_embedder: FakeEmbedder,
                                                                 tmp_path: Path):
    _world(built, fake_embedder)
    backup(built, tmp_path / "backup")
    archive = tmp_path / "backup" / "collections" / "notes.tar"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    fresh = built.model_copy(update={"index_dir": tmp_path / "fresh"})
    with pytest.raises(ArchiveError, match="collections/notes.tar is damaged"):
        restore(fresh, tmp_path / "backup", fake_embedder)
    assert not fresh.index_dir.exists() or not any(fresh.index_dir.iterdir())
    with pytest.raises(ConflictError, match="not an empty folder"):
        backup(built, tmp_path / "backup")


def test_an_export_while_writes_go_on_holds_every_earlier_write_whole(settings: Settings, tmp_path: Path):
    embedder = FakeEmbedder()
    acknowledged: list[tuple[float, str, int]] = []  # (when, doc_id, version) of each write that returned
    stop = threading.Event()
    with Collections(settings, embedder) as collections:
        collections.create("notes")

        def write() -> None:
            version = 0
            while not stop.is_set():
                version += 1
                for i in range(6):
                    doc_id = f"doc-{i}"
                    collections.upsert("notes", text_document(article(f"topic {i}", version), doc_id, None,
                                                              {"version": str(version)}), replace=True)
                    acknowledged.append((time.monotonic(), doc_id, version))
                if version % 3 == 0:
                    collections.remove("notes", "doc-5")
                    acknowledged.append((time.monotonic(), "doc-5", 0))  # 0: deleted

        writer = threading.Thread(target=write)
        writer.start()
        try:
            time.sleep(0.3)
            started = time.monotonic()
            export_collection(settings, "notes", tmp_path / "notes.tar", collections=collections)
        finally:
            stop.set()
            writer.join()
    before = {}
    for when, doc_id, version in acknowledged:
        if when < started:
            before[doc_id] = version
    assert len(before) == 6 and len(acknowledged) > len(before)  # writes went on during the export
    with Archive(tmp_path / "notes.tar") as archive:
        archive.verify()
        got = {doc.doc_id: int(doc.metadata["version"]) for doc, _ in archive.documents()}
    for doc_id, version in before.items():
        if version:  # in the archive, at that version or a later whole one
            assert got.get(doc_id, 10**9) >= version or doc_id == "doc-5", (doc_id, version, got)
    # whole: the import checks every chunk against its document's text, and each document's
    # chunks are those of its version (its embedding input, title and text, against its hash)
    imported = import_archive(settings, tmp_path / "notes.tar", embedder, "copy")
    assert imported.documents == len(got)
    with Collections(settings, embedder) as collections:
        copy = collections.get("copy")
        for doc_id, version in got.items():
            text = copy.documents[doc_id].text  # its metadata and its text are of one write
            assert text.count(f"(version {version})") == 6 and text.count("(version ") == 6, doc_id
