"""Live collections over HTTP: documents added, replaced and deleted while queries run,
and the promises of rag.stores.local.live: read your writes, no stale passages, upsert by content,
acknowledged means durable (SIGKILL), never half a document, queries never fail during writes."""

import os
import random
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import BASE_URL, PDF_PAGES, FakeEmbedder, article, pdf_bytes, start_service


@pytest.fixture(params=["local", pytest.param("milvus", marks=pytest.mark.milvus)])
def built(request: pytest.FixtureRequest, settings: Settings, fake_embedder: FakeEmbedder) -> Settings:
    """The corpus built, and collections made, in each store: local files, and Milvus Lite."""
    if request.param == "milvus":
        pytest.importorskip("pymilvus")
        settings = settings.model_copy(update={"vector_store": "milvus",
                                               "milvus_uri": str(settings.index_dir.parent / "milvus.db")})
    build_index(settings, fake_embedder)
    return settings


def passages(client: TestClient, question: str, collection: str = "notes", k: int = 10) -> list[dict]:
    r = client.post("/query", json={"question": question, "k": k, "collection": collection})
    assert r.status_code == 200, r.text
    return r.json()["passages"]


def test_a_collection_is_written_and_read_over_http(client: TestClient):
    assert client.post("/collections", json={"name": "notes"}).status_code == 201
    assert [c["name"] for c in client.get("/collections").json()] == ["default", "notes"]
    r = client.post("/collections/notes/documents", json={"doc_id": "penguins", "text": article("penguins")})
    assert r.status_code == 201 and r.json()["status"] == "created" and r.json()["embedded"] == r.json()["chunks"] > 0
    found = passages(client, "penguins policy")  # read your writes
    assert found and all(p["citation"]["doc_id"] == "penguins" for p in found)
    listed = client.get("/collections/notes/documents").json()
    assert [(d["doc_id"], d["chunks"]) for d in listed] == [("penguins", r.json()["chunks"])]

    again = client.post("/collections/notes/documents", json={"doc_id": "penguins", "text": article("penguins")})
    assert again.status_code == 200 and again.json()["status"] == "unchanged" and again.json()["embedded"] == 0
    clash = client.post("/collections/notes/documents", json={"doc_id": "penguins", "text": "other text"})
    assert clash.status_code == 409 and "PUT replaces" in clash.json()["detail"]

    edited = article("penguins").replace("Paragraph 5 about penguins (version 1)", "Paragraph 5 about krill")
    put = client.put("/collections/notes/documents/penguins", json={"text": edited})
    assert put.status_code == 200 and put.json()["status"] == "replaced"
    assert 0 < put.json()["embedded"] < put.json()["chunks"] or put.json()["chunks"] == 1  # only changed chunks
    assert any("krill" in p["text"] for p in passages(client, "krill"))
    assert not any("Paragraph 5 about penguins" in p["text"] for p in passages(client, "penguins paragraph 5"))

    assert client.delete("/collections/notes/documents/penguins").status_code == 204
    assert passages(client, "penguins policy") == []  # no stale passage, the very next query
    assert client.delete("/collections/notes/documents/penguins").status_code == 404


def test_bad_requests_are_clear_4xx(client: TestClient, built: Settings):
    assert client.post("/collections", json={"name": "Bad Name!"}).status_code == 422
    assert client.post("/collections", json={"name": "default"}).status_code == 409
    assert client.get("/collections/nope").status_code == 404
    assert client.post("/query", json={"question": "x", "collection": "nope"}).status_code == 404
    assert client.post("/collections/nope/documents", json={"text": "x"}).status_code == 404
    client.post("/collections", json={"name": "notes"})
    assert client.post("/collections", json={"name": "notes"}).status_code == 409
    assert client.post("/collections/notes/documents", json={"text": "   "}).status_code == 422
    assert client.post("/collections/notes/documents", json={"text": "x", "doc_id": "../etc"}).status_code == 422
    assert client.post("/collections/default/documents", json={"text": "x"}).status_code == 409
    assert client.delete("/collections/default").status_code == 409
    with TestClient(create_app(built.model_copy(update={"read_only": True}), lambda name: FakeEmbedder()),
                    base_url=BASE_URL) as locked:
        r = locked.post("/collections", json={"name": "more"})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]


