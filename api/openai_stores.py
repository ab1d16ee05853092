"""OpenAI's Vector Stores API over live collections (rag.collections), so that a stock
OpenAI client works with only its `base_url` changed (the Files it attaches: api.openai_files).

A vector store is a collection: its id is `vs_<collection name>`, the name
derived from the store's name (`vs_default` is the built corpus: listed and searched, not
written). Attaching a file to a store reads it (rag.uploads: .txt, .md, .html, .pdf) and
writes it into the collection as the document whose doc_id is the file id, on the
engine's writer thread: before the response, or, for a text past RAG_SYNC_WRITE_CHARS,
queued (`in_progress` until written: the clients' `*_and_poll` helpers wait for it). A
file that cannot be read is a vector store file with `status: "failed"` and `last_error`.
Its `attributes` are kept in the document's metadata (`attributes`), and search filters
(comparison and compound, OpenAI's grammar) are applied to them. A store's display name,
metadata and failed files are kept beside the collection in `vector_store.json`.

Search results carry OpenAI's fields plus `citation` (offsets into the document's text,
which `GET /v1/vector_stores/{id}/files/{file_id}/content` returns, and pages for PDFs).
They come in the collection's ranking order (its default mode); `score` is the passage's
cosine similarity clamped to [0, 1] (BM25 in lexical mode), and `score_threshold` drops
results below it. `usage_bytes` counts the vectors (chunks x dimension x 4).

Left out: file batches, `chunking_strategy` and `expires_after` (accepted and ignored),
`rewrite_query` (ignored), `ranker` (the collection's own ranking is used), query
pagination, and removing a deleted File's documents from the stores it was attached to
(they are copies).
"""

import asyncio
import json
import math
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.engine import Engine, writes_allowed
from api.openai_files import WRITE_ERRORS, StoredFiles, stored_files, write_synced
from api.openai_objects import (
    ContentPage,
    Deleted,
    FileCounts,
    FileObject,
    LastError,
    NewStore,
    NewStoreFile,
    Page,
    SearchPage,
    SearchRequest,
    SearchResult,
    StoreFileUpdate,
    StoreUpdate,
    TextContent,
    VectorStore,
    VectorStoreFile,
    page,
)
from api.routes import ERRORS, EngineDep, SettingsDep, check_question
from rag.attribute_filters import check_filter, matches
from rag.collections import DEFAULT, NAME, Collections
from rag.errors import BadQueryError, ConflictError, CorpusError, NotFoundError, StorageError
from rag.ingest import SourceDocument
from rag.records import DocumentRecord
from rag.settings import Settings
from rag.types import Filters
from rag.uploads import UnsupportedTypeError, uploaded_document

router = APIRouter(prefix="/v1", tags=["openai vector stores"])
SIDECAR = "vector_store.json"
MAX_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512  # OpenAI's limits on metadata and attributes
POLL_AFTER_MS = 250




# ------------------------------------------------------------------ filters over attributes

