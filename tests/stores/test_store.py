"""The index on disk under stress: reading one build, pruning by history, crash debris,
and storage failures (disk full, no permission) that must leave the live index alone."""

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import rag.stores.local.store
import rag.stores.local.writer
from rag.errors import IndexBusyError, IndexCorruptError, StorageError
from rag.ingest import build as build_module
from rag.ingest.build import build_index
from rag.settings import Settings
from rag.stores.local import builds as store
from rag.stores.local.builds import clean_orphans
from rag.stores.local.store import open_local
from tests.helpers import FakeEmbedder


def _rebuild(settings: Settings) -> str:
    build_index(settings, FakeEmbedder(), force=True)
    return open_local(settings.index_dir).build_id


def _builds(settings: Settings) -> list[str]:
    return sorted(os.listdir(settings.index_dir / "builds"))


# ------------------------------------------------------------------ reading one build


def test_load_takes_the_manifest_from_the_build_it_read(built: Settings, monkeypatch):
    older = open_local(built.index_dir).build_id
    live = _rebuild(built)
    real = store.read_manifest

    def current_moves_meanwhile(folder: Path) -> dict:
        (built.index_dir / "CURRENT").write_text(older + "\n")  # another writer, mid-load
        return real(folder)

    monkeypatch.setattr(store, "read_manifest", current_moves_meanwhile)
    index = open_local(built.index_dir)  # one build's files with its own manifest, not the other's
    assert index.build_id == live == index.folder.name
    assert index.manifest["files"] == real(index.folder)["files"]


def test_a_manifest_of_another_build_is_refused(built: Settings):
    older = store.current_build(built.index_dir)
    live = store.current_build(built.index_dir).parent / _rebuild(built)
    shutil.copy(older / "manifest.json", live / "manifest.json")
    with pytest.raises(IndexCorruptError, match=f"manifest of build '{older.name}', not of '{live.name}'"):
        open_local(built.index_dir)


def test_a_build_pruned_mid_read_is_transient(built: Settings, monkeypatch):
    reading = store.current_build(built.index_dir)
    newer = _rebuild(built)
    (built.index_dir / "CURRENT").write_text(reading.name + "\n")
    real = rag.stores.local.store.Tables

    def pruned_meanwhile(path: Path) -> Any:
        (built.index_dir / "CURRENT").write_text(newer + "\n")
        shutil.rmtree(reading)
        return real(path)

    monkeypatch.setattr(rag.stores.local.store, "Tables", pruned_meanwhile)
    with pytest.raises(IndexBusyError, match="retry") as info:
        open_local(built.index_dir)
    assert not isinstance(info.value, IndexCorruptError)
    monkeypatch.undo()
    assert open_local(built.index_dir).build_id == newer


def test_an_os_error_on_the_live_build_is_a_storage_error(built: Settings, monkeypatch):
    def denied(self: Any, path: Path, rows: int, in_memory: bool = False) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(rag.stores.local.store.Bm25Index, "__init__", denied)
    with pytest.raises(StorageError, match="cannot read index at .*: Permission denied"):
        open_local(built.index_dir)


# ------------------------------------------------------------------ pruning


def test_pruning_keeps_the_live_and_previous_live_builds_whatever_the_mtimes(built: Settings):
    ids = [open_local(built.index_dir).build_id, _rebuild(built)]
    builds = built.index_dir / "builds"
    os.utime(builds / ids[1], (1, 1))  # the live build looks oldest
    os.utime(builds / ids[0], (4_000_000_000, 4_000_000_000))
    ids.append(_rebuild(built))
    assert _builds(built) == sorted(ids[1:])


def test_pruning_follows_history_not_build_id_order(built: Settings, monkeypatch):
    """Two builds in one second sort by their random suffix, not by when they went live."""
    names = iter(["20240101T000000-ffffff", "20240101T000000-000000", "20240101T000000-aaaaaa"])
    real = build_module.new_manifest
    monkeypatch.setattr(build_module, "new_manifest", lambda **f: {**real(**f), "build_id": next(names)})
    for _ in range(3):
        _rebuild(built)
    assert _builds(built) == ["20240101T000000-000000", "20240101T000000-aaaaaa"]
    assert (built.index_dir / "HISTORY").read_text().split() == _builds(built)


