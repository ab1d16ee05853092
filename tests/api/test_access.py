"""Scoped keys at work (api.auth, api.deps, api.audit): listings show only what a key can
read, a revoked key fails within a second while the server runs, a key's rate is a 429
past its burst, and every write is in the audit log with its key's name and no secret."""

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest
from pydantic import SecretStr

from api.app import create_app
from rag.access.keys import KeyStore
from rag.settings import Settings
from tests.helpers import FakeEmbedder, article, client_for, running_server

ADMIN = {"Authorization": "Bearer admin-secret"}


def _locked(built: Settings, **update: object) -> Settings:
    return built.model_copy(update={"api_key": SecretStr("admin-secret"), **update})


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_listings_show_only_what_a_key_can_read(built: Settings):
    settings = _locked(built)
    secret = KeyStore(settings.index_dir).create("team-a", "reader", ["a"])[1]
    with client_for(settings) as c:
        for name in ("a", "b"):
            assert c.post("/collections", json={"name": name}, headers=ADMIN).status_code == 201
        c.post("/collections/a/documents", json={"doc_id": "d", "text": article("ferries")}, headers=ADMIN)
        mine = _bearer(secret)
        assert [x["name"] for x in c.get("/collections", headers=mine).json()] == ["a"]
        assert [x["name"] for x in c.get("/collections", headers=ADMIN).json()] == ["default", "a", "b"]
        assert [m["id"] for m in c.get("/v1/models", headers=mine).json()["data"]] == ["rag:a"]
        assert [s["id"] for s in c.get("/v1/vector_stores", headers=mine).json()["data"]] == ["vs_a"]
        assert c.get("/v1/files", headers=mine).json()["data"] == []
        assert c.get("/documents", headers=mine).status_code == 404  # the built corpus is `default`
        # a chat or /context that names another collection is a 404, never another's answer
        for body in ({"model": "rag:b", "messages": [{"role": "user", "content": "ferries?"}]},
                     {"model": "rag", "messages": [{"role": "user", "content": "ferries?"}]},
                     {"model": "gpt-4o", "messages": [{"role": "user", "content": "ferries?"}]}):
            assert c.post("/v1/chat/completions", json=body, headers=mine).status_code == 404
        assert c.post("/context", json={"question": "ferries?", "collection": "b"}, headers=mine).status_code == 404
        r = c.post("/v1/chat/completions", headers=mine,
                   json={"model": "rag:a", "messages": [{"role": "user", "content": "Which ferries?"}]})
        assert r.status_code == 200 and r.json()["model"] == "rag:a"


def test_no_key_a_wrong_key_and_an_expired_key_are_401_with_the_reason(built: Settings):
    settings = _locked(built)
    old = KeyStore(settings.index_dir).create("old", "reader", expires_days=1e-6)[1]
    time.sleep(0.1)
    with client_for(settings) as c:
        assert "missing" in c.get("/collections").json()["detail"]
        assert "invalid" in c.get("/collections", headers=_bearer("rag_nope")).json()["detail"]
        r = c.get("/collections", headers=_bearer(old))
        assert r.status_code == 401 and "expired" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"


@pytest.mark.slow
def test_a_key_made_or_revoked_by_the_cli_counts_within_a_second_while_the_server_runs(built: Settings):
    settings = _locked(built)
    env = {"RAG_INDEX_DIR": str(settings.index_dir)}
    app = create_app(settings, embedder_factory=lambda name: FakeEmbedder())
    with running_server(app) as url:
        made = subprocess.run([sys.executable, "-m", "api.cli", "keys", "create", "ci", "--role", "reader", "--json"],
                              capture_output=True, text=True, env={**_environ(), **env}, check=True)
        secret = json.loads(made.stdout)["key"]
        started = time.monotonic()
        while httpx.get(url + "/collections", headers=_bearer(secret)).status_code != 200:
            assert time.monotonic() - started < 1.0, "a new key not seen within 1 s"
            time.sleep(0.02)
        subprocess.run([sys.executable, "-m", "api.cli", "keys", "revoke", "ci"], capture_output=True, text=True,
                       env={**_environ(), **env}, check=True)
        started = time.monotonic()
        while httpx.get(url + "/collections", headers=_bearer(secret)).status_code != 401:
            assert time.monotonic() - started < 1.0, "a revoked key still works after 1 s"
            time.sleep(0.02)


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}


