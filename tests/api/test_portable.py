"""GET /collections/{name}/export and POST /collections/{name}/import (api.routes.portable):
the archive `rag export` writes, over HTTP, for admins."""

import json
import tarfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from rag.settings import Settings
from tests.helpers import FakeEmbedder, article, client_for

TAR = {"Content-Type": "application/x-tar"}


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    """The job once it has ended (an import runs after its 202)."""
    deadline = time.monotonic() + 30
    while (job := client.get(f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return dict(job)


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
    assert made.status_code == 202, made.text
    job = finished(client, made.json()["job"])
    assert job["state"] == "succeeded" and job["done"] == job["total"] == 2, job
    question = {"question": "krill trade", "k": 3}
    a = client.post("/query", json={**question, "collection": "notes"}).json()["passages"]
    b = client.post("/query", json={**question, "collection": "copy"}).json()["passages"]
    assert [(p["chunk_id"], p["score"]) for p in a] == [(p["chunk_id"], p["score"]) for p in b]
    assert client.post("/collections/copy/import", content=exported.content, headers=TAR).status_code == 409
    exports = client.get("/jobs", params={"kind": "export"}).json()
    assert exports and exports[0]["state"] == "succeeded" and exports[0]["done"] > 0, exports
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
    assert damaged.status_code == 202
    job = finished(client, damaged.json()["job"])
    assert job["state"] == "failed" and "member chunks.jsonl is damaged" in job["error"], job
    not_tar = finished(client, client.post("/collections/copy/import", content=b"not a tar", headers=TAR).json()["job"])
    assert not_tar["state"] == "failed" and "not an archive" in not_tar["error"]
    json_body = client.post("/collections/copy/import", json={"a": 1})
    assert json_body.status_code == 415 and "application/x-tar" in json_body.json()["detail"]
    assert not list((client.app.state.engine.settings.index_dir / "imports").iterdir())  # type: ignore[attr-defined]
    assert client.get("/collections/nope/export").status_code == 404
    assert client.get("/collections", params={}).json()[-1]["name"] == "notes"  # nothing half-imported


def test_an_archive_over_the_limit_is_413(built: Settings):
    with client_for(built.model_copy(update={"max_import_bytes": 4096}), FakeEmbedder()) as c:
        big = c.get("/collections/default/export").content
        r = c.post("/collections/copy/import", content=big, headers=TAR)
        assert r.status_code == 413 and "RAG_MAX_IMPORT_BYTES" in r.json()["detail"]
        assert [x["name"] for x in c.get("/collections").json()] == ["default"]


def test_an_import_acknowledged_before_a_restart_is_resumed(built: Settings, tmp_path: Path):
    """The service stopped after its 202 (the archive on disk, the job queued, run by a
    process now gone): the next start imports it."""
    from rag.jobs import Jobs
    from rag.portable.exporting import export_collection
    from rag.portable.importing import inbox

    job = Jobs(built.index_dir).create("import", "copy", {"archive": "job-x.tar", "reembed": False}, "admin")
    export_collection(built, "default", inbox(built.index_dir) / "job-x.tar")
    record = Jobs(built.index_dir).path(job.id)  # as its process left it: that pid is past any pid_max
    record.write_text(json.dumps({**json.loads(record.read_text()), "pid": 2 ** 22 + 1}))
    with client_for(built, FakeEmbedder()) as c:
        done = finished(c, job.id)
        assert done["state"] == "succeeded", done
        assert c.get("/collections/copy").json()["chunks"] == c.get("/collections/default").json()["chunks"]
    assert not (built.index_dir / "imports" / "job-x.tar").exists()
