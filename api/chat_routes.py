"""Routes for chat frontends: POST /context, the OpenAI-compatible /v1 API, the chat page.

/v1/chat/completions answers with extractive sentences and [n] markers (no model needed),
or, when RAG_LLM_BASE_URL and RAG_LLM_MODEL are set, streams an upstream
OpenAI-compatible model's answer over the packed context. Either way the Sources list
ends the text (RAG_CHAT_SOURCES: auto leaves it out of streams to Open WebUI, which shows
the source events instead), every response carries `citations`, and a stream also carries
one Open WebUI `source` event per cited passage (each named "[n] title — section", so Open
WebUI keeps them apart), attached to chunks with an empty delta so strict clients skip
them. Open WebUI's background task prompts get their JSON reply without retrieval
(rag/webui.py).
"""

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.chat_stream import Frame, in_words, once, sse
from api.routes import EngineDep, SettingsDep, check_question
from rag.chat import (
    ChatCitation,
    Link,
    chat_citations,
    extractive_answer,
    llm_messages,
    message_texts,
    sources_markdown,
    turns_from,
)
from rag.collections import DEFAULT
from rag.errors import NotFoundError, UpstreamError
from rag.search.context import ContextBlock, pack
from rag.search.conversation import is_follow_up
from rag.settings import Settings
from rag.text import count_tokens, is_unicode_text
from rag.types import Filters, Mode
from rag.webui import sources_in_text, task_reply

router = APIRouter()
PAGE = Path(__file__).parent / "static" / "index.html"
UPSTREAM_CUT = " […the language model stopped before finishing its answer]"
UPSTREAM_SLOW = " […the language model took longer than {seconds:g} s; the answer is cut here]"
UPSTREAM_ERROR_BYTES = 2048  # of an upstream error body: enough for its message, never a flood
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
UPSTREAM_ANSWER_BYTES = 8 << 20  # of a non-streamed answer (8 MiB): far past any real completion
SOURCES_HEADING = "\n\n**Sources**\n"
log = logging.getLogger("rag.chat")


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
async def context(body: ContextRequest, engine: EngineDep, settings: SettingsDep) -> ContextResponse:
    """The passages packed into one prompt-ready block under a token budget, numbered [n]."""
    check_question(body.question, settings)
    response = await engine.query(body.question, body.k, Filters(doc_ids=body.doc_ids), body.mode,
                                  history=body.history or (), collection=body.collection)
    # re-tokenising up to 50 passages for a small budget takes tens of ms: not on the loop
    block = await asyncio.get_running_loop().run_in_executor(None, pack, response.passages, body.max_tokens)
    return ContextResponse(question=body.question, max_tokens=body.max_tokens, answerable=response.answerable,
                           confidence=response.confidence, **block.model_dump())


@router.get("/v1/models", tags=["chat"])
def models(settings: SettingsDep, engine: EngineDep) -> dict[str, Any]:
    """One model per collection, for OpenAI clients (Open WebUI users pick a collection as
    they pick a model): `rag` answers from the default collection, `rag:<name>` from <name>."""
    names = engine.collections.names() if engine.collections is not None else [DEFAULT]
    return {"object": "list", "data": [{"id": model_id(settings, name), "object": "model", "created": 0,
                                        "owned_by": "rag"} for name in names]}


