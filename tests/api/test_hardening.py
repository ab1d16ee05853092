"""No input gets a 5xx, and one client's bad request never fails another's: batch
isolation, lone surrogates, empty filters, chat content parts, reload failures of any
kind, back-pressure and deadlines, auth edge cases, browser-facing headers, and error
messages without server paths. Fake model; TestClient unless a real socket matters."""

import asyncio
import json
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

import rag.stores.factory
import rag.stores.local.builds
from api.app import create_app
from api.chat.stream import sse
from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import BASE_URL, FakeEmbedder, client_for, running_server

QUESTION = "What was the value of trade between China and Russia in 2024?"
POISON = "poison"


class PickyFake(FakeEmbedder):
    """Raises, as a real tokenizer does on text it cannot take, whenever a batch holds a
    question with the marked word; slow enough that concurrent questions share batches."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.batches.append(len(texts))
        time.sleep(0.01)
        if any(POISON in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return super().encode(texts, batch_size)


# ------------------------------------------------------------------ 1. batch isolation


def test_a_question_the_model_rejects_fails_alone(built: Settings):
    picky = PickyFake()
    questions = [f"{POISON} question {i}" if i % 4 == 0 else f"trade oil gas question {i}" for i in range(32)]
    with client_for(built, picky) as c, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda q: c.post("/query", json={"question": q, "k": 2}), questions))
    for question, r in zip(questions, responses):
        if POISON in question:
            assert (r.status_code, r.json()) == (
                422, {"detail": "the embedding model cannot encode this question (TypeError)"})
        else:
            assert r.status_code == 200 and r.json()["question"] == question
    assert max(picky.batches) > 1  # the bad questions really shared batches with good ones


@pytest.mark.parametrize("path", ["/query", "/context"])
def test_lone_surrogate_is_a_422_even_alone(client: TestClient, path: str):
    body = b'{"question": "trade \\ud800"}'
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "lone UTF-16 surrogate" in r.json()["detail"]
    pair = b'{"question": "trade \\ud83d\\ude00"}'  # an escaped emoji is a valid pair
    assert client.post(path, content=pair, headers={"content-type": "application/json"}).status_code == 200


def test_lone_surrogate_in_a_chat_message_is_a_422(client: TestClient):
    body = b'{"model": "rag", "messages": [{"role": "user", "content": "x \\udc80 y"}]}'
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


def test_library_refuses_a_lone_surrogate_too(built: Settings):
    from rag.errors import BadQueryError
    from rag.service import retriever_for
    from rag.stores.local.store import open_local

    retriever = retriever_for(built, open_local(built.index_dir), FakeEmbedder())
    with pytest.raises(BadQueryError, match="lone surrogate"):
        retriever.query("trade \ud800")


# ------------------------------------------------------------------ 2. empty filter lists


@pytest.mark.parametrize("field", ["doc_ids", "sources", "sections"])
def test_an_empty_filter_list_is_a_422(client: TestClient, field: str):
    r = client.post("/query", json={"question": "x", field: []})
    assert (r.status_code, r.json()) == (422, {"detail": f"{field} is empty: leave it out (or null) to search "
                                                         "everything"})


def test_an_empty_doc_filter_on_context_is_a_422(client: TestClient):
    r = client.post("/context", json={"question": "x", "doc_ids": []})
    assert r.status_code == 422 and r.json()["detail"].startswith("doc_ids is empty")


def test_fusion_of_no_candidates_is_empty():
    from rag.search.fusion import fuse
    from rag.stores.base import ranking
    from rag.types import DEFAULT_FUSION

    nothing = ranking(np.full(3, -np.inf), 10)  # every chunk filtered out
    rows, fused = fuse(nothing, nothing, DEFAULT_FUSION)
    assert len(rows) == len(fused) == 0


# ------------------------------------------------------------------ 3. chat content parts


@pytest.mark.parametrize(("content", "detail"), [
    ([{"type": "text", "text": 5}], "messages[0].content[0].text must be a string"),
    ([{"type": "text", "text": None}], "messages[0].content[0].text must be a string"),
    (["just a string"], "messages[0].content[0] must be an object with a 'type'"),
    (7, "messages[0].content must be a string or a list of content parts"),
])
def test_bad_chat_content_parts_are_a_422(client: TestClient, content: Any, detail: str):
    r = client.post("/v1/chat/completions", json={"model": "rag", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 422
    assert r.json() == {"detail": detail, "error": {"message": detail, "type": "invalid_request_error", "code": 422}}


def test_good_content_parts_still_work(client: TestClient):
    r = client.post("/v1/chat/completions", json={"model": "rag", "messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]})
    assert r.status_code == 200 and r.json()["citations"]


# ------------------------------------------------------------------ 5, 6. reload robustness


def test_any_load_failure_is_reported_and_the_watcher_survives(built: Settings, monkeypatch):
    real_load = rag.stores.factory.open_store
    calls = {"n": 0}

    def flaky_load(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first reload after start-up dies with a non-domain error
            raise ValueError("a bug in the loader")
        return real_load(*args, **kwargs)

    monkeypatch.setattr("api.engine.lifecycle.open_store", flaky_load)
    with client_for(built.model_copy(update={"reload_poll_seconds": 0.05})) as c:
        first = c.get("/ready").json()["build_id"]
        build_index(built, FakeEmbedder(), force=True)
        _wait_for(lambda: c.get("/ready").json().get("reload_error"))
        assert c.get("/ready").json()["reload_error"] == "ValueError: a bug in the loader"
        assert c.post("/query", json={"question": QUESTION}).status_code == 200
        build_index(built, FakeEmbedder(), force=True)  # the watcher is alive: it takes the next build
        _wait_for(lambda: c.get("/ready").json()["build_id"] != first)
        assert c.get("/ready").json()["reload_error"] is None


def test_admin_reload_of_a_failing_build_is_a_clean_409(built: Settings, monkeypatch):
    with client_for(built.model_copy(update={"reload_poll_seconds": 0})) as c:
        monkeypatch.setattr("api.engine.lifecycle.open_store", lambda *a, **k: (_ for _ in ()).throw(MemoryError("boom")))
        build_index(built, FakeEmbedder(), force=True)
        r = c.post("/admin/reload")
        assert r.status_code == 409 and "MemoryError: boom" in r.json()["detail"]
        assert c.post("/query", json={"question": QUESTION}).status_code == 200


def test_start_up_survives_a_loader_crash(built: Settings, monkeypatch):
    monkeypatch.setattr("api.engine.lifecycle.open_store", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with client_for(built.model_copy(update={"reload_poll_seconds": 0})) as c:
        r = c.get("/ready")
        assert (r.status_code, r.json()) == (503, {"detail": "RuntimeError: no"})
        assert c.get("/health").status_code == 200


@pytest.mark.parametrize("error", ["busy", "storage"])
def test_a_transient_load_error_is_retried_by_the_next_poll(built: Settings, monkeypatch, error: str):
    from rag.errors import IndexBusyError, StorageError

    real_load = rag.stores.factory.open_store
    calls = {"n": 0}

    def busy_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            if error == "busy":
                raise IndexBusyError("the index changed while it was being read; retry")
            raise StorageError("cannot read index at x: Too many open files") from OSError(24, "EMFILE")
        return real_load(*args, **kwargs)

    monkeypatch.setattr("api.engine.lifecycle.open_store", busy_once)
    with client_for(built.model_copy(update={"reload_poll_seconds": 0.05})) as c:
        first = c.get("/ready").json()["build_id"]
        build_index(built, FakeEmbedder(), force=True)  # one build only: a retry must load it
        _wait_for(lambda: c.get("/ready").json()["build_id"] != first)
    assert calls["n"] >= 3


def _wait_for(condition: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ------------------------------------------------------------------ 8. the upstream model


def upstream_app(status: int = 200, body: bytes = b"", trickle_seconds: float | None = None) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        if status != 200:
            return Response(body, status_code=status)

        async def slow() -> Any:
            while True:  # one token now and then, forever: only a total deadline ends it
                chunk = {"choices": [{"delta": {"content": "tick "}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(trickle_seconds or 0.05)

        return StreamingResponse(slow(), media_type="text/event-stream")

    return app


def test_upstream_errors_never_echo_the_url_or_key_and_are_capped(built: Settings):
    with running_server(upstream_app(500, b"secret-key at http://internal:9/v1 " + b"x" * 100_000)) as up:
        settings = built.model_copy(update={"llm_base_url": f"{up}/v1", "llm_model": "m",
                                            "llm_api_key": SecretStr("secret-key")})
        with client_for(settings) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 502
    detail = r.json()["detail"]
    assert detail.startswith("upstream model answered 500: [redacted] at [url] xxx") and len(detail) < 400
    assert up not in r.text and "secret-key" not in r.text
    assert r.json()["error"]["type"] == "server_error"


def test_a_trickling_upstream_stream_is_cut_at_the_total_deadline(built: Settings):
    with running_server(upstream_app(trickle_seconds=0.05)) as up:
        settings = built.model_copy(update={"llm_base_url": f"{up}/v1", "llm_model": "m", "llm_total_seconds": 0.5})
        started = time.monotonic()
        with client_for(settings) as c, c.stream("POST", "/v1/chat/completions", json={
                "stream": True, "messages": [{"role": "user", "content": QUESTION}]}) as r:
            lines = [line for line in r.iter_lines() if line]
    assert time.monotonic() - started < 5
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in lines[:-1])
    assert "tick " in text and "took longer than 0.5 s; the answer is cut here" in text and "**Sources**" in text


def test_a_stream_cancelled_as_starlette_does_still_closes_the_upstream():
    """Starlette cancels the response's task group when the client leaves; anyio then
    cancels every await in that scope, cleanup included, unless the cleanup is shielded."""
    import anyio

    closed: list[str] = []

    async def events() -> Any:
        for i in range(1000):
            await anyio.sleep(0.01)
            yield {"i": i}

    async def on_close() -> None:
        await anyio.sleep(0)  # closing an httpx response awaits too
        closed.append("upstream")

    async def client_leaves() -> None:
        body = sse(events(), on_close).body_iterator
        async with anyio.create_task_group() as group:
            async def consume() -> None:
                async for _ in body:
                    pass

            group.start_soon(consume)
            await anyio.sleep(0.05)
            group.cancel_scope.cancel()

    anyio.run(client_leaves)
    assert closed == ["upstream"]


# ------------------------------------------------------------------ 9. auth


def test_an_empty_or_non_ascii_api_key_refuses_to_start():
    with pytest.raises(ValidationError, match="RAG_API_KEY is set but empty"):
        Settings(api_key=SecretStr(""))
    with pytest.raises(ValidationError, match="RAG_API_KEY is set but empty"):
        Settings(api_key=SecretStr("   "))
    with pytest.raises(ValidationError, match="printable ASCII"):
        Settings(api_key=SecretStr("clé"))


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    """Every operation of the schema, plus what FastAPI serves itself (docs, schema)."""
    out = [(method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations]
    out += [(method, route.path) for route in app.routes for method in getattr(route, "methods", None) or ()
            if method != "HEAD"]
    return sorted({(m, p.replace("{doc_id}", "fp-china-russia-axis").replace("{chunk_id}", "x")) for m, p in out})


def test_every_route_but_health_and_the_page_needs_the_key(built: Settings):
    settings = built.model_copy(update={"api_key": SecretStr("k3y")})
    with client_for(settings) as c:
        routes = every_route(c.app)  # type: ignore[arg-type]
        assert {("POST", "/v1/chat/completions"), ("POST", "/context"), ("GET", "/chunks/x"),
                ("GET", "/documents/fp-china-russia-axis"), ("GET", "/redoc")} <= set(routes)
        for method, path in routes:
            r = c.request(method, path, json={})
            if path in ("/health", "/"):
                assert r.status_code == 200, path
            else:
                assert r.status_code == 401, (method, path)
        assert c.get("/documents", headers={"Authorization": "Bearer k3y"}).status_code == 200


# ------------------------------------------------------------------ 10. back-pressure, deadlines


class SlowFake(FakeEmbedder):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        time.sleep(self.seconds)
        return super().encode(texts, batch_size)


def test_a_full_queue_is_a_503_with_retry_after(built: Settings):
    settings = built.model_copy(update={"max_queue": 1, "max_batch": 1})
    with client_for(settings, SlowFake(0.2)) as c, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: c.post("/query", json={"question": f"oil {i}"}), range(8)))
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(r.headers["retry-after"] == "1" for r in refused)
    assert refused[0].json() == {"detail": "1 questions are already waiting; retry in a moment"}
    assert any(r.status_code == 200 for r in responses)


def test_a_question_past_its_deadline_is_a_503(built: Settings):
    with client_for(built.model_copy(update={"request_timeout_seconds": 0.2}), SlowFake(0.6)) as c:
        r = c.post("/query", json={"question": QUESTION})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"].startswith("no answer within 0.2 s")


class Interrupting(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt  # a BaseException, out of the worker thread
        return super().encode(texts, batch_size)


def test_the_batch_loop_survives_a_base_exception(built: Settings):
    fake = Interrupting()
    with client_for(built, fake, raise_server_exceptions=False) as c:
        fake.armed = True
        assert c.post("/query", json={"question": QUESTION}).status_code == 500
        assert c.post("/query", json={"question": QUESTION}).status_code == 200
        assert c.get("/ready").status_code == 200


# ------------------------------------------------------------------ 11. browser-facing safety


def test_host_header_allow_list_when_bound_to_loopback(built: Settings):
    with client_for(built) as c:
        r = c.get("/health", headers={"host": "evil.example"})
        assert (r.status_code, r.json()["detail"]) == (
            400, "Host header 'evil.example' is not allowed (set RAG_ALLOWED_HOSTS to serve other names)")
        assert c.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    with client_for(built.model_copy(update={"allowed_hosts": ["rag.example.org"]})) as c:
        assert c.get("/health", headers={"host": "rag.example.org"}).status_code == 200
        assert c.get("/health", headers={"host": "127.0.0.1"}).status_code == 400
    with client_for(built.model_copy(update={"host": "0.0.0.0"})) as c:  # a public bind: any host
        assert c.get("/health", headers={"host": "anything.example"}).status_code == 200


def test_citation_links_use_the_public_url(built: Settings):
    with client_for(built.model_copy(update={"public_url": "https://rag.example.org/"})) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]})
    assert all(x["url"].startswith("https://rag.example.org/#cite=") for x in r.json()["citations"])


def test_the_page_sends_csp_nosniff_and_referrer_policy(client: TestClient):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


def test_titles_are_escaped_in_sources_and_source_events(built: Settings):
    meta = built.corpus_dir / "fp-china-russia-axis.meta.json"
    data = json.loads(meta.read_text())
    data["title"] = "[click](javascript:alert(1)) <img src=x onerror=alert(1)>"
    meta.write_text(json.dumps(data))
    build_index(built, FakeEmbedder())
    with client_for(built.model_copy(update={"abstain_offset": 50.0})) as c:  # the fake model never abstains
        body = {"messages": [{"role": "user", "content": "Bonny Lin axis"}]}
        text = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    escaped = "\\[click\\]\\(javascript:alert\\(1\\)\\) \\<img src=x onerror=alert\\(1\\)\\>"
    assert escaped in text and "[click](" not in text
    names = [e["event"]["data"]["source"]["name"] for e in events if "event" in e]
    assert any(escaped in n for n in names) and not any(re.search(r"(?<!\\)[<\[]", n) for n in names)


def test_body_guard_errors_carry_cors_headers(built: Settings):
    with client_for(built.model_copy(update={"cors_origins": ["http://chat.example"]})) as c:
        origin = {"Origin": "http://chat.example"}
        big = c.post("/query", content=b"x" * 70_000, headers={**origin, "content-type": "application/json"})
        bad = c.post("/query", content=b'{"q": "\xff"}', headers={**origin, "content-type": "application/json"})
    for r, status in ((big, 413), (bad, 400)):
        assert r.status_code == status and r.headers["access-control-allow-origin"] == "http://chat.example"


def test_url_and_header_limits(client: TestClient):
    r = client.get("/query", params={"q": "x" * 9000})
    assert r.status_code == 414 and r.json()["detail"] == "URL is longer than the limit of 8192 bytes"
    r = client.get("/health", headers={"x-big": "y" * 20_000})
    assert r.status_code == 431


def test_errors_do_not_show_server_paths(settings: Settings, fake_embedder: FakeEmbedder):
    with client_for(settings.model_copy(update={"reload_poll_seconds": 0}), fake_embedder) as c:
        r = c.get("/ready")
    assert r.status_code == 503 and str(settings.index_dir.parent) not in r.text


def test_v1_error_types_follow_the_status(built: Settings):
    with client_for(built.model_copy(update={"api_key": SecretStr("k")})) as c:
        r = c.post("/v1/chat/completions", json={})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        auth = {"Authorization": "Bearer k"}
        r = c.post("/v1/chat/completions", json={"messages": []}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------ found in review


def test_deeply_nested_json_is_a_400_not_a_recursion_error(client: TestClient):
    body = b"[" * 5000 + b'"\\ud800"' + b"]" * 5000
    r = client.post("/query", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (400, {"detail": "request body is nested deeper than 64 levels"})


def test_two_host_headers_are_refused_and_ipv6_loopback_is_allowed(built: Settings):
    with client_for(built) as c:
        assert c.get("/health", headers={"host": "[::1]:8000"}).status_code == 200
        r = c.get("/health", headers=[("host", "127.0.0.1"), ("host", "evil.example")])  # type: ignore[arg-type]
        assert (r.status_code, r.json()["detail"]) == (400, "more than one Host header")


def test_a_model_failure_that_is_not_the_questions_fault_is_not_a_422():
    from api.engine.encoding import encode_each

    class Broken(FakeEmbedder):
        def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
            raise RuntimeError("onnxruntime: out of memory")

    results = encode_each(Broken(), ["a", "b"])
    assert all(isinstance(r, RuntimeError) for r in results)


def test_admin_reload_keeps_the_real_reason_when_the_model_did_not_load(built: Settings):
    def failing(name: str) -> Any:
        raise RuntimeError("no model here")

    with TestClient(create_app(built, embedder_factory=failing), base_url=BASE_URL) as c:
        r = c.post("/admin/reload")
        assert (r.status_code, r.json()) == (503, {"detail": "model not loaded: no model here"})


def test_a_read_only_service_refuses_writes_with_403_even_before_it_is_ready(built: Settings):
    def failing(name: str) -> Any:
        raise RuntimeError("no model here")

    read_only = built.model_copy(update={"read_only": True})
    with TestClient(create_app(read_only, embedder_factory=failing), base_url=BASE_URL) as c:
        for method, path, body in [("POST", "/collections", {"name": "notes"}), ("DELETE", "/collections/notes", None),
                                   ("DELETE", "/collections/notes/documents/d", None)]:
            r = c.request(method, path, json=body)
            assert r.status_code == 403 and "read-only" in r.json()["detail"], (path, r.text)


def test_a_filter_names_a_bounded_number_of_values(client: TestClient):
    r = client.post("/query", json={"question": "trade", "doc_ids": [f"d{i}" for i in range(300)]})
    assert r.status_code == 422 and "300 values; the limit is 100" in r.json()["detail"]


def test_filter_values_are_looked_up_off_the_event_loop(client: TestClient, monkeypatch):
    import asyncio

    retriever = client.app.state.engine.live()  # type: ignore[attr-defined]
    real, on_loop = retriever.store.unknown, []

    def unknown(field: str, values: list[str]) -> list[str]:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)  # a store lookup (a remote one, for Milvus) would block every client
        except RuntimeError:
            on_loop.append(False)
        return real(field, values)

    monkeypatch.setattr(retriever.store, "unknown", unknown)
    assert client.post("/query", json={"question": "trade", "doc_ids": ["fp-china-russia-axis"]}).status_code == 200
    assert on_loop and not any(on_loop)  # checked before queueing, and again by the worker thread


def test_a_full_write_queue_is_a_503_with_retry_after(built: Settings):
    import threading

    release = threading.Event()
    with client_for(built.model_copy(update={"max_write_queue": 2})) as c:
        engine = c.app.state.engine  # type: ignore[attr-defined]
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        engine.write_later(("notes", "hold"), lambda collections: release.wait(30))  # the writer is busy
        engine.write_later(("notes", "next"), lambda collections: None)  # and one waits: the queue is full
        r = c.post("/collections/notes/documents", json={"doc_id": "d", "text": "Penguins eat krill."})
        release.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "RAG_MAX_WRITE_QUEUE" in r.text


def upstream_sending(chunks: list[str]) -> FastAPI:
    """An upstream that streams these raw SSE data lines, or answers them joined when not streaming."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        if not (await request.json()).get("stream"):
            return Response(chunks[0], media_type="application/json")

        async def lines() -> Any:
            for chunk in chunks:
                yield f"data: {chunk}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    return app


