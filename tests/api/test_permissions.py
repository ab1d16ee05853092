"""Who may do what, route by route: a matrix generated from the OpenAPI schema (every
operation) x callers (no key, reader of A, writer of A, writer of B, admin, a revoked key,
an expired key). A route added later without a rule here fails the test. Each refused
write is checked to have written nothing (api.deps, api.auth)."""

import time
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from rag.access.keys import KeyStore
from rag.jobs import Jobs
from rag.settings import Settings
from tests.helpers import article, client_for

ADMIN_SECRET = "bootstrap-admin-secret"
DOC_TEXT = article("ferries", 1, 3)
CALLERS = ("none", "reader_a", "writer_a", "writer_b", "admin", "revoked", "expired")

# what each operation needs; its collection is A ('a', 'vs_a', 'rag:a') unless it says otherwise
#   any: any valid key   read/write/manage (delete, rename): of the collection
#   admin: the whole service's admin (creating collections and vector stores too)
#   upload: a writer or an admin   own: the file's uploader or the response's maker (writer of A), or an admin
#   default: read the built corpus
RULES: dict[tuple[str, str], str] = {
    ("GET", "/health"): "open",
    ("GET", "/ready"): "any",
    ("POST", "/query"): "read", ("GET", "/query"): "read", ("POST", "/context"): "read",
    ("GET", "/documents"): "default", ("GET", "/documents/{doc_id}"): "default",
    ("GET", "/chunks/{chunk_id}"): "default",
    ("POST", "/admin/reload"): "admin", ("GET", "/metrics"): "admin",
    ("POST", "/admin/keys"): "admin", ("GET", "/admin/keys"): "admin",
    ("DELETE", "/admin/keys/{name}"): "admin", ("GET", "/admin/audit"): "admin",
    ("GET", "/v1/models"): "any", ("GET", "/v1/models/{model}"): "read",
    ("POST", "/v1/chat/completions"): "read", ("POST", "/v1/embeddings"): "any",
    ("POST", "/v1/responses"): "read",
    ("GET", "/v1/responses/{response_id}"): "own", ("DELETE", "/v1/responses/{response_id}"): "own",
    ("GET", "/collections"): "any", ("POST", "/collections"): "admin",
    ("GET", "/collections/{name}"): "read", ("DELETE", "/collections/{name}"): "manage",
    ("GET", "/collections/{name}/documents"): "read", ("POST", "/collections/{name}/documents"): "write",
    ("GET", "/collections/{name}/documents/{doc_id}"): "read",
    ("PUT", "/collections/{name}/documents/{doc_id}"): "write",
    ("DELETE", "/collections/{name}/documents/{doc_id}"): "write",
    ("GET", "/collections/{name}/documents/{doc_id}/text"): "read",
    ("GET", "/collections/{name}/export"): "admin", ("POST", "/collections/{name}/import"): "admin",
    ("POST", "/v1/files"): "upload", ("GET", "/v1/files"): "any",
    ("GET", "/v1/files/{file_id}"): "own", ("DELETE", "/v1/files/{file_id}"): "own",
    ("GET", "/v1/files/{file_id}/content"): "own",
    ("POST", "/v1/vector_stores"): "admin", ("GET", "/v1/vector_stores"): "any",
    ("GET", "/v1/vector_stores/{store_id}"): "read", ("POST", "/v1/vector_stores/{store_id}"): "manage",
    ("DELETE", "/v1/vector_stores/{store_id}"): "manage",
    ("POST", "/v1/vector_stores/{store_id}/search"): "read",
    ("POST", "/v1/vector_stores/{store_id}/files"): "write",
    ("GET", "/v1/vector_stores/{store_id}/files"): "read",
    ("GET", "/v1/vector_stores/{store_id}/files/{file_id}"): "read",
    ("POST", "/v1/vector_stores/{store_id}/files/{file_id}"): "write",
    ("DELETE", "/v1/vector_stores/{store_id}/files/{file_id}"): "write",
    ("GET", "/v1/vector_stores/{store_id}/files/{file_id}/content"): "read",
    # a job: its starter's (writer of A, a failed upload in A), and every admin's
    ("GET", "/jobs"): "any", ("GET", "/jobs/{job_id}"): "own", ("DELETE", "/jobs/{job_id}"): "own",
    ("POST", "/jobs/{job_id}/retry"): "own",
}
# the status each caller gets, by rule ("ok": a 2xx)
EXPECTED: dict[str, dict[str, str]] = {
    "open": dict.fromkeys(CALLERS, "ok"),
    "any": {"reader_a": "ok", "writer_a": "ok", "writer_b": "ok", "admin": "ok"},
    "read": {"reader_a": "ok", "writer_a": "ok", "writer_b": "404", "admin": "ok"},
    "write": {"reader_a": "403", "writer_a": "ok", "writer_b": "404", "admin": "ok"},
    "manage": {"reader_a": "403", "writer_a": "403", "writer_b": "404", "admin": "ok"},
    "admin": {"reader_a": "403", "writer_a": "403", "writer_b": "403", "admin": "ok"},
    "upload": {"reader_a": "403", "writer_a": "ok", "writer_b": "ok", "admin": "ok"},
    "own": {"reader_a": "404", "writer_a": "ok", "writer_b": "404", "admin": "ok"},
    "default": {"reader_a": "404", "writer_a": "404", "writer_b": "404", "admin": "ok"},
}
for _rule, cells in EXPECTED.items():  # no key, or a dead one: 401 everywhere but the open paths
    for caller in ("none", "revoked", "expired"):
        cells.setdefault(caller, "401")