@router.get("/v1/models/{model}", tags=["chat"])
def model(model: str, settings: SettingsDep, engine: EngineDep) -> dict[str, Any]:
    """One of the models `GET /v1/models` lists (OpenAI's `models.retrieve`)."""
    for known in models(settings, engine)["data"]:
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
async def chat_completions(body: ChatRequest, request: Request, engine: EngineDep,
                           settings: SettingsDep) -> dict[str, Any] | StreamingResponse:
    """OpenAI Chat Completions, streaming or not, with citations. Open WebUI's background
    tasks (title, tags, follow-ups, ...) are answered without retrieval (rag.webui)."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    collection = collection_of(body.model, settings)
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
            upstream = await _send_upstream(client, settings, payload)
            text = _completion_text(await _read_capped(upstream, UPSTREAM_ANSWER_BYTES))
        return frame.completion(text + (sources_markdown(citations) if with_sources else ""), citations)
    upstream = await _send_upstream(client, settings, payload)

    async def close_upstream() -> None:  # also when the client goes away mid-stream
        await upstream.aclose()
        await client.aclose()

    deltas = _upstream_deltas(upstream, settings.llm_total_seconds)
    tail = sources_markdown(citations) if with_sources else ""
    return sse(frame.stream_text([deltas, once(tail)], citations), close_upstream)


CONDENSE_PROMPT = (
    "Rewrite the user's last question so that it can be understood without the conversation: "
    "keep its meaning, name what its pronouns refer to, and answer with the rewritten question only.")


async def condensed(question: str, history: list[str], settings: Settings) -> tuple[str, list[str]]:
    """With an upstream model configured, a follow-up is rewritten by it into a standalone
    question (searched without history), within RAG_LLM_CONDENSE_SECONDS; on a timeout, an
    error or an unusable answer, the question is searched with its history as without a
    model (rag.search.conversation's heuristic). A self-contained question is not sent."""
    if not (settings.llm_base_url and settings.llm_model and history and is_follow_up(question, history[-1])):
        return question, history
    turns = [{"role": "user", "content": turn} for turn in history[-settings.max_history_turns:]]
    payload = {"model": settings.llm_model, "stream": False, "messages": [
        {"role": "system", "content": CONDENSE_PROMPT}, *turns, {"role": "user", "content": question}]}
    client = httpx.AsyncClient(timeout=settings.llm_condense_seconds)
    try:
        async with client, asyncio.timeout(settings.llm_condense_seconds):
            upstream = await _send_upstream(client, settings, payload)
            rewritten = " ".join(_completion_text(await _read_capped(upstream, UPSTREAM_ERROR_BYTES)).split())
    except (TimeoutError, UpstreamError, httpx.HTTPError) as exc:
        log.info("condensing a follow-up fell back to the heuristic: %r", exc)
        return question, history
    if not rewritten or len(rewritten) > settings.max_question_chars or not is_unicode_text(rewritten):
        return question, history
    return rewritten, []


def without_sources(text: str, citations: list[ChatCitation]) -> str:
    """An extractive answer's text without its trailing Markdown Sources list."""
    listed = sources_markdown(citations)
    if listed and text.endswith(listed):
        return text[:-len(listed)]
    return text.rsplit(SOURCES_HEADING, 1)[0]


async def _send_upstream(client: httpx.AsyncClient, settings: Settings, payload: dict[str, Any]) -> httpx.Response:
    """The upstream response (streamed: its body is read by the caller, capped), status
    200; else UpstreamError. Messages never name the configured URL or key (the server
    log has the URL)."""
    assert settings.llm_base_url is not None
    url = settings.llm_base_url.rstrip("/") + "/chat/completions"
    try:
        upstream = await client.send(client.build_request("POST", url, json=payload, headers=_auth(settings)),
                                     stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        log.warning("upstream model at %s unreachable: %r", url, exc)
        raise UpstreamError(f"upstream model unreachable ({type(exc).__name__})") from exc
    if upstream.status_code == 200:
        return upstream
    try:
        detail = await _read_capped(upstream, UPSTREAM_ERROR_BYTES)
        message = _redact(detail[:300].decode("utf-8", "replace"), settings)
    except UpstreamError:
        message = "(no readable body)"
    finally:
        await client.aclose()
    raise UpstreamError(f"upstream model answered {upstream.status_code}: {message}")


async def _read_capped(upstream: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body; the response is closed after."""
    body = bytearray()
    try:
        async for part in upstream.aiter_bytes():
            body += part
            if len(body) >= limit:
                break
    except httpx.HTTPError as exc:
        raise UpstreamError(f"upstream model failed while answering ({type(exc).__name__})") from exc
    finally:
        await upstream.aclose()
    return bytes(body[:limit])


def _completion_text(body: bytes) -> str:
    try:
        text = json.loads(body)["choices"][0]["message"]["content"] or ""
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamError("upstream model sent an answer that is not a chat completion") from exc
    return valid_text(text)


def valid_text(text: str) -> str:
    """Upstream text as valid Unicode: a lone surrogate (an emoji split across frames by
    some servers) becomes U+FFFD instead of failing the response."""
    return LONE_SURROGATE.sub("\ufffd", text)  # a str holds pairs as one code point: any left is lone


def _redact(text: str, settings: Settings) -> str:
    """Upstream bodies may quote our URL or key back: never pass them on."""
    secrets = [settings.llm_base_url or "", settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""]
    for secret in filter(None, secrets):
        text = text.replace(secret, "[redacted]")
    return re.sub(r"https?://\S+", "[url]", text)


def _auth(settings: Settings) -> dict[str, str]:
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _upstream_deltas(upstream: httpx.Response, total_seconds: float) -> AsyncIterator[str]:
    """The content deltas of an upstream SSE stream, cut after `total_seconds` in all (a
    per-read timeout alone lets a model that trickles bytes hold a stream forever)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_seconds
    lines = upstream.aiter_lines()
    while True:
        try:
            line = await asyncio.wait_for(anext(lines), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return
        except TimeoutError:
            yield UPSTREAM_SLOW.format(seconds=total_seconds)
            return
        except httpx.HTTPError:  # the model died mid-answer: say so, and the Sources still follow
            yield UPSTREAM_CUT
            return
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        try:
            choices = json.loads(line[5:]).get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
        except (ValueError, AttributeError, IndexError, KeyError, TypeError):
            continue  # not a chunk we understand: skip it, as OpenAI clients do
        if isinstance(content, str) and content:
            yield valid_text(content)


def _csp(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script and style."""
    def digest(tag: str) -> str:
        found = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        code = found.group(1) if found else ""
        return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"

    return (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


PAGE_HTML = PAGE.read_bytes()
PAGE_HEADERS = {"Content-Security-Policy": _csp(PAGE_HTML.decode()), "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


@router.get("/", include_in_schema=False)
def page() -> Response:
    """The chat page: no build step, plain HTML and JavaScript."""
    return Response(PAGE_HTML, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
