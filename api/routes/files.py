"""OpenAI's Files API: `POST/GET /v1/files`, `GET/DELETE /v1/files/{id}` and its content.

Files are kept as uploaded under `<index_dir>/files/<file_id>/` (the bytes and
`file.json`), written to a temporary folder and renamed, so a crash never leaves half a
file; a delete renames the folder away first, so readers never see half a delete. Vector
stores read them when a file is attached (api.routes.vector_store_files).

Left out: `expires_after`, and removing a deleted file's documents from the stores it was
attached to (they are copies).
"""

import asyncio
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.deps import ERRORS, WRITE_ERRORS, PrincipalDep, SettingsDep, form_file, readable_file, sees_file, uploader
from api.engine.writes import writes_allowed
from api.openai.files import PURPOSES, stored_files
from api.openai.objects import Deleted, FileObject, Page, page
from api.schemas import ErrorBody
from rag.errors import BadQueryError

router = APIRouter(prefix="/v1", tags=["openai files"])


# ------------------------------------------------------------------ stored files



# ------------------------------------------------------------------ files routes

FILE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(PURPOSES)}}}}}}}


@router.post("/files", openapi_extra=FILE_BODY,
             responses={**WRITE_ERRORS, 413: {"model": ErrorBody}})
async def create_file(request: Request, settings: SettingsDep, principal: PrincipalDep) -> FileObject:
    """Upload a file (multipart: `file`, `purpose`), kept as sent until it is deleted; a
    writer's or an admin's, and only its uploader and admins see it."""
    writes_allowed(settings)
    uploader(principal)
    upload, form = await form_file(request, max_fields=8)
    purpose = form.get("purpose")
    if purpose not in PURPOSES:
        raise BadQueryError(f"purpose must be one of {', '.join(PURPOSES)}")
    data = await upload.read()
    if not data:
        raise BadQueryError("the file is empty")
    filename = Path(upload.filename or "upload").name or "upload"
    files = stored_files(settings)
    return await asyncio.get_running_loop().run_in_executor(None, files.save, filename, data, str(purpose),
                                                            principal.id)


@router.get("/files", responses=ERRORS)
def list_files(settings: SettingsDep, principal: PrincipalDep, purpose: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               order: Literal["asc", "desc"] = "desc", after: str | None = None) -> Page[FileObject]:
    found = [f for f in stored_files(settings).all()
             if (purpose is None or f.purpose == purpose) and sees_file(principal, f)]
    return page(found, limit, order, after, None)


@router.get("/files/{file_id}", responses=ERRORS)
def get_file(file_id: str, settings: SettingsDep, principal: PrincipalDep) -> FileObject:
    return readable_file(principal, settings, file_id)


@router.get("/files/{file_id}/content", responses=ERRORS)
def get_file_content(file_id: str, settings: SettingsDep, principal: PrincipalDep) -> Response:
    readable_file(principal, settings, file_id)
    return Response(stored_files(settings).data(file_id), media_type="application/octet-stream")


@router.delete("/files/{file_id}", responses=WRITE_ERRORS)
def delete_file(file_id: str, settings: SettingsDep, principal: PrincipalDep) -> Deleted:
    """Deletes the stored bytes; documents already made from them stay in their stores."""
    writes_allowed(settings)
    readable_file(principal, settings, file_id)
    uploader(principal)
    stored_files(settings).delete(file_id)
    return Deleted(id=file_id, object="file")
