"""Export and import of a collection over HTTP, for admins: the archive `rag export` writes
and `rag import` reads (rag.portable).

`GET /collections/{name}/export` takes a consistent snapshot (writes go on meanwhile),
writes the archive to a hidden file in the index folder, then streams it and removes it.
`POST /collections/{name}/import` takes an archive as the body (`Content-Type:
application/x-tar`), streamed to `<index>/imports/` (at most RAG_MAX_IMPORT_BYTES; each
part must arrive within RAG_BODY_TIMEOUT_SECONDS), answers 202 once it is on disk, and a
job (kind import: api.engine.handlers) makes collection `name` from it, whole or not at
all; a restart resumes it. Everything runs off the event loop. A partial file a crash
leaves is removed at start-up (`.*.tmp`).

Left out: resuming an interrupted upload (send it again); resuming an export (its archive
streams to the client that asked, which a restart disconnects: its job says so).
"""

import asyncio
import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from api.deps import ERRORS, AdminDep, EngineDep
from api.engine.lifecycle import Engine
from api.engine.writes import writes_allowed
from api.errors import scrub_paths
from api.schemas import ErrorBody
from rag.collections import DEFAULT, check_name
from rag.errors import BadQueryError, ConflictError, TooLargeError
from rag.files import fsync_path
from rag.ingest.uploads import UnsupportedTypeError
from rag.jobs import new_id
from rag.portable.exporting import export_collection
from rag.portable.importing import inbox

router = APIRouter(tags=["collections"])
ARCHIVE_TYPE = "application/x-tar"


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
    sentences, vectors and a manifest, as `rag export` writes it. While it is written it is
    a job (kind export: GET /jobs shows its progress)."""
    check_name(name)
    path = _scratch(engine, "export")
    job = engine.jobs.create("export", name, {}, admin.name, owner_id=admin.id, unit="chunks")
    job.start()

    def tick(what: str, done: int) -> None:
        if what == "chunks":
            job.progress(done)
    try:
        await asyncio.to_thread(export_collection, engine.settings, name, path, tick,
                                collections=engine.live_collections())
    except BaseException as exc:
        _remove(path)
        job.finish(error=scrub_paths(str(exc)) or type(exc).__name__)
        raise
    job.finish()
    return FileResponse(path, media_type=ARCHIVE_TYPE, filename=f"{name}.tar", background=BackgroundTask(_remove, path))


class ImportAccepted(BaseModel):
    name: str
    job: str = Field(description="the import's job: GET /jobs/{job} says how it goes and how it ended")


@router.post("/collections/{name}/import", status_code=202,
             openapi_extra={"requestBody": {"required": True, "content": {ARCHIVE_TYPE: {
                 "schema": {"type": "string", "format": "binary"}}}}},
             responses={**ERRORS, 413: {"model": ErrorBody}, 415: {"model": ErrorBody}})
async def import_collection(name: str, request: Request, engine: EngineDep, admin: AdminDep,
                            reembed: Annotated[bool, Query(description="embed the documents again with this "
                                                                       "service's model")] = False) -> ImportAccepted:
    """Make collection `name` from an archive written by `rag export` or GET …/export: 202
    once the archive is on disk, then a job (kind import) that checks it whole and makes the
    collection whole or not at all, resumed if the service restarts. An archive of another
    model fails its job unless `reembed`; a damaged one names its member."""
    check_name(name)
    writes_allowed(engine.settings)
    if name in engine.live_collections().names(every_store=True) or name == DEFAULT:
        raise ConflictError(f"a collection named '{name}' exists: delete it, or import under another name")
    job_id = new_id()
    path = inbox(engine.settings.index_dir) / f"{job_id}.tar"
    part = path.with_name(f".tmp-{path.name}")  # start-up removes what a crash leaves of it
    try:
        await _receive(request, part, engine.settings.max_import_bytes, engine.settings.body_timeout_seconds)
        await asyncio.to_thread(_keep, part, path)
    except BaseException:
        _remove(part)
        raise
    job = engine.jobs.create("import", name, {"archive": path.name, "reembed": reembed}, admin.name,
                             owner_id=admin.id, job_id=job_id)
    engine.runner.submit(job)
    return ImportAccepted(name=name, job=job.id)


def _keep(part: Path, path: Path) -> None:
    """The received archive, durably under its name: acknowledged once this returns."""
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, path)
    fsync_path(path.parent)


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
