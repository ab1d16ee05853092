"""OpenAI's vector store files (`/v1/vector_stores/{id}/files`): attaching an uploaded
file (api.openai_files) writes it into the store's collection as the document whose
doc_id is the file id, on the engine's writer thread: before the response, or, for a
text past RAG_SYNC_WRITE_CHARS, queued (`in_progress` until written: the clients'
`*_and_poll` helpers wait for it). A file that cannot be read is a vector store file with
`status: "failed"` and `last_error`, kept in vector_store.json (api.openai_store_state).

Left out: file batches and `chunking_strategy` (accepted and ignored).
"""

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.engine import Engine, writes_allowed
from api.openai_files import WRITE_ERRORS, StoredFiles, stored_files
from api.openai_objects import (
    ContentPage,
    Deleted,
    FileObject,
    LastError,
    NewStoreFile,
    Page,
    StoreFileUpdate,
    TextContent,
    VectorStoreFile,
    page,
)
from api.openai_store_state import (
    check_pairs,
    collection_of,
    failures,
    read_sidecar,
    save_sidecar,
    vector_bytes,
    writable,
    writes_of,
)
from api.routes import ERRORS, EngineDep, SettingsDep
from rag.collections import Collections
from rag.errors import BadQueryError, CorpusError, NotFoundError
from rag.ingest.corpus import SourceDocument
from rag.ingest.uploads import UnsupportedTypeError, uploaded_document
from rag.records import DocumentRecord
from rag.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai vector stores"])
POLL_AFTER_MS = 250


def _file_object(engine: Engine, name: str, doc: DocumentRecord, chunks: int) -> VectorStoreFile:
    origin = doc.metadata.get("openai_file") or {}
    return VectorStoreFile(id=doc.doc_id, created_at=int(origin.get("created_at") or 0),
                           usage_bytes=vector_bytes(engine, chunks), vector_store_id=f"vs_{name}",
                           status="completed", attributes=doc.metadata.get("attributes") or {})


def _failed_object(name: str, file_id: str, entry: dict[str, Any]) -> VectorStoreFile:
    return VectorStoreFile(id=file_id, created_at=int(entry.get("created_at") or 0), usage_bytes=0,
                           vector_store_id=f"vs_{name}", status="failed",
                           last_error=LastError.model_validate(entry["last_error"]),
                           attributes=entry.get("attributes") or {})


def _write_object(settings: Settings, name: str, file_id: str, state: dict[str, Any]) -> VectorStoreFile:
    """A file whose write the engine tracks: in_progress, or failed for a reason other than its content."""
    try:
        created = stored_files(settings).info(file_id).created_at
    except NotFoundError:
        created = 0
    error = LastError(code="server_error", message=str(state["error"])) if state["status"] == "failed" else None
    return VectorStoreFile(id=file_id, created_at=created, usage_bytes=0, vector_store_id=f"vs_{name}",
                           status=state["status"], last_error=error)


def _store_file(engine: Engine, settings: Settings, name: str, file_id: str) -> VectorStoreFile | None:
    """A file's state: being written, written, failed (its content, or the write), or None."""
    state = engine.pending.get((name, file_id))
    if state is not None and state["status"] == "in_progress":
        return _write_object(settings, name, file_id, dict(state))
    store = engine.retriever_of(name).store
    doc = store.documents.get(file_id)
    if doc is not None:
        return _file_object(engine, name, doc, store.chunk_count(file_id))
    failed = failures(engine, name)
    if file_id in failed:
        return _failed_object(name, file_id, failed[file_id])
    if state is not None and state["status"] == "failed":
        return _write_object(settings, name, file_id, dict(state))
    return None


async def attach(engine: Engine, settings: Settings, name: str, file_id: str,
                 attributes: dict[str, Any] | None) -> VectorStoreFile:
    """Read the stored file and write it into the collection as document `file_id`: before
    the response, or, past RAG_SYNC_WRITE_CHARS, queued (`in_progress` until written). A
    file whose text cannot be read is `failed` with the reason, kept in vector_store.json.
    A write goes on when the client stops waiting, and reads `in_progress` meanwhile."""
    writes_allowed(settings)
    files = stored_files(settings)
    info = files.info(file_id)
    attributes = check_pairs(attributes, "attributes")
    writable(engine.live_collections(), name)  # a 404 or 409 now, not a failed write later
    now, key = int(time.time()), (name, file_id)
    doc: SourceDocument | None = None
    is_pdf, error = False, None
    try:  # extraction (a PDF) is CPU work: not on the event loop
        doc, is_pdf = await asyncio.get_running_loop().run_in_executor(None, _read, files, info, file_id)
    except UnsupportedTypeError as exc:
        error = LastError(code="unsupported_file", message=str(exc))
    except (BadQueryError, CorpusError) as exc:  # empty, not UTF-8, encrypted, damaged, a scan
        error = LastError(code="invalid_file", message=str(exc))

    def write(collections: Collections) -> VectorStoreFile:
        folder = writable(collections, name)
        sidecar = read_sidecar(folder)
        failed = sidecar.setdefault("failed", {})
        problem = error
        if doc is not None:
            kb = collections.get(name)
            existing = kb.documents.get(file_id)
            created = (existing.metadata.get("openai_file") or {}).get("created_at") if existing else None
            doc.metadata["attributes"] = attributes
            doc.metadata["openai_file"] = {"filename": info.filename, "created_at": created or now}
            try:
                written = collections.upsert(name, doc, replace=True, clean=not is_pdf)
            except (BadQueryError, CorpusError) as exc:  # nothing left to index once cleaned
                problem = LastError(code="invalid_file", message=str(exc))
            else:
                if failed.pop(file_id, None) is not None:
                    save_sidecar(folder, sidecar)
                return _file_object(engine, name, kb.documents[file_id], written.chunks)
        assert problem is not None
        failed[file_id] = {"created_at": now, "attributes": attributes, "last_error": problem.model_dump()}
        save_sidecar(folder, sidecar)
        return _failed_object(name, file_id, failed[file_id])

    if doc is not None and len(doc.text) > settings.sync_write_chars:
        engine.write_later(key, write)
        return VectorStoreFile(id=file_id, created_at=now, usage_bytes=0, vector_store_id=f"vs_{name}",
                               status="in_progress", attributes=attributes)
    state = engine.pending.start(key)
    task = asyncio.ensure_future(engine.write(write))

    def done(finished: asyncio.Future[VectorStoreFile]) -> None:
        engine.pending.finish(key, state, None)  # written or failed: the store and its sidecar say which
        if not finished.cancelled():
            finished.exception()  # retrieved: a client that stopped waiting leaves no "never retrieved" warning

    task.add_done_callback(done)
    return await asyncio.shield(task)  # a client that leaves (or the request deadline) does not stop the write


