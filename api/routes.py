"""The routes: each one a few lines over the engine. Errors are raised as domain errors
and translated in `api.app`."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import generate_latest

from api.engine import Engine
from api.errors import scrub_paths
from api.schemas import (
    EXAMPLE_QUESTION,
    ChunkDetail,
    DocumentDetail,
    DocumentList,
    DocumentSummary,
    ErrorBody,
    Health,
    QueryRequest,
    Ready,
    Reloaded,
)
from rag.errors import BadQueryError, NotFoundError
from rag.records import DocumentRecord
from rag.schema import QueryResponse
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.types import Filters, Mode

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 408, 413, 414, 422, 431, 503)}


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_retriever(engine: Annotated[Engine, Depends(get_engine)]) -> Retriever:
    return engine.live()


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RetrieverDep = Annotated[Retriever, Depends(get_retriever)]


def check_question(question: str, settings: Settings) -> None:
    """What the request models cannot say: not blank, and within the configured length."""
    if not question.strip():
        raise BadQueryError("question must not be empty")
    if len(question) > settings.max_question_chars:
        raise BadQueryError(f"question is {len(question)} characters; the limit is {settings.max_question_chars}")


async def answer(engine: Engine, settings: Settings, body: QueryRequest) -> Response:
    check_question(body.question, settings)
    filters = Filters(doc_ids=body.doc_ids, sources=body.sources, sections=body.sections)
    response = await engine.query(body.question, body.k, filters, body.mode, body.max_per_doc, body.history or (),
                                  collection=body.collection)
    # already a validated model: serialise it once instead of letting FastAPI re-validate it
    return Response(response.model_dump_json(), media_type="application/json")


@router.post("/query", response_model=QueryResponse, responses=ERRORS, tags=["query"])
async def query(body: QueryRequest, engine: EngineDep, settings: SettingsDep) -> Response:
    """Ranked passages answering the question, each with its exact citation."""
    return await answer(engine, settings, body)


GET_QUERY_PARAMETERS = {"q", "k", "doc_id", "source", "section", "mode", "max_per_doc", "collection", "history"}


@router.get("/query", response_model=QueryResponse, responses=ERRORS, tags=["query"])
async def query_get(
    request: Request, engine: EngineDep, settings: SettingsDep,
    q: Annotated[str, Query(description="the question", examples=[EXAMPLE_QUESTION])],
    k: Annotated[int, Query(ge=1, le=50)] = 5,
    doc_id: Annotated[list[str] | None, Query(description="only these documents (repeatable)")] = None,
    source: Annotated[list[str] | None, Query(description="only these sources (repeatable)")] = None,
    section: Annotated[list[str] | None, Query(description="only these sections (repeatable)")] = None,
    mode: Mode | None = None,
    max_per_doc: Annotated[int | None, Query(ge=1)] = None,
    collection: Annotated[str, Query(description="the collection to search")] = "default",
    history: Annotated[list[str] | None, Query(description="earlier user turns, oldest first (repeatable)")] = None,
) -> Response:
    """The same as POST /query, for curl and browsers. An unknown parameter is a 422 (a
    typo such as `question=` must not search for nothing in particular)."""
    if unknown := sorted(set(request.query_params) - GET_QUERY_PARAMETERS):
        raise BadQueryError(f"unknown query parameter(s): {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(GET_QUERY_PARAMETERS))}")
    return await answer(engine, settings, QueryRequest(question=q, k=k, doc_ids=doc_id, sources=source,
                                                       sections=section, mode=mode, max_per_doc=max_per_doc,
                                                       collection=collection, history=history))


def summary(retriever: Retriever, doc: DocumentRecord) -> dict[str, object]:
    meta = doc.metadata
    return {"doc_id": doc.doc_id, "title": meta["title"], "source": meta["source"],
            "author": meta.get("author"), "date": meta.get("date"), "url": meta.get("url"),
            "n_chunks": retriever.chunk_count(doc.doc_id), "n_chars": len(doc.text)}


@router.get("/documents", responses=ERRORS, tags=["documents"])
def documents(retriever: RetrieverDep) -> DocumentList:
    """Every document with its metadata and chunk count."""
    docs = retriever.store.documents.values()
    return DocumentList(documents=[DocumentSummary.model_validate(summary(retriever, d)) for d in docs])


@router.get("/documents/{doc_id}", responses=ERRORS, tags=["documents"])
def document(doc_id: str, retriever: RetrieverDep) -> DocumentDetail:
    """Metadata plus the cleaned text that citation offsets point into."""
    doc = retriever.store.documents.get(doc_id)
    if doc is None:
        raise NotFoundError(f"no document with doc_id '{doc_id}'")
    return DocumentDetail.model_validate(
        {**summary(retriever, doc), "metadata": doc.metadata, "sections": doc.sections, "text": doc.text})


@router.get("/chunks/{chunk_id}", responses=ERRORS, tags=["documents"])
def chunk(chunk_id: str, retriever: RetrieverDep) -> ChunkDetail:
    """One chunk with its citation."""
    row = retriever.store.row_of(chunk_id)
    if row is None:
        raise NotFoundError(f"no chunk with chunk_id '{chunk_id}'")
    record = retriever.store.chunks[row]
    return ChunkDetail(chunk_id=chunk_id, text=record.text, n_tokens=record.n_tokens,
                       citation=retriever.citation(row))


@router.get("/health", tags=["service"])
def health() -> Health:
    """The process is alive (no key needed)."""
    return Health(status="ok")


@router.get("/ready", responses={503: {"model": ErrorBody}}, tags=["service"])
def ready(engine: EngineDep, settings: SettingsDep) -> Ready:
    """The index is loaded and the model warmed; 503 with the reason otherwise."""
    store = engine.live().store
    reload_error = scrub_paths(engine.reload_error) if engine.reload_error else None
    return Ready(status="ready", build_id=store.build_id, model=settings.model,
                 documents=len(store.documents), chunks=store.count(), reload_error=reload_error)


@router.post("/admin/reload", responses={**ERRORS, 409: {"model": ErrorBody}}, tags=["service"])
async def reload(engine: EngineDep) -> Reloaded:
    """Load the newest build now instead of at the next poll."""
    swapped = await engine.reload(explicit=True)
    return Reloaded(reloaded=swapped, build_id=engine.live().store.build_id)


@router.get("/metrics", tags=["service"], response_class=PlainTextResponse)
def metrics(request: Request, engine: EngineDep) -> PlainTextResponse:
    """Prometheus text format: request counts, latency histograms, index size."""
    m = request.app.state.metrics
    if engine.retriever is not None:
        m.index_chunks.set(engine.retriever.store.count())
        m.index_documents.set(len(engine.retriever.store.documents))
    return PlainTextResponse(generate_latest(m.registry), media_type="text/plain; version=0.0.4")

