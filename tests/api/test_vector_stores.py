"""The OpenAI Files and Vector Stores APIs (api.routes.vector_stores), driven by the official
`openai` client with only `base_url` changed: what a user of OpenAI's file search does."""

import io
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.openai.filters import check_filter, matches
from api.openai.objects import page
from api.routes.vector_stores import derive_name
from rag.errors import BadQueryError
from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import PDF_PAGES, FakeEmbedder, article, pdf_bytes, running_server


@pytest.fixture(scope="module", params=["local", pytest.param("milvus", marks=pytest.mark.milvus)])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A one-document built corpus (the default collection): quick to build; vector stores
    in each store (local files, Milvus Lite)."""
    root = tmp_path_factory.mktemp("stores")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "seals.md").write_text("---\ntitle: Seals\nsource: Field guide\n---\n# Seals\n\n"
                                     "Harbour seals haul out on sandbanks at low tide.\n", encoding="utf-8")
    settings = Settings(corpus_dir=corpus, index_dir=root / "index", model="fake")
    if request.param == "milvus":
        pytest.importorskip("pymilvus")
        settings = settings.model_copy(update={"vector_store": "milvus", "milvus_uri": str(root / "milvus.db")})
    build_index(settings, FakeEmbedder())
    return settings


@pytest.fixture(scope="module")
def url(built: Settings) -> Iterator[str]:
    with running_server(create_app(built, lambda name: FakeEmbedder())) as served:
        yield served


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def search(client: openai.OpenAI, store: str, query: str, **options: Any) -> list[dict[str, Any]]:
    return [r.to_dict() for r in client.vector_stores.search(store, query=query, **options).data]


def test_a_stock_client_files_searches_and_deletes(client: openai.OpenAI, url: str):
    store = client.vector_stores.create(name="Field Notes", metadata={"team": "ice"})
    assert (store.id, store.name, store.status, store.metadata) == ("vs_field-notes", "Field Notes", "completed",
                                                                    {"team": "ice"})
    assert store.file_counts.total == 0

    penguins = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("penguins.txt", article("penguins").encode()),
        attributes={"topic": "penguins", "year": 2023, "public": True})
    assert penguins.status == "completed" and penguins.id.startswith("file-") and penguins.usage_bytes > 0
    assert penguins.attributes == {"topic": "penguins", "year": 2023, "public": True}
    survey = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("survey.pdf", pdf_bytes(PDF_PAGES)), attributes={"topic": "krill", "year": 2021})
    assert survey.status == "completed", survey.last_error
    seals = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("seals.md", b"# Seals\n\nLeopard seals hunt penguins near the ice edge.\n"),
        attributes={"topic": "seals", "year": 2019, "public": False})
    assert seals.status == "completed"
    scan = client.vector_stores.files.upload_and_poll(vector_store_id=store.id,
                                                      file=("scan.pdf", pdf_bytes([[], []])))
    assert scan.status == "failed" and scan.last_error and scan.last_error.code == "invalid_file"
    assert "no extractable text" in scan.last_error.message
    docx = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("a.docx", b"PK\x03\x04 x"))
    assert docx.status == "failed" and docx.last_error and docx.last_error.code == "unsupported_file"

    counts = client.vector_stores.retrieve(store.id).file_counts
    assert (counts.completed, counts.failed, counts.in_progress, counts.total) == (3, 2, 0, 5)
    assert {f.id for f in client.vector_stores.files.list(vector_store_id=store.id)} == \
        {penguins.id, survey.id, seals.id, scan.id, docx.id}
    assert {f.id for f in client.vector_stores.files.list(vector_store_id=store.id, filter="failed")} == \
        {scan.id, docx.id}
    assert client.files.retrieve(survey.id).filename == "survey.pdf"

    # the PDF's passages: the right file, exact offsets into its text, and its pages
    found = search(client, store.id, "penguin colony krill survey", max_num_results=5)
    assert 0 < len(found) <= 5 and found[0]["file_id"] == survey.id
    text = client.vector_stores.files.content(survey.id, vector_store_id=store.id).data[0].text
    assert text
    for result in (r for r in found if r["file_id"] == survey.id):
        citation = result["citation"]
        assert result["filename"] == "survey.pdf" and result["attributes"] == {"topic": "krill", "year": 2021}
        assert text[citation["char_start"]:citation["char_end"]] == result["content"][0]["text"]
        assert 1 <= citation["page_start"] <= citation["page_end"] <= len(PDF_PAGES)
        held = [page for page, sentences in enumerate(PDF_PAGES, start=1) for t in sentences
                if t in result["content"][0]["text"]]
        assert citation["page_start"] <= min(held) and max(held) <= citation["page_end"]
    top = search(client, store.id, "penguins policy trade energy", max_num_results=3)[0]
    assert top["file_id"] == penguins.id and top["filename"] == "penguins.txt"
    assert top["citation"]["page_start"] is None and top["citation"]["title"] == "penguins"
    assert all(0 <= r["score"] <= 1 for r in found) and top["score"] > 0  # cosine similarity, as OpenAI's
    strict = search(client, store.id, "penguins policy trade energy", ranking_options={"score_threshold": top["score"]})
    assert top in strict and all(r["score"] >= top["score"] for r in strict)

    # filters on attributes
    krill = search(client, store.id, "penguins", filters={"type": "eq", "key": "topic", "value": "krill"})
    assert krill and {r["file_id"] for r in krill} == {survey.id}
    both = search(client, store.id, "penguins", filters={"type": "and", "filters": [
        {"type": "gte", "key": "year", "value": 2020}, {"type": "eq", "key": "public", "value": True}]})
    assert both and {r["file_id"] for r in both} == {penguins.id}
    either = search(client, store.id, "penguins seals krill", max_num_results=50, filters={"type": "or", "filters": [
        {"type": "eq", "key": "topic", "value": "seals"}, {"type": "lt", "key": "year", "value": 2022}]})
    assert {r["file_id"] for r in either} == {seals.id, survey.id}
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        search(client, store.id, "penguins", filters={"type": "eq", "key": "topic"})
    assert bad.value.status_code == 422 and "filters.value is required" in bad.value.message
    assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "invalid_request_error"

    # new attributes without a new upload
    updated = client.vector_stores.files.update(seals.id, vector_store_id=store.id, attributes={"topic": "pinnipeds"})
    assert updated.attributes == {"topic": "pinnipeds"}
    assert search(client, store.id, "leopard seals", filters={"type": "eq", "key": "topic", "value": "pinnipeds"})

    # deleting the PDF: gone from the very next search
    assert client.vector_stores.files.delete(survey.id, vector_store_id=store.id).deleted
    assert survey.id not in {r["file_id"] for r in search(client, store.id, "penguin colony krill survey",
                                                                 max_num_results=50)}
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve(survey.id, vector_store_id=store.id)
    assert client.vector_stores.files.delete(scan.id, vector_store_id=store.id).deleted  # a failed one too
    assert client.vector_stores.retrieve(store.id).file_counts.total == 3

    renamed = client.vector_stores.update(store.id, name="Ice notes", metadata={"team": "sea"})
    assert (renamed.id, renamed.name, renamed.metadata) == (store.id, "Ice notes", {"team": "sea"})
    listed = [s.id for s in client.vector_stores.list()]
    assert store.id in listed and "vs_default" in listed
    assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError) as missing:
        client.vector_stores.retrieve(store.id)
    assert isinstance(missing.value.body, dict) and missing.value.body["type"] == "invalid_request_error"
    assert store.id not in [s.id for s in client.vector_stores.list()]
    with pytest.raises(openai.NotFoundError):
        search(client, store.id, "penguins")

    assert client.files.delete(penguins.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(penguins.id)


def test_stores_are_named_from_their_names_and_made_with_files(client: openai.OpenAI):
    memo = b"# Memo\n\nThe pipeline opens in 2027.\n"
    uploaded = client.files.create(file=("memo.md", memo), purpose="assistants")
    assert (uploaded.object, uploaded.filename, uploaded.bytes) == ("file", "memo.md", len(memo))
    first = client.vector_stores.create(name="Notes")
    second = client.vector_stores.create(name="Notes", file_ids=[uploaded.id])
    assert first.id == "vs_notes" and second.id.startswith("vs_notes-") and second.name == "Notes"
    assert second.file_counts.completed == 1
    assert search(client, second.id, "When does the pipeline open?")[0]["file_id"] == uploaded.id
    unnamed = client.vector_stores.create()
    assert unnamed.id.startswith("vs_store-")
    before = {s.id for s in client.vector_stores.list(limit=100)}
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.create(name="Broken", file_ids=["file-" + "0" * 24])
    assert {s.id for s in client.vector_stores.list(limit=100)} == before  # no store made
    # the built corpus is a store too: searched, never written
    assert search(client, "vs_default", "harbour seals sandbanks")[0]["filename"] == "Field guide"
    with pytest.raises(openai.ConflictError):
        client.vector_stores.files.create(vector_store_id="vs_default", file_id=uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.create(vector_store_id=first.id, file_id="file-nope")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("notes")
    for store in (first, second, unnamed):
        client.vector_stores.delete(store.id)


def test_writes_are_refused_read_only_and_need_the_key(built: Settings):
    with TestClient(create_app(built.model_copy(update={"read_only": True}), lambda name: FakeEmbedder()),
                    base_url="http://127.0.0.1") as locked:
        r = locked.post("/v1/vector_stores", json={"name": "x"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert locked.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "assistants"}
                           ).status_code == 403
        assert locked.get("/v1/vector_stores").status_code == 200
    with TestClient(create_app(built.model_copy(update={"api_key": SecretStr("secret")}), lambda name: FakeEmbedder()),
                    base_url="http://127.0.0.1") as keyed:
        assert keyed.get("/v1/vector_stores").status_code == 401
        assert keyed.get("/v1/vector_stores", headers={"Authorization": "Bearer secret"}).status_code == 200


def test_bad_uploads_are_clear_4xx(url: str):
    with httpx.Client(base_url=url) as http:
        assert http.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "nope"}).status_code == 422
        assert http.post("/v1/files", files={"other": ("a.txt", b"x")}, data={"purpose": "assistants"}
                         ).status_code == 422
        assert http.post("/v1/files", files={"file": ("a.txt", io.BytesIO(b""))}, data={"purpose": "assistants"}
                         ).status_code == 422
        assert http.get("/v1/files/../../etc").status_code == 404
        r = http.post("/v1/vector_stores", json={"name": "x", "metadata": {f"k{i}": "v" for i in range(17)}})
        assert r.status_code == 422 and "at most 16" in r.json()["error"]["message"]


def test_matches_follows_openais_filter_grammar():
    attributes = {"topic": "krill", "year": 2021, "score": 0.5, "public": True, "date": "2024-03-01"}
    yes = [{"type": "eq", "key": "topic", "value": "krill"}, {"type": "ne", "key": "topic", "value": "seals"},
           {"type": "gt", "key": "year", "value": 2020}, {"type": "gte", "key": "year", "value": 2021.0},
           {"type": "lt", "key": "score", "value": 1}, {"type": "lte", "key": "score", "value": 0.5},
           {"type": "eq", "key": "public", "value": True}, {"type": "gte", "key": "date", "value": "2024-01-01"},
           {"type": "in", "key": "topic", "value": ["seals", "krill"]}, {"type": "nin", "key": "year", "value": [1, 2]},
           {"type": "ne", "key": "missing", "value": "x"}, {"type": "nin", "key": "missing", "value": ["x"]}]
    no = [{"type": "eq", "key": "topic", "value": "seals"}, {"type": "gt", "key": "year", "value": 2021},
          {"type": "eq", "key": "public", "value": 1}, {"type": "eq", "key": "year", "value": "2021"},
          {"type": "gt", "key": "topic", "value": 5}, {"type": "eq", "key": "missing", "value": "x"},
          {"type": "lt", "key": "missing", "value": 3}, {"type": "in", "key": "topic", "value": ["seals"]}]
    for spec in yes:
        check_filter(spec)
        assert matches(spec, attributes), spec
    for spec in no:
        check_filter(spec)
        assert not matches(spec, attributes), spec
    assert matches({"type": "and", "filters": yes}, attributes)
    assert not matches({"type": "and", "filters": [*yes, no[0]]}, attributes)
    assert matches({"type": "or", "filters": [*no, yes[0]]}, attributes)
    assert not matches({"type": "or", "filters": no}, attributes)
    nested = {"type": "and", "filters": [{"type": "or", "filters": [no[0], yes[1]]}, yes[2]]}
    check_filter(nested)
    assert matches(nested, attributes) and not matches(nested, {})
    for bad, says in [([], "must be an object"), ({"type": "like", "key": "a", "value": 1}, "type must be"),
                      ({"type": "eq", "value": 1}, "key must be"), ({"type": "eq", "key": "a"}, "value is required"),
                      ({"type": "eq", "key": "a", "value": None}, "value must be"),
                      ({"type": "in", "key": "a", "value": "x"}, "must be a list"),
                      ({"type": "gt", "key": "a", "value": True}, "not booleans"),
                      ({"type": "and", "filters": []}, "non-empty list"),
                      ({"type": "or", "filters": [{"type": "eq"}]}, "filters.filters[0].key"),
                      ({"type": "eq", "key": "a", "value": 1, "extra": 2}, "unknown key")]:
        with pytest.raises(BadQueryError, match=says.replace("[", r"\[").replace("]", r"\]")):
            check_filter(bad)


def test_names_and_pages():
    assert derive_name("Field Notes (2024)", set()) == "field-notes-2024"
    assert derive_name("Café Über", set()) == "cafe-uber"
    assert derive_name("notes", {"notes"}).startswith("notes-") and derive_name("default", set()) != "default"
    assert derive_name("!!!", set()).startswith("store-")
    assert len(derive_name("x" * 200, set())) <= 63

    class Item:
        def __init__(self, n: int):
            self.id, self.created_at = f"i{n}", n

    items = [Item(n) for n in range(5)]
    listed = page(items, 2, "desc", None, None)
    assert [i.id for i in listed.data] == ["i4", "i3"] and listed.has_more and listed.last_id == "i3"
    listed = page(items, 2, "desc", "i3", None)
    assert [i.id for i in listed.data] == ["i2", "i1"] and listed.has_more
    listed = page(items, 2, "asc", "i2", None)
    assert [i.id for i in listed.data] == ["i3", "i4"] and not listed.has_more
    listed = page(items, 2, "asc", None, "i3")
    assert [i.id for i in listed.data] == ["i1", "i2"] and listed.has_more


class GatedEmbedder(FakeEmbedder):
    """Holds any text with 'walrus' in it until `gate` is set."""

    def __init__(self, gate: threading.Event):
        super().__init__()
        self.gate = gate

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        if any("walrus" in t.lower() for t in texts):
            assert self.gate.wait(10)
        return super().encode(texts, batch_size)


def test_files_being_written_read_in_progress(built: Settings):
    """A small file is written before the response, and reads in_progress meanwhile; a
    big one (past RAG_SYNC_WRITE_CHARS) is queued: in_progress at once, then the stock
    client's poll helper waits for it."""
    gate = threading.Event()
    settings = built.model_copy(update={"sync_write_chars": 200})
    with running_server(create_app(settings, lambda name: GatedEmbedder(gate))) as served:
        client = openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0)
        store = client.vector_stores.create(name="gated").id
        small = client.files.create(file=("walrus.txt", b"The walrus rests on the ice floe."), purpose="assistants")
        big = client.files.create(file=("big.txt", article("walrus", paragraphs=4).encode()), purpose="assistants")
        attached: list[Any] = []
        writer = threading.Thread(target=lambda: attached.append(
            client.vector_stores.files.create(vector_store_id=store, file_id=small.id)))
        writer.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    seen = client.vector_stores.files.retrieve(small.id, vector_store_id=store)
                    break
                except openai.NotFoundError:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            assert seen.status == "in_progress"
            queued = client.vector_stores.files.create(vector_store_id=store, file_id=big.id)
            assert queued.status == "in_progress"
            counts = client.vector_stores.retrieve(store).file_counts
            assert (counts.in_progress, counts.completed, counts.total) == (2, 0, 2)
        finally:
            gate.set()
            writer.join(10)
        assert attached[0].status == "completed"
        done = client.vector_stores.files.poll(big.id, vector_store_id=store, max_wait_seconds=10)
        assert done.status == "completed" and done.usage_bytes > 0
        assert {r.file_id for r in client.vector_stores.search(store, query="walrus policy").data} == {small.id, big.id}
        counts = client.vector_stores.retrieve(store).file_counts
        assert (counts.in_progress, counts.completed, counts.total) == (0, 2, 2)