def test_a_key_past_its_rate_gets_429_and_the_metric_counts_it(built: Settings):
    settings = _locked(built)
    slow = KeyStore(settings.index_dir).create("slow", "reader", rate=5)[1]
    with client_for(settings) as c:
        statuses = [c.get("/ready", headers=_bearer(slow)).status_code for _ in range(12)]
        assert statuses[:5] == [200] * 5 and statuses.count(429) >= 6, statuses  # burst: one second's worth
        r = c.get("/ready", headers=_bearer(slow))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "slow" in r.json()["detail"]
        time.sleep(0.45)  # two tokens back at 5 a second
        assert c.get("/ready", headers=_bearer(slow)).status_code == 200
        assert all(c.get("/ready", headers=ADMIN).status_code == 200 for _ in range(30))  # the bootstrap admin: no limit
        metrics = c.get("/metrics", headers=ADMIN).text
        assert 'rag_rate_limited_total{key="slow"}' in metrics and slow not in metrics


def test_every_write_is_audited_with_its_key_and_never_a_secret_or_text(built: Settings):
    settings = _locked(built)
    keys = KeyStore(settings.index_dir)
    writer = keys.create("writer-a", "writer", ["a"])[1]
    reader = keys.create("reader-a", "reader", ["a"])[1]
    text = article("lighthouses", 1, 2)
    with client_for(settings) as c:
        assert c.post("/collections", json={"name": "a"}, headers=ADMIN).status_code == 201
        assert c.post("/collections/a/documents", json={"doc_id": "d1", "text": text},
                      headers=_bearer(writer)).status_code == 201
        assert c.delete("/collections/a/documents/d1", headers=_bearer(reader)).status_code == 403
        c.post("/query", json={"question": "lighthouses"}, headers=ADMIN)  # a read: not audited
        made = c.post("/admin/keys", json={"name": "later", "role": "reader"}, headers=ADMIN).json()["key"]
        assert c.delete("/admin/keys/later", headers=ADMIN).status_code == 204
        events = c.get("/admin/audit", headers=ADMIN).json()
        assert c.get("/admin/audit", headers=_bearer(writer)).status_code == 403
    brief = [(e["key"], e["action"], e.get("collection"), e.get("doc_id"), e["status"]) for e in events]
    assert brief == [
        ("admin", "POST /collections", "a", None, 201),
        ("writer-a", "POST /collections/{name}/documents", "a", "d1", 201),
        ("reader-a", "DELETE /collections/{name}/documents/{doc_id}", "a", "d1", 403),
        ("admin", "POST /admin/keys", None, None, 201),
        ("admin", "DELETE /admin/keys/{name}", None, None, 204),
    ], brief
    assert [e.get("target") for e in events[-2:]] == ["later", "later"]
    assert all(e["time"].endswith("Z") and e["role"] for e in events)
    raw = (settings.index_dir / "access" / "audit.jsonl").read_text()
    for secret in (writer, reader, made, "admin-secret", text[:40]):
        assert secret not in raw


def test_the_openai_client_with_a_reader_key_sees_its_store_only(built: Settings):
    settings = _locked(built)
    secret = KeyStore(settings.index_dir).create("team-a", "reader", ["a"])[1]
    app = create_app(settings, embedder_factory=lambda name: FakeEmbedder())
    with running_server(app) as url:
        for name in ("a", "b"):
            httpx.post(url + "/collections", json={"name": name}, headers=ADMIN)
        client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        assert [m.id for m in client.models.list()] == ["rag:a"]  # what Open WebUI lists
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.retrieve("vs_b")
        with pytest.raises(openai.PermissionDeniedError):
            client.vector_stores.delete("vs_a")


def test_a_write_past_a_collection_quota_is_refused_naming_it(built: Settings):
    settings = built.model_copy(update={"max_collection_documents": 2, "max_collection_bytes": 3000,
                                        "sync_write_chars": 1500})
    with client_for(settings) as c:
        assert c.post("/collections", json={"name": "a"}).status_code == 201
        small = article("ferries", 1, 2)  # ~350 bytes
        assert c.post("/collections/a/documents", json={"doc_id": "one", "text": small}).status_code == 201
        assert c.post("/collections/a/documents", json={"doc_id": "two", "text": small + " Two."}).status_code == 201
        third = c.post("/collections/a/documents", json={"doc_id": "three", "text": small + " Three."})
        assert third.status_code == 413 and "RAG_MAX_COLLECTION_DOCUMENTS" in third.json()["detail"]
        # a replacement adds a document to nobody's count; this one's text would pass the bytes
        big = article("harbours", 1, 20)
        assert 1500 < len(big) < 3000
        r = c.put("/collections/a/documents/two", json={"text": big})
        assert r.status_code == 413 and "RAG_MAX_COLLECTION_BYTES" in r.json()["detail"], r.text  # refused, not a 202
        assert c.put("/collections/a/documents/two", json={"text": small + " Second."}).status_code == 200
        assert c.delete("/collections/a/documents/one").status_code == 204
        assert c.post("/collections/a/documents", json={"doc_id": "three", "text": small + " Three."}).status_code \
            == 201  # room again
        assert sorted(d["doc_id"] for d in c.get("/collections/a/documents").json()) == ["three", "two"]


