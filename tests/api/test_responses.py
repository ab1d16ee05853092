"""POST /v1/responses with the file_search tool, driven by the official `openai` client and
by the OpenAI Agents SDK against a real server (fake model, offline): results and
`file_citation` annotations that point at real files and sentences, the event stream and
its final response, follow-ups through previous_response_id, stored responses, refusals
(400 naming what), an upstream model writing the answer, and who may read what."""

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from api.app import create_app
from api.responses.citations import Citer
from api.responses.store import ResponseStore
from rag.access.gate import Principal
from rag.access.keys import KeyStore
from rag.errors import NotFoundError
from rag.settings import Settings
from tests.helpers import FakeEmbedder, article, fake_upstream, running_server

QUESTION = "imports of Russian oil rose 49 percent to $76.4 billion"
FILE_SEARCH = {"type": "file_search", "vector_store_ids": ["vs_default"]}
VOLATILE = {"id", "created_at", "completed_at", "parsed"}  # parsed: the SDK's own, on a streamed response


def app_for(settings: Settings) -> Any:
    fake = FakeEmbedder()
    return create_app(settings, embedder_factory=lambda name: fake)


@pytest.fixture
def live(built: Settings) -> Iterator[str]:
    with running_server(app_for(built)) as url:
        yield url


def client_of(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def document_text(url: str, doc_id: str, key: str = "unused") -> str:
    r = httpx.get(f"{url}/documents/{doc_id}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


def unescaped(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def assert_cites_sentences(text: str, annotations: list[Any], texts_of: dict[str, str]) -> None:
    """Every annotation sits right after a sentence of output_text that its file holds."""
    assert annotations
    start = 0
    for a in sorted(annotations, key=lambda a: a.index):
        assert a.type == "file_citation" and 0 < a.index <= len(text)
        assert text[a.index - 1] in ".!?", (text, a.index)
        sentence = unescaped(text[start:a.index].strip())
        if sentence:  # two files cited at one index: the sentence was checked with the first
            assert sentence in texts_of[a.file_id], (sentence, a.file_id)
        start = a.index


def comparable(response: Any) -> Any:
    """The response without what differs between two runs (ids, times)."""
    data = response.model_dump() if hasattr(response, "model_dump") else response
    if isinstance(data, dict):
        return {k: comparable(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [comparable(v) for v in data]
    return data


# ------------------------------------------------------------------ the openai client


def test_file_search_results_and_annotations_point_at_real_files(live: str):
    client = client_of(live)
    r = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH],
                                include=["file_search_call.results"])
    call, message = r.output
    assert call.type == "file_search_call" and call.status == "completed" and call.queries == [QUESTION]
    assert 1 <= len(call.results) <= 10
    doc_ids = {d["doc_id"] for d in httpx.get(f"{live}/documents").json()["documents"]}
    texts = {doc_id: document_text(live, doc_id) for doc_id in {x.file_id for x in call.results}}
    for result in call.results:
        assert result.file_id in doc_ids and result.filename and 0 <= result.score <= 1
        assert result.text in texts[result.file_id]  # the passage, verbatim
    store_search = httpx.post(f"{live}/v1/vector_stores/vs_default/search", json={"query": QUESTION}).json()["data"]
    assert [(x.file_id, x.filename, x.score, x.text) for x in call.results] == [  # as the vector store's own search
        (d["file_id"], d["filename"], d["score"], d["content"][0]["text"]) for d in store_search]
    assert message.type == "message" and message.status == "completed" and r.status == "completed"
    assert "49 percent" in r.output_text and "[1]" not in r.output_text
    annotations = message.content[0].annotations
    assert {a.file_id for a in annotations} <= {x.file_id for x in call.results}
    assert_cites_sentences(r.output_text, annotations, texts)
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    plain = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH])
    assert plain.output[0].results is None  # results only when included
    assert plain.output_text == r.output_text


def test_stream_sends_the_events_in_order_and_ends_with_the_plain_response(live: str):
    client = client_of(live)
    with client.responses.stream(model="rag", input=QUESTION, tools=[FILE_SEARCH],
                                 include=["file_search_call.results"]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:9] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.file_search_call.in_progress", "response.file_search_call.searching",
                         "response.file_search_call.completed", "response.output_item.done",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[9:-4]) == {"response.output_text.delta", "response.output_text.annotation.added"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    sent, placed = "", []
    for e in events:
        if e.type == "response.output_text.delta":
            sent += e.delta
        elif e.type == "response.output_text.annotation.added":
            assert e.annotation.index <= len(sent)  # announced once its sentence was sent
            assert e.annotation_index == len(placed)
            placed.append(e.annotation.model_dump())
    assert sent == final.output_text and placed == [a.model_dump() for a in final.output[1].content[0].annotations]
    plain = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH],
                                    include=["file_search_call.results"])
    assert comparable(final) == comparable(plain)