def _read(files: StoredFiles, info: FileObject, file_id: str) -> tuple[SourceDocument, bool]:
    doc, is_pdf = uploaded_document(info.filename, files.data(file_id), file_id)
    if doc.metadata.get("title") == file_id.replace("-", " "):  # a text file's title defaults to its stem
        doc.metadata["title"] = Path(info.filename).stem
    return doc, is_pdf


@router.post("/vector_stores/{store_id}/files", responses=WRITE_ERRORS)
async def create_vector_store_file(store_id: str, body: NewStoreFile, engine: EngineDep,
                                   settings: SettingsDep) -> VectorStoreFile:
    """Attach an uploaded file: searchable when this returns (`completed`), `failed` with
    `last_error` when its text cannot be read, or `in_progress` for a big file (poll it)."""
    return await attach(engine, settings, collection_of(engine, store_id), body.file_id, body.attributes)


@router.get("/vector_stores/{store_id}/files", responses=ERRORS)
def list_vector_store_files(store_id: str, engine: EngineDep, settings: SettingsDep,
                            limit: Annotated[int, Query(ge=1, le=100)] = 20,
                            order: Literal["asc", "desc"] = "desc",
                            after: str | None = None, before: str | None = None,
                            filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,
                            ) -> Page[VectorStoreFile]:
    name = collection_of(engine, store_id)
    store, writes = engine.retriever_of(name).store, writes_of(engine, name)
    found = {f: _write_object(settings, name, f, s) for f, s in writes.items() if s["status"] == "in_progress"}
    for doc in store.documents.values():
        found.setdefault(doc.doc_id, _file_object(engine, name, doc, store.chunk_count(doc.doc_id)))
    for file_id, entry in failures(engine, name).items():
        found.setdefault(file_id, _failed_object(name, file_id, entry))
    for file_id, state in writes.items():
        found.setdefault(file_id, _write_object(settings, name, file_id, state))
    return page([f for f in found.values() if filter is None or f.status == filter], limit, order, after, before)


@router.get("/vector_stores/{store_id}/files/{file_id}", responses=ERRORS)
def get_vector_store_file(store_id: str, file_id: str, engine: EngineDep, settings: SettingsDep,
                          response: Response) -> VectorStoreFile:
    found = _store_file(engine, settings, collection_of(engine, store_id), file_id)
    if found is None:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    if found.status == "in_progress":
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)  # what the OpenAI clients' poll helpers read
    return found


@router.post("/vector_stores/{store_id}/files/{file_id}", responses=WRITE_ERRORS)
async def update_vector_store_file(store_id: str, file_id: str, body: StoreFileUpdate, engine: EngineDep,
                                   settings: SettingsDep) -> VectorStoreFile:
    """New attributes: the file is read again from the stored upload (nothing re-embedded)."""
    name = collection_of(engine, store_id)
    if _store_file(engine, settings, name, file_id) is None:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    return await attach(engine, settings, name, file_id, body.attributes)


@router.delete("/vector_stores/{store_id}/files/{file_id}", responses=WRITE_ERRORS)
async def delete_vector_store_file(store_id: str, file_id: str, engine: EngineDep) -> Deleted:
    """Once this returns, no search returns a passage of the file (a write in progress is
    finished first: writes run one after the other)."""
    name = collection_of(engine, store_id)
    key = (name, file_id)

    def delete(collections: Collections) -> bool:
        folder = writable(collections, name)
        sidecar = read_sidecar(folder)
        gone = sidecar.get("failed", {}).pop(file_id, None) is not None
        if gone:
            save_sidecar(folder, sidecar)
        if file_id in collections.get(name).documents:
            collections.remove(name, file_id)
            gone = True
        return gone

    gone = await engine.write(delete)
    state = engine.pending.forget(key)
    gone = gone or (state is not None and state["status"] == "failed")
    if not gone:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    return Deleted(id=file_id, object="vector_store.file.deleted")


@router.get("/vector_stores/{store_id}/files/{file_id}/content", responses=ERRORS)
def get_vector_store_file_content(store_id: str, file_id: str, engine: EngineDep) -> ContentPage:
    """The document's text as stored: what citation offsets point into."""
    doc = engine.retriever_of(collection_of(engine, store_id)).store.documents.get(file_id)
    if doc is None:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    return ContentPage(data=[TextContent(text=doc.text)])