def _check_pairs(pairs: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if not pairs:
        return {}
    if len(pairs) > MAX_PAIRS:
        raise BadQueryError(f"{what}: at most {MAX_PAIRS} keys, got {len(pairs)}")
    for key, value in pairs.items():
        if not key or len(key) > MAX_KEY:
            raise BadQueryError(f"{what}: keys are 1-{MAX_KEY} characters, got {key[:80]!r}")
        if isinstance(value, str) and len(value) > MAX_VALUE:
            raise BadQueryError(f"{what}.{key}: values are at most {MAX_VALUE} characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadQueryError(f"{what}.{key}: numbers must be finite")
    return dict(pairs)


# ------------------------------------------------------------------ vector stores

def collection_of(engine: Engine, store_id: str) -> str:
    """The collection behind `vs_<name>`; an unknown id is a 404."""
    name = store_id[3:] if store_id.startswith("vs_") else ""
    if not NAME.fullmatch(name) or name not in engine.live_collections().names():
        raise NotFoundError(f"no vector store with id '{store_id}'")
    return name


def derive_name(name: str, taken: set[str]) -> str:
    """A collection name from a store's name: 'Field Notes (2024)' -> 'field-notes-2024';
    a short random suffix when it is empty or taken."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    base = re.sub(r"[^a-z0-9_-]+", "-", ascii_name).strip("-_")[:55].strip("-_")
    candidate = base
    while not candidate or candidate in taken or candidate == DEFAULT:
        candidate = f"{base or 'store'}-{secrets.token_hex(3)}"
    return candidate


def _sidecar(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {SIDECAR} of collection '{folder.name}': {exc}") from exc
    return data if isinstance(data, dict) else {}


def _save_sidecar(folder: Path, data: dict[str, Any]) -> None:
    tmp = folder / f".{SIDECAR}.tmp"
    try:
        write_synced(tmp, json.dumps(data, ensure_ascii=False, indent=1).encode())
        os.replace(tmp, folder / SIDECAR)
    except OSError as exc:
        raise StorageError(f"cannot write {SIDECAR} of collection '{folder.name}': {exc}") from exc


def _writable(collections: Collections, name: str) -> Path:
    """The collection's folder, on the writer thread: it exists and is not the built corpus."""
    if name == DEFAULT:
        raise ConflictError("vs_default is the built corpus: change the corpus folder and run `rag build`, "
                            "or write to another vector store")
    collections.get(name)  # NotFoundError once deleted
    return collections.root / name


def _created_at(engine: Engine, name: str, info: dict[str, Any]) -> int:
    if "created_at" in info:
        return int(info["created_at"])
    marker = (engine.settings.index_dir / "CURRENT" if name == DEFAULT
              else engine.live_collections().root / name / "manifest.json")
    try:
        return int(marker.stat().st_mtime)
    except OSError:
        return 0


def _vector_bytes(engine: Engine, chunks: int) -> int:
    return chunks * (engine.embedder.dimension if engine.embedder is not None else 0) * 4


def _failures(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    return _sidecar(engine.live_collections().root / name).get("failed", {}) if name != DEFAULT else {}


def _writes_of(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    """The collection's writes the engine tracks (engine.pending), by doc_id: in_progress or failed."""
    return {doc_id: dict(state) for (collection, doc_id), state in list(engine.pending.items())
            if collection == name and state["status"] != "completed"}


def store_object(engine: Engine, name: str) -> VectorStore:
    store = engine.retriever_of(name).store
    info = _sidecar(engine.live_collections().root / name) if name != DEFAULT else {}
    writes = _writes_of(engine, name)
    running = {f for f, state in writes.items() if state["status"] == "in_progress"}
    failed_ids = (set(info.get("failed", {})) | {f for f, s in writes.items() if s["status"] == "failed"}) - running
    in_progress = len(running)
    completed = len(store.documents) - sum(1 for f in running if f in store.documents)
    failed = sum(1 for f in failed_ids if f not in store.documents)
    return VectorStore(id=f"vs_{name}", created_at=_created_at(engine, name, info), name=info.get("name") or name,
                       usage_bytes=_vector_bytes(engine, store.count()), metadata=info.get("metadata") or {},
                       file_counts=FileCounts(in_progress=in_progress, completed=completed, failed=failed,
                                              total=in_progress + completed + failed))


@router.post("/vector_stores", responses=WRITE_ERRORS)
async def create_vector_store(body: NewStore, engine: EngineDep, settings: SettingsDep) -> VectorStore:
    """A new collection; `file_ids` are attached before this returns (big ones: queued,
    `in_progress`)."""
    metadata = _check_pairs(body.metadata, "metadata")
    files = stored_files(settings)
    for file_id in body.file_ids:  # all known, or no store at all
        files.info(file_id)

    def create(collections: Collections) -> str:
        name = derive_name(body.name or "", set(collections.names(every_store=True)))
        collections.create(name)
        _save_sidecar(collections.root / name, {"name": body.name or name, "metadata": metadata,
                                                "created_at": int(time.time()), "failed": {}})
        return name

    name = await engine.write(create)
    for file_id in dict.fromkeys(body.file_ids):
        await attach(engine, settings, name, file_id, None)
    return store_object(engine, name)


@router.get("/vector_stores", responses=ERRORS)
def list_vector_stores(engine: EngineDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       order: Literal["asc", "desc"] = "desc",
                       after: str | None = None, before: str | None = None) -> Page[VectorStore]:
    """Every collection; `vs_default` (the built corpus) while a build is served."""
    names = [n for n in engine.live_collections().names() if n != DEFAULT or engine.retriever is not None]
    return page([store_object(engine, n) for n in names], limit, order, after, before)


@router.get("/vector_stores/{store_id}", responses=ERRORS)
def get_vector_store(store_id: str, engine: EngineDep) -> VectorStore:
    return store_object(engine, collection_of(engine, store_id))


@router.post("/vector_stores/{store_id}", responses=WRITE_ERRORS)
async def update_vector_store(store_id: str, body: StoreUpdate, engine: EngineDep) -> VectorStore:
    """Rename (the id stays) or replace the metadata."""
    name = collection_of(engine, store_id)
    metadata = _check_pairs(body.metadata, "metadata") if body.metadata is not None else None

    def update(collections: Collections) -> None:
        folder = _writable(collections, name)
        info = _sidecar(folder)
        info.setdefault("created_at", _created_at(engine, name, info))
        if body.name is not None:
            info["name"] = body.name
        if metadata is not None:
            info["metadata"] = metadata
        _save_sidecar(folder, info)

    await engine.write(update)
    return store_object(engine, name)


@router.delete("/vector_stores/{store_id}", responses=WRITE_ERRORS)
async def delete_vector_store(store_id: str, engine: EngineDep) -> Deleted:
    name = collection_of(engine, store_id)
    await engine.write(lambda collections: collections.delete(name))
    for key, state in list(engine.pending.items()):  # a store made again under the name starts clean
        if key[0] == name and state["status"] != "in_progress":
            engine.pending.pop(key, None)
    return Deleted(id=store_id, object="vector_store.deleted")


# ------------------------------------------------------------------ vector store files

def _file_object(engine: Engine, name: str, doc: DocumentRecord, chunks: int) -> VectorStoreFile:
    origin = doc.metadata.get("openai_file") or {}
    return VectorStoreFile(id=doc.doc_id, created_at=int(origin.get("created_at") or 0),
                           usage_bytes=_vector_bytes(engine, chunks), vector_store_id=f"vs_{name}",
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
    failed = _failures(engine, name)
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
    attributes = _check_pairs(attributes, "attributes")
    _writable(engine.live_collections(), name)  # a 404 or 409 now, not a failed write later
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
        folder = _writable(collections, name)
        sidecar = _sidecar(folder)
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
                    _save_sidecar(folder, sidecar)
                return _file_object(engine, name, kb.documents[file_id], written.chunks)
        assert problem is not None
        failed[file_id] = {"created_at": now, "attributes": attributes, "last_error": problem.model_dump()}
        _save_sidecar(folder, sidecar)
        return _failed_object(name, file_id, failed[file_id])

    if doc is not None and len(doc.text) > settings.sync_write_chars:
        engine.write_later(key, write)
        return VectorStoreFile(id=file_id, created_at=now, usage_bytes=0, vector_store_id=f"vs_{name}",
                               status="in_progress", attributes=attributes)
    state: dict[str, str | None] = {"status": "in_progress", "error": None}
    engine.pending[key] = state
    task = asyncio.ensure_future(engine.write(write))

    def done(finished: asyncio.Future[VectorStoreFile]) -> None:
        if engine.pending.get(key) is state:
            engine.pending.pop(key, None)
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
    store, writes = engine.retriever_of(name).store, _writes_of(engine, name)
    found = {f: _write_object(settings, name, f, s) for f, s in writes.items() if s["status"] == "in_progress"}
    for doc in store.documents.values():
        found.setdefault(doc.doc_id, _file_object(engine, name, doc, store.chunk_count(doc.doc_id)))
    for file_id, entry in _failures(engine, name).items():
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
        folder = _writable(collections, name)
        sidecar = _sidecar(folder)
        gone = sidecar.get("failed", {}).pop(file_id, None) is not None
        if gone:
            _save_sidecar(folder, sidecar)
        if file_id in collections.get(name).documents:
            collections.remove(name, file_id)
            gone = True
        return gone

    gone = await engine.write(delete)
    state = engine.pending.get(key)
    if state is not None and state["status"] != "in_progress":
        engine.pending.pop(key, None)
        gone = gone or state["status"] == "failed"
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


# ------------------------------------------------------------------ search

@router.post("/vector_stores/{store_id}/search", responses=ERRORS)
async def search_vector_store(store_id: str, body: SearchRequest, engine: EngineDep,
                              settings: SettingsDep) -> SearchPage:
    """Passages of the store's files, best first, with their citations. With `filters`,
    the best `RAG_MAX_K` passages are searched and those of files whose attributes pass
    are kept, so a filter matching few files of a big store may return fewer results."""
    name = collection_of(engine, store_id)
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    question = " ".join(q for q in queries if q.strip())
    check_question(question, settings)
    if body.filters is not None:
        check_filter(body.filters)
    retriever = engine.retriever_of(name)
    wanted = min(body.max_num_results, retriever.max_k)
    depth = retriever.max_k if body.filters is not None else wanted
    response = await engine.query(question, depth, Filters(), None, collection=name)
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    documents: dict[str, DocumentRecord | None] = {}
    results: list[SearchResult] = []
    for passage in response.passages:
        if len(results) == wanted:
            break
        score = similarity(passage.score, passage.scores)
        if threshold is not None and score < threshold:
            continue
        doc_id = passage.citation.doc_id
        if doc_id not in documents:
            documents[doc_id] = retriever.store.documents.get(doc_id)
        doc = documents[doc_id]
        metadata = doc.metadata if doc is not None else {}
        attributes = metadata.get("attributes") or {}
        if body.filters is not None and (doc is None or not matches(body.filters, attributes)):
            continue
        filename = (metadata.get("openai_file") or {}).get("filename") or passage.citation.source or doc_id
        results.append(SearchResult(file_id=doc_id, filename=filename, score=score, attributes=attributes,
                                    content=[TextContent(text=passage.text)], citation=passage.citation))
    return SearchPage(search_query=queries, data=results)


def similarity(ranked_by: float, scores: Mapping[str, float]) -> float:
    """OpenAI's `score` is a similarity in [0, 1]: the passage's cosine where the mode
    computed one (dense, hybrid), else what the ranking used (BM25 in lexical mode)."""
    dense = scores.get("dense")
    return min(1.0, max(0.0, dense)) if dense is not None else ranked_by