def _request(method: str, path: str, world: dict[str, Any]) -> dict[str, Any]:
    """A valid request of the operation against collection A's fixtures."""
    url = (path.replace("{name}", "victim-key" if path.startswith("/admin/keys") else "a")
           .replace("{store_id}", "vs_a").replace("{doc_id}", world["doc_id"])
           .replace("{file_id}", world["file_id"]).replace("{chunk_id}", world["chunk_id"])
           .replace("{model}", "rag:a").replace("{response_id}", world["response_id"])
           .replace("{job_id}", world["job_id"]))
    if path == "/documents/{doc_id}":
        url = f"/documents/{world['default_doc']}"
    if path == "/collections/{name}/import":  # a new collection, from A's archive
        url = "/collections/a-copy/import"
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/query"): {"json": {"question": "ferries", "collection": "a"}},
        ("GET", "/query"): {"params": {"q": "ferries", "collection": "a"}},
        ("POST", "/context"): {"json": {"question": "ferries", "collection": "a"}},
        ("POST", "/admin/keys"): {"json": {"name": "made-here", "role": "reader"}},
        ("POST", "/v1/chat/completions"): {"json": {"model": "rag:a", "messages": [
            {"role": "user", "content": "Which ferries?"}]}},
        ("POST", "/v1/embeddings"): {"json": {"model": "rag", "input": "ferries"}},
        ("POST", "/v1/responses"): {"json": {"model": "rag:a", "input": "Which ferries?", "tools": [
            {"type": "file_search", "vector_store_ids": ["vs_a"]}]}},
        ("POST", "/collections"): {"json": {"name": "c-new"}},
        ("POST", "/collections/{name}/documents"): {"json": {"doc_id": "new", "text": article("harbours", 1, 2)}},
        ("PUT", "/collections/{name}/documents/{doc_id}"): {"json": {"text": article("ports", 1, 2)}},
        ("POST", "/v1/files"): {"files": {"file": ("n.txt", b"Notes on krill.")}, "data": {"purpose": "assistants"}},
        ("POST", "/v1/vector_stores"): {"json": {"name": "made"}},
        ("POST", "/v1/vector_stores/{store_id}"): {"json": {"name": "renamed"}},
        ("POST", "/v1/vector_stores/{store_id}/search"): {"json": {"query": "ferries"}},
        ("POST", "/v1/vector_stores/{store_id}/files"): {"json": {"file_id": world["spare_file_id"]}},
        ("POST", "/v1/vector_stores/{store_id}/files/{file_id}"): {"json": {"attributes": {"k": "v"}}},
        ("POST", "/collections/{name}/import"): {"content": world["archive"],
                                                 "headers": {"Content-Type": "application/x-tar"}},
    }
    return {"method": method, "url": url, **bodies.get((method, path), {})}


