"""The Response object and its stream of events, from one generator: a streamed response
sends every event (`event: <type>` and `data: <json>`, each with its `sequence_number`),
a plain one is the `response` of the last event, so the two cannot differ.

The events, in order (openai-python's types/responses/response_*_event.py):
    response.created, response.in_progress                     (status in_progress, no output)
    response.output_item.added                                 file_search_call, in_progress
    response.file_search_call.in_progress / searching / completed
    response.output_item.done                                  the call, its results if included
    response.output_item.added                                 the message, in_progress
    response.content_part.added                                an empty output_text
    response.output_text.delta ... with response.output_text.annotation.added after the
        delta that holds its index
    response.output_text.done, response.content_part.done, response.output_item.done
    response.completed (or response.incomplete past max_output_tokens)

The search has run before the first event (its errors are HTTP errors, not events); the
call's events say so at once. An error after the stream started (storing failed) is an
`error` event, and the stream ends there.

Left out: `obfuscation` padding on deltas (stream_options.include_obfuscation) and
logprobs (always empty).
"""

import copy
import itertools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from api.errors import scrub_paths
from api.responses.citations import Citer
from rag.errors import RagError
from rag.text import count_tokens


@dataclass
class Draft:
    """What a response is made of besides its text."""

    id: str
    model: str
    fields: dict[str, Any]  # the request's settings as the Response object echoes them
    search_item: dict[str, Any] | None  # the completed file_search_call, results included
    include_results: bool
    input_tokens: int
    max_output_tokens: int | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))
    message_id: str = ""

    def response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "background": False, "error": None, "incomplete_details": None, "model": self.model,
                "output": output, "usage": None, **self.fields, **extra}


def shaped(response: dict[str, Any], with_results: bool) -> dict[str, Any]:
    """The response as shown: file search results only when asked for (`include`)."""
    if with_results:
        return response
    shown = copy.copy(response)
    shown["output"] = [{**item, "results": None} if item.get("type") == "file_search_call" else item
                       for item in response["output"]]
    return shown


async def events(draft: Draft, pieces: AsyncIterator[str], citer: Citer,
                 on_done: Callable[[dict[str, Any]], Awaitable[None]]) -> AsyncGenerator[dict[str, Any], None]:
    """Every event of the response; `on_done` gets the final response (results included)
    before `response.completed` is sent."""
    sequence = itertools.count()

    def event(kind: str, **body: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(sequence), **body}

    yield event("response.created", response=draft.response("in_progress", []))
    yield event("response.in_progress", response=draft.response("in_progress", []))
    output: list[dict[str, Any]] = []
    if draft.search_item is not None:
        call_id = draft.search_item["id"]
        yield event("response.output_item.added", output_index=0,
                    item={**draft.search_item, "status": "in_progress", "results": None})
        for step in ("in_progress", "searching", "completed"):
            yield event(f"response.file_search_call.{step}", output_index=0, item_id=call_id)
        output.append(draft.search_item)
        yield event("response.output_item.done", output_index=0, item=shaped_item(draft.search_item, draft))
    at = {"output_index": len(output), "item_id": draft.message_id}
    message: dict[str, Any] = {"id": draft.message_id, "type": "message", "role": "assistant", "status": "in_progress",
               "content": []}
    yield event("response.output_item.added", output_index=at["output_index"], item=message)
    yield event("response.content_part.added", **at, content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    text: list[str] = []
    annotations: list[dict[str, Any]] = []
    cut = False
    async with aclosing(_then_finish(pieces)) as flushed:
        async for piece in flushed:
            clean, added = citer.feed(piece) if piece is not None else citer.finish()
            if clean and draft.max_output_tokens is not None:
                sent = "".join(text)
                clean, cut = within(sent, clean, draft.max_output_tokens)
                added = [a for a in added if a["index"] <= len(sent) + len(clean)]
            if clean:
                text.append(clean)
                yield event("response.output_text.delta", **at, content_index=0, delta=clean, logprobs=[])
            for annotation in added:
                yield event("response.output_text.annotation.added", **at, content_index=0,
                            annotation_index=len(annotations), annotation=annotation)
                annotations.append(annotation)
            if cut:
                break
    full = "".join(text)
    part = {"type": "output_text", "text": full, "annotations": annotations, "logprobs": []}
    yield event("response.output_text.done", **at, content_index=0, text=full, logprobs=[])
    yield event("response.content_part.done", **at, content_index=0, part=part)
    status = "incomplete" if cut else "completed"
    message = {**message, "status": status, "content": [part]}
    yield event("response.output_item.done", output_index=at["output_index"], item=message)
    output.append(message)
    output_tokens = count_tokens(full)
    usage = {"input_tokens": draft.input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": draft.input_tokens + output_tokens}
    final = draft.response(status, output, usage=usage, completed_at=None if cut else int(time.time()),
                           incomplete_details={"reason": "max_output_tokens"} if cut else None)
    await on_done(final)
    yield event(f"response.{status}", response=shaped(final, draft.include_results))


def within(sent: str, clean: str, budget: int) -> tuple[str, bool]:
    """The most words of `clean` that keep `sent + clean` within `budget` tokens, and whether
    any were left out (counted on the whole text: a stream and a plain response cut alike)."""
    if count_tokens(sent + clean) <= budget:
        return clean, False
    words = clean.split(" ")
    low, high = 0, len(words) - 1  # words[:low] fits; words[:high + 1] does not
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(sent + " ".join(words[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]), True


def shaped_item(item: dict[str, Any], draft: Draft) -> dict[str, Any]:
    return item if draft.include_results else {**item, "results": None}


async def _then_finish(pieces: AsyncIterator[str]) -> AsyncGenerator[str | None, None]:
    """The pieces, then None (time to flush what the Citer holds)."""
    try:
        async for piece in pieces:
            yield piece
        yield None
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]


def event_stream(stream: AsyncGenerator[dict[str, Any], None],
                 on_close: Callable[[], Awaitable[None]] | None = None) -> StreamingResponse:
    """The events as server-sent events, as OpenAI sends them (no [DONE]). `on_close` runs
    however the stream ends: finished, failed, or the client gone."""
    async def body() -> AsyncIterator[str]:
        last = -1
        try:
            async for event in stream:
                last = event["sequence_number"]
                yield f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
        except RagError as exc:  # after the first byte: an error event, not a status code
            error = {"type": "error", "sequence_number": last + 1, "code": type(exc).__name__,
                     "message": scrub_paths(str(exc)), "param": None}
            yield f"event: error\ndata: {json.dumps(error, ensure_ascii=False)}\n\n"
        finally:
            with anyio.CancelScope(shield=True):  # as api.chat.stream.sse: the cleanup must run
                await stream.aclose()
                if on_close is not None:
                    await on_close()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