def test_bad_upstream_chunks_are_skipped_and_lone_surrogates_replaced(built: Settings):
    chunks = ['{"choices": 5}', '{"choices": {}}', '{"choices": [{"delta": {"content": "half \\ud83d"}}]}',
              '{"choices": [{"delta": {"content": " end"}}]}']
    with running_server(upstream_sending(chunks)) as up:
        settings = built.model_copy(update={"llm_base_url": f"{up}/v1", "llm_model": "m", "abstain_offset": 50.0})
        with client_for(settings) as c, c.stream("POST", "/v1/chat/completions", json={
                "stream": True, "messages": [{"role": "user", "content": QUESTION}]}) as r:
            lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    text = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in lines[:-1])
    assert text.startswith("half \ufffd end")


def test_a_non_streamed_upstream_answer_with_a_lone_surrogate_is_repaired(built: Settings):
    answer = '{"choices": [{"message": {"content": "x \\udc80 y"}}]}'
    with running_server(upstream_sending([answer])) as up:
        settings = built.model_copy(update={"llm_base_url": f"{up}/v1", "llm_model": "m", "abstain_offset": 50.0})
        with client_for(settings) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("x \ufffd y")


def test_a_client_leaving_mid_stream_closes_the_upstream_connection(built: Settings):
    """End to end over real sockets (the mechanism is tested above)."""
    import httpx

    gone = threading.Event()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        async def forever() -> Any:
            try:
                while True:
                    yield 'data: {"choices": [{"delta": {"content": "tick "}}]}\n\n'
                    await asyncio.sleep(0.05)
            finally:
                gone.set()  # Starlette stops this generator when our service hangs up

        return StreamingResponse(forever(), media_type="text/event-stream")

    with running_server(app) as up:
        settings = built.model_copy(update={"llm_base_url": f"{up}/v1", "llm_model": "m", "abstain_offset": 50.0})
        with running_server(create_app(settings, embedder_factory=lambda name: FakeEmbedder())) as live:
            with httpx.stream("POST", f"{live}/v1/chat/completions", timeout=10, json={
                    "stream": True, "messages": [{"role": "user", "content": QUESTION}]}) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n > 10:
                        break  # the client leaves
            assert gone.wait(5), "the upstream stream was not closed after the client left"


def test_which_load_failures_a_later_poll_retries():
    import errno as errnos

    from api.engine.reload import _may_pass
    from rag.errors import IndexBusyError, IndexCorruptError, StorageError

    def storage(code: int) -> StorageError:
        try:
            raise StorageError("cannot read index") from OSError(code, "x")
        except StorageError as exc:
            return exc

    assert _may_pass(IndexBusyError("moved")) and _may_pass(storage(errnos.EIO)) and _may_pass(storage(errnos.EMFILE))
    assert not _may_pass(storage(errnos.EACCES)) and not _may_pass(IndexCorruptError("bad checksum"))
    assert not _may_pass(ValueError("a bug"))
