"""Build folders on disk: a JSON manifest, file checksums, atomic replacement.

    index/
      CURRENT                    one line: the name of the live build
      HISTORY                    the builds kept, oldest first, one name a line (the live one last)
      builds/<build_id>/
        manifest.json            versions, parameters, corpus hash, file checksums
        ...                      the store's own files (rag.stores.local.store)

A build is written into `builds/.tmp-<random>/` (rag.stores.local.writer), every file and
folder fsynced, renamed to `builds/<id>/`, and only then made live by atomically replacing
`CURRENT` (os.replace, then fsync of the folder): `publish_build`. A crash at any point
leaves the previous CURRENT, and so the previous index, untouched; its debris (`.tmp-*`
folders, `.*.tmp` files) is removed by the next build or by `clean_orphans`, which also
removes the live collections' (`collections/.tmp-*`, `.del-*`). A build folder
is never changed once live, so a later swap never disturbs a reader of an older one. The
build that was live before the current one is kept (by HISTORY, not by folder dates) for
readers that are half-way through loading it.

Opening (`open_build`) reads CURRENT once and takes every file, manifest included, from
the folder it names; it verifies each file against its checksum and refuses a build with
another format, model or chunker than the settings ask for. An open that fails after
CURRENT moved on raises IndexBusyError (retry); an OSError while writing or reading raises
StorageError. Nothing is pickled.

Left out: concurrent builders (a lock file makes the second one fail fast); a reader lock
(a reader that loses the race against two newer builds gets IndexBusyError).
"""

import fcntl
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from rag.errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    RagError,
    StorageError,
)
from rag.files import fsync_path, remove_debris, replace_text, sha256_file
from rag.stores.manifest import IndexSpec, read_manifest, storage_error

KEEP_BUILDS = 2  # the live build and the one before it
T = TypeVar("T")
BUILD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # what CURRENT may name: never a path


# ------------------------------------------------------------------ writing


@contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """One builder at a time per index folder; a second one fails at once."""
    with _try_lock(index_dir) as held:
        if not held:
            raise RagError(f"another build is writing {index_dir}; try again when it ends")
        yield