@pytest.mark.slow
def test_interleaved_writes_never_show_a_deleted_or_replaced_version(client: TestClient):
    """200 uploads, replacements, deletions and queries: after each write returns, no query
    returns a version it replaced or removed."""
    client.post("/collections", json={"name": "notes"})
    rng = random.Random(7)
    live: dict[str, int] = {}  # doc_id -> current version
    topics = [f"topic{i}" for i in range(12)]
    for step in range(200):
        topic = rng.choice(topics)
        action = rng.choice(["add", "replace", "delete", "query", "query"])
        if action == "add" and topic not in live:
            assert client.post("/collections/notes/documents", json={"doc_id": topic, "text": article(topic, 1, 3)}
                               ).status_code == 201
            live[topic] = 1
        elif action == "replace" and topic in live:
            live[topic] += 1
            assert client.put(f"/collections/notes/documents/{topic}",
                              json={"text": article(topic, live[topic], 3)}).status_code == 200
        elif action == "delete" and topic in live:
            assert client.delete(f"/collections/notes/documents/{topic}").status_code == 204
            del live[topic]
        for p in passages(client, f"{topic} policy matters", k=10):
            doc = p["citation"]["doc_id"]
            assert doc in live, (step, doc)
            assert f"(version {live[doc]})" in p["text"], (step, doc, p["text"][:80])


def test_queries_running_during_writes_never_fail(client: TestClient):
    client.post("/collections", json={"name": "notes"})
    client.post("/collections/notes/documents", json={"doc_id": "base", "text": article("base")})
    failures: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            r = client.post("/query", json={"question": "base policy trade", "collection": "notes"})
            if r.status_code != 200 or not r.json()["passages"]:
                failures.append(f"{r.status_code} {r.text[:100]}")

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for t in askers:
        t.start()
    for i in range(30):
        client.put(f"/collections/notes/documents/doc{i % 5}", json={"text": article(f"churn{i}", i, 2)})
        if i % 3 == 0:
            client.delete(f"/collections/notes/documents/doc{(i + 2) % 5}")
    stop.set()
    for t in askers:
        t.join()
    assert failures == []


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill(built: Settings):
    """Uploads stream in; the server is killed with SIGKILL mid-stream and restarted:
    every acknowledged document is there and searchable, none is partial, and the
    collection's chunk count is the sum of its documents'."""
    server, url = start_service(built)
    acknowledged: list[str] = []
    try:
        assert httpx.post(url + "/collections", json={"name": "notes"}).status_code == 201

        def upload() -> None:
            with httpx.Client(base_url=url, timeout=10) as c:
                for i in range(1000):
                    try:
                        r = c.post("/collections/notes/documents", json={"doc_id": f"d{i}", "text": article(f"t{i}")})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 201:
                        acknowledged.append(f"d{i}")

        uploader = threading.Thread(target=upload)
        uploader.start()
        while len(acknowledged) < 15:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        uploader.join()
    finally:
        server.kill()
        server.wait()
    server, url = start_service(built)
    try:
        documents = httpx.get(url + "/collections/notes/documents").json()
        stored = {d["doc_id"]: d["chunks"] for d in documents}
        assert set(acknowledged) <= set(stored)  # acknowledged means durable
        expected = httpx.post(url + "/query", json={"question": "x", "collection": "notes"})
        assert expected.status_code == 200
        assert len(set(stored.values())) == 1  # every article has the same shape: none is partial
        info = httpx.get(url + "/collections/notes").json()
        assert info["chunks"] == sum(stored.values())  # no chunk without its document, none missing
        for doc_id in acknowledged[-3:]:
            found = httpx.post(url + "/query", json={"question": f"t{doc_id[1:]} policy", "k": 10,
                                                     "collection": "notes"}).json()["passages"]
            assert any(p["citation"]["doc_id"] == doc_id for p in found)
    finally:
        server.kill()
        server.wait()


