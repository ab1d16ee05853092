"""Attaching a stored file to a vector store (its collection) and the vector store file
objects that report it: written at once when small, queued (a 202-style `in_progress`
object, polled) when big, and failures kept until the file is removed. A big one is in
its collection's spool (api.engine.spool) before `in_progress` is answered: a restart
resumes it.

Left out: chunking strategies other than the collection's own (`chunking_strategy` is
accepted as `auto` only).
"""

import asyncio
import time
from pathlib import Path
from typing import Any

from api.engine import spool
from api.engine.lifecycle import Engine
from api.engine.spool import Spooled
from api.engine.writes import finish_anyway, writes_allowed
from api.errors import scrub_paths
from api.openai.files import StoredFiles, stored_files
from api.openai.objects import (
    FileObject,
    LastError,
    VectorStoreFile,
)
from api.openai.state import (
    check_pairs,
    failures,
    read_sidecar,
    save_sidecar,
    vector_bytes,
    writable,
)
from rag.collections import Collections
from rag.errors import BadQueryError, CorpusError, NotFoundError
from rag.ingest.corpus import SourceDocument
from rag.ingest.sandbox import ParseLimits, parse_limits
from rag.ingest.uploads import UnsupportedTypeError, uploaded_document
from rag.records import DocumentRecord
from rag.settings import Settings

POLL_AFTER_MS = 250


def file_object(engine: Engine, name: str, doc: DocumentRecord, chunks: int) -> VectorStoreFile:
    origin = doc.metadata.get("openai_file") or {}
    return VectorStoreFile(id=doc.doc_id, created_at=int(origin.get("created_at") or 0),
                           usage_bytes=vector_bytes(engine, chunks), vector_store_id=f"vs_{name}",
                           status="completed", attributes=doc.metadata.get("attributes") or {})


def failed_object(name: str, file_id: str, entry: dict[str, Any]) -> VectorStoreFile:
    return VectorStoreFile(id=file_id, created_at=int(entry.get("created_at") or 0), usage_bytes=0,
                           vector_store_id=f"vs_{name}", status="failed",
                           last_error=LastError.model_validate(entry["last_error"]),
                           attributes=entry.get("attributes") or {})


def write_object(settings: Settings, name: str, file_id: str, state: dict[str, Any]) -> VectorStoreFile:
    """A file whose write the engine tracks: in_progress, or failed for a reason other than its content."""
    try:
        created = stored_files(settings).info(file_id).created_at
    except NotFoundError:
        created = 0
    error = LastError(code="server_error", message=str(state["error"])) if state["status"] == "failed" else None
    return VectorStoreFile(id=file_id, created_at=created, usage_bytes=0, vector_store_id=f"vs_{name}",
                           status=state["status"], last_error=error)


def store_file(engine: Engine, settings: Settings, name: str, file_id: str) -> VectorStoreFile | None:
    """A file's state: being written, written, failed (its content, or the write), or None."""
    # this process's record, else the spool's (another process's write, or one from before a restart)
    state = engine.pending.get((name, file_id)) or spool.state(engine.live_collections().root / name, file_id)
    if state is not None and state["status"] == "in_progress":
        return write_object(settings, name, file_id, dict(state))
    store = engine.retriever_of(name).store
    doc = store.documents.get(file_id)
    if doc is not None:
        return file_object(engine, name, doc, store.chunk_count(file_id))
    failed = failures(engine, name)
    if file_id in failed:
        return failed_object(name, file_id, failed[file_id])
    if state is not None and state["status"] == "failed":
        return write_object(settings, name, file_id, dict(state))
    return None


async def attach(engine: Engine, settings: Settings, name: str, file_id: str,
                 attributes: dict[str, Any] | None, owner: tuple[str, str] = ("local", "local")) -> VectorStoreFile:
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
        doc, is_pdf = await asyncio.get_running_loop().run_in_executor(None, _read, files, info, file_id,
                                                                         parse_limits(settings))
    except UnsupportedTypeError as exc:
        error = LastError(code="unsupported_file", message=scrub_paths(str(exc)))
    except (BadQueryError, CorpusError) as exc:  # empty, not UTF-8, encrypted, damaged, a scan, past a limit
        error = LastError(code="invalid_file", message=scrub_paths(str(exc)))

    if doc is not None:  # before a big write is spooled: a resumed one is written the same
        existing = engine.live_collections().get(name).documents.get(file_id)
        created = (existing.metadata.get("openai_file") or {}).get("created_at") if existing else None
        doc.metadata["attributes"] = attributes
        doc.metadata["openai_file"] = {"filename": info.filename, "created_at": created or now}

    def write(collections: Collections) -> VectorStoreFile:
        folder = writable(collections, name)
        sidecar = read_sidecar(folder)
        failed = sidecar.setdefault("failed", {})
        problem = error
        if doc is not None:
            kb = collections.get(name)
            try:
                written = collections.upsert(name, doc, replace=True, clean=not is_pdf)
            except (BadQueryError, CorpusError) as exc:  # nothing left to index once cleaned
                problem = LastError(code="invalid_file", message=scrub_paths(str(exc)))
            else:
                if failed.pop(file_id, None) is not None:
                    save_sidecar(folder, sidecar)
                return file_object(engine, name, kb.documents[file_id], written.chunks)
        assert problem is not None
        failed[file_id] = {"created_at": now, "attributes": attributes, "last_error": problem.model_dump()}
        save_sidecar(folder, sidecar)
        return failed_object(name, file_id, failed[file_id])

    if doc is not None and len(doc.text) > settings.sync_write_chars:  # on disk before it is acknowledged
        await finish_anyway(asyncio.get_running_loop().run_in_executor(
            None, lambda: engine.write_spooled(Spooled(name, doc, replace=True, clean=not is_pdf), work=write,
                                             owner=owner)))
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


def _read(files: StoredFiles, info: FileObject, file_id: str, limits: ParseLimits) -> tuple[SourceDocument, bool]:
    # a text file's title defaults to its stem, the file name's (not the file id's)
    return uploaded_document(info.filename, files.data(file_id), file_id, limits, title=Path(info.filename).stem)
