"""OpenAI's Responses API, the part that file_search needs: `POST /v1/responses` (streamed
or not), `GET` and `DELETE /v1/responses/{id}` for stored responses. A stock OpenAI client,
or the Agents SDK's `FileSearchTool` (a hosted tool: the server runs it), works with only
its `base_url` changed.

A request with a file_search tool searches its vector stores (api.responses.search; each
id `vs_<collection>`, which the key must read: else the 404 of a missing one); without one
(or with tool_choice "none") the model's collection (`rag`, `rag:<name>`) answers, as
/v1/chat/completions does, and the output has no file_search_call. The answer is the
extractive one (api.chat.answers), or, with RAG_LLM_BASE_URL and RAG_LLM_MODEL set, the
upstream model's over the packed passages (api.chat.upstream, as chat); either way its
[n] markers become `file_citation` annotations pointing at the cited files
(api.responses.citations). A follow-up (`previous_response_id`, or earlier user messages
in `input`) is searched with the conversation's user turns, as chat follow-ups are.

What is accepted and what is refused: api.responses.request. Stored responses:
api.responses.store. Events: api.responses.events.

Left out: `GET /v1/responses/{id}/input_items`, streaming a stored response, cancelling,
and `conversation` objects.
"""

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, TypeVar

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.chat.answers import (
    NO_ANSWER,
    ChatCitation,
    chat_citations,
    extractive_answer,
    llm_messages,
    sources_markdown,
)
from api.chat.stream import in_words, once
from api.chat.upstream import (
    UPSTREAM_ANSWER_BYTES,
    completion_text,
    condensed,
    read_capped,
    send_upstream,
    upstream_deltas,
)
from api.deps import ERRORS, EngineDep, PrincipalDep, SettingsDep, check_question, read_store, readable
from api.openai.objects import Deleted
from api.openai.state import check_pairs
from api.responses.citations import Citer
from api.responses.events import Draft, event_stream, events, shaped
from api.responses.request import INCLUDABLE, Plan, ResponseRequest, Turns, plan_of, turns_of
from api.responses.search import Found, search
from api.responses.store import response_store
from api.routes.chat import collection_of, link_for, model_id
from rag.errors import UnsupportedError
from rag.search.context import pack
from rag.settings import Settings
from rag.text import count_tokens

router = APIRouter(prefix="/v1", tags=["openai responses"])
MAX_TURNS_KEPT = 50  # user turns a stored response keeps for its follow-ups (a query reads the last few)
T = TypeVar("T")
Pieces = tuple[AsyncIterator[str], list[ChatCitation], Callable[[], Awaitable[None]] | None]


@router.post("/responses", responses=ERRORS, response_model=None)
async def create_response(body: ResponseRequest, request: Request, engine: EngineDep, settings: SettingsDep,
                          principal: PrincipalDep) -> dict[str, Any] | StreamingResponse:
    """A Response: the file_search_call (its results with `include: ["file_search_call.results"]`)
    and the answer, whose `file_citation` annotations point at the files it cites."""
    plan = plan_of(body)
    collection = readable(principal, collection_of(body.model, settings))
    stores = ([read_store(store_id, principal, engine) for store_id in plan.file_search.vector_store_ids]
              if plan.file_search else [collection])
    metadata = check_pairs(body.metadata, "metadata")
    turns = turns_of(body.input)
    check_question(turns.question, settings)
    store = response_store(request.app.state, settings)
    earlier = list(turns.earlier)
    if body.previous_response_id is not None:
        previous = await _run(store.load, body.previous_response_id, principal)
        earlier = previous["turns"] + earlier
    searched, history = await condensed(turns.question, earlier, settings)  # the engine keeps the last few
    spec = plan.file_search
    found = await search(engine, stores, searched, history, spec.max_num_results if spec else settings.chat_k,
                         spec.filters if spec else None, spec.score_threshold if spec else None)

    response_id = f"resp_{secrets.token_hex(16)}"
    search_item = None if spec is None else {
        "id": f"fs_{secrets.token_hex(16)}", "type": "file_search_call", "status": "completed", "queries": [searched],
        "results": [hit.result() for hit in found.hits]}
    draft = Draft(response_id, model_id(settings, collection), _echo(body, plan, metadata), search_item,
                  plan.include_results, _input_tokens(body, turns), body.max_output_tokens,
                  message_id=f"msg_{secrets.token_hex(16)}")
    pieces, citations, on_close = await _answer(body, turns, found, request, settings)
    files = found.files()
    citer = Citer({c.n: (c.doc_id, files.get(c.doc_id, c.doc_id)) for c in citations})
    kept_turns = [*earlier, turns.question][-MAX_TURNS_KEPT:]

    async def keep(final: dict[str, Any]) -> None:
        if body.store is not False:
            await _run(store.save, {"response": final, "owner": principal.id, "turns": kept_turns})

    stream = events(draft, pieces, citer, keep)
    if body.stream:
        return event_stream(stream, on_close)
    last: dict[str, Any] = {}
    try:
        async with aclosing(stream):
            async for event in stream:
                last = event
    finally:
        if on_close is not None:
            await on_close()
    response: dict[str, Any] = last["response"]
    return response


