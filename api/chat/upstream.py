"""The upstream OpenAI-compatible model, when RAG_LLM_BASE_URL and RAG_LLM_MODEL are set:
one request, its body read capped, its stream cut after RAG_LLM_TOTAL_SECONDS, its errors
one UpstreamError whose message never names the configured URL or key; and follow-ups
condensed by it into standalone questions.

Left out: retries (a chat client retries the whole request) and tool calls.
"""

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from rag.errors import UpstreamError
from rag.search.conversation import is_follow_up
from rag.settings import Settings
from rag.text import is_unicode_text

log = logging.getLogger("rag.chat")
UPSTREAM_CUT = " […the language model stopped before finishing its answer]"


UPSTREAM_SLOW = " […the language model took longer than {seconds:g} s; the answer is cut here]"


UPSTREAM_ERROR_BYTES = 2048  # of an upstream error body: enough for its message, never a flood


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


UPSTREAM_ANSWER_BYTES = 8 << 20  # of a non-streamed answer (8 MiB): far past any real completion


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
            upstream = await send_upstream(client, settings, payload)
            rewritten = " ".join(completion_text(await read_capped(upstream, UPSTREAM_ERROR_BYTES)).split())
    except (TimeoutError, UpstreamError, httpx.HTTPError) as exc:
        log.info("condensing a follow-up fell back to the heuristic: %r", exc)
        return question, history
    if not rewritten or len(rewritten) > settings.max_question_chars or not is_unicode_text(rewritten):
        return question, history
    return rewritten, []


async def send_upstream(client: httpx.AsyncClient, settings: Settings, payload: dict[str, Any]) -> httpx.Response:
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
        detail = await read_capped(upstream, UPSTREAM_ERROR_BYTES)
        message = _redact(detail[:300].decode("utf-8", "replace"), settings)
    except UpstreamError:
        message = "(no readable body)"
    finally:
        await client.aclose()
    raise UpstreamError(f"upstream model answered {upstream.status_code}: {message}")


async def read_capped(upstream: httpx.Response, limit: int) -> bytes:
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


def completion_text(body: bytes) -> str:
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


async def upstream_deltas(upstream: httpx.Response, total_seconds: float) -> AsyncIterator[str]:
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