def test_files_are_their_uploading_keys_not_their_names(built: Settings):
    settings = _locked(built)
    keys = KeyStore(settings.index_dir)
    bob = keys.create("bob", "writer", ["b"])[1]
    alice = keys.create("alice", "writer", ["a"])[1]
    with client_for(settings) as c:
        for name in ("a", "b"):
            c.post("/collections", json={"name": name}, headers=ADMIN)
        secret = c.post("/v1/files", files={"file": ("bob.txt", b"Bob's salary list.")},
                        data={"purpose": "assistants"}, headers=_bearer(bob)).json()["id"]
        # alice plants a document under the file's id, then asks for the file to be read into it
        c.post("/collections/a/documents", json={"doc_id": secret, "text": "placeholder"}, headers=_bearer(alice))
        r = c.post(f"/v1/vector_stores/vs_a/files/{secret}", json={"attributes": {}}, headers=_bearer(alice))
        assert r.status_code == 404, r.text
        text = c.get(f"/collections/a/documents/{secret}/text", headers=_bearer(alice)).json()["text"]
        assert "salary" not in text
        # a new key under a revoked key's name is another key: the old one's files are not its
        assert c.delete("/admin/keys/bob", headers=ADMIN).status_code == 204
        new_bob = c.post("/admin/keys", json={"name": "bob", "role": "writer", "collections": ["b"]},
                         headers=ADMIN).json()["key"]
        assert c.get("/v1/files", headers=_bearer(new_bob)).json()["data"] == []  # made here: works at once
        assert c.get(f"/v1/files/{secret}/content", headers=_bearer(new_bob)).status_code == 404


def test_revoking_the_last_key_locks_a_keyless_service_rather_than_opening_it(built: Settings):
    keys = KeyStore(built.index_dir)
    ops = keys.create("ops", "admin")[1]
    with client_for(built) as c:  # no RAG_API_KEY
        assert c.get("/admin/keys").status_code == 401
        assert c.delete("/admin/keys/ops", headers=_bearer(ops)).status_code == 204
        assert c.post("/admin/keys", json={"name": "mallory", "role": "admin"}).status_code == 401
        assert c.get("/collections").status_code == 401


def test_a_rate_below_one_a_second_still_allows_one_request(built: Settings):
    settings = _locked(built)
    slow = KeyStore(settings.index_dir).create("slow", "reader", rate=0.5)[1]
    with client_for(settings) as c:
        assert c.get("/collections", headers=_bearer(slow)).status_code == 200
        r = c.get("/collections", headers=_bearer(slow))
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 2


def test_ready_tells_the_built_corpus_only_to_its_readers(built: Settings):
    settings = _locked(built)
    reader = KeyStore(settings.index_dir).create("r", "reader", ["a"])[1]
    with client_for(settings) as c:
        mine = c.get("/ready", headers=_bearer(reader)).json()
        full = c.get("/ready", headers=ADMIN).json()
    assert mine["documents"] == 0 and mine["build_id"] == "" and full["documents"] > 0 and full["build_id"]


def test_key_changes_are_audited_on_a_read_only_service_and_open_paths_are_not(built: Settings):
    settings = _locked(built, read_only=True)
    with client_for(settings) as c:
        assert c.post("/admin/keys", json={"name": "ro", "role": "reader"}, headers=ADMIN).status_code == 201
        assert c.delete("/health").status_code == 405  # no key, an open path: not the audit's
        events = c.get("/admin/audit", headers=ADMIN).json()
    assert [(e["key"], e["action"], e["status"]) for e in events] == [("admin", "POST /admin/keys", 201)]


def test_the_icon_needs_no_key(built: Settings):
    with client_for(_locked(built)) as c:
        r = c.get("/favicon.ico")
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