def test_a_follow_up_through_previous_response_id_is_searched_with_the_conversation(live: str):
    client = client_of(live)
    first = client.responses.create(model="rag", input="What is the BRICS grouping?", tools=[FILE_SEARCH])
    follow = client.responses.create(model="rag", input="Which countries have joined it?", tools=[FILE_SEARCH],
                                     previous_response_id=first.id, include=["file_search_call.results"])
    alone = client.responses.create(model="rag", input="Which countries have joined it?", tools=[FILE_SEARCH],
                                    include=["file_search_call.results"])
    assert follow.previous_response_id == first.id
    assert "BRICS" in follow.output_text and "BRICS" not in alone.output_text  # the conversation made the difference
    assert sum("BRICS" in x.text for x in follow.output[0].results) > sum("BRICS" in x.text for x in alone.output[0].results)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="rag", input="And then?", tools=[FILE_SEARCH],
                                previous_response_id="resp_" + "0" * 32)


def test_a_stored_response_is_retrieved_and_deleted(live: str, built: Settings):
    client = client_of(live)
    made = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH],
                                   include=["file_search_call.results"], metadata={"run": "7"})
    assert (built.index_dir / "responses" / f"{made.id}.json").is_file()
    again = client.responses.retrieve(made.id, include=["file_search_call.results"])
    assert again.model_dump() == made.model_dump() and again.metadata == {"run": "7"}
    assert client.responses.retrieve(made.id).output[0].results is None
    client.responses.delete(made.id)
    assert not (built.index_dir / "responses" / f"{made.id}.json").exists()
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError):
            call(made.id)
    unstored = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH], store=False)
    assert unstored.store is False  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


