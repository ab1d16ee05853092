"""POST /v1/embeddings driven by the clients that call it: the `openai` SDK (which asks for
base64 unless told otherwise) and LangChain's OpenAIEmbeddings, against a real uvicorn
server; the limits and errors; and that its texts go through the questions' queue, on the
model thread, sharing model calls with questions."""

import base64
import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rag.settings import Settings
from tests.helpers import CORPUS, FakeEmbedder, client_for, running_server

TEXTS = ["How much oil did China import from Russia?", "Arctic shipping lanes", "trade reached $245 billion"]


@pytest.fixture
def served() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def live(built: Settings, served: FakeEmbedder) -> Iterator[str]:
    with running_server(create_app(built, embedder_factory=lambda name: served)) as url:
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def own(texts: Sequence[str]) -> list[list[float]]:
    """The fake model's own vectors of `texts` (deterministic: any instance gives the same)."""
    return FakeEmbedder().encode(texts).tolist()


# ------------------------------------------------------------------ the openai SDK


def test_one_string(live: str, served: FakeEmbedder):
    response = sdk(live).embeddings.create(model="rag", input=TEXTS[0], encoding_format="float")
    assert response.object == "list" and response.model == "rag"
    assert [(e.object, e.index) for e in response.data] == [("embedding", 0)]
    assert response.data[0].embedding == own(TEXTS[:1])[0] and len(response.data[0].embedding) == 64
    assert response.usage.prompt_tokens == response.usage.total_tokens == served.count_tokens(TEXTS[0])


def test_a_list_as_the_sdk_sends_it_by_default(live: str, served: FakeEmbedder):
    """No encoding_format: the SDK asks for base64 and decodes it into floats."""
    response = sdk(live).embeddings.create(model="rag", input=TEXTS)
    assert [e.index for e in response.data] == [0, 1, 2]
    assert [e.embedding for e in response.data] == own(TEXTS)
    assert response.usage.prompt_tokens == sum(served.count_tokens(t) for t in TEXTS)


def test_base64_holds_the_same_float32_values(live: str):
    client = sdk(live)
    floats = client.embeddings.create(model="rag", input=TEXTS, encoding_format="float")
    packed = client.embeddings.create(model="rag", input=TEXTS, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(e.embedding), dtype="<f4").tolist() for e in packed.data]
    assert decoded == [e.embedding for e in floats.data] == own(TEXTS)


def test_the_model_names_accepted(live: str):
    client = sdk(live)
    assert client.embeddings.create(model="fake", input="oil").model == "fake"  # RAG_MODEL, the model's own name
    with pytest.raises(openai.NotFoundError, match="the model 'text-embedding-3-small' does not exist"):
        client.embeddings.create(model="text-embedding-3-small", input="oil")
    with pytest.raises(openai.NotFoundError, match="the model 'rag:notes' does not exist"):
        client.embeddings.create(model="rag:notes", input="oil")
    assert httpx.post(f"{live}/collections", json={"name": "notes"}).status_code == 201
    response = client.embeddings.create(model="rag:notes", input="oil", encoding_format="float")
    assert response.model == "rag:notes" and response.data[0].embedding == own(["oil"])[0]


def test_dimensions_only_the_models_own(live: str):
    client = sdk(live)
    assert len(client.embeddings.create(model="rag", input="oil", dimensions=64).data[0].embedding) == 64
    with pytest.raises(openai.UnprocessableEntityError, match="this model's vectors have 64 dimensions; it cannot "
                                                              "give 32"):
        client.embeddings.create(model="rag", input="oil", dimensions=32)
    assert client.embeddings.create(model="rag", input="oil", user="someone").data  # accepted, ignored


@pytest.mark.parametrize("tokens", [[101, 2054, 102], [[101, 2054], [102]]])
def test_token_arrays_are_refused(live: str, tokens: Any):
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        sdk(live).embeddings.create(model="rag", input=tokens)
    assert refused.value.body["message"].startswith("input: token arrays are not accepted")  # type: ignore[index]
    assert refused.value.body["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(("value", "message"), [
    ("", "input must not be an empty string"),
    ([], "input must not be empty: send a string or a list of strings"),
    (["oil", ""], "input[1] is an empty string"),
    (["oil", 3], "input[1] must be a string"),
    (None, "input must be a string or a list of strings"),
])
def test_empty_or_odd_input_is_refused(live: str, value: Any, message: str):
    r = httpx.post(f"{live}/v1/embeddings", json={"model": "rag", "input": value})
    assert (r.status_code, r.json()["error"]["message"]) == (422, message)


def test_more_texts_than_a_model_call_holds_are_refused(built: Settings):
    with client_for(built.model_copy(update={"max_batch": 4})) as c:
        assert c.post("/v1/embeddings", json={"model": "rag", "input": ["oil"] * 4}).status_code == 200
        r = c.post("/v1/embeddings", json={"model": "rag", "input": ["oil"] * 5})
        assert (r.status_code, r.json()["detail"]) == (
            422, "input holds 5 texts; the limit is 4 a request (RAG_MAX_BATCH): send them in several requests "
                 "(LangChain: chunk_size)")


def test_usage_counts_at_most_the_tokens_the_model_reads(built: Settings):
    fake = FakeEmbedder(max_tokens=16)
    long = " ".join(f"word{i}" for i in range(40))  # 42 tokens: the model reads 16
    with client_for(built, fake) as c:
        body = c.post("/v1/embeddings", json={"model": "rag", "input": [long, "oil gas"]}).json()
    assert body["usage"] == {"prompt_tokens": 16 + 4, "total_tokens": 16 + 4}


# ------------------------------------------------------------------ LangChain


