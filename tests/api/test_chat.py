"""Chat frontends: /context packing, the OpenAI-compatible API driven by the official
`openai` client (streaming and not), the upstream-model path against a fake
OpenAI-compatible server, abstention, and the chat page in headless Chromium."""

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.chat.answers import NO_ANSWER, ChatCitation, source_names, turns_from
from rag.settings import Settings
from rag.text import count_tokens
from tests.helpers import BASE_URL, FakeEmbedder, fake_upstream, running_server

QUESTION = "imports of Russian oil rose 49 percent to $76.4 billion"




def app_for(settings: Settings) -> Any:
    fake = FakeEmbedder()
    return create_app(settings, embedder_factory=lambda name: fake)


@pytest.fixture
def live(built: Settings) -> Iterator[str]:
    with running_server(app_for(built)) as url:
        yield url


# ------------------------------------------------------------------ /context


def test_context_block_is_numbered_and_counted(client: TestClient):
    body = client.post("/context", json={"question": QUESTION, "k": 4, "max_tokens": 5000}).json()
    assert [c["n"] for c in body["citations"]] == [1, 2, 3, 4] and body["dropped"] == []
    assert body["tokens"] == count_tokens(body["context"]) <= 5000
    for c in body["citations"]:
        header = f"[{c['n']}] {c['title']}" + (f" — {c['section']}" if c["section"] else "")
        document = client.get(f"/documents/{c['doc_id']}").json()["text"]
        passage = document[c["char_start"]:c["char_end"]]  # a chunk, or overlapping chunks merged
        assert f"{header}\n{passage}" in body["context"]  # whole passages, never cut


def test_context_drops_lowest_ranked_passages_whole(client: TestClient):
    full = client.post("/context", json={"question": QUESTION, "k": 4, "max_tokens": 5000}).json()
    budget = count_tokens(full["context"].rsplit("\n\n[4]", 1)[0])  # room for exactly three
    body = client.post("/context", json={"question": QUESTION, "k": 4, "max_tokens": budget}).json()
    assert [c["chunk_id"] for c in body["citations"]] == [c["chunk_id"] for c in full["citations"][:3]]
    assert body["dropped"] == [full["citations"][3]["chunk_id"]] and body["tokens"] <= budget
    tiny = client.post("/context", json={"question": QUESTION, "k": 4, "max_tokens": 16}).json()
    assert tiny["context"] == "" and tiny["tokens"] == 0 and len(tiny["dropped"]) == 4


def test_context_bad_input(client: TestClient):
    r = client.post("/context", json={"question": "  "})
    assert (r.status_code, r.json()) == (422, {"detail": "question must not be empty"})
    r = client.post("/context", json={"question": "x", "max_tokens": 1})
    assert (r.status_code, r.json()) == (422, {"detail": "max_tokens: Input should be greater than or equal to 16"})


# ------------------------------------------------------------------ /v1 with the openai client


def test_models_and_non_streaming_answer(live: str):
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["rag"]
    completion = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}])
    text = completion.choices[0].message.content
    assert "[1]" in text and "**Sources**" in text and "49 percent" in text
    citations = completion.model_extra["citations"]
    assert citations and citations[0]["n"] == 1
    assert f"{live}/#cite={citations[0]['doc_id']}:{citations[0]['char_start']}-{citations[0]['char_end']}" in text


