"""File helpers for durable writes: checksums, fsync and atomic replacement, shared by
the index store, the ONNX export cache and the vector stores' sidecars; folders made and
removed whole (the collections registry, stored files) and the debris a crash leaves.

Left out: Windows (fsync of a directory is POSIX).
"""

import errno
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):  # 1 MiB at a time
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_text(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, durably (file and folder fsynced): a crash
    leaves the old text or the new, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def publish_folder(folder: Path, files: dict[str, str]) -> None:
    """Make `folder` with `files` (name -> text) whole or not at all: written in a `.tmp-`
    folder beside it, every file and the folder fsynced, renamed into place, then the parent
    fsynced. A crash at any point leaves `folder` absent or complete (and maybe `.tmp-`
    debris, for `remove_debris`). Raises OSError, FileExistsError if `folder` is taken
    (a folder that exists and is not empty); nothing of this call is left behind then."""
    parent = folder.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        fsync_path(parent.parent)
    tmp = parent / f".tmp-{folder.name}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        for name, text in files.items():
            replace_text(tmp / name, text)  # file and folder fsynced
        fsync_path(tmp)
        try:
            os.rename(tmp, folder)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, f"{folder.name} exists") from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(parent)


def remove_durably(path: Path) -> None:
    """Remove a file or folder at once: renamed to a `.del-` name beside it, the parent
    fsynced (from then on a crash leaves it gone), then deleted; a crash while deleting
    leaves only `.del-` debris, for `remove_debris`. FileNotFoundError if it is missing."""
    trash = path.with_name(f".del-{path.name}-{secrets.token_hex(4)}")
    os.rename(path, trash)
    fsync_path(path.parent)
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        with suppress(OSError):
            trash.unlink()


def remove_debris(folder: Path) -> list[Path]:
    """Remove the `.tmp-*` and `.del-*` entries of `folder` (what a crash inside
    publish_folder or remove_durably left). Best effort: never raises. Returns what went."""
    if not folder.is_dir():
        return []
    removed = []
    with suppress(OSError):
        for path in sorted(p for p in folder.iterdir() if p.name.startswith((".tmp-", ".del-"))):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


@contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold a flock on `path` (made if missing), exclusive or `shared`: an exclusive one waits
    for every other holder, a shared one only for an exclusive one, in other processes and in
    other threads of this one alike (each takes its own descriptor). Released when the block
    ends, or when the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