def test_langchain_embeddings_work_offline(live: str, monkeypatch: pytest.MonkeyPatch):
    """OpenAIEmbeddings with check_embedding_ctx_length=False sends the texts, never token
    arrays, and never asks tiktoken for an encoding (which would download one)."""
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    def no_tiktoken(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("LangChain asked tiktoken for an encoding")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    sent: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.read()))

    embeddings = OpenAIEmbeddings(base_url=f"{live}/v1", api_key="x", model="rag",  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False, chunk_size=2,
                                  http_client=httpx.Client(event_hooks={"request": [record]}))
    assert embeddings.embed_documents(TEXTS) == own(TEXTS)
    assert embeddings.embed_query(TEXTS[0]) == own(TEXTS[:1])[0]
    assert sent == [{"model": "rag", "input": TEXTS[:2], "encoding_format": "base64"},
                    {"model": "rag", "input": TEXTS[2:], "encoding_format": "base64"},
                    {"model": "rag", "input": TEXTS[:1], "encoding_format": "base64"}]


# ------------------------------------------------------------------ the questions' queue


class GatedFake(FakeEmbedder):
    """Blocks its second model call (the first is the warm-up) until `gate` is set; records
    each call's texts and the thread it ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.calls: list[tuple[list[str], str]] = []

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append((list(texts), threading.current_thread().name))
        if len(self.calls) == 2:
            self.gate.wait(10)
        return super().encode(texts, batch_size)


def queued(c: TestClient) -> int:
    """Jobs waiting in the engine's queue (questions and texts alike)."""
    return int(c.app.state.engine.batcher._queue.qsize())  # type: ignore[attr-defined]


def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_texts_share_model_calls_with_questions_on_the_model_thread(built: Settings):
    gated = GatedFake()
    with client_for(built, gated) as c, ThreadPoolExecutor(4) as pool:
        first = pool.submit(c.post, "/query", json={"question": "oil imports"})
        wait_for(lambda: len(gated.calls) == 2)  # the model is busy with the first question
        texts = pool.submit(c.post, "/v1/embeddings", json={"model": "rag", "input": ["gas", "coal"]})
        second = pool.submit(c.post, "/query", json={"question": "Arctic shipping"})
        wait_for(lambda: queued(c) == 2)  # both wait behind the busy model
        gated.gate.set()
        responses = [first.result(), texts.result(), second.result()]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert sorted(gated.calls[2][0]) == ["Arctic shipping", "coal", "gas"]  # one model call for both requests
    assert {thread for _, thread in gated.calls[1:]} == {"rag-query_0"}  # the model thread, never the event loop
    assert responses[1].json()["data"][1]["embedding"] == own(["coal"])[0]


def test_a_full_queue_refuses_texts_too(built: Settings):
    gated = GatedFake()
    settings = built.model_copy(update={"max_queue": 1})
    with client_for(settings, gated) as c, ThreadPoolExecutor(4) as pool:
        first = pool.submit(c.post, "/query", json={"question": "oil imports"})
        wait_for(lambda: len(gated.calls) == 2)
        waiting = pool.submit(c.post, "/v1/embeddings", json={"model": "rag", "input": "gas"})
        wait_for(lambda: queued(c) == 1)
        refused = c.post("/v1/embeddings", json={"model": "rag", "input": "coal"})
        gated.gate.set()
        assert first.result().status_code == waiting.result().status_code == 200
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
    assert refused.json()["detail"] == "1 requests are already waiting; retry in a moment"


def test_texts_past_the_deadline_are_a_503(built: Settings):
    gated = GatedFake()
    with client_for(built.model_copy(update={"request_timeout_seconds": 0.3}), gated) as c:
        r = c.post("/v1/embeddings", json={"model": "rag", "input": "gas"})
        gated.gate.set()
    assert (r.status_code, r.headers["retry-after"]) == (503, "1")


class PickyFake(FakeEmbedder):
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if any("\x00" in t for t in texts):
            raise TypeError("the tokenizer cannot take this")
        return super().encode(texts, batch_size)


def test_a_text_the_model_rejects_fails_its_request_alone(built: Settings):
    with client_for(built, PickyFake()) as c:
        r = c.post("/v1/embeddings", json={"model": "rag", "input": ["oil", "nul \x00 byte"]})
        assert (r.status_code, r.json()["detail"]) == (422, "the embedding model cannot encode input[1] (TypeError)")
        assert c.post("/v1/embeddings", json={"model": "rag", "input": ["oil", "gas"]}).status_code == 200


# ------------------------------------------------------------------ the real model


@pytest.mark.model
def test_the_real_models_vectors(tmp_path: Path):
    """What the service answers is what the model gives for the same texts; a text past
    the model's 256 tokens is truncated (usage counts the 256 read)."""
    from rag.encoders.load import load_embedder

    settings = Settings(corpus_dir=CORPUS, index_dir=tmp_path / "index")  # no index needed
    real = load_embedder(settings.model)
    long = " ".join(["Arctic shipping lanes open as the ice retreats."] * 40)
    texts = [TEXTS[0], long, "trade"]
    with running_server(create_app(settings, embedder_factory=lambda name: real)) as url:
        response = sdk(url).embeddings.create(model=settings.model, input=texts)
    got = np.array([e.embedding for e in response.data], dtype=np.float32)
    alone = np.stack([real.encode([t])[0] for t in texts])
    assert got.shape == (3, real.dimension) == (3, 384)
    assert np.allclose(got, alone, atol=1e-5)  # batched with others or alone: the same vectors
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    counts = [real.count_tokens(t) for t in texts]
    assert counts[1] > 256 and response.usage.prompt_tokens == counts[0] + 256 + counts[2]