def test_streaming_answer_matches_and_carries_sources(live: str):
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused")
    stream = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    full = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}])
    assert "".join(pieces) == full.choices[0].message.content

    with httpx.stream("POST", f"{live}/v1/chat/completions", json={
            "model": "rag", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    sources = [e["event"]["data"] for e in events if "event" in e]
    assert sources and all(e["event"]["type"] == "source" for e in events if "event" in e)
    names = [s["source"]["name"] for s in sources]
    assert len(set(names)) == len(names)  # distinct: Open WebUI merges sources of one name
    assert names == source_names([ChatCitation(**c) for c in events[0]["citations"]])
    assert not any(re.match(r"\[\d+\]", name) for name in names)  # Open WebUI numbers its list itself
    assert [m["source"] for s in sources for m in s["metadata"]] == names  # what Open WebUI keys them by
    assert "citations" in events[0] and "citations" in events[-1] and events[-1]["choices"][0]["finish_reason"] == "stop"


def test_no_relevant_passage_means_a_plain_no_answer(live: str):
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused")
    completion = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": "zqxj vvkw"}])
    assert completion.choices[0].message.content == NO_ANSWER
    assert completion.model_extra["citations"] == []


def test_bad_chat_requests(client: TestClient):
    r = client.post("/v1/chat/completions", json={"model": "rag", "messages": [{"role": "system", "content": "hi"}]})
    assert r.status_code == 422 and r.json()["detail"] == "question must not be empty"
    assert r.json()["error"]["message"] == "question must not be empty"
    r = client.post("/v1/chat/completions", json={"model": "rag", "messages": []})
    assert r.status_code == 422
    # found by probing: a role nobody knows said "question must not be empty", "yes" passed for true
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": QUESTION}]})
    assert r.status_code == 422 and r.json()["detail"].startswith("messages[0].role must be one of system,")
    r = client.post("/v1/chat/completions", json={"stream": "yes", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 422 and r.json()["detail"].startswith("stream: Input should be a valid boolean")


def test_usage_is_counted_and_the_model_asked_for_is_echoed(live: str):
    """cl100k tokens of the messages and of the answer; a stream sends them last when
    stream_options.include_usage asks (OpenAI's chunk with no choices)."""
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(model="rag", messages=messages)
    assert completion.usage is not None and completion.model == "rag"
    assert completion.usage.prompt_tokens == count_tokens("Be brief.") + count_tokens(QUESTION)
    assert completion.usage.completion_tokens == count_tokens(completion.choices[0].message.content)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="rag", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == completion.usage
    assert all(c.usage is None and "usage" in c.model_fields_set for c in chunks[:-1])  # null, as OpenAI sends
    plain = list(client.chat.completions.create(model="rag", messages=messages, stream=True))
    assert all(c.usage is None for c in plain)


def test_openai_errors_and_models_by_id(client: TestClient):
    r = client.get("/v1/models/rag")
    assert r.status_code == 200 and r.json()["id"] == "rag"
    r = client.get("/v1/models/gpt-9")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/v1/chat/completions")  # was {"detail": "Method Not Allowed"}, without OpenAI's error object
    assert r.status_code == 405 and r.json()["error"]["message"] == "method GET is not allowed here; use POST"
    r = client.patch("/collections/notes/documents/memo")  # three routes serve this path, with a method each
    assert (r.status_code, r.headers["allow"]) == (405, "DELETE, GET, PUT")
    assert r.json()["detail"] == "method PATCH is not allowed here; use DELETE, GET, PUT"
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/nothing-here").json() == {
        "detail": "no such route: the OpenAPI schema (openapi.json) lists them"}


def test_the_question_is_the_last_user_turn_and_the_history_the_earlier_ones():
    msgs = [{"role": "user", "content": "How much oil did China import from Russia?"},
            {"role": "assistant", "content": "..."}, {"role": "user", "content": "and in 2024?"}]
    assert turns_from(msgs) == ("and in 2024?", ["How much oil did China import from Russia?"])
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the Polar Silk Road today?"}]}]
    assert turns_from(parts) == ("What is the Polar Silk Road today?", [])


def test_chat_reads_a_follow_up_with_the_conversation(client: TestClient):
    msgs = [{"role": "user", "content": "What is the BRICS grouping?"}, {"role": "assistant", "content": "..."},
            {"role": "user", "content": "Which countries have joined it?"}]
    body = client.post("/v1/chat/completions", json={"model": "rag", "messages": msgs}).json()
    assert any("BRICS" in c["text"] for c in body["citations"])


# ------------------------------------------------------------------ upstream model


def test_upstream_model_answers_from_the_packed_context(built: Settings):
    seen: list[dict[str, Any]] = []
    with running_server(fake_upstream(seen)) as upstream:
        settings = built.model_copy(update={"llm_base_url": f"{upstream}/v1", "llm_model": "tiny",
                                            "llm_api_key": SecretStr("up-key")})
        with running_server(app_for(settings)) as live:
            client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused")
            plain = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}])
            stream = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                                    stream=True)
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    text = plain.choices[0].message.content
    assert text.startswith("China bought more Russian oil [1].\n\n**Sources**\n[1] ")
    assert streamed == text
    system = seen[0]["body"]["messages"][0]["content"]
    assert "only the numbered context" in system and "[1] " in system and "49 percent" in system
    assert seen[0]["body"]["messages"][1] == {"role": "user", "content": QUESTION}
    assert seen[0]["body"]["model"] == "tiny" and seen[0]["auth"] == "Bearer up-key"
    assert seen[1]["body"]["stream"] is True


def test_upstream_dying_mid_stream_still_ends_with_sources(built: Settings):
    from api.chat.upstream import UPSTREAM_CUT

    with running_server(fake_upstream([], die_after=2)) as upstream:
        settings = built.model_copy(update={"llm_base_url": f"{upstream}/v1", "llm_model": "tiny"})
        with running_server(app_for(settings)) as live, httpx.stream(
                "POST", f"{live}/v1/chat/completions",
                json={"model": "rag", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}) as r:
            lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in lines[:-1])
    assert text.startswith("China bought " + UPSTREAM_CUT + "\n\n**Sources**\n[1] ")


