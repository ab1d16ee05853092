"""The MCP server (api.mcp), driven by the MCP Python SDK's own client: over streamable
HTTP against a real server (/mcp), and over stdio against `rag mcp` in a subprocess
(with the fake model; the real one in the `model` test). Tools: search then fetch,
search_collection with structured output, list_collections, bad arguments as tool errors
in a session that goes on; access: a reader key sees and searches only its collections,
no key is a 401."""

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from pydantic import SecretStr

from api.app import create_app
from api.mcp.knowledge import around
from rag.access.keys import KeyStore
from rag.collections import Collections, text_document
from rag.ingest.build import build_index
from rag.records import ChunkRecord, DocumentRecord
from rag.settings import Settings
from tests.helpers import REPO, FakeEmbedder, article, running_server

ADMIN = {"Authorization": "Bearer admin-secret"}
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


def _run(session: Callable[[Client], Awaitable[None]], server: Any, headers: dict[str, str] | None = None,
         mode: str = "auto") -> None:
    """Open an SDK client session to `server` (a URL or stdio parameters) and run `session` in it."""
    async def main() -> None:
        if isinstance(server, str) and headers:
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                    Client(streamable_http_client(server, http_client=http), mode=mode) as client:
                await session(client)
        else:
            async with Client(server, mode=mode) as client:
                await session(client)

    asyncio.run(main())


def _json(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    assert len(result.content) == 1 and result.content[0].type == "text"
    return json.loads(result.content[0].text)


def _error(result: CallToolResult) -> str:
    assert result.is_error
    return " ".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture
def served(built: Settings) -> Iterator[str]:
    """A real server over the built corpus: its URL."""
    with running_server(create_app(built, embedder_factory=lambda name: FakeEmbedder())) as url:
        yield url


@pytest.mark.parametrize("path,mode", [("/mcp", "auto"), ("/mcp/", "legacy")])
def test_search_then_fetch_returns_the_passage_in_its_section(served: str, path: str, mode: str):
    """Both protocol eras (2026's discover, the older initialize handshake), with or without the slash."""
    async def session(client: Client) -> None:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == {"search", "fetch", "search_collection", "list_collections"}
        assert all(t.annotations and t.annotations.read_only_hint for t in listed.tools)
        results = _json(await client.call_tool("search", {"query": "What was trade between China and Russia worth?"}))
        assert results.keys() == {"results"} and results["results"]
        for r in results["results"]:
            assert r.keys() == {"id", "title", "url", "text"}
            assert r["id"].startswith("default:") and r["text"]
            assert r["url"].startswith(served + "/#cite=")  # the seed corpus's documents have no URL of their own
        top = results["results"][0]
        doc = _json(await client.call_tool("fetch", {"id": top["id"]}))
        assert doc.keys() == {"id", "title", "text", "url", "metadata"} and doc["id"] == top["id"]
        assert top["text"] in doc["text"] and len(doc["text"]) >= len(top["text"])
        meta = doc["metadata"]
        assert meta["collection"] == "default" and top["id"] == f"default:{meta['chunk_id']}"
        citation = meta["citation"]
        assert citation["doc_id"] and {"section", "char_start", "char_end", "page_start"} <= citation.keys()
        document = httpx.get(f"{served}/documents/{citation['doc_id']}").json()["text"]
        assert document[meta["text_start"]:meta["text_end"]] == doc["text"]
        assert meta["text_start"] <= citation["char_start"] < citation["char_end"] <= meta["text_end"]

    _run(session, served + path, mode=mode)


def test_search_collection_gives_structured_citations(served: str):
    async def session(client: Client) -> None:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "search_collection")
        assert tool.output_schema and "passages" in tool.output_schema["properties"]
        result = await client.call_tool("search_collection", {"query": "energy and oil", "k": 3})
        assert not result.is_error
        out = result.structured_content
        assert out is not None and out["collection"] == "default" and len(out["passages"]) == 3
        assert json.loads(result.content[0].text) == out  # the same, as text, for clients without structured output
        for p in out["passages"]:
            c = p["citation"]
            text = httpx.get(f"{served}/documents/{c['doc_id']}").json()["text"]
            assert text[c["char_start"]:c["char_end"]] == p["text"]
        only = out["passages"][-1]["citation"]["doc_id"]
        filtered = await client.call_tool("search_collection", {"query": "energy and oil", "k": 5,
                                                                "filters": {"doc_ids": [only]}})
        assert {p["citation"]["doc_id"] for p in filtered.structured_content["passages"]} == {only}

    _run(session, served + "/mcp")


def test_list_collections_and_search_cover_live_collections(served: str):
    with httpx.Client(base_url=served) as http:
        for name in ("empty", "notes"):
            assert http.post("/collections", json={"name": name}).status_code == 201
        assert http.post("/collections/notes/documents",
                         json={"doc_id": "ferries", "text": article("ferries")}).status_code == 201

    async def session(client: Client) -> None:
        listed = (await client.call_tool("list_collections", {})).structured_content
        assert [(c["name"], c["documents"]) for c in listed["collections"]] == [
            ("default", 3), ("empty", 0), ("notes", 1)]
        results = _json(await client.call_tool("search", {"query": "ferries policy"}))["results"]
        assert results[0]["id"].startswith("notes:ferries-") and results[0]["url"] is None  # no page shows it
        assert {r["id"].split(":")[0] for r in results} == {"notes", "default"}  # merged by score
        doc = _json(await client.call_tool("fetch", {"id": results[0]["id"]}))
        assert results[0]["text"] in doc["text"] and doc["metadata"]["collection"] == "notes"

    _run(session, served + "/mcp")