@router.get("/responses/{response_id}", responses=ERRORS)
async def get_response(response_id: str, request: Request, settings: SettingsDep, principal: PrincipalDep,
                       include: Annotated[list[str] | None, Query(alias="include[]")] = None,
                       stream: bool = False) -> dict[str, Any]:
    """A stored response (the key that made it, or an admin); its file search results with
    `include[]=file_search_call.results`."""
    if stream:
        raise UnsupportedError("stream is not supported here: a stored response is sent whole")
    wanted = (include or []) + request.query_params.getlist("include")
    for value in wanted:
        if value not in INCLUDABLE:
            raise UnsupportedError(f"include '{value}' is not supported: only {', '.join(INCLUDABLE)}")
    record = await _run(response_store(request.app.state, settings).load, response_id, principal)
    return shaped(record["response"], "file_search_call.results" in wanted)


@router.delete("/responses/{response_id}", responses=ERRORS)
async def delete_response(response_id: str, request: Request, settings: SettingsDep,
                          principal: PrincipalDep) -> Deleted:
    await _run(response_store(request.app.state, settings).delete, response_id, principal)
    return Deleted(id=response_id, object="response.deleted")


async def _answer(body: ResponseRequest, turns: Turns, found: Found, request: Request,
                  settings: Settings) -> Pieces:
    """The answer's text as it comes (with [n] markers), the passages they number, and what
    closes the upstream stream. The upstream model is asked (its errors raised here, before
    any event) only when there is something to answer from."""
    link = link_for(request, settings)
    answer = found.answer
    if answer is None or not answer.answerable or not answer.passages:
        return (in_words if body.stream else once)(NO_ANSWER), [], None
    if not settings.llm_base_url or not settings.llm_model:
        extractive = extractive_answer(answer, link)
        text = extractive.text.removesuffix(sources_markdown(extractive.citations))
        return (in_words if body.stream else once)(text), extractive.citations, None

    block = await asyncio.get_running_loop().run_in_executor(None, pack, answer.passages,
                                                             settings.chat_max_context_tokens)
    citations = chat_citations(block, answer.passages, link)
    messages = llm_messages(turns.question, block)
    asked = "\n\n".join(filter(None, [body.instructions, *turns.system]))
    if asked:  # the caller's instructions, then ours and the context: one system message
        messages[0] = {"role": "system", "content": f"{asked}\n\n{messages[0]['content']}"}
    payload: dict[str, Any] = {"model": settings.llm_model, "messages": messages, "stream": bool(body.stream)}
    for name, value in (("temperature", body.temperature), ("top_p", body.top_p),
                        ("max_tokens", body.max_output_tokens)):
        if value is not None:
            payload[name] = value
    client = httpx.AsyncClient(timeout=settings.llm_timeout_seconds)
    if not body.stream:
        async with client:
            upstream = await send_upstream(client, settings, payload)
            text = completion_text(await read_capped(upstream, UPSTREAM_ANSWER_BYTES))
        return once(text), citations, None
    upstream = await send_upstream(client, settings, payload)

    async def close_upstream() -> None:
        await upstream.aclose()
        await client.aclose()

    return upstream_deltas(upstream, settings.llm_total_seconds), citations, close_upstream


def _echo(body: ResponseRequest, plan: Plan, metadata: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as the Response object carries them (OpenAI's defaults where unset)."""
    return {
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls, "metadata": metadata,
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "previous_response_id": body.previous_response_id, "reasoning": {"effort": None, "summary": None},
        "service_tier": "default", "store": body.store is not False,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": {"format": {"type": "text"}, "verbosity": (body.text or {}).get("verbosity") or "medium"},
        "tool_choice": plan.tool_choice, "tools": plan.tools, "top_logprobs": 0,
        "top_p": body.top_p if body.top_p is not None else 1.0, "truncation": body.truncation or "disabled",
        "user": body.user,
    }


def _input_tokens(body: ResponseRequest, turns: Turns) -> int:
    """cl100k tokens of the instructions and the input's messages (as chat's prompt_tokens)."""
    texts = [body.instructions or "", *turns.system, *turns.earlier, turns.question]
    return sum(count_tokens(text) for text in texts if text)


async def _run(call: Callable[..., T], *args: Any) -> T:
    """File I/O (fsync) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)
