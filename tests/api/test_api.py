"""The HTTP service through FastAPI's TestClient, with the fake model: every endpoint and
every bad-input case, with exact status codes and messages."""

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import FakeEmbedder, client_for

QUESTION = "What was the value of trade between China and Russia in 2024?"


# ------------------------------------------------------------------ answers


def test_post_query_returns_cited_passages(client: TestClient):
    r = client.post("/query", json={"question": QUESTION, "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"question", "passages", "took_ms", "mode", "answerable", "confidence", "answer"}
    for sentence in body["answer"]:  # each answer sentence is a span of the passage it names
        cited = body["passages"][sentence["passage"] - 1]["citation"]
        assert cited["char_start"] <= sentence["char_start"] < sentence["char_end"] <= cited["char_end"]
    assert body["question"] == QUESTION and body["mode"] == "hybrid"
    assert [p["rank"] for p in body["passages"]] == [1, 2, 3]
    scores = [p["score"] for p in body["passages"]]
    assert scores == sorted(scores, reverse=True)
    for p in body["passages"]:
        c = p["citation"]
        text = client.get(f"/documents/{c['doc_id']}").json()["text"]
        assert text[c["char_start"]:c["char_end"]] == p["text"]


def test_get_query_matches_post(client: TestClient):
    post = client.post("/query", json={"question": QUESTION, "k": 4}).json()
    get = client.get("/query", params={"q": QUESTION, "k": 4}).json()
    assert [p["chunk_id"] for p in get["passages"]] == [p["chunk_id"] for p in post["passages"]]


def test_doc_filter_and_lexical_mode(client: TestClient):
    only = "usip-china-russia-global-cooperation"
    r = client.post("/query", json={"question": "Arctic shipping", "doc_ids": [only], "mode": "lexical"})
    assert r.status_code == 200
    assert {p["citation"]["doc_id"] for p in r.json()["passages"]} == {only}
    r = client.get("/query", params=[("q", "Arctic"), ("doc_id", only), ("doc_id", "fp-china-russia-axis")])
    assert r.status_code == 200


def test_filters_max_per_doc_and_new_fields(client: TestClient):
    r = client.post("/query", json={"question": "oil", "k": 6, "sources": ["Foreign Policy", "Council on Foreign "
                                    "Relations (CFR)"], "max_per_doc": 2, "mode": "dense"})
    assert r.status_code == 200
    body = r.json()
    assert body["mode"] == "dense" and 0 <= body["confidence"] <= 1 and isinstance(body["answerable"], bool)
    docs = [p["citation"]["doc_id"] for p in body["passages"]]
    assert sorted(docs) == ["cfr-china-russia-backgrounder"] * 2 + ["fp-china-russia-axis"] * 2
    assert all(set(p["scores"]) == {"dense"} and p["highlights"] for p in body["passages"])
    r = client.get("/query", params={"q": "arctic", "section": "The Arctic"})
    assert {p["citation"]["section"] for p in r.json()["passages"]} == {"The Arctic"}
    r = client.post("/query", json={"question": "x", "sections": ["Nowhere"]})
    assert (r.status_code, r.json()) == (422, {"detail": "unknown sections: Nowhere"})
    r = client.post("/query", json={"question": "x", "max_per_doc": 0})
    assert (r.status_code, r.json()) == (422, {"detail": "max_per_doc: Input should be greater than or equal to 1"})


def test_documents_document_and_chunk(client: TestClient):
    docs = client.get("/documents").json()["documents"]
    assert [d["doc_id"] for d in docs] == ["cfr-china-russia-backgrounder", "fp-china-russia-axis",
                                           "usip-china-russia-global-cooperation"]
    assert all(d["n_chunks"] > 0 for d in docs)
    fp = client.get("/documents/fp-china-russia-axis").json()
    assert fp["author"] == "Bonny Lin" and fp["metadata"]["source"] == "Foreign Policy"
    assert fp["n_chars"] == len(fp["text"])
    passage = client.post("/query", json={"question": QUESTION, "k": 1}).json()["passages"][0]
    chunk = client.get(f"/chunks/{passage['chunk_id']}").json()
    assert chunk["text"] == passage["text"] and chunk["citation"] == passage["citation"]


def test_unknown_document_and_chunk_are_404(client: TestClient):
    assert client.get("/documents/nope").json() == {"detail": "no document with doc_id 'nope'"}
    assert client.get("/documents/nope").status_code == 404
    r = client.get("/chunks/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "no chunk with chunk_id 'nope'"})


def test_health_ready_metrics(client: TestClient):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["chunks"] > 0 and ready["model"] == "fake"
    client.post("/query", json={"question": QUESTION})
    text = client.get("/metrics").text
    assert 'rag_requests_total{method="POST",route="/query",status="200"} 1.0' in text
    assert "rag_request_seconds_bucket" in text
    assert f"rag_index_chunks {float(ready['chunks'])}" in text


def test_openapi_documents_every_endpoint(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/query", "/documents", "/documents/{doc_id}", "/chunks/{chunk_id}", "/health", "/ready",
            "/metrics", "/admin/reload"} <= set(paths)
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------ bad input

BIG = 65536


@pytest.mark.parametrize(("kwargs", "status", "detail"), [
    ({"content": b'{"question": "x",', "headers": {"content-type": "application/json"}},
     400, "request body is not valid JSON"),
    ({"content": b'{"question": "caf\xe9"}', "headers": {"content-type": "application/json"}},
     400, "request body is not valid UTF-8 (byte 17)"),
    ({"json": ["a", "list"]}, 422, "request body must be a JSON object"),
    ({"json": {}}, 422, "question: field required"),
    ({"json": {"question": 42}}, 422, "question: Input should be a valid string"),
    ({"json": {"question": "x", "k": "many"}}, 422,
     "k: Input should be a valid integer, unable to parse string as an integer"),
    ({"json": {"question": ""}}, 422, "question must not be empty"),
    ({"json": {"question": " \n\t "}}, 422, "question must not be empty"),
    ({"json": {"question": "x" * 1001}}, 422, "question is 1001 characters; the limit is 1000"),
    ({"json": {"question": "x", "k": 0}}, 422, "k: Input should be greater than or equal to 1"),
    ({"json": {"question": "x", "k": 51}}, 422, "k: Input should be less than or equal to 50"),
    ({"json": {"question": "x", "doc_ids": ["nope", "fp-china-russia-axis"]}}, 422, "unknown doc_ids: nope"),
    ({"json": {"question": "x", "mode": "fuzzy"}}, 422, "mode: Input should be 'dense', 'lexical' or 'hybrid'"),
    ({"json": {"question": "x", "bogus": 1}}, 422, "bogus: Extra inputs are not permitted"),
    ({"content": b"x" * (BIG + 1), "headers": {"content-type": "application/json"}},
     413, f"request body is larger than the limit of {BIG} bytes"),
])
def test_bad_query_input(client: TestClient, kwargs, status, detail):
    r = client.post("/query", **kwargs)
    assert (r.status_code, r.json()) == (status, {"detail": detail})


def test_oversized_body_without_content_length(client: TestClient):
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 8000

    r = client.post("/query", content=chunks(), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"detail": f"request body is larger than the limit of {BIG} bytes"})


def test_bad_get_query(client: TestClient):
    r = client.get("/query")
    assert (r.status_code, r.json()) == (422, {"detail": "q: field required"})
    r = client.get("/query", params={"q": "x", "k": 99})
    assert (r.status_code, r.json()) == (422, {"detail": "k: Input should be less than or equal to 50"})
    r = client.get("/query", params={"q": "x", "question": "y", "top_k": 3})  # typos are not ignored
    assert r.status_code == 422 and r.json()["detail"].startswith("unknown query parameter(s): question, top_k;")
    r = client.get("/query", params={"q": "x", "collection": "nope"})  # it was ignored: the built corpus answered
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    asked = "Which countries have joined it recently?"
    follow = client.get("/query", params=[("q", asked), ("history", "What is the BRICS group?")]).json()
    posted = client.post("/query", json={"question": asked, "history": ["What is the BRICS group?"]}).json()
    alone = client.get("/query", params={"q": asked}).json()
    rows = [[p["chunk_id"] for p in r["passages"]] for r in (follow, posted, alone)]
    assert rows[0] == rows[1] != rows[2]  # the history is read, as POST reads it


def test_limits_come_from_settings(built: Settings):
    with client_for(built.model_copy(update={"max_question_chars": 10, "max_body_bytes": 2048})) as c:
        r = c.post("/query", json={"question": "x" * 11})
        assert (r.status_code, r.json()) == (422, {"detail": "question is 11 characters; the limit is 10"})
        r = c.post("/query", json={"question": "x" * 3000})
        assert r.status_code == 413


# ------------------------------------------------------------------ no index, reload


def test_no_index_is_503_and_the_process_stays_up(settings: Settings, fake_embedder: FakeEmbedder):
    with client_for(settings.model_copy(update={"reload_poll_seconds": 0}), fake_embedder) as c:
        r = c.get("/ready")
        assert r.status_code == 503
        assert r.json() == {"detail": "no index at …/index: run `rag build` first"}  # no server paths
        assert c.post("/query", json={"question": QUESTION}).status_code == 503
        assert c.get("/documents").status_code == 503
        assert c.get("/health").status_code == 200

        build_index(settings, fake_embedder)
        r = c.post("/admin/reload")
        assert r.status_code == 200 and r.json()["reloaded"] is True
        assert c.get("/ready").status_code == 200
        assert c.post("/admin/reload").json()["reloaded"] is False


def test_watcher_picks_up_a_new_build(built: Settings):
    with client_for(built.model_copy(update={"reload_poll_seconds": 0.05})) as c:
        first = c.get("/ready").json()["build_id"]
        (built.corpus_dir / "extra.txt").write_text("Penguins waddle across Antarctic ice shelves. " * 10)
        build_index(built, FakeEmbedder())
        deadline = time.monotonic() + 5
        while c.get("/ready").json()["build_id"] == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/ready").json()["build_id"] != first
        top = c.post("/query", json={"question": "penguins antarctic ice", "k": 1}).json()["passages"][0]
        assert top["citation"]["doc_id"] == "extra"


def test_a_broken_new_build_keeps_the_old_one_serving(built: Settings):
    with client_for(built.model_copy(update={"reload_poll_seconds": 0})) as c:
        first = c.get("/ready").json()["build_id"]
        build_index(built, FakeEmbedder(), force=True)
        live = (built.index_dir / "CURRENT").read_text().strip()
        (built.index_dir / "builds" / live / "chunks.sqlite").write_text("damaged")
        r = c.post("/admin/reload")
        assert r.status_code == 409 and r.json()["detail"].startswith("the new build could not be loaded: ")
        assert r.json()["detail"].endswith(f"; still serving build {first}") and str(built.index_dir) not in r.text
        ready = c.get("/ready").json()
        assert ready["build_id"] == first and "missing or damaged" in ready["reload_error"]
        assert c.post("/query", json={"question": QUESTION}).status_code == 200


# ------------------------------------------------------------------ batching


class SlowFake(FakeEmbedder):
    """Each model call takes 30 ms, as a real one would, so concurrent questions pile up."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def encode(self, texts, batch_size=32):  # type: ignore[no-untyped-def]
        self.calls.append(len(texts))
        time.sleep(0.03)
        return super().encode(texts, batch_size)


def test_concurrent_questions_share_model_calls(built: Settings):
    slow = SlowFake()
    questions = [f"question {i} about trade oil gas arctic" for i in range(24)]
    with client_for(built, slow) as c:
        solo = {q: c.post("/query", json={"question": q, "k": 2}).json()["passages"] for q in questions}
        slow.calls.clear()
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(lambda q: c.post("/query", json={"question": q, "k": 2}), questions))
    assert all(r.status_code == 200 for r in together)
    assert {r.json()["question"]: r.json()["passages"] for r in together} == solo  # each got its own
    assert max(slow.calls) > 1 and len(slow.calls) < len(questions)


# ------------------------------------------------------------------ security, logs


@pytest.fixture
def locked(built: Settings) -> Iterator[TestClient]:
    settings = built.model_copy(update={"api_key": SecretStr("s3cret-key"), "cors_origins": ["http://chat.example"]})
    with client_for(settings) as c:
        yield c


@pytest.mark.parametrize("path", ["/query?q=x", "/documents", "/ready", "/metrics", "/docs", "/openapi.json"])
def test_api_key_guards_everything_but_health(locked: TestClient, path: str):
    r = locked.get(path)
    assert (r.status_code, r.json()) == (401, {"detail": "missing API key: send 'Authorization: Bearer <key>'"})
    assert r.headers["www-authenticate"] == "Bearer"
    r = locked.get(path, headers={"Authorization": "Bearer wrong"})
    assert (r.status_code, r.json()) == (401, {"detail": "invalid API key: send 'Authorization: Bearer <key>'"})
    assert locked.get(path, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert locked.get("/health").status_code == 200


def test_admin_needs_the_key(locked: TestClient):
    assert locked.post("/admin/reload").status_code == 401
    assert locked.post("/admin/reload", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200


def test_cors_allow_list(locked: TestClient):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = locked.options("/query", headers={"Origin": "http://chat.example", **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://chat.example"
    other = locked.options("/query", headers={"Origin": "http://evil.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert other.json()["detail"].startswith("CORS preflight refused: origin not allowed (RAG_CORS_ORIGINS")
    refused = locked.options("/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert refused.json()["error"]["type"] == "invalid_request_error"  # OpenAI's shape under /v1, as every error
    delete = {"Access-Control-Request-Method": "DELETE"}  # collections and vector stores delete and PUT
    assert locked.options("/collections/x", headers={"Origin": "http://chat.example", **delete}).status_code == 200


def test_cors_is_off_by_default(client: TestClient):
    r = client.get("/health", headers={"Origin": "http://chat.example"})
    assert "access-control-allow-origin" not in r.headers


def test_access_log_has_one_line_per_request_and_never_the_key(locked: TestClient, caplog):
    with caplog.at_level(logging.INFO, logger="rag.access"):
        locked.get("/documents", headers={"Authorization": "Bearer s3cret-key"})
        locked.get("/documents")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rag.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("GET", "/documents", 200), ("GET", "/documents", 401)]
    assert all(x["ms"] >= 0 for x in lines)
    assert "s3cret" not in caplog.text


def test_query_history_reads_a_follow_up_with_the_conversation(client: TestClient):
    alone = client.post("/query", json={"question": "Which countries have joined it?", "k": 3}).json()
    followed = client.post("/query", json={"question": "Which countries have joined it?", "k": 3,
                                           "history": ["What is the BRICS grouping?"]}).json()
    assert any("BRICS" in p["text"] for p in followed["passages"])
    assert [p["chunk_id"] for p in followed["passages"]] != [p["chunk_id"] for p in alone["passages"]]


def test_query_history_too_long_is_trimmed_and_bad_entries_are_refused(client: TestClient):
    long = ["What is the BRICS grouping?" * 40] * 30  # over both limits: trimmed, not refused
    assert client.post("/query", json={"question": "Which countries joined it?", "history": long}).status_code == 200
    for bad, where in (([""], "history[0]"), (["ok", "  "], "history[1]")):
        r = client.post("/query", json={"question": "Which countries joined it?", "history": bad})
        assert r.status_code == 422 and where in r.json()["detail"]
    assert client.post("/query", json={"question": "x", "history": [3]}).status_code == 422


def test_a_citation_url_is_kept_only_with_an_http_or_https_scheme(client: TestClient):
    """Any other scheme (javascript:, file:, data:) is null in citations, as an index built before
    the rule has them too; the document's metadata keeps what it was given."""
    client.post("/collections", json={"name": "notes"})
    urls = {"js": "javascript:alert(1)", "file": "file:///etc/passwd", "data": "data:text/html,<b>x</b>",
            "spaced": " javascript:alert(1)", "none": None, "web": "https://example.org/walrus",
            "upper": "HTTP://Example.org/seal", "bare": "example.org/walrus"}
    for doc_id, url in urls.items():
        r = client.post("/collections/notes/documents", json={"doc_id": doc_id, "text": f"Walruses {doc_id} rest.",
                                                              "metadata": {"url": url}})
        assert r.status_code == 201, r.text
    found = client.post("/query", json={"question": "walruses rest", "k": 10, "collection": "notes"}).json()
    cited = {p["citation"]["doc_id"]: p["citation"]["url"] for p in found["passages"]}
    assert cited == {"js": None, "file": None, "data": None, "spaced": None, "none": None, "bare": None,
                     "web": "https://example.org/walrus", "upper": "HTTP://Example.org/seal"}


def test_server_timing_gives_each_step_of_that_request_only_when_asked(built: Settings):
    with client_for(built.model_copy(update={"server_timing": True})) as c:
        r = c.post("/query", json={"question": "How long is the ferry crossing?", "k": 3})
        assert r.status_code == 200, r.text
        steps = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
        assert list(steps)[:3] == ["checks-and-queue", "encode", "waiting-to-be-searched"]
        for step in ("dense-search", "lexical-search", "fusion", "passages-and-highlights", "answer-sentences",
                     "confidence-and-response", "hand-back", "serialisation"):
            assert step in steps
        assert all(float(ms) >= 0 for ms in steps.values())
        r = c.post("/query", json={"question": "ferries", "k": 3, "mode": "lexical"})
        steps = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
        assert "other" in steps and "lexical-search" in steps and "dense-search" not in steps
    with client_for(built) as c:  # off by default: it tells every client how busy the service is
        assert "server-timing" not in c.post("/query", json={"question": "ferries", "k": 3}).headers