def test_unreachable_upstream_is_a_502(built: Settings):
    from tests.helpers import free_port

    settings = built.model_copy(update={"llm_base_url": f"http://127.0.0.1:{free_port()}/v1", "llm_model": "m"})
    with TestClient(app_for(settings), base_url=BASE_URL) as c:
        r = c.post("/v1/chat/completions", json={"model": "rag", "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 502
    body = r.json()
    assert body["detail"] == "upstream model unreachable (ConnectError)"  # never the configured URL
    assert body["error"] == {"message": body["detail"], "type": "server_error", "code": 502}


# ------------------------------------------------------------------ the chat page


def test_page_is_served_without_a_key(built: Settings):
    with TestClient(app_for(built.model_copy(update={"api_key": SecretStr("k")})), base_url=BASE_URL) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'id="question"' in r.text
        assert c.get("/documents").status_code == 401


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chat_page_in_headless_chromium(built: Settings, tmp_path):
    from playwright.sync_api import sync_playwright

    settings = built.model_copy(update={"api_key": SecretStr("page-key")})
    with running_server(app_for(settings)) as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(live + "/")
        page.fill("#question", QUESTION)
        page.click("[data-testid=send]")
        page.wait_for_selector("#keybar.shown")  # the key is required: the page asks for it
        page.fill("#key", "page-key")
        page.click("#savekey")
        page.fill("#question", QUESTION)
        page.click("[data-testid=send]")
        marker = page.locator("[data-testid=answer] [data-testid=cite]").first
        marker.wait_for()
        assert marker.inner_text() == "[1]"
        marker.click()
        cited = page.locator("[data-testid=cited]")
        cited.wait_for()
        assert "49 percent" in cited.inner_text()
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 10_000


def condensing_upstream(seen: list[dict[str, Any]], rewrite: str, delay: float = 0.0) -> FastAPI:
    """An upstream that rewrites follow-ups into `rewrite` (after `delay` seconds) and answers
    anything else like fake_upstream."""
    from api.chat.upstream import CONDENSE_PROMPT

    inner = fake_upstream(seen)
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def complete(request: Request) -> Any:
        body = await request.json()
        if body["messages"][0]["content"] == CONDENSE_PROMPT:
            seen.append({"body": body, "auth": None, "condense": True})
            await asyncio.sleep(delay)
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": rewrite},
                                 "finish_reason": "stop"}]}
        for route in inner.routes:
            if getattr(route, "path", "") == "/v1/chat/completions":
                return await route.endpoint(request)  # type: ignore[attr-defined]
        raise AssertionError("no route")

    return app


@pytest.mark.parametrize("delay", [0.0, 2.0])
def test_an_upstream_model_condenses_a_follow_up_or_the_heuristic_takes_over(built: Settings, delay: float):
    seen: list[dict[str, Any]] = []
    chat = [{"role": "user", "content": "How much oil does China import from Russia?"},
            {"role": "assistant", "content": "..."}, {"role": "user", "content": "And in 2024?"}]
    with running_server(condensing_upstream(seen, "Arctic shipping routes and the Polar Silk Road", delay)) as up:
        settings = built.model_copy(update={"llm_base_url": f"{up}/v1", "llm_model": "tiny",
                                            "llm_condense_seconds": 0.5})
        with running_server(app_for(settings)) as live:
            client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused")
            answer = client.chat.completions.create(model="rag", messages=chat)
            alone = client.chat.completions.create(model="rag", messages=[chat[0]])  # not a follow-up
    condense = [s for s in seen if s.get("condense")]
    assert len(condense) == 1 and condense[0]["body"]["messages"][-1] == {"role": "user", "content": "And in 2024?"}
    cited = {c["section"] for c in answer.model_extra["citations"]}
    if delay == 0.0:  # the rewrite was searched: passages on the Arctic, not on oil
        assert "The Arctic" in cited or any("Arctic" in c["text"] for c in answer.model_extra["citations"])
    else:  # too slow: the follow-up was searched with its history (oil), and still answered
        assert any("oil" in c["text"] for c in answer.model_extra["citations"])
    assert alone.choices[0].message.content


def test_quoted_document_text_is_markdown_escaped_as_titles_are(built: Settings):
    """A document's own text, quoted in the answer, shows as text: never a link or HTML."""
    from tests.helpers import client_for

    hostile = "Walruses haul out on [the ice](javascript:alert(1)) <img src=x onerror=alert(1)> every March."
    with client_for(built.model_copy(update={"abstain_offset": 50.0})) as c:  # the fake model never abstains
        c.post("/collections", json={"name": "notes"})
        assert c.post("/collections/notes/documents", json={"doc_id": "w", "text": hostile}).status_code == 201
        body = {"model": "rag:notes", "messages": [{"role": "user", "content": "walruses haul out on the ice"}]}
        text = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert "\\[the ice\\]\\(javascript:alert\\(1\\)\\) \\<img src=x onerror=alert\\(1\\)\\>" in text, text
    assert not re.search(r"(?<!\\)\[the ice|(?<!\\)<img", text)