def _reset(c: TestClient, admin: dict[str, str], settings: Settings) -> dict[str, Any]:
    """Collections A and B, a document and a file in A (the file uploaded by writer_a), and
    a key to revoke: the state every cell starts from."""
    deadline = time.monotonic() + 30  # an import answered 202 runs on: let it end first
    while any(j.kind == "import" for j in Jobs(settings.index_dir).unfinished()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for name in [n["name"] for n in c.get("/collections", headers=admin).json()]:
        if name != "default":
            assert c.delete(f"/collections/{name}", headers=admin).status_code == 204
    for f in c.get("/v1/files", headers=admin).json()["data"]:
        c.delete(f"/v1/files/{f['id']}", headers=admin)
    keys = KeyStore(settings.index_dir)
    for name in ("victim-key", "made-here"):
        if any(k.name == name for k in keys.list()):
            keys.revoke(name)
    keys.create("victim-key", "reader")
    writer_a = {"Authorization": f"Bearer {SECRETS['writer_a']}"}
    for name in ("a", "b"):
        assert c.post("/collections", json={"name": name}, headers=admin).status_code == 201
    assert c.post("/collections/a/documents", json={"doc_id": "d1", "text": DOC_TEXT}, headers=admin).status_code == 201
    file_id = c.post("/v1/files", files={"file": ("f.txt", DOC_TEXT.encode())}, data={"purpose": "assistants"},
                     headers=writer_a).json()["id"]
    spare = c.post("/v1/files", files={"file": ("s.txt", b"Spare notes on seals.")}, data={"purpose": "assistants"},
                   headers=writer_a).json()["id"]
    assert c.post("/v1/vector_stores/vs_a/files", json={"file_id": file_id}, headers=admin).json()["status"] == \
        "completed"
    response_id = c.post("/v1/responses", json={"model": "rag:a", "input": "Which ferries?"},
                         headers=writer_a).json()["id"]
    job_id = _failed_job(c, writer_a)
    default_doc = c.get("/documents", headers=admin).json()["documents"][0]["doc_id"]
    chunk_id = c.get("/query", params={"q": "ferries"}, headers=admin).json()["passages"][0]["chunk_id"]
    archive = c.get("/collections/a/export", headers=admin).content
    return {"doc_id": "d1", "file_id": file_id, "spare_file_id": spare, "chunk_id": chunk_id,
            "default_doc": default_doc, "response_id": response_id, "archive": archive, "job_id": job_id}


def _failed_job(c: TestClient, writer_a: dict[str, str]) -> str:
    """A big upload by writer_a to A that fails (nothing is left of it once cleaned): a job
    with a failed item, to see, retry and delete."""
    r = c.post("/collections/a/documents", json={"doc_id": "big", "text": "Photo: AP\n" * 2100}, headers=writer_a)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 20
    while c.get(f"/jobs/{r.json()['job']}", headers=writer_a).json()["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return str(r.json()["job"])


def _snapshot(c: TestClient, admin: dict[str, str], settings: Settings) -> Any:
    """Everything a write could change: collections, their documents and texts, files, keys."""
    collections = {}
    for info in c.get("/collections", headers=admin).json():
        docs = c.get(f"/collections/{info['name']}/documents", headers=admin).json()
        collections[info["name"]] = sorted((d["doc_id"], d["chunks"]) for d in docs)
    stores = sorted((s["id"], s["name"]) for s in c.get("/v1/vector_stores", headers=admin).json()["data"])
    files = sorted(f["id"] for f in c.get("/v1/files", headers=admin).json()["data"])
    keys = sorted(k.name for k in KeyStore(settings.index_dir).list())
    responses = sorted(p.name for p in (settings.index_dir / "responses").glob("*.json"))
    jobs = sorted((j.id, j.state, j.runs, len(j.errors)) for j in Jobs(settings.index_dir).list())
    return collections, stores, files, keys, responses, jobs


SECRETS: dict[str, str] = {}


@pytest.fixture
def locked(built: Settings) -> Any:
    settings = built.model_copy(update={"api_key": SecretStr(ADMIN_SECRET), "key_rate_per_second": 10_000})
    keys = KeyStore(settings.index_dir)
    SECRETS.clear()
    SECRETS["admin"] = ADMIN_SECRET
    SECRETS["reader_a"] = keys.create("reader-a", "reader", ["a"])[1]
    SECRETS["writer_a"] = keys.create("writer-a", "writer", ["a"])[1]
    SECRETS["writer_b"] = keys.create("writer-b", "writer", ["b"])[1]
    SECRETS["revoked"] = keys.create("gone", "admin")[1]
    keys.revoke("gone")
    SECRETS["expired"] = keys.create("old", "admin", expires_days=1e-6)[1]  # 86 ms
    time.sleep(0.1)
    with client_for(settings) as c:
        yield c, settings


@pytest.mark.slow
def test_every_operation_for_every_caller(locked: Any):
    c, settings = locked
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    schema = c.get("/openapi.json", headers=admin).json()
    operations = [(m.upper(), path) for path, ops in schema["paths"].items() for m in ops]
    assert sorted(set(operations) - set(RULES)) == [], "a route without a rule in RULES"
    world = _reset(c, admin, settings)
    failures = []
    for method, path in operations:
        rule = RULES[(method, path)]
        for caller in CALLERS:
            before = _snapshot(c, admin, settings)
            headers = {} if caller == "none" else {"Authorization": f"Bearer {SECRETS[caller]}"}
            request = _request(method, path, world)
            r = c.request(**{**request, "headers": {**request.get("headers", {}), **headers}})
            expected = EXPECTED[rule][caller]
            got = "ok" if 200 <= r.status_code < 300 else str(r.status_code)
            if got != expected:
                failures.append(f"{method} {path} as {caller}: {r.status_code} ({r.text[:120]}), expected {expected}")
            if got != "ok":
                if _snapshot(c, admin, settings) != before:
                    failures.append(f"{method} {path} as {caller}: refused ({r.status_code}) yet something changed")
            elif method != "GET":
                world = _reset(c, admin, settings)
    assert not failures, "\n".join(failures)