def test_bad_arguments_are_tool_errors_and_the_session_goes_on(served: str):
    async def session(client: Client) -> None:
        calls: list[tuple[str, dict[str, Any], str]] = [
            ("search_collection", {"query": "oil", "k": 0}, "greater than or equal to 1"),
            ("search_collection", {"query": "oil", "k": "many"}, "k"),
            ("search_collection", {"query": "oil", "collection": "nope"}, "no collection named 'nope'"),
            ("search_collection", {"query": "oil", "collection": "Bad Name!"}, "collection name"),
            ("search_collection", {"query": "oil", "filters": {"doc_ids": ["no-such-doc"]}}, "unknown doc_ids"),
            ("search_collection", {"query": "oil", "filters": {"authors": ["x"]}}, "authors"),
            ("search", {"query": "   "}, "must not be empty"),
            ("search", {}, "query"),
            ("fetch", {"id": "no colon"}, "is not a passage id"),
            ("fetch", {"id": "default:no-such-chunk"}, "no passage with id 'default:no-such-chunk'"),
            ("fetch", {"id": "nope:x-1"}, "no collection named 'nope'"),
            ("no_such_tool", {}, "no_such_tool"),
        ]
        for name, arguments, says in calls:
            message = _error(await client.call_tool(name, arguments))
            assert says.lower() in message.lower(), (name, arguments, message)
            assert "Traceback" not in message and "/tmp" not in message
        assert _json(await client.call_tool("search", {"query": "oil"}))["results"]  # the session still works

    _run(session, served + "/mcp")


def test_mcp_stands_behind_the_same_guards_and_takes_post_only(served: str):
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with httpx.Client(base_url=served) as http:
        assert http.post("/mcp", json=call, headers=MCP_ACCEPT).status_code == 200
        page = http.post("/mcp", json=call, headers={**MCP_ACCEPT, "Origin": "https://elsewhere.example"})
        assert page.status_code == 403 and "cross-site" in page.json()["detail"]
        form = http.post("/mcp", content=json.dumps(call), headers={**MCP_ACCEPT, "Content-Type": "text/plain"})
        assert form.status_code == 415
        for method in ("GET", "DELETE"):  # stateless: no SSE stream to open, no session to end
            r = http.request(method, "/mcp", headers={"Accept": "text/event-stream"}, timeout=5)
            assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.fixture
def locked(built: Settings) -> Iterator[tuple[str, str, str]]:
    """A server with a key, collections `a` and `b` with one document each, and a reader
    key for `a`: (URL, the reader's secret, an id of a passage of `b`)."""
    settings = built.model_copy(update={"api_key": SecretStr("admin-secret")})
    reader = KeyStore(settings.index_dir).create("r", "reader", ["a"])[1]
    with running_server(create_app(settings, embedder_factory=lambda name: FakeEmbedder())) as url, \
            httpx.Client(base_url=url, headers=ADMIN) as http:
        for name, topic in (("a", "ferries"), ("b", "lighthouses")):
            assert http.post("/collections", json={"name": name}).status_code == 201
            assert http.post(f"/collections/{name}/documents",
                             json={"doc_id": topic, "text": article(topic)}).status_code == 201
        chunk = http.get("/query", params={"q": "lighthouses", "collection": "b", "k": 1}).json()
        yield url, reader, "b:" + chunk["passages"][0]["chunk_id"]


def test_a_reader_key_lists_searches_and_fetches_only_its_collections(locked: tuple[str, str, str]):
    url, reader, of_b = locked

    async def session(client: Client) -> None:
        listed = (await client.call_tool("list_collections", {})).structured_content
        assert [c["name"] for c in listed["collections"]] == ["a"]
        results = _json(await client.call_tool("search", {"query": "lighthouses and ferries"}))["results"]
        assert results and all(r["id"].startswith("a:") for r in results)
        for collection in ("b", "default"):
            message = _error(await client.call_tool("search_collection", {"query": "x", "collection": collection}))
            assert f"no collection named '{collection}'" in message  # as a missing one: names do not leak
        assert "no collection named 'b'" in _error(await client.call_tool("fetch", {"id": of_b}))
        assert _json(await client.call_tool("fetch", {"id": results[0]["id"]}))["metadata"]["collection"] == "a"

    _run(session, url + "/mcp", headers={"Authorization": f"Bearer {reader}"})

    async def admin(client: Client) -> None:  # the same id is readable with a key for `b`
        assert "lighthouses" in _json(await client.call_tool("fetch", {"id": of_b}))["text"]

    _run(admin, url + "/mcp", headers=ADMIN)


