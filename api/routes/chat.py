"""Routes for chat frontends: POST /context and the OpenAI-compatible /v1 models and chat
completions (the chat page is api.routes.page; the upstream model api.chat.upstream).

/v1/chat/completions answers with extractive sentences and [n] markers (no model needed),
or, when RAG_LLM_BASE_URL and RAG_LLM_MODEL are set, streams an upstream
OpenAI-compatible model's answer over the packed context. Either way the Sources list
ends the text (RAG_CHAT_SOURCES: auto leaves it out of streams to Open WebUI, which shows
the source events instead), every response carries `citations`, and a stream also carries
one Open WebUI `source` event per cited passage (each named "title — section", made distinct
where two would clash, so Open WebUI keeps them apart and numbers them itself), attached
to chunks with an empty delta so strict clients skip them. Open WebUI's background task
prompts get their JSON reply without retrieval (api.chat.webui).
"""

import asyncio
import time
import uuid
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.chat.answers import (
    ChatCitation,
    Link,
    chat_citations,
    extractive_answer,
    llm_messages,
    message_texts,
    sources_markdown,
    turns_from,
)
from api.chat.stream import Frame, in_words, once, sse
from api.chat.upstream import (
    UPSTREAM_ANSWER_BYTES,
    completion_text,
    condensed,
    read_capped,
    send_upstream,
    upstream_deltas,
)
from api.chat.webui import sources_in_text, task_reply
from api.deps import EngineDep, PrincipalDep, SettingsDep, check_question, readable
from rag.collections import DEFAULT
from rag.errors import NotFoundError
from rag.search.context import ContextBlock, pack
from rag.settings import Settings
from rag.text import count_tokens
from rag.types import Filters, Mode

router = APIRouter()
SOURCES_HEADING = "\n\n**Sources**\n"


class ContextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    k: int = Field(5, ge=1, le=50)
    max_tokens: int = Field(1500, ge=16, le=100_000, description="cl100k token budget of the block")
    doc_ids: list[str] | None = None
    mode: Mode | None = None
    history: list[str] | None = Field(None, description="earlier user turns, oldest first (as for /query)")
    collection: str = Field(DEFAULT, description="the collection to search")


class ContextResponse(ContextBlock):
    question: str
    max_tokens: int
    answerable: bool
    confidence: float


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, ...: accepted and ignored
    model: str = "rag"
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None


def link_for(request: Request, settings: Settings) -> Link:
    """Passage links open the chat page's document view: /#cite=<doc_id>:<start>-<end>, on
    RAG_PUBLIC_URL when set, else on the request's Host (checked against the allow-list)."""
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    return lambda doc_id, start, end: f"{base}/#cite={doc_id}:{start}-{end}"


@router.post("/context", tags=["chat"])
async def context(body: ContextRequest, engine: EngineDep, settings: SettingsDep,
                  principal: PrincipalDep) -> ContextResponse:
    """The passages packed into one prompt-ready block under a token budget, numbered [n]."""
    readable(principal, body.collection)
    check_question(body.question, settings)
    response = await engine.query(body.question, body.k, Filters(doc_ids=body.doc_ids), body.mode,
                                  history=body.history or (), collection=body.collection)
    # re-tokenising up to 50 passages for a small budget takes tens of ms: not on the loop
    block = await asyncio.get_running_loop().run_in_executor(None, pack, response.passages, body.max_tokens)
    return ContextResponse(question=body.question, max_tokens=body.max_tokens, answerable=response.answerable,
                           confidence=response.confidence, **block.model_dump())


