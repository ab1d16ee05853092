"""OpenAI's vector store files (`/v1/vector_stores/{id}/files`): attaching an uploaded
file (api.routes.files) writes it into the store's collection as the document whose
doc_id is the file id, on the engine's writer thread: before the response, or, for a
text past RAG_SYNC_WRITE_CHARS, queued (`in_progress` until written: the clients'
`*_and_poll` helpers wait for it). A file that cannot be read is a vector store file with
`status: "failed"` and `last_error`, kept in vector_store.json (api.openai.state).

Left out: file batches and `chunking_strategy` (accepted and ignored).
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import (
    ERRORS,
    WRITE_ERRORS,
    EngineDep,
    PrincipalDep,
    ReadStore,
    SettingsDep,
    WriteStore,
    readable_file,
)
from api.engine import spool
from api.openai.objects import (
    ContentPage,
    Deleted,
    NewStoreFile,
    Page,
    StoreFileUpdate,
    TextContent,
    VectorStoreFile,
    page,
)
from api.openai.state import (
    failures,
    read_sidecar,
    save_sidecar,
    writable,
    writes_of,
)
from api.openai.store_files import POLL_AFTER_MS, attach, failed_object, file_object, store_file, write_object
from rag.collections import Collections
from rag.errors import NotFoundError

router = APIRouter(prefix="/v1", tags=["openai vector stores"])


@router.post("/vector_stores/{store_id}/files", responses=WRITE_ERRORS)
async def create_vector_store_file(name: WriteStore, body: NewStoreFile, engine: EngineDep,
                                   settings: SettingsDep, principal: PrincipalDep) -> VectorStoreFile:
    """Attach an uploaded file (one the key uploaded, or any for an admin): searchable when
    this returns (`completed`), `failed` with `last_error` when its text cannot be read, or
    `in_progress` for a big file (poll it)."""
    readable_file(principal, settings, body.file_id)
    return await attach(engine, settings, name, body.file_id, body.attributes, (principal.name, principal.id))


@router.get("/vector_stores/{store_id}/files", responses=ERRORS)
def list_vector_store_files(name: ReadStore, engine: EngineDep, settings: SettingsDep,
                            limit: Annotated[int, Query(ge=1, le=100)] = 20,
                            order: Literal["asc", "desc"] = "desc",
                            after: str | None = None, before: str | None = None,
                            filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None,
                            ) -> Page[VectorStoreFile]:
    store, writes = engine.retriever_of(name).store, writes_of(engine, name)
    found = {f: write_object(settings, name, f, s) for f, s in writes.items() if s["status"] == "in_progress"}
    for doc in store.documents.values():
        found.setdefault(doc.doc_id, file_object(engine, name, doc, store.chunk_count(doc.doc_id)))
    for file_id, entry in failures(engine, name).items():
        found.setdefault(file_id, failed_object(name, file_id, entry))
    for file_id, state in writes.items():
        found.setdefault(file_id, write_object(settings, name, file_id, state))
    return page([f for f in found.values() if filter is None or f.status == filter], limit, order, after, before)


@router.get("/vector_stores/{store_id}/files/{file_id}", responses=ERRORS)
def get_vector_store_file(store_id: str, name: ReadStore, file_id: str, engine: EngineDep, settings: SettingsDep,
                          response: Response) -> VectorStoreFile:
    found = store_file(engine, settings, name, file_id)
    if found is None:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    if found.status == "in_progress":
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)  # what the OpenAI clients' poll helpers read
    return found


@router.post("/vector_stores/{store_id}/files/{file_id}", responses=WRITE_ERRORS)
async def update_vector_store_file(store_id: str, name: WriteStore, file_id: str, body: StoreFileUpdate,
                                   engine: EngineDep, settings: SettingsDep,
                                   principal: PrincipalDep) -> VectorStoreFile:
    """New attributes: the file is read again from the stored upload (nothing re-embedded);
    the key must be able to read that upload, as to attach it."""
    readable_file(principal, settings, file_id)
    if store_file(engine, settings, name, file_id) is None:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    return await attach(engine, settings, name, file_id, body.attributes, (principal.name, principal.id))


@router.delete("/vector_stores/{store_id}/files/{file_id}", responses=WRITE_ERRORS)
async def delete_vector_store_file(store_id: str, name: WriteStore, file_id: str, engine: EngineDep) -> Deleted:
    """Once this returns, no search returns a passage of the file (a write in progress is
    finished first: writes run one after the other)."""
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

    folder = engine.live_collections().root / name
    failed_on_disk = spool.state(folder, file_id) is not None  # a resumed write that failed
    gone = await engine.write(delete)
    state = engine.pending.forget(key)
    gone = gone or failed_on_disk or (state is not None and state["status"] == "failed")
    spool.forget(folder, file_id)
    if not gone:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    return Deleted(id=file_id, object="vector_store.file.deleted")


@router.get("/vector_stores/{store_id}/files/{file_id}/content", responses=ERRORS)
def get_vector_store_file_content(store_id: str, name: ReadStore, file_id: str, engine: EngineDep) -> ContentPage:
    """The document's text as stored: what citation offsets point into."""
    doc = engine.retriever_of(name).store.documents.get(file_id)
    if doc is None:
        raise NotFoundError(f"no file '{file_id}' in vector store '{store_id}'")
    return ContentPage(data=[TextContent(text=doc.text)])
