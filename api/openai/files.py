"""What OpenAI's Files API keeps: each uploaded file's bytes and its file object, under
the index folder, written atomically and durably (`StoredFiles`), removed by a rename to
a `.del-` name first; what a crash leaves is cleaned when the service starts.

Left out: purposes other than storing a file for vector stores (fine-tuning, batches).
"""

import json
import re
import secrets
import shutil
import time
from pathlib import Path

from api.openai.objects import FileObject
from rag.errors import NotFoundError, StorageError
from rag.files import fsync_path, remove_debris, remove_durably
from rag.settings import Settings

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")


PURPOSES = ("assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results",
            "vision", "user_data")


class StoredFiles:
    """Uploaded files under `root/<file_id>/`: `content` (the bytes) and `file.json`."""

    def __init__(self, root: Path):
        self.root = root

    def save(self, filename: str, data: bytes, purpose: str, owner: str | None = None) -> FileObject:
        """`owner`: the id of the key that uploaded it (it and admins may read it)."""
        info = FileObject(id="file-" + secrets.token_hex(12), bytes=len(data), created_at=int(time.time()),
                          filename=filename, purpose=purpose, owner=owner)
        tmp = self.root / f".tmp-{info.id}"
        try:
            tmp.mkdir(parents=True)
            write_synced(tmp / "content", data)
            write_synced(tmp / "file.json", json.dumps({**info.model_dump(), "owner": owner}).encode())
            tmp.rename(self.root / info.id)  # all or nothing
            fsync_path(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(f"cannot store the file: {exc}") from exc
        return info

    def info(self, file_id: str) -> FileObject:
        try:
            raw = (self._folder(file_id) / "file.json").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no file with id '{file_id}'") from None
        except OSError as exc:
            raise StorageError(f"cannot read file '{file_id}': {exc}") from exc
        return FileObject.model_validate_json(raw)

    def data(self, file_id: str) -> bytes:
        try:
            return (self._folder(file_id) / "content").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no file with id '{file_id}'") from None
        except OSError as exc:
            raise StorageError(f"cannot read file '{file_id}': {exc}") from exc

    def all(self) -> list[FileObject]:
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if FILE_ID.fullmatch(folder.name):
                try:
                    found.append(self.info(folder.name))
                except NotFoundError:  # deleted meanwhile
                    continue
        return found

    def delete(self, file_id: str) -> None:
        try:
            remove_durably(self._folder(file_id))  # gone at once for readers, and after a crash
        except FileNotFoundError:
            raise NotFoundError(f"no file with id '{file_id}'") from None
        except OSError as exc:
            raise StorageError(f"cannot delete file '{file_id}': {exc}") from exc

    def clean_orphans(self) -> list[Path]:
        """Remove what a crashed upload or delete left (`.tmp-*`, `.del-*`); the service's
        start calls it. Best effort."""
        return remove_debris(self.root)

    def _folder(self, file_id: str) -> Path:
        if not FILE_ID.fullmatch(file_id):
            raise NotFoundError(f"no file with id '{file_id}'")
        return self.root / file_id


def write_synced(path: Path, data: bytes) -> None:
    """`data` in `path`, on disk when this returns."""
    path.write_bytes(data)
    fsync_path(path)


def stored_files(settings: Settings) -> StoredFiles:
    return StoredFiles(settings.index_dir / "files")
