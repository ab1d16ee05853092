"""OpenAI's Files API: `POST/GET /v1/files`, `GET/DELETE /v1/files/{id}` and its content.

Files are kept as uploaded under `<index_dir>/files/<file_id>/` (the bytes and
`file.json`), written to a temporary folder and renamed, so a crash never leaves half a
file; a delete renames the folder away first, so readers never see half a delete. Vector
stores read them when a file is attached (api.openai_store_files).

Left out: `expires_after`, and removing a deleted file's documents from the stores it was
attached to (they are copies).
"""

import asyncio
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.collection_routes import form_file
from api.engine import writes_allowed
from api.openai_objects import Deleted, FileObject, Page, page
from api.routes import ERRORS, SettingsDep
from api.schemas import ErrorBody
from rag.errors import BadQueryError, NotFoundError, StorageError
from rag.files import fsync_path
from rag.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai files"])
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
PURPOSES = ("assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results",
            "vision", "user_data")
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}}


# ------------------------------------------------------------------ stored files

class StoredFiles:
    """Uploaded files under `root/<file_id>/`: `content` (the bytes) and `file.json`."""

    def __init__(self, root: Path):
        self.root = root

    def save(self, filename: str, data: bytes, purpose: str) -> FileObject:
        info = FileObject(id="file-" + secrets.token_hex(12), bytes=len(data), created_at=int(time.time()),
                          filename=filename, purpose=purpose)
        tmp = self.root / f".tmp-{info.id}"
        try:
            tmp.mkdir(parents=True)
            write_synced(tmp / "content", data)
            write_synced(tmp / "file.json", info.model_dump_json().encode())
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
        folder = self._folder(file_id)
        doomed = self.root / f".del-{file_id}"
        try:
            folder.rename(doomed)  # gone at once for readers
        except FileNotFoundError:
            raise NotFoundError(f"no file with id '{file_id}'") from None
        except OSError as exc:
            raise StorageError(f"cannot delete file '{file_id}': {exc}") from exc
        shutil.rmtree(doomed, ignore_errors=True)

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


# ------------------------------------------------------------------ files routes

FILE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(PURPOSES)}}}}}}}


@router.post("/files", openapi_extra=FILE_BODY,
             responses={**WRITE_ERRORS, 413: {"model": ErrorBody}})
async def create_file(request: Request, settings: SettingsDep) -> FileObject:
    """Upload a file (multipart: `file`, `purpose`), kept as sent until it is deleted."""
    writes_allowed(settings)
    upload, form = await form_file(request, max_fields=8)
    purpose = form.get("purpose")
    if purpose not in PURPOSES:
        raise BadQueryError(f"purpose must be one of {', '.join(PURPOSES)}")
    data = await upload.read()
    if not data:
        raise BadQueryError("the file is empty")
    filename = Path(upload.filename or "upload").name or "upload"
    files = stored_files(settings)
    return await asyncio.get_running_loop().run_in_executor(None, files.save, filename, data, str(purpose))


@router.get("/files", responses=ERRORS)
def list_files(settings: SettingsDep, purpose: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               order: Literal["asc", "desc"] = "desc", after: str | None = None) -> Page[FileObject]:
    found = [f for f in stored_files(settings).all() if purpose is None or f.purpose == purpose]
    return page(found, limit, order, after, None)


@router.get("/files/{file_id}", responses=ERRORS)
def get_file(file_id: str, settings: SettingsDep) -> FileObject:
    return stored_files(settings).info(file_id)


@router.get("/files/{file_id}/content", responses=ERRORS)
def get_file_content(file_id: str, settings: SettingsDep) -> Response:
    return Response(stored_files(settings).data(file_id), media_type="application/octet-stream")


@router.delete("/files/{file_id}", responses=WRITE_ERRORS)
def delete_file(file_id: str, settings: SettingsDep) -> Deleted:
    """Deletes the stored bytes; documents already made from them stay in their stores."""
    writes_allowed(settings)
    stored_files(settings).delete(file_id)
    return Deleted(id=file_id, object="file")