def test_each_collection_is_a_model_for_openai_clients(client: TestClient):
    client.post("/collections", json={"name": "notes"})
    client.post("/collections/notes/documents", json={"doc_id": "penguins", "text": article("penguins")})
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["rag", "rag:notes"]
    body = client.post("/v1/chat/completions", json={"model": "rag:notes", "messages": [
        {"role": "user", "content": "What about penguins policy?"}]}).json()
    assert body["citations"] and {c["doc_id"] for c in body["citations"]} == {"penguins"}
    assert body["model"] == "rag:notes"  # the model asked for, as OpenAI echoes it
    default = client.post("/v1/chat/completions", json={"model": "rag", "messages": [
        {"role": "user", "content": "What about penguins policy?"}]}).json()
    assert "penguins" not in {c["doc_id"] for c in default["citations"]}
    block = client.post("/context", json={"question": "penguins policy", "collection": "notes"}).json()
    assert {c["doc_id"] for c in block["citations"]} == {"penguins"}
    assert client.post("/v1/chat/completions", json={"model": "rag:nope", "messages": [
        {"role": "user", "content": "hi there"}]}).status_code == 404


# ------------------------------------------------------------------ file uploads

def upload(client: TestClient, filename: str, data: bytes, collection: str = "notes", **fields: str):
    return client.post(f"/collections/{collection}/documents", files={"file": (filename, data)}, data=fields)


def test_files_are_uploaded_and_pdf_passages_cite_their_pages(client: TestClient):
    client.post("/collections", json={"name": "notes"})
    r = upload(client, "survey report.pdf", pdf_bytes(PDF_PAGES))
    assert r.status_code == 201 and r.json()["doc_id"] == "survey-report", r.text
    again = upload(client, "survey report.pdf", pdf_bytes(PDF_PAGES))
    assert again.json()["status"] == "unchanged" and again.json()["embedded"] == 0  # same file: nothing embedded
    document = client.get("/collections/notes/documents").json()
    assert [d["doc_id"] for d in document] == ["survey-report"]
    crossing = 0
    for p in passages(client, "penguin colony krill survey", k=10):
        # the pages of the first and last sentence the passage holds, read off the text itself
        held = [page for page, sentences in enumerate(PDF_PAGES, start=1) for t in sentences if t in p["text"]]
        assert held, p["text"][:80]
        citation = p["citation"]
        assert citation["page_start"] <= min(held) and max(held) <= citation["page_end"] <= max(held) + 1
        crossing += citation["page_end"] > citation["page_start"]
    assert crossing  # some passage spans two pages, and says so
    md = upload(client, "notes.md", b"---\ntitle: Field notes\n---\n# Ice\n\nThe ice shelf retreated in March.\n")
    assert md.status_code == 201
    found = passages(client, "ice shelf retreated March")
    assert any(p["citation"]["title"] == "Field notes" and p["citation"]["page_start"] is None for p in found)


def test_bad_uploads_are_clear_4xx(client: TestClient, built: Settings):
    client.post("/collections", json={"name": "notes"})
    assert upload(client, "a.docx", b"PK\x03\x04...").status_code == 415
    assert upload(client, "empty.txt", b"").status_code == 422
    r = upload(client, "latin1.txt", "caf\xe9 au lait".encode("latin-1"))
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"]
    r = upload(client, "locked.pdf", pdf_bytes(PDF_PAGES, encrypt={"owner_password": "o", "user_password": "u"}))
    assert r.status_code == 422 and "encrypted" in r.json()["detail"]
    r = upload(client, "broken.pdf", pdf_bytes(PDF_PAGES)[:200])
    assert r.status_code == 422 and "damaged" in r.json()["detail"]
    assert upload(client, "x.pdf", pdf_bytes(PDF_PAGES), collection="nope").status_code == 404
    assert client.post("/collections/notes/documents", files={"other": ("a.txt", b"x")}).status_code == 422
    small = built.model_copy(update={"max_upload_bytes": 2048})
    with TestClient(create_app(small, lambda name: FakeEmbedder()), base_url=BASE_URL) as c:
        c.post("/collections", json={"name": "notes"})
        r = upload(c, "big.txt", b"word " * 1000)
        assert r.status_code == 413 and "RAG_MAX_UPLOAD_BYTES" in r.json()["detail"]
        assert upload(c, "ok.txt", b"A short note about penguins.").status_code == 201