@router.get("/v1/models", tags=["chat"])
def models(settings: SettingsDep, engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    """One model per collection the key can read, for OpenAI clients (Open WebUI users pick a
    collection as they pick a model): `rag` answers from the default collection, `rag:<name>` from <name>."""
    names = engine.collections.names() if engine.collections is not None else [DEFAULT]
    names = [name for name in names if principal.reads(name)]
    return {"object": "list", "data": [{"id": model_id(settings, name), "object": "model", "created": 0,
                                        "owned_by": "rag"} for name in names]}


@router.get("/v1/models/{model}", tags=["chat"])
def model(model: str, settings: SettingsDep, engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    """One of the models `GET /v1/models` lists (OpenAI's `models.retrieve`)."""
    for known in models(settings, engine, principal)["data"]:
        if known["id"] == model:
            return known
    raise NotFoundError(f"the model '{model}' does not exist: GET /v1/models lists them")


def model_id(settings: Settings, collection: str) -> str:
    return settings.chat_model_name if collection == DEFAULT else f"{settings.chat_model_name}:{collection}"


def collection_of(model: str, settings: Settings) -> str:
    """The collection a model id names (`rag:notes` -> notes); any other id: the default."""
    prefix = f"{settings.chat_model_name}:"
    return model.removeprefix(prefix) if model.startswith(prefix) else DEFAULT


@router.post("/v1/chat/completions", tags=["chat"], response_model=None)
async def chat_completions(body: ChatRequest, request: Request, engine: EngineDep, settings: SettingsDep,
                           principal: PrincipalDep) -> dict[str, Any] | StreamingResponse:
    """OpenAI Chat Completions, streaming or not, with citations. Open WebUI's background
    tasks (title, tags, follow-ups, ...) are answered without retrieval (api.chat.webui)."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    collection = readable(principal, collection_of(body.model, settings))  # never another collection's answer
    prompt_tokens = sum(count_tokens(text) for text in message_texts(body.messages))
    frame = Frame(completion_id, created, model_id(settings, collection), prompt_tokens,
                  include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage))
    task = task_reply(body.messages)
    if task is not None:
        if body.stream:
            return sse(frame.stream_text([once(task)], []))
        return frame.completion(task, [])
    question, history = turns_from(body.messages)
    check_question(question, settings)
    searched, history = await condensed(question, history, settings)
    response = await engine.query(searched, settings.chat_k, Filters(), None, history=history,
                                  collection=collection)
    link = link_for(request, settings)
    with_sources = sources_in_text(settings.chat_sources, body.stream, request.headers, body.model_extra or {})
    if not settings.llm_base_url or not settings.llm_model or not response.answerable:
        answer = extractive_answer(response, link)
        text = answer.text if with_sources else without_sources(answer.text, answer.citations)
        if body.stream:
            return sse(frame.stream_text([in_words(text)], answer.citations))
        return frame.completion(text, answer.citations)

    block = pack(response.passages, settings.chat_max_context_tokens)
    citations = chat_citations(block, response.passages, link)
    payload = {"model": settings.llm_model, "messages": llm_messages(question, block), "stream": body.stream}
    client = httpx.AsyncClient(timeout=settings.llm_timeout_seconds)
    if not body.stream:
        async with client:  # closed however this ends: answered, failed, or cancelled
            upstream = await send_upstream(client, settings, payload)
            text = completion_text(await read_capped(upstream, UPSTREAM_ANSWER_BYTES))
        return frame.completion(text + (sources_markdown(citations) if with_sources else ""), citations)
    upstream = await send_upstream(client, settings, payload)

    async def close_upstream() -> None:  # also when the client goes away mid-stream
        await upstream.aclose()
        await client.aclose()

    deltas = upstream_deltas(upstream, settings.llm_total_seconds)
    tail = sources_markdown(citations) if with_sources else ""
    return sse(frame.stream_text([deltas, once(tail)], citations), close_upstream)


def without_sources(text: str, citations: list[ChatCitation]) -> str:
    """An extractive answer's text without its trailing Markdown Sources list."""
    listed = sources_markdown(citations)
    if listed and text.endswith(listed):
        return text[:-len(listed)]
    return text.rsplit(SOURCES_HEADING, 1)[0]