def test_an_index_without_history_keeps_its_live_build(built: Settings):
    live = open_local(built.index_dir).build_id
    (built.index_dir / "HISTORY").unlink()  # written by an older version, or a crash before HISTORY
    os.utime(built.index_dir / "builds" / live, (1, 1))
    newer = _rebuild(built)
    assert _builds(built) == sorted([live, newer])


# ------------------------------------------------------------------ crash debris


def _debris(index_dir: Path) -> list[Path]:
    live = store.current_build(index_dir)
    tmp_build = index_dir / "builds" / ".tmp-20240101T000000-abcdef"
    (tmp_build / "bm25").mkdir(parents=True)
    (tmp_build / "chunks.sqlite").write_text("{ half")
    paths = [tmp_build, index_dir / ".CURRENT.4242.tmp", index_dir / ".HISTORY.4242.tmp",
             live / ".manifest.json.4242.tmp"]
    for path in paths[1:]:
        path.write_text("half")
    return paths


def test_clean_orphans_removes_crash_debris(built: Settings):
    debris = _debris(built.index_dir)
    live = open_local(built.index_dir).build_id
    assert sorted(clean_orphans(built.index_dir)) == sorted(debris)
    assert not any(p.exists() for p in debris)
    assert open_local(built.index_dir).build_id == live


def test_clean_orphans_leaves_a_running_build_alone(built: Settings):
    debris = _debris(built.index_dir)
    with store.build_lock(built.index_dir):
        assert clean_orphans(built.index_dir) == []
    assert all(p.exists() for p in debris)


def test_clean_orphans_on_a_missing_folder_does_nothing(tmp_path: Path):
    assert clean_orphans(tmp_path / "nope") == [] and not (tmp_path / "nope").exists()


def test_a_build_removes_crash_debris(built: Settings):
    debris = _debris(built.index_dir)
    _rebuild(built)
    assert not any(p.exists() for p in debris)


# ------------------------------------------------------------------ storage failures


def _assert_untouched(settings: Settings, live: str, builds: list[str]) -> None:
    assert open_local(settings.index_dir).build_id == live
    assert _builds(settings) == builds  # no .tmp-* and no half-made build
    assert not list(settings.index_dir.rglob("*.tmp"))


def test_disk_full_is_a_storage_error_and_keeps_the_live_index(built: Settings, monkeypatch):
    live, builds = open_local(built.index_dir).build_id, _builds(built)
    real = rag.stores.local.writer.Bm25Writer.add

    def full_disk(self: Any, texts: Any) -> None:
        real(self, texts)
        (self.folder / "docs.npy").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rag.stores.local.writer.Bm25Writer, "add", full_disk)
    with pytest.raises(StorageError) as info:
        build_index(built, FakeEmbedder(), force=True)
    assert str(info.value) == f"cannot write index at {built.index_dir}: No space left on device"
    _assert_untouched(built, live, builds)


def test_no_permission_to_make_a_build_live(built: Settings, monkeypatch):
    live, builds = open_local(built.index_dir).build_id, _builds(built)
    real = store.replace_text

    def denied(path: Path, text: str) -> None:
        if path.name == "CURRENT":  # the very last step: the new build folder is complete
            raise PermissionError(errno.EACCES, "Permission denied")
        real(path, text)

    monkeypatch.setattr(store, "replace_text", denied)
    with pytest.raises(StorageError, match=f"cannot write index at {built.index_dir}: Permission denied"):
        build_index(built, FakeEmbedder(), force=True)
    _assert_untouched(built, live, builds)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_index_folder(built: Settings):
    live, builds = open_local(built.index_dir).build_id, _builds(built)
    folders = [built.index_dir, built.index_dir / "builds"]
    for folder in folders:
        folder.chmod(0o555)
    try:
        with pytest.raises(StorageError, match="cannot write index at .*: Permission denied"):
            build_index(built, FakeEmbedder(), force=True)
        assert clean_orphans(built.index_dir) == []
    finally:
        for folder in folders:
            folder.chmod(0o755)
    _assert_untouched(built, live, builds)