@contextmanager
def _try_lock(index_dir: Path) -> Iterator[bool]:
    """The build lock without waiting: yields whether it was taken."""
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(index_dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error("write", index_dir, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock


def clean_orphans(index_dir: Path) -> list[Path]:
    """Remove what crashed builds left behind: `builds/.tmp-*` folders and `.*.tmp` files in
    the index folder and in build folders; and what a crashed create or delete of a live
    collection, or an archive's upload, left: `collections/.tmp-*` and `.del-*`, and
    `imports/.tmp-*` (rag.files.remove_debris). Returns
    what was removed.

    Safe at any time (a service calls it on start): it only cleans builds' debris when it
    can take the build lock without waiting; while a build runs, those temp files are in
    use and it removes nothing of them (a collection made by `rag add` at the very moment a
    service starts may fail, never half-made). Best effort: it never raises for I/O problems (a read-only index
    folder, say), and does nothing for a folder that does not exist.
    """
    if not index_dir.is_dir():
        return []
    removed = remove_debris(index_dir / "collections") + remove_debris(index_dir / "imports")
    try:
        with _try_lock(index_dir) as held:
            return removed + (remove_orphans(index_dir) if held else [])
    except (StorageError, OSError):
        return removed


def remove_orphans(index_dir: Path) -> list[Path]:
    """Temp files and folders of crashed builds. Only under the build lock."""
    builds = index_dir / "builds"
    removed = []
    for stale in sorted(builds.glob(".tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    folders = [index_dir, *(p for p in builds.glob("*") if p.is_dir() and not p.name.startswith("."))]
    for path in (p for folder in folders for p in sorted(folder.glob(".*.tmp"))):
        with suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def publish_build(index_dir: Path, folder: Path, manifest: dict[str, Any]) -> Path:
    """Make the written build in `folder` (a `.tmp-*` folder under builds/) live: checksum
    and fsync every file, write the manifest, rename the folder to the build id, replace
    CURRENT, and prune builds no longer kept. Call under build_lock. An OSError (disk full,
    no permission, read-only) becomes a StorageError, with the previous build still live
    and nothing of this one left behind. Returns the build's folder."""
    builds = index_dir / "builds"
    build_id = str(manifest["build_id"])
    final = builds / build_id
    previous = _read_pointer(index_dir)
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        manifest["files"] = {str(p.relative_to(folder)): sha256_file(p) for p in files}
        for path in files:
            fsync_path(path)
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):  # bm25/: its entries
            fsync_path(sub)
        replace_text(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))  # fsyncs folder
        os.rename(folder, final)
        fsync_path(builds)
        replace_text(index_dir / "CURRENT", build_id + "\n")
    except BaseException as exc:  # KeyboardInterrupt too: leave no half-written build behind
        shutil.rmtree(folder, ignore_errors=True)
        if _read_pointer(index_dir) != build_id:  # never live, so no reader can be loading it
            shutil.rmtree(final, ignore_errors=True)
        if isinstance(exc, OSError):
            raise storage_error("write", index_dir, exc) from exc
        raise
    # the build is live: failing to record or prune is not a failed build, and the next
    # build redoes both (it reads the previous live build from CURRENT, not only HISTORY)
    kept = _kept_builds(index_dir, previous, build_id)
    with suppress(OSError):
        replace_text(index_dir / "HISTORY", "".join(f"{b}\n" for b in kept))
    with suppress(OSError):
        _prune(builds, kept)
    return final


def _kept_builds(index_dir: Path, previous: str | None, build_id: str) -> list[str]:
    """The last KEEP_BUILDS builds that went live, oldest first. Ids alone cannot order
    them (two in one second sort by random suffix), nor can folder mtimes (copies, clock
    changes), so the order is the one recorded in HISTORY, and the build that was live
    before this one counts even if a crash kept it out of HISTORY."""
    try:
        history = (index_dir / "HISTORY").read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        history = []  # first build, or an index from before HISTORY existed
    went_live = [*history, *([previous] if previous else []), build_id]
    latest_first = list(dict.fromkeys(reversed(went_live)))  # each build once, at its last time live
    return latest_first[:KEEP_BUILDS][::-1]


def _prune(builds: Path, kept: list[str]) -> None:
    for folder in builds.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in kept:
            shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ reading


def current_build(index_dir: Path) -> Path:
    """The folder of the live build, from one read of CURRENT."""
    pointer = index_dir / "CURRENT"
    try:
        build_id = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise IndexMissingError(f"no index at {index_dir}: run `rag build` first") from None
    except UnicodeDecodeError as exc:
        raise IndexCorruptError(f"{pointer} does not name a build: {exc}") from exc
    except OSError as exc:
        raise storage_error("read", index_dir, exc) from exc
    folder = index_dir / "builds" / build_id
    if not BUILD_NAME.fullmatch(build_id) or not folder.is_dir():
        if _read_pointer(index_dir) != build_id:  # replaced, and that build pruned, since we read it
            raise IndexBusyError(f"index at {index_dir} changed while it was being read: retry")
        raise IndexCorruptError(f"{pointer} names build '{build_id}', which does not exist")
    return folder


def _read_pointer(index_dir: Path) -> str | None:
    """What CURRENT names now, or None if it cannot be read."""
    try:
        return (index_dir / "CURRENT").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def open_build(index_dir: Path, spec: IndexSpec | None, opener: Callable[[Path, dict[str, Any]], T]) -> T:
    """Open the live build with `opener(folder, manifest)`; refuse it if corrupt or built with
    other settings than `spec`.

    Raises IndexMissingError (no build yet), IndexCorruptError (damaged or inconsistent
    files, each named), IndexMismatchError (other format or settings), StorageError (an
    OSError reading it) and IndexBusyError when CURRENT moved on while the build was being
    read (a newer build went live, and this one may have been pruned mid-read): retry.
    """
    folder = current_build(index_dir)  # CURRENT is read once: every file comes from this folder
    try:
        manifest = read_manifest(folder)
        if manifest.get("build_id") != folder.name:
            raise IndexCorruptError(f"{folder / 'manifest.json'} is the manifest of build "
                                    f"{manifest.get('build_id')!r}, not of {folder.name!r}")
        if spec is not None and (diffs := spec.differences(manifest)):
            raise IndexMismatchError(f"index at {index_dir} was built with other settings ({'; '.join(diffs)}): "
                                     "run `rag build` to rebuild it")
        try:
            for name, expected in manifest.get("files", {}).items():
                path = folder / name
                if not path.is_file() or sha256_file(path) != expected:
                    raise IndexCorruptError(f"index file {path} is missing or damaged: run `rag build --force`")
            return opener(folder, manifest)
        except OSError as exc:
            raise storage_error("read", folder, exc) from exc
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, sqlite3.DatabaseError) as exc:
            raise IndexCorruptError(f"cannot load index at {folder}: {exc!r}") from exc
    except RagError as exc:
        if _read_pointer(index_dir) != folder.name:
            raise IndexBusyError(
                f"index at {index_dir} changed while build {folder.name} was being read ({exc}): retry"
            ) from exc
        raise

