"""OpenAI's Vector Stores API over live collections (rag.collections), so that a stock
OpenAI client works with only its `base_url` changed (the Files it attaches: api.routes.files;
attaching them: api.routes.vector_store_files; what a store keeps: api.openai.state).

A vector store is a collection: its id is `vs_<collection name>`, the name
derived from the store's name (`vs_default` is the built corpus: listed and searched, not
written). Attaching a file to a store reads it (rag.ingest.uploads: .txt, .md, .html, .pdf) and
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

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import (
    ERRORS,
    WRITE_ERRORS,
    AdminDep,
    EngineDep,
    ManageStore,
    PrincipalDep,
    ReadStore,
    SettingsDep,
    check_question,
)
from api.openai.files import stored_files
from api.openai.filters import check_filter
from api.openai.objects import (
    Deleted,
    NewStore,
    Page,
    SearchPage,
    SearchRequest,
    SearchResult,
    StoreUpdate,
    TextContent,
    VectorStore,
    page,
)
from api.openai.search import store_hits
from api.openai.state import (
    check_pairs,
    created_at_of,
    derive_name,
    read_sidecar,
    save_sidecar,
    store_object,
    writable,
)
from api.openai.store_files import attach
from rag.collections import DEFAULT, Collections

router = APIRouter(prefix="/v1", tags=["openai vector stores"])


@router.post("/vector_stores", responses=WRITE_ERRORS)
async def create_vector_store(body: NewStore, engine: EngineDep, settings: SettingsDep,
                              admin: AdminDep) -> VectorStore:
    """A new collection; `file_ids` are attached before this returns (big ones: queued,
    `in_progress`)."""
    metadata = check_pairs(body.metadata, "metadata")
    files = stored_files(settings)
    for file_id in body.file_ids:  # all known, or no store at all
        files.info(file_id)

    def create(collections: Collections) -> str:
        name = derive_name(body.name or "", set(collections.names(every_store=True)))
        collections.create(name)
        save_sidecar(collections.root / name, {"name": body.name or name, "metadata": metadata,
                                                "created_at": int(time.time()), "failed": {}})
        return name

    name = await engine.write(create)
    for file_id in dict.fromkeys(body.file_ids):
        await attach(engine, settings, name, file_id, None)
    return store_object(engine, name)


@router.get("/vector_stores", responses=ERRORS)
def list_vector_stores(engine: EngineDep, principal: PrincipalDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       order: Literal["asc", "desc"] = "desc",
                       after: str | None = None, before: str | None = None) -> Page[VectorStore]:
    """Every collection the key can read; `vs_default` (the built corpus) while a build is served."""
    names = [n for n in engine.live_collections().names()
             if (n != DEFAULT or engine.retriever is not None) and principal.reads(n)]
    return page([store_object(engine, n) for n in names], limit, order, after, before)


@router.get("/vector_stores/{store_id}", responses=ERRORS)
def get_vector_store(name: ReadStore, engine: EngineDep) -> VectorStore:
    return store_object(engine, name)


@router.post("/vector_stores/{store_id}", responses=WRITE_ERRORS)
async def update_vector_store(name: ManageStore, body: StoreUpdate, engine: EngineDep) -> VectorStore:
    """Rename (the id stays) or replace the metadata."""
    metadata = check_pairs(body.metadata, "metadata") if body.metadata is not None else None

    def update(collections: Collections) -> None:
        folder = writable(collections, name)
        info = read_sidecar(folder)
        info.setdefault("created_at", created_at_of(engine, name, info))
        if body.name is not None:
            info["name"] = body.name
        if metadata is not None:
            info["metadata"] = metadata
        save_sidecar(folder, info)

    await engine.write(update)
    return store_object(engine, name)


@router.delete("/vector_stores/{store_id}", responses=WRITE_ERRORS)
async def delete_vector_store(store_id: str, name: ManageStore, engine: EngineDep) -> Deleted:
    await engine.write(lambda collections: collections.delete(name))
    for key, _ in engine.pending.items():  # a store made again under the name starts clean
        if key[0] == name:
            engine.pending.forget(key)
    return Deleted(id=store_id, object="vector_store.deleted")


# ------------------------------------------------------------------ search

@router.post("/vector_stores/{store_id}/search", responses=ERRORS)
async def search_vector_store(name: ReadStore, body: SearchRequest, engine: EngineDep,
                              settings: SettingsDep) -> SearchPage:
    """Passages of the store's files, best first, with their citations. With `filters`,
    the best `RAG_MAX_K` passages are searched and those of files whose attributes pass
    are kept, so a filter matching few files of a big store may return fewer results."""
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    question = " ".join(q for q in queries if q.strip())
    check_question(question, settings)
    if body.filters is not None:
        check_filter(body.filters)
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    hits, _ = await store_hits(engine, name, question, body.max_num_results, body.filters, threshold)
    results = [SearchResult(file_id=h.file_id, filename=h.filename, score=h.score, attributes=h.attributes,
                            content=[TextContent(text=h.passage.text)], citation=h.passage.citation) for h in hits]
    return SearchPage(search_query=queries, data=results)