def test_no_key_is_a_401_before_any_mcp_message(locked: tuple[str, str, str]):
    url = locked[0]
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_collections", "arguments": {}}}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(url + "/mcp", json=call, headers={**MCP_ACCEPT, **headers})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    async def session(client: Client) -> None:
        await client.list_tools()

    with pytest.raises((MCPError, ExceptionGroup)) as failed:
        _run(session, url + "/mcp")
    errors = failed.value.exceptions if isinstance(failed.value, ExceptionGroup) else [failed.value]
    while any(isinstance(e, ExceptionGroup) for e in errors):
        errors = [x for e in errors for x in (e.exceptions if isinstance(e, ExceptionGroup) else [e])]
    assert any(isinstance(e, MCPError) for e in errors)


# ------------------------------------------------------------------ stdio

STDIO_FAKE = """
import sys
sys.path.insert(0, {repo!r})
from tests.helpers import FakeEmbedder
from api.mcp.stdio import run_stdio
from rag.settings import Settings
run_stdio(Settings(), FakeEmbedder())  # what `rag mcp` runs, with the fake model
"""


def _stdio_env(settings: Settings) -> dict[str, str]:
    return {"RAG_INDEX_DIR": str(settings.index_dir), "RAG_CORPUS_DIR": str(settings.corpus_dir),
            "RAG_MODEL": settings.model, "PYTHONPATH": str(REPO)}


def test_stdio_reads_the_index_folder_and_sees_new_builds_and_collections(built: Settings):
    with Collections(built, FakeEmbedder()) as collections:
        collections.create("notes")
        collections.upsert("notes", text_document(article("ferries"), "ferries", None, None), replace=False)
    server = StdioServerParameters(command=sys.executable, args=["-c", STDIO_FAKE.format(repo=str(REPO))],
                                   env=_stdio_env(built), cwd=str(REPO))

    async def session(client: Client) -> None:
        listed = (await client.call_tool("list_collections", {})).structured_content
        assert [c["name"] for c in listed["collections"]] == ["default", "notes"]
        results = _json(await client.call_tool("search", {"query": "What was trade between China and Russia worth?"}))
        top = results["results"][0]
        assert top["id"].startswith("default:") and top["url"] is None  # no service to link to
        doc = _json(await client.call_tool("fetch", {"id": top["id"]}))
        assert top["text"] in doc["text"] and doc["metadata"]["citation"]["doc_id"] in top["id"]
        found = (await client.call_tool("search_collection", {"query": "ferries", "collection": "notes", "k": 1}))
        assert found.structured_content["passages"][0]["citation"]["doc_id"] == "ferries"
        assert "no collection named 'nope'" in _error(await client.call_tool("fetch", {"id": "nope:x"}))
        (built.corpus_dir / "penguins.txt").write_text("Penguins waddle across Antarctic ice shelves. " * 10)
        build_index(built, FakeEmbedder())  # `rag build` while the client is connected: the next call sees it
        results = _json(await client.call_tool("search", {"query": "penguins waddle on antarctic ice"}))
        assert results["results"][0]["id"].startswith("default:penguins-")

    _run(session, server)


@pytest.mark.model
def test_rag_mcp_over_stdio_with_the_real_model(tmp_path: Path):
    from rag.encoders.load import load_embedder

    settings = Settings(corpus_dir=REPO / "corpus", index_dir=tmp_path / "index")
    build_index(settings, load_embedder(settings.model))
    server = StdioServerParameters(command=sys.executable, args=["-m", "api.cli", "mcp"], cwd=str(REPO),
                                   env={"RAG_INDEX_DIR": str(settings.index_dir), "PYTHONPATH": str(REPO)})

    async def session(client: Client) -> None:
        results = _json(await client.call_tool(
            "search", {"query": "What was the value of trade between China and Russia in 2024?"}))["results"]
        top = next(r for r in results[:3] if "$245 billion" in r["text"])
        assert top["text"] in _json(await client.call_tool("fetch", {"id": top["id"]}))["text"]

    _run(session, server)


# ------------------------------------------------------------------ fetch's window

def test_fetch_gives_the_section_and_cuts_a_long_one_around_the_passage():
    text = "x" * 100 + "y" * 30_000
    doc = DocumentRecord("d", {}, text, [{"title": "A", "char_start": 0, "char_end": 90},
                                         {"title": "B", "char_start": 100, "char_end": 30_100}], "h")

    def chunk(start: int, end: int) -> ChunkRecord:
        return ChunkRecord("d-1", "d", "B", start, end, text[start:end], 1, 1, "e")

    assert around(doc, ChunkRecord("d-0", "d", "A", 10, 50, text[10:50], 1, 1, "e")) == (0, 90)
    assert around(doc, chunk(200, 400), limit=1000) == (100, 1100)  # near the start: from the section's start
    assert around(doc, chunk(15_000, 15_200), limit=1000) == (14_600, 15_600)  # centred
    assert around(doc, chunk(29_900, 30_100), limit=1000) == (29_100, 30_100)  # near the end: to its end
    assert around(doc, chunk(5_000, 9_000), limit=1000) == (5_000, 9_000)  # never less than the passage
