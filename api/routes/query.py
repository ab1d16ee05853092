"""POST and GET /query: ranked passages answering a question, each with its citation."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.deps import ERRORS, EngineDep, PrincipalDep, SettingsDep, check_question, readable
from api.engine.lifecycle import Engine
from api.schemas import (
    EXAMPLE_QUESTION,
    QueryRequest,
)
from rag.access.gate import Principal
from rag.errors import BadQueryError
from rag.schema import QueryResponse
from rag.settings import Settings
from rag.types import Filters, Laps, Mode, lap

router = APIRouter()


async def answer(engine: Engine, settings: Settings, body: QueryRequest, principal: Principal) -> Response:
    readable(principal, body.collection)
    check_question(body.question, settings)
    laps = Laps() if settings.server_timing else None
    filters = Filters(doc_ids=body.doc_ids, sources=body.sources, sections=body.sections)
    response = await engine.query(body.question, body.k, filters, body.mode, body.max_per_doc, body.history or (),
                                  collection=body.collection, laps=laps)
    lap(laps, "hand-back")  # the batch's later searches, and the event loop resuming this request
    # already a validated model: serialise it once instead of letting FastAPI re-validate it
    body_json = response.model_dump_json()
    lap(laps, "serialisation")
    headers = {"Server-Timing": laps.server_timing()} if laps is not None else None
    return Response(body_json, media_type="application/json", headers=headers)


@router.post("/query", response_model=QueryResponse, responses=ERRORS, tags=["query"])
async def query(body: QueryRequest, engine: EngineDep, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Ranked passages answering the question, each with its exact citation."""
    return await answer(engine, settings, body, principal)


GET_QUERY_PARAMETERS = {"q", "k", "doc_id", "source", "section", "mode", "max_per_doc", "collection", "history"}


@router.get("/query", response_model=QueryResponse, responses=ERRORS, tags=["query"])
async def query_get(
    request: Request, engine: EngineDep, settings: SettingsDep, principal: PrincipalDep,
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
                                                       collection=collection, history=history), principal)