def test_a_json_body_that_is_not_a_document_is_a_422_naming_the_field(client: TestClient):
    client.post("/collections", json={"name": "notes"})
    for body, where in (([None, None], "body"), ({"doc_id": "a"}, "text"), ({"text": 3}, "text")):
        r = client.post("/collections/notes/documents", json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(where), r.text


def test_a_write_by_another_process_is_seen_at_the_next_query(built: Settings):
    """`rag add` beside a running service: two connections to one collection file; what one
    writes, the other's next search finds (SQLite's data_version moved)."""
    if built.vector_store == "milvus":
        pytest.skip("a Milvus Lite file is one process's (a second one cannot open it)")
    from rag.collections import Collections, text_document
    from rag.search.retriever import Retriever

    writer, server = Collections(built, FakeEmbedder()), Collections(built, FakeEmbedder())
    writer.create("notes")
    serving = Retriever(server.get("notes"), FakeEmbedder())
    assert serving.search("penguins policy", 3) == []
    writer.upsert("notes", text_document(article("penguins"), "penguins", None, None), replace=False)
    found = serving.search("penguins policy", 3)
    assert found and server.get("notes").chunks[found[0].row].doc_id == "penguins"
    writer.remove("notes", "penguins")
    assert serving.search("penguins policy", 3) == []
    writer.close()
    server.close()


def test_a_big_document_is_accepted_with_202_and_its_status_polled(built: Settings):
    small = built.model_copy(update={"sync_write_chars": 500})
    with TestClient(create_app(small, lambda name: FakeEmbedder()), base_url=BASE_URL) as c:
        c.post("/collections", json={"name": "notes"})
        short = c.post("/collections/notes/documents", json={"doc_id": "short", "text": "Penguins eat krill."})
        assert short.status_code == 201
        r = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("walruses", 1, 20)})
        assert r.status_code == 202 and r.json()["status"] == "in_progress"
        deadline = time.monotonic() + 30
        while (state := c.get("/collections/notes/documents/big").json())["status"] == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["status"] == "completed" and state["chunks"] > 1
        assert any(p["citation"]["doc_id"] == "big" for p in passages(c, "walruses policy"))
        clash = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("seals", 1, 20)})
        assert clash.status_code == 409  # told at once, not after the write
        assert c.get("/collections/notes/documents/nope").status_code == 404
        assert c.get("/collections/notes/documents/short").json() == {"doc_id": "short", "status": "completed",
                                                                       "chunks": 1, "error": None}


def test_two_big_writes_of_one_document_in_a_row_and_a_delete(built: Settings):
    """Found by probing: a second big POST of other content, sent while the first was still
    queued, was taken (202) and then failed behind it. Now it is a 409 at once, and a retry
    of the same content is taken."""
    import threading

    small = built.model_copy(update={"sync_write_chars": 500})
    with TestClient(create_app(small, lambda name: FakeEmbedder()), base_url=BASE_URL) as c:
        c.post("/collections", json={"name": "notes"})
        engine = c.app.state.engine  # type: ignore[attr-defined]
        release = threading.Event()
        engine.write_later(("notes", "hold"), lambda collections: release.wait(30))  # the writer is busy
        first = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("walruses", 1, 20)})
        again = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("walruses", 1, 20)})
        other = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("seals", 1, 20)})
        assert (first.status_code, again.status_code, other.status_code) == (202, 202, 409)
        assert "being written with other content" in other.json()["detail"]
        release.set()
        assert settled(c, "big")["status"] == "completed"
        assert c.delete("/collections/notes/documents/big").status_code == 204
        assert c.get("/collections/notes/documents/big").status_code == 404


