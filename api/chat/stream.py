"""Chat completions in OpenAI's shape (`chat.completion` and its stream of
`chat.completion.chunk`), plus our `citations` and Open WebUI `source` events, sent as
server-sent events.

Left out: `n` > 1 choices, logprobs and tool calls.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from api.chat.answers import ChatCitation, source_names
from rag.text import count_tokens


async def in_words(text: str) -> AsyncIterator[str]:
    """An extractive answer streamed a few words at a time, as a model would."""
    words = text.split(" ")
    for i in range(0, len(words), 8):
        yield " ".join(words[i:i + 8]) + (" " if i + 8 < len(words) else "")


async def once(text: str) -> AsyncIterator[str]:
    if text:
        yield text


def sse(events: AsyncIterator[dict[str, Any]],
        on_close: Callable[[], Awaitable[None]] | None = None) -> StreamingResponse:
    """Server-sent events, then [DONE]. `on_close` runs however the stream ends: finished,
    failed, or the client gone (Starlette then cancels or drops this generator)."""
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            # Starlette cancels this task's scope when the client leaves: shield the
            # cleanup, or its first await is cancelled too and the upstream stays open
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]
                if on_close is not None:
                    await on_close()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class Frame:
    """Chat completion objects in the OpenAI shape, plus `citations`. `usage` counts cl100k
    tokens: the request's message texts as the prompt, the text sent as the completion
    (what an upstream model was given, the packed passages, is not counted)."""

    def __init__(self, completion_id: str, created: int, model: str, prompt_tokens: int = 0,
                 include_usage: bool = False):
        self.id, self.created, self.model = completion_id, created, model
        self.prompt_tokens, self.include_usage = prompt_tokens, include_usage

    def usage(self, text: str) -> dict[str, int]:
        completion_tokens = count_tokens(text)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def completion(self, text: str, citations: list[ChatCitation]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": self.usage(text), "citations": [c.model_dump() for c in citations]}

    def chunk(self, delta: dict[str, Any], citations: list[ChatCitation] | None = None,
              finish: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        if self.include_usage:  # as OpenAI's: null on every chunk but the last
            body["usage"] = None
        if citations is not None:  # on the first and the last chunk of a stream
            body["citations"] = [c.model_dump() for c in citations]
        return body

    async def stream_text(self, parts: list[AsyncIterator[str]],
                          citations: list[ChatCitation]) -> AsyncIterator[dict[str, Any]]:
        yield self.chunk({"role": "assistant", "content": ""}, citations)
        for c, name in zip(citations, source_names(citations)):  # Open WebUI numbers them itself
            yield self.chunk({}, event={"type": "source", "data": {
                "source": {"name": name, "url": c.url},
                "document": [c.text],
                "metadata": [{"source": name, "name": name, "url": c.url, "chunk_id": c.chunk_id,
                              "doc_id": c.doc_id, "char_start": c.char_start, "char_end": c.char_end}],
            }})
        sent: list[str] = []
        for part in parts:
            async for text in part:
                sent.append(text)
                yield self.chunk({"content": text})
        yield self.chunk({}, citations, finish="stop")
        if self.include_usage:  # stream_options.include_usage: one more chunk, no choices
            yield {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                   "choices": [], "usage": self.usage("".join(sent))}