@pytest.mark.parametrize(("extra", "named"), [
    ({"tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]},
     "tools[0].type 'function'"),
    ({"tools": [FILE_SEARCH, {"type": "web_search"}]}, "tools[1].type 'web_search'"),
    ({"tools": [FILE_SEARCH], "tool_choice": {"type": "function", "name": "get_weather"}}, "tool_choice 'function'"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format.type 'json_schema'"),
    ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
    ({"include": ["message.output_text.logprobs"]}, "include 'message.output_text.logprobs'"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"frobnicate": True}, "unknown parameter 'frobnicate'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input[0].content[0].type 'input_image'"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(live: str, extra: dict[str, Any], named: str):
    r = httpx.post(f"{live}/v1/responses", json={"model": "rag", "input": QUESTION, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert named in error["message"] and error["type"] == "invalid_request_error" and error["code"] == 400


def test_the_openai_client_sees_a_function_tool_refused(live: str):
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(live).responses.create(model="rag", input=QUESTION, tools=[
            {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}])
    assert refused.value.status_code == 400 and "tools[0].type 'function'" in refused.value.message


def test_several_stores_and_filters_on_attributes(live: str):
    client = client_of(live)
    store = client.vector_stores.create(name="notes")
    uploaded = {}
    for topic in ("ferries", "harbours"):
        f = client.files.create(file=(f"{topic}.txt", article(topic).encode()), purpose="assistants")
        client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id, attributes={"topic": topic})
        uploaded[topic] = f.id
    both = [{"type": "file_search", "vector_store_ids": [store.id, "vs_default"], "max_num_results": 20}]
    r = client.responses.create(model="rag", input="ferries policy and trade", tools=both,
                                include=["file_search_call.results"])
    assert {x.file_id for x in r.output[0].results} >= {uploaded["ferries"], "cfr-china-russia-backgrounder"}
    only = [{**both[0], "filters": {"type": "eq", "key": "topic", "value": "ferries"}}]
    r = client.responses.create(model="rag", input="ferries policy and trade", tools=only,
                                include=["file_search_call.results"])
    assert {(x.file_id, x.filename) for x in r.output[0].results} == {(uploaded["ferries"], "ferries.txt")}
    assert all(x.attributes == {"topic": "ferries"} for x in r.output[0].results)
    annotations = r.output[1].content[0].annotations
    assert annotations and {(a.file_id, a.filename) for a in annotations} == {(uploaded["ferries"], "ferries.txt")}
    texts = {uploaded["ferries"]: article("ferries")}
    assert_cites_sentences(r.output_text, annotations, texts)


def test_without_file_search_the_models_collection_answers(live: str):
    r = client_of(live).responses.create(model="rag", input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert [item.type for item in r.output] == ["message"] and r.tools == []
    texts = {a.file_id: document_text(live, a.file_id) for a in r.output[0].content[0].annotations}
    assert_cites_sentences(r.output_text, r.output[0].content[0].annotations, texts)


def test_max_output_tokens_cuts_the_answer_and_says_so(live: str):
    client = client_of(live)
    whole = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH])
    r = client.responses.create(model="rag", input=QUESTION, tools=[FILE_SEARCH], max_output_tokens=40)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert 30 < r.usage.output_tokens <= 40 and whole.output_text.startswith(r.output_text)
    assert [a.index for a in r.output[1].content[0].annotations] == [
        a.index for a in whole.output[1].content[0].annotations if a.index <= len(r.output_text)]
    with httpx.stream("POST", f"{live}/v1/responses", json={
            "model": "rag", "input": QUESTION, "tools": [FILE_SEARCH], "max_output_tokens": 40, "stream": True}) as s:
        last = json.loads([line for line in s.iter_lines() if line.startswith("data: ")][-1][6:])
    streamed = openai.types.responses.Response.model_validate(last["response"])
    assert last["type"] == "response.incomplete" and comparable(streamed) == comparable(r)


# ------------------------------------------------------------------ the Agents SDK


def test_an_agent_with_file_search_runs_against_this_server(live: str):
    import agents
    from agents import Agent, FileSearchTool, Runner
    from agents.items import ToolCallItem
    from agents.models.openai_responses import OpenAIResponsesModel

    agents.set_tracing_disabled(True)

    async def run() -> tuple[Any, Any, Any, Any]:
        client = openai.AsyncOpenAI(base_url=f"{live}/v1", api_key="x", max_retries=0)
        agent = Agent(name="analyst", instructions="Answer from the files, citing them.",
                      model=OpenAIResponsesModel(model="rag", openai_client=client),
                      tools=[FileSearchTool(vector_store_ids=["vs_default"], max_num_results=5,
                                            include_search_results=True)])
        first = await Runner.run(agent, QUESTION)
        follow = await Runner.run(agent, "What about its exports?", previous_response_id=first.last_response_id)
        # no server-side state: the whole conversation sent back, our file_search_call and message items included
        resent = await Runner.run(agent, [*first.to_input_list(), {"role": "user", "content": "What about its exports?"}])
        streamed = Runner.run_streamed(agent, QUESTION)
        async for _ in streamed.stream_events():
            pass
        await client.close()
        return first, follow, resent, streamed

    first, follow, resent, streamed = asyncio.run(run())
    assert "49 percent" in first.final_output
    calls = [item.raw_item for item in first.new_items if isinstance(item, ToolCallItem)]
    assert [call.type for call in calls] == ["file_search_call"] and calls[0].results
    assert follow.final_output and follow.last_response_id != first.last_response_id
    assert resent.final_output == follow.final_output  # the same conversation, whichever way it came
    assert streamed.final_output == first.final_output


# ------------------------------------------------------------------ an upstream model


def test_an_upstream_model_writes_the_answer_and_annotations_point_at_our_files(built: Settings):
    seen: list[dict[str, Any]] = []
    with running_server(fake_upstream(seen)) as upstream:
        settings = built.model_copy(update={"llm_base_url": f"{upstream}/v1", "llm_model": "tiny"})
        with running_server(app_for(settings)) as live:
            client = client_of(live)
            asked = {"model": "rag", "input": QUESTION, "tools": [FILE_SEARCH], "instructions": "Be brief.",
                     "include": ["file_search_call.results"], "temperature": 0.2}
            plain = client.responses.create(**asked)
            with client.responses.stream(**asked) as stream:
                deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
                streamed = stream.get_final_response()
    assert plain.output_text == "China bought more Russian oil."  # "[1]" became an annotation
    annotation, = plain.output[1].content[0].annotations
    assert annotation.index == len(plain.output_text)  # after the full stop
    system = seen[0]["body"]["messages"][0]["content"]
    assert system.startswith("Be brief.\n\n") and "49 percent" in system
    first = plain.output[0].results[0]  # the passage the model was given as [1]
    assert annotation.file_id == first.file_id and "[1] " in system and first.text in system
    assert seen[0]["body"]["temperature"] == 0.2 and seen[1]["body"]["stream"] is True
    assert "".join(deltas) == streamed.output_text and comparable(streamed) == comparable(plain)


# ------------------------------------------------------------------ access


def test_keys_search_only_their_collections_and_read_only_their_responses(built: Settings):
    settings = built.model_copy(update={"api_key": SecretStr("admin-secret")})
    keys = KeyStore(settings.index_dir)
    reader_a = keys.create("r", "reader", ["a"])[1]
    reader_a2 = keys.create("r2", "reader", ["a"])[1]
    admin = {"Authorization": "Bearer admin-secret"}
    with running_server(app_for(settings)) as live:
        assert httpx.post(f"{live}/collections", json={"name": "a"}, headers=admin).status_code == 201
        assert httpx.post(f"{live}/collections/a/documents", headers=admin,
                          json={"doc_id": "ferry-notes", "text": article("ferries")}).status_code == 201
        reader = client_of(live, reader_a)
        for model, stores in (("rag:a", ["vs_default"]), ("rag", ["vs_a"]), ("rag:a", ["vs_a", "vs_nope"])):
            with pytest.raises(openai.NotFoundError):
                reader.responses.create(model=model, input="ferries policy",
                                        tools=[{"type": "file_search", "vector_store_ids": stores}])
        own = reader.responses.create(model="rag:a", input="ferries policy", include=["file_search_call.results"],
                                      tools=[{"type": "file_search", "vector_store_ids": ["vs_a"]}])
        assert {x.file_id for x in own.output[0].results} == {"ferry-notes"}
        assert {a.file_id for a in own.output[1].content[0].annotations} == {"ferry-notes"}
        assert client_of(live, "admin-secret").responses.retrieve(own.id).id == own.id  # an admin reads any
        with pytest.raises(openai.NotFoundError):
            client_of(live, reader_a2).responses.retrieve(own.id)  # another key of the same reach: not its
        with pytest.raises(openai.NotFoundError):
            client_of(live, reader_a2).responses.create(model="rag:a", input="and then?", previous_response_id=own.id)
        assert reader.responses.retrieve(own.id).id == own.id


# ------------------------------------------------------------------ the parts


def test_markers_split_anywhere_in_a_stream_give_the_same_text_and_annotations():
    answer = "China bought more oil [1]. Gas fell. [2] Trade [1][2] grew, see [7]; done [1, 2]!"
    files = {1: ("doc-a", "a.txt"), 2: ("doc-b", "b.txt")}
    whole = Citer(files)
    text, annotations = whole.feed(answer)
    tail, more = whole.finish()
    text, annotations = text + tail, annotations + more
    assert text == "China bought more oil. Gas fell. Trade grew, see [7]; done!"
    assert [(a["file_id"], a["index"]) for a in annotations] == [
        ("doc-a", 22), ("doc-b", 32), ("doc-a", 38), ("doc-b", 38), ("doc-a", 59), ("doc-b", 59)]
    for size in range(1, 8):
        citer, sent, placed = Citer(files), "", []
        for i in range(0, len(answer), size):
            clean, added = citer.feed(answer[i:i + size])
            sent += clean
            assert all(a["index"] <= len(sent) for a in added)
            placed += added
        clean, added = citer.finish()
        assert (sent + clean, placed + added) == (text, annotations)


def test_the_store_keeps_the_newest_and_forgets_the_expired(tmp_path: Path):
    owner, other = Principal("k", "reader", None, id="key-k"), Principal("j", "reader", None, id="key-j")
    store = ResponseStore(tmp_path / "responses", max_stored=3)
    ids = [f"resp_{n:032x}" for n in range(5)]
    for n, response_id in enumerate(ids):
        store.save({"response": {"id": response_id}, "owner": "key-k", "turns": [f"q{n}"]})
        os.utime(tmp_path / "responses" / f"{response_id}.json", (1e9 + n, 1e9 + n))  # saved in this order
    store.max_age = 1e12
    store.prune()
    assert sorted(p.stem for p in (tmp_path / "responses").iterdir()) == ids[2:]
    assert store.load(ids[4], owner)["turns"] == ["q4"]
    with pytest.raises(NotFoundError):
        store.load(ids[4], other)  # not its key's
    with pytest.raises(NotFoundError):
        store.load("resp_../../keys", owner)
    store.max_age = 0
    with pytest.raises(NotFoundError):
        store.load(ids[4], owner)  # expired: never served
    memory = ResponseStore(None, max_stored=2)
    for response_id in ids:
        memory.save({"response": {"id": response_id}, "owner": "key-k", "turns": []})
    assert list(memory.memory) == ids[3:]


def test_sse_lines_name_each_event(live: str):
    with httpx.stream("POST", f"{live}/v1/responses", json={
            "model": "rag", "input": QUESTION, "tools": [FILE_SEARCH], "stream": True}) as r:
        blocks = [b for b in r.read().decode().split("\n\n") if b]
    for block in blocks:
        event, data = block.split("\n")
        assert event[len("event: "):] == json.loads(data[len("data: "):])["type"]
    assert json.loads(blocks[-1].split("\n")[1][6:])["response"]["status"] == "completed"