def test_a_failed_big_write_does_not_outlive_a_delete_or_a_later_write(built: Settings):
    """The status of a big write that failed goes with a DELETE of the document (there is
    no document: 204 all the same, then 404), and a later write that succeeds replaces it."""
    from rag.errors import CorpusError

    def fails(collections: Any) -> None:
        raise CorpusError("no extractable text")

    with TestClient(create_app(built, lambda name: FakeEmbedder()), base_url=BASE_URL) as c:
        c.post("/collections", json={"name": "notes"})
        engine = c.app.state.engine  # type: ignore[attr-defined]
        for doc_id in ("ghost", "memo"):
            engine.write_later(("notes", doc_id), fails)
            assert settled(c, doc_id) == {"doc_id": doc_id, "status": "failed", "chunks": 0,
                                          "error": "no extractable text"}
        assert c.delete("/collections/notes/documents/ghost").status_code == 204
        assert c.get("/collections/notes/documents/ghost").status_code == 404
        assert c.delete("/collections/notes/documents/ghost").status_code == 404
        assert c.post("/collections/notes/documents", json={"doc_id": "memo", "text": "Seals rest."}).status_code == 201
        assert c.get("/collections/notes/documents/memo").json()["status"] == "completed"


def test_write_states_keep_the_latest_write_of_a_document():
    """An outcome counts only for the write still tracked; a finished state can be
    forgotten, one in progress cannot."""
    from api.engine.writes import WriteStates

    states, key = WriteStates(), ("notes", "big")
    first = states.start(key, "hash-a")
    second = states.start(key, "hash-b")
    states.finish(key, first, {"status": "failed", "error": "boom"})  # the earlier write, queued before
    assert states.get(key) == {"status": "in_progress", "error": None, "content_hash": "hash-b"}
    assert states.forget(key) is None and states.get(key) is not None  # in progress: kept
    states.finish(key, second, {"status": "completed", "error": None})
    assert states.get(key) == {"status": "completed", "error": None}
    assert states.forget(key) == {"status": "completed", "error": None} and states.get(key) is None
    third = states.start(key)
    states.finish(key, third, None)  # forgotten once written
    assert states.get(key) is None


def settled(c: TestClient, doc_id: str) -> dict[str, Any]:
    """The document's state once no write of it is in progress."""
    deadline = time.monotonic() + 30
    while (state := c.get(f"/collections/notes/documents/{doc_id}").json())["status"] == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return state


def test_rows_are_never_reused_after_a_delete(built: Settings):
    from rag.collections import Collections, text_document

    collections = Collections(built, FakeEmbedder())
    kb = collections.create("notes")
    collections.upsert("notes", text_document(article("first"), "first", None, None), replace=False)
    first_rows = kb.rows_of("first")
    collections.remove("notes", "first")
    collections.upsert("notes", text_document(article("second"), "second", None, None), replace=False)
    assert min(kb.rows_of("second")) > max(first_rows)
    collections.close()


def test_a_crashed_create_and_a_deleted_collection_are_handled(built: Settings):
    from rag.collections import Collections
    from rag.errors import NotFoundError
    from rag.search.retriever import Retriever

    collections = Collections(built, FakeEmbedder())
    half = collections.root / ".tmp-half"
    half.mkdir(parents=True)
    (half / "manifest.json").write_text("{}")  # a create that died before its rename
    kb = collections.create("notes")
    assert collections.names() == ["default", "notes"]
    serving = Retriever(kb, FakeEmbedder())
    collections.delete("notes")
    with pytest.raises(NotFoundError):  # a query that held the old collection: a 404, not a crash
        serving.search("anything", 3)


