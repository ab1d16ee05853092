"""`rag backup -o DIR` and `rag restore DIR`: everything an index folder holds that is not
rebuilt, taken while the service serves, and put back on an empty machine.

A backup is a folder:

    backup.json             format, versions, and every file below with its size and sha256
    collections/<name>.tar  each collection as `rag export` writes it: the built corpus
                            (`default`), every live collection and vector store, of either store
    state/<path>            the service's own state, copied: API keys and the audit log
                            (access/), stored files (files/), stored responses (responses/)

Each collection is its own consistent snapshot (rag.portable.exporting), taken one after the
other while writes go on; the folder is written under a temporary name and renamed when
whole. The state files are copied as they are read: keys.json is replaced whole by its
writers, a stored file or response is published whole, and the audit log is copied up to
its last complete line.

A restore checks every digest first, then imports each collection (the built corpus as a
build, the rest as live collections, each in the store it was exported from) and copies the
state; it refuses an index folder that already holds collections, a build or keys.

Left out: one snapshot across collections (each is consistent on its own), incremental
backups, the idempotency keys (24 h of replay protection) and the job records.
"""

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag import __version__
from rag.collections import DEFAULT, Collections
from rag.encoders.base import Embedder
from rag.errors import ArchiveError, ConflictError, RagError, StorageError
from rag.files import fsync_path, sha256_file
from rag.portable.archive import Archive
from rag.portable.exporting import export_collection
from rag.portable.importing import Imported, import_archive
from rag.settings import Settings

FORMAT, FORMAT_VERSION = "rag-backup", 1
STATE = ("access", "files", "responses")  # the service's folders under the index folder (api.openai.files, ...)
Log = Callable[[str], None]


@dataclass(frozen=True)
class BackedUp:
    folder: Path
    collections: list[str]
    state_files: int
    bytes: int
    seconds: float


def backup(settings: Settings, folder: Path, log: Log = lambda message: None,
           collections: Collections | None = None) -> BackedUp:
    """Write a backup of `settings.index_dir` to `folder` (which must not exist, or be empty)."""
    started = time.perf_counter()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConflictError(f"{folder} exists and is not an empty folder: back up to a new one")
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "collections").mkdir(parents=True)
        done = []
        for name, store in _collections(settings, collections):
            log(f"exporting {name}")
            export_collection(settings.model_copy(update={"vector_store": store}), name,
                              tmp / "collections" / f"{name}.tar", collections=collections)
            done.append(name)
        copied = _copy_state(settings.index_dir, tmp / "state")
        files: dict[str, dict[str, Any]] = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size,
                                                                      "sha256": sha256_file(p)}
                                            for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "backup.json").write_text(json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "collections": done,
            "files": files}, indent=2), encoding="utf-8")
        for path in tmp.rglob("*"):
            fsync_path(path)
        fsync_path(tmp)
        if folder.exists():
            folder.rmdir()
        os.rename(tmp, folder)
        fsync_path(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BackedUp(folder, done, copied, sum(int(f["bytes"]) for f in files.values()), time.perf_counter() - started)


def _collections(settings: Settings, open_registry: Collections | None) -> Iterator[tuple[str, str]]:
    """(name, store) of the built corpus, if there is one, and of every live collection."""
    registry = open_registry or Collections(settings, None)
    try:
        from rag.stores.factory import open_store

        try:
            open_store(settings, None).close()
            yield DEFAULT, settings.vector_store
        except RagError:
            pass  # no built corpus: nothing to back up of it
        for name in registry.names(every_store=True):
            if name != DEFAULT:
                yield name, registry.store_of(name) or settings.vector_store
    finally:
        if open_registry is None:
            registry.close()


def _copy_state(index_dir: Path, out: Path) -> int:
    copied = 0
    for top in STATE:
        for path in sorted((index_dir / top).rglob("*")) if (index_dir / top).is_dir() else []:
            relative = path.relative_to(index_dir)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue  # debris of a write in progress, a lock
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # deleted while we copied: it is not part of the state any more
            if path.suffix == ".jsonl":  # an append-only log: its complete lines
                data = data[:data.rfind(b"\n") + 1]
            target.write_bytes(data)
            copied += 1
    return copied


def restore(settings: Settings, folder: Path, embedder: Embedder, log: Log = lambda message: None) -> list[Imported]:
    """Put the backup in `folder` back into `settings.index_dir`, which must be empty of
    collections, builds and keys."""
    plan = _verified(folder)
    taken = [p for p in ("CURRENT", "collections", "access/keys.json") if (settings.index_dir / p).exists()
             and (not (settings.index_dir / p).is_dir() or any((settings.index_dir / p).iterdir()))]
    if taken:
        raise ConflictError(f"{settings.index_dir} is not empty (it holds {', '.join(taken)}): restore onto an "
                            "empty index folder (RAG_INDEX_DIR)")
    imported = []
    for name in plan["collections"]:
        path = folder / "collections" / f"{name}.tar"
        with Archive(path) as archive:
            store = str(archive.manifest["collection"].get("store", settings.vector_store))
        log(f"importing {name} into the {store} store")
        imported.append(import_archive(settings.model_copy(update={"vector_store": store}), path, embedder, name))
    for relative in plan["files"]:
        if relative.startswith("state/"):
            target = settings.index_dir / relative.removeprefix("state/")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.restore")
            shutil.copyfile(folder / relative, tmp)
            fsync_path(tmp)
            os.replace(tmp, target)
            fsync_path(target.parent)
    return imported


def _verified(folder: Path) -> dict[str, Any]:
    """The backup's record, once every file it lists is there with its digest."""
    try:
        plan = json.loads((folder / "backup.json").read_text(encoding="utf-8"))
        if plan.get("format") != FORMAT or int(plan["format_version"]) > FORMAT_VERSION:
            raise ArchiveError(f"{folder} is {plan.get('format')!r} v{plan.get('format_version')}; this version "
                               f"reads {FORMAT} up to v{FORMAT_VERSION}")
        files, names = dict(plan["files"]), [str(n) for n in plan["collections"]]
    except FileNotFoundError:
        raise ArchiveError(f"{folder} is not a backup: it has no backup.json") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"cannot read {folder / 'backup.json'}: {exc}") from exc
    for relative, expected in files.items():
        path = (folder / relative).resolve()
        if folder.resolve() not in path.parents:
            raise ArchiveError(f"{folder}: backup.json lists {relative!r}, outside the backup")
        if not path.is_file():
            raise ArchiveError(f"{folder}: {relative} is missing")
        if path.stat().st_size != expected.get("bytes") or sha256_file(path) != expected.get("sha256"):
            raise ArchiveError(f"{folder}: {relative} is damaged (its size or sha256 differs from backup.json's)")
    for name in names:
        if f"collections/{name}.tar" not in files:
            raise ArchiveError(f"{folder}: collection {name!r} has no archive in backup.json")
    return {"collections": names, "files": files}
