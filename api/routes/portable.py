"""Export and import of a collection over HTTP, for admins: the archive `rag export` writes
and `rag import` reads (rag.portable).

`GET /collections/{name}/export` takes a consistent snapshot (writes go on meanwhile),
writes the archive to a hidden file in the index folder, then streams it and removes it.
`POST /collections/{name}/import` takes an archive as the body (`Content-Type:
application/x-tar`), streamed to a hidden file (at most RAG_MAX_IMPORT_BYTES; each part
must arrive within RAG_BODY_TIMEOUT_SECONDS), and makes collection `name` from it, whole or
not at all. Both run off the event loop. A hidden file a crash leaves is removed at start-up
(rag.stores.local.builds.clean_orphans removes the index folder's `.*.tmp`).

Left out: resuming an interrupted upload (send it again), exporting through a job record.
"""

import asyncio
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from api.deps import ERRORS, AdminDep, EngineDep
from api.engine.lifecycle import Engine
from api.schemas import ErrorBody
from rag.collections import check_name
from rag.errors import BadQueryError, NotReadyError, TooLargeError
from rag.ingest.uploads import UnsupportedTypeError
from rag.portable.exporting import export_collection
from rag.portable.importing import import_archive

router = APIRouter(tags=["collections"])
ARCHIVE_TYPE = "application/x-tar"


class ImportResult(BaseModel):
    name: str
    documents: int
    chunks: int
    sentences: int
    reembedded: bool
    seconds: float


def _scratch(engine: Engine, what: str) -> Path:
    """A hidden file in the index folder (same disk as the collections), removed at start-up if left."""
    engine.settings.index_dir.mkdir(parents=True, exist_ok=True)
    return engine.settings.index_dir / f".{what}-{secrets.token_hex(8)}.tmp"


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink()


@router.get("/collections/{name}/export", response_class=FileResponse,
            responses={**ERRORS, 200: {"content": {ARCHIVE_TYPE: {}}, "description": "the archive"}})
async def export_archive(name: str, engine: EngineDep, admin: AdminDep) -> FileResponse:
    """The collection as one archive (`default`: the built corpus): documents, chunks,
    sentences, vectors and a manifest, as `rag export` writes it."""
    check_name(name)
    path = _scratch(engine, "export")
    try:
        await asyncio.to_thread(export_collection, engine.settings, name, path,
                                collections=engine.live_collections())
    except BaseException:
        _remove(path)
        raise
    return FileResponse(path, media_type=ARCHIVE_TYPE, filename=f"{name}.tar", background=BackgroundTask(_remove, path))


@router.post("/collections/{name}/import", status_code=201,
             openapi_extra={"requestBody": {"required": True, "content": {ARCHIVE_TYPE: {
                 "schema": {"type": "string", "format": "binary"}}}}},
             responses={**ERRORS, 413: {"model": ErrorBody}})
async def import_collection(name: str, request: Request, engine: EngineDep, admin: AdminDep,
                            reembed: Annotated[bool, Query(description="embed the documents again with this "
                                                                       "service's model")] = False) -> ImportResult:
    """Make collection `name` from an archive written by `rag export` or GET …/export. An
    archive of another model is refused (422) unless `reembed`; a damaged one names its member."""
    check_name(name)
    embedder = engine.embedder
    if embedder is None:
        raise NotReadyError(engine.not_ready or "the model is not loaded")
    path = _scratch(engine, "import")
    try:
        await _receive(request, path, engine.settings.max_import_bytes, engine.settings.body_timeout_seconds)
        imported = await asyncio.to_thread(import_archive, engine.settings, path, embedder, name, reembed=reembed,
                                           collections=engine.live_collections())
    finally:
        _remove(path)
    return ImportResult(name=imported.name, documents=imported.documents, chunks=imported.chunks,
                        sentences=imported.sentences, reembedded=imported.reembedded, seconds=imported.seconds)


async def _receive(request: Request, path: Path, limit: int, part_seconds: float) -> None:
    """The body into `path`: at most `limit` bytes, each part within `part_seconds`."""
    if not request.headers.get("content-type", "").startswith(ARCHIVE_TYPE):
        raise UnsupportedTypeError(f"send the archive as the body, with Content-Type: {ARCHIVE_TYPE}")
    size, parts = 0, request.stream().__aiter__()
    with open(path, "wb") as out:
        while True:
            try:
                async with asyncio.timeout(part_seconds):
                    part = await parts.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:  # a stalled sender holds a file and a connection: cut it
                raise BadQueryError(f"the archive stopped arriving for {part_seconds:g} s") from None
            size += len(part)
            if size > limit:
                raise TooLargeError(f"the archive is larger than the limit of {limit} bytes (RAG_MAX_IMPORT_BYTES)")
            out.write(part)
