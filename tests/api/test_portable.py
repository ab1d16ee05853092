"""GET /collections/{name}/export and POST /collections/{name}/import (api.routes.portable):
the archive `rag export` writes, over HTTP, for admins."""

import tarfile
from pathlib import Path

from fastapi.testclient import TestClient

from rag.settings import Settings
from tests.helpers import FakeEmbedder, article, client_for

TAR = {"Content-Type": "application/x-tar"}


def test_export_then_import_over_http(client: TestClient, tmp_path: Path):
    assert client.post("/collections", json={"name": "notes"}).status_code == 201
    for topic in ("penguins", "krill"):
        assert client.post("/collections/notes/documents", json={"doc_id": topic, "text": article(topic)}).status_code \
            == 201
    exported = client.get("/collections/notes/export")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/x-tar"
    assert 'filename="notes.tar"' in exported.headers["content-disposition"]
    (tmp_path / "notes.tar").write_bytes(exported.content)
    with tarfile.open(tmp_path / "notes.tar") as tar:
        assert "manifest.json" in tar.getnames()
    made = client.post("/collections/copy/import", content=exported.content, headers=TAR)
    assert made.status_code == 201, made.text
    assert made.json()["documents"] == 2 and made.json()["chunks"] > 0
    question = {"question": "krill trade", "k": 3}
    a = client.post("/query", json={**question, "collection": "notes"}).json()["passages"]
    b = client.post("/query", json={**question, "collection": "copy"}).json()["passages"]
    assert [(p["chunk_id"], p["score"]) for p in a] == [(p["chunk_id"], p["score"]) for p in b]
    assert client.post("/collections/copy/import", content=exported.content, headers=TAR).status_code == 409
    default = client.get("/collections/default/export")
    assert default.status_code == 200 and len(default.content) > len(exported.content)
    assert not list(client.app.state.engine.settings.index_dir.glob(".*.tmp"))  # type: ignore[attr-defined]


def test_bad_archives_are_4xx_with_a_reason(client: TestClient):
    assert client.post("/collections", json={"name": "notes"}).status_code == 201
    client.post("/collections/notes/documents", json={"doc_id": "d", "text": article("seals")})
    data = bytearray(client.get("/collections/notes/export").content)
    with tarfile.open(fileobj=__import__("io").BytesIO(bytes(data))) as tar:
        info = tar.getmember("chunks.jsonl")
    data[info.offset_data + 10] ^= 0xFF
    damaged = client.post("/collections/copy/import", content=bytes(data), headers=TAR)
    assert damaged.status_code == 422 and "member chunks.jsonl is damaged" in damaged.json()["detail"]
    assert client.post("/collections/copy/import", content=b"not a tar", headers=TAR).status_code == 422
    json_body = client.post("/collections/copy/import", json={"a": 1})
    assert json_body.status_code == 415 and "application/x-tar" in json_body.json()["detail"]
    assert client.get("/collections/nope/export").status_code == 404
    assert client.get("/collections", params={}).json()[-1]["name"] == "notes"  # nothing half-imported


def test_an_archive_over_the_limit_is_413(built: Settings):
    with client_for(built.model_copy(update={"max_import_bytes": 4096}), FakeEmbedder()) as c:
        big = c.get("/collections/default/export").content
        r = c.post("/collections/copy/import", content=big, headers=TAR)
        assert r.status_code == 413 and "RAG_MAX_IMPORT_BYTES" in r.json()["detail"]
        assert [x["name"] for x in c.get("/collections").json()] == ["default"]