def test_live_collections_answer_without_a_built_corpus(settings: Settings):
    """No `rag build` yet: the default collection is not ready (503), the live ones work."""
    with TestClient(create_app(settings, lambda name: FakeEmbedder()), base_url=BASE_URL) as c:
        assert c.post("/query", json={"question": "penguins"}).status_code == 503
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        assert c.post("/collections/notes/documents", json={"doc_id": "p", "text": article("penguins")}
                      ).status_code == 201
        assert [p["citation"]["doc_id"] for p in passages(c, "penguins policy")][:1] == ["p"]


def test_oversized_headings_and_metadata_are_bounded_on_every_store(client: TestClient):
    """A Markdown "heading" of 5,000 characters is cut to a section title of at most 500
    (Milvus keeps sections in 4,096-byte fields); metadata text over 1,000 characters is a 422."""
    client.post("/collections", json={"name": "notes"})
    heading = "Walrus " * 800
    r = upload(client, "long.md", f"# {heading}\n\nThe walrus colony hauled out on the ice in March.\n".encode())
    assert r.status_code == 201, r.text
    found = passages(client, "walrus colony ice")
    assert found and 0 < len(found[0]["citation"]["section"]) <= 501 and found[0]["citation"]["section"].endswith("…")
    r = client.post("/collections/notes/documents", json={"text": "Seals rest.", "metadata": {"source": "s" * 1001}})
    assert r.status_code == 422 and "longer than 1,000 characters" in r.json()["detail"]
    r = client.post("/collections/notes/documents", json={"doc_id": "t", "text": "Seals rest.", "title": "t" * 1001})
    assert r.json()["detail"] == "document 't': metadata 'title' longer than 1,000 characters"  # was "t.txt: …"


def test_put_takes_a_body_that_repeats_the_path_doc_id(client: TestClient):
    """As POST's body may: the same doc_id is taken, another is a 422 saying so."""
    client.post("/collections", json={"name": "notes"})
    r = client.put("/collections/notes/documents/seals", json={"doc_id": "seals", "text": "Seals rest on ice."})
    assert r.status_code == 201 and r.json()["doc_id"] == "seals", r.text
    r = client.put("/collections/notes/documents/seals", json={"doc_id": "walrus", "text": "Walruses rest."})
    assert r.status_code == 422 and r.json()["detail"] == (
        "doc_id: the body's 'walrus' is not the path's 'seals' (leave it out, or send the same)")
    assert [d["doc_id"] for d in client.get("/collections/notes/documents").json()] == ["seals"]


def test_a_doc_id_with_a_trailing_newline_is_a_422(client: TestClient):
    """`DOC_ID_PATTERN.match` took 'abc\\n': PUT …/abc%0A answered 201 and listed a lookalike of 'abc'."""
    client.post("/collections", json={"name": "notes"})
    assert client.put("/collections/notes/documents/abc%0A", json={"text": "Seals rest."}).status_code == 422
    assert client.post("/collections/notes/documents", json={"doc_id": "abc\n", "text": "Seals rest."}
                       ).status_code == 422
    assert upload(client, "seals.txt", b"Seals rest.", doc_id="abc\n").status_code == 422
    assert client.get("/collections/notes/documents").json() == []


def test_a_failed_big_write_names_no_server_path(built: Settings):
    from rag.errors import CorpusError

    def fails(collections: Any) -> None:
        raise CorpusError("cannot read /srv/rag/index/collections/notes/kb.sqlite: disk I/O error")

    with TestClient(create_app(built, lambda name: FakeEmbedder()), base_url=BASE_URL) as c:
        c.post("/collections", json={"name": "notes"})
        c.app.state.engine.write_later(("notes", "memo"), fails)  # type: ignore[attr-defined]
        assert settled(c, "memo")["error"] == "cannot read …/kb.sqlite: disk I/O error"
