"""OpenAI's Embeddings API: POST /v1/embeddings, the service's own embedding model (the
one its index was built with) for any client that speaks OpenAI (the `openai` SDK,
LangChain's `OpenAIEmbeddings`, Open WebUI's embedding setting).

- `model`: the chat model ids (`rag`, and `rag:<collection>` for a collection the key can
  read: every one embeds with the same model) or the embedding model's own name
  (RAG_MODEL, e.g. `all-MiniLM-L6-v2`); any other: 404, as OpenAI answers an unknown model.
- `input`: a string or a list of at most RAG_MAX_BATCH strings (one model call's worth),
  none empty; the request body's size limit (RAG_MAX_BODY_BYTES) bounds them too. A text
  longer than the model's max_tokens is truncated to it, as the model does when the index
  is built (OpenAI refuses one instead); `usage` counts the tokens the model read.
  Token arrays (a list of ints, or of lists of ints) are refused: they are tiktoken ids,
  which this model does not read.
- `encoding_format`: `float` (default) or `base64` (the little-endian float32 bytes, as
  OpenAI's; the `openai` SDK asks for it unless told otherwise and decodes it).
- `dimensions`: only the model's own (vectors are never shortened); `user`: ignored.
- Vectors are L2-normalised float32, as those in the index. Texts wait in the questions'
  queue and share their model calls (api.engine.batching): the queue's bound (503 with
  Retry-After when full) and the request deadline hold as for a question.

Any valid key may call it: a vector reveals no collection's data. Errors are 422 where
OpenAI says 400 (a domain error's status: api.errors).

Left out: token-array input, `dimensions` below the model's (the model was not trained to
be cut), several embedding models.
"""

import base64
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from api.deps import ERRORS, EngineDep, PrincipalDep, SettingsDep
from api.engine.lifecycle import Engine
from rag.access.gate import Principal
from rag.collections import DEFAULT
from rag.errors import BadQueryError, NotFoundError, NotReadyError
from rag.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai embeddings"])
RENDER_OFF_LOOP = 8  # vectors past which the JSON is written on a thread (64 x 384 floats: ~40 ms; 8: ~3)

# what OpenAI's schema says `input` may be; read by `texts_of`, whose errors name the problem
# (pydantic's, for a union, list every member's)
INPUT_SCHEMA = TypeAdapter(StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]).json_schema()


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "rag", "input": ["How much oil did China import from Russia?"]}]})

    model: str = Field(description="`rag`, `rag:<collection>` or the embedding model's name (RAG_MODEL)")
    input: Annotated[Any, WithJsonSchema(INPUT_SCHEMA), Field(
        description="a string, or a list of at most RAG_MAX_BATCH strings; none empty; token arrays are refused")]
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's little-endian float32 bytes")
    dimensions: int | None = Field(None, ge=1, description="accepted only as the model's own dimension")
    user: str | None = Field(None, description="accepted and ignored")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the vector, or its float32 bytes in base64")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="the embedding model's tokens read (special tokens included)")
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


@router.post("/embeddings", responses=ERRORS, response_model=EmbeddingList)
async def create_embeddings(body: EmbeddingRequest, engine: EngineDep, settings: SettingsDep,
                            principal: PrincipalDep) -> Response:
    """Vectors of the texts by the service's embedding model, in OpenAI's shape."""
    await check_model(body.model, engine, settings, principal)
    texts = texts_of(body.input, settings.max_batch)
    embedder = engine.embedder
    if engine.batcher.worker_error is not None:
        raise NotReadyError(engine.batcher.worker_error)
    if embedder is None:
        raise NotReadyError(engine.not_ready or "the embedding model is not loaded")
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise BadQueryError(f"dimensions: this model's vectors have {embedder.dimension} dimensions; it cannot "
                            f"give {body.dimensions} (leave dimensions out, or send {embedder.dimension})")
    embedded = await engine.batcher.embed(texts)
    args = (embedded.vectors, body.encoding_format, body.model, embedded.tokens)
    content = await run_in_threadpool(render, *args) if len(texts) > RENDER_OFF_LOOP else render(*args)
    return Response(content, media_type="application/json")


async def check_model(model: str, engine: Engine, settings: Settings, principal: Principal) -> None:
    """`rag`, the embedding model's name, or `rag:<collection>` for a collection the key
    reads and the service serves; else the 404 of a model that does not exist."""
    own = {settings.chat_model_name, settings.model} | ({engine.embedder.name} if engine.embedder else set())
    if model in own:
        return
    prefix = f"{settings.chat_model_name}:"
    name = model.removeprefix(prefix)
    collections = engine.collections
    if (model.startswith(prefix) and name != DEFAULT and principal.reads(name) and collections is not None
            and name in await run_in_threadpool(collections.names)):  # names() reads the collections' folder
        return
    raise NotFoundError(f"the model '{model:.100}' does not exist: use '{settings.chat_model_name}' (or "
                        f"'{settings.chat_model_name}:<collection>', or '{settings.model}')")


def texts_of(value: Any, limit: int) -> list[str]:
    """The texts to embed: a string or a list of them, not empty, at most `limit` of them;
    token arrays are refused, naming what they are."""
    if isinstance(value, str):
        if not value:
            raise BadQueryError("input must not be an empty string")
        return [value]
    if not isinstance(value, list):
        raise BadQueryError("input must be a string or a list of strings")
    if not value:
        raise BadQueryError("input must not be empty: send a string or a list of strings")
    if all(map(is_token, value)) or all(isinstance(item, list) and all(map(is_token, item)) for item in value):
        raise BadQueryError("input: token arrays are not accepted (they are tiktoken ids; this model reads text): "
                            "send a string or a list of strings")
    if len(value) > limit:
        raise BadQueryError(f"input holds {len(value)} texts; the limit is {limit} a request (RAG_MAX_BATCH): "
                            "send them in several requests (LangChain: chunk_size)")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise BadQueryError(f"input[{i}] must be a string")
        if not text:
            raise BadQueryError(f"input[{i}] is an empty string")
    return value


def is_token(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def render(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> bytes:
    """The response body (json.dumps of Python floats: the float32 values exactly)."""
    if encoding_format == "base64":
        rows: list[list[float] | str] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    return json.dumps({"object": "list", "model": model,
                       "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()
