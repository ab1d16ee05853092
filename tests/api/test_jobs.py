"""Jobs over HTTP (api.routes.jobs) and the service's runners (api.engine.jobs,
api.engine.handlers): a 202 upload is a job, a failed one is listed with its reason and
retried from its spooled content, a queued one is cancelled and kept for a retry, keys see
only their own jobs, bad ids are 404s, and unfinished jobs are resumed at start-up."""

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from api.engine import jobs as runners
from api.engine import spool
from api.engine.spool import Spooled
from rag.access.keys import KeyStore
from rag.collections import text_document
from rag.errors import ModelError
from rag.jobs import Job, Jobs
from rag.settings import Settings
from tests.helpers import FakeEmbedder, article, client_for
from tests.test_jobs import _dead_pid

ADMIN = {"Authorization": "Bearer admin-secret"}


class Flaky(FakeEmbedder):
    """Fails the next `failures` writes' batches (more than one text: a question is one), and
    holds writes while `gate` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.gate = threading.Event()
        self.gate.set()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if len(texts) > 1:
            self.gate.wait(10)
            if self.failures:
                self.failures -= 1
                raise ModelError("the model crashed")
        return super().encode(texts, batch_size)


def _wait(c: TestClient, job_id: str, states: tuple[str, ...], headers: dict[str, str] | None = None,
          seconds: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (job := c.get(f"/jobs/{job_id}", headers=headers or {}).json())["state"] not in states:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.fixture
def big(built: Settings) -> Settings:
    return built.model_copy(update={"sync_write_chars": 1000})  # every article below is a 202


def test_a_202_upload_is_a_job_that_succeeds(big: Settings):
    with client_for(big) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        r = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("krill", 1, 12)})
        assert r.status_code == 202 and r.json()["job"].startswith("job-"), r.text
        job = _wait(c, r.json()["job"], ("succeeded",))
        assert (job["kind"], job["target"], job["owner"], job["unit"]) == ("upload", "notes", "local", "documents")
        assert (job["done"], job["total"], job["errors"], job["errors_count"]) == (1, 1, [], 0)
        assert job["started_at"] <= job["finished_at"] and job["rate"] > 0 and job["seconds_left"] is None
        assert "params" not in job and "owner_id" not in job
        assert [j["id"] for j in c.get("/jobs").json()] == [job["id"]]
        assert c.get("/jobs", params={"state": "failed"}).json() == []
        assert c.get("/collections/notes/documents/big").json()["status"] == "completed"
        small = c.post("/collections/notes/documents", json={"doc_id": "small", "text": "A short note on krill."})
        assert small.status_code == 201 and small.json()["job"] is None  # written at once: no job


def test_a_failed_upload_is_listed_with_its_reason_and_retried_from_its_spooled_content(big: Settings):
    model = Flaky()
    model.failures = 1
    with client_for(big, model) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        text = article("krill", 1, 12)
        job_id = c.post("/collections/notes/documents", json={"doc_id": "big", "text": text}).json()["job"]
        failed = _wait(c, job_id, ("failed",))
        assert failed["error"] == "the model crashed"
        assert [(e["item"], e["reason"]) for e in failed["errors"]] == [("big", "the model crashed")]
        assert c.get("/collections/notes/documents/big").json() == {
            "doc_id": "big", "status": "failed", "chunks": 0, "error": "the model crashed"}
        assert c.post(f"/jobs/{job_id}/retry").status_code == 202  # the model works again
        done = _wait(c, job_id, ("succeeded",))
        assert (done["runs"], done["errors"], done["retrying"], done["error"]) == (2, [], ["big"], None)
        assert c.get("/collections/notes/documents/big").json()["status"] == "completed"
        assert c.get("/collections/notes/documents/big/text").json()["text"].startswith(text[:60])
        assert not list((big.index_dir / "collections" / "notes" / ".spool").glob("*.json"))  # all done
        r = c.post(f"/jobs/{job_id}/retry")
        assert r.status_code == 409 and "no failed items" in r.json()["detail"]


def test_a_queued_upload_is_cancelled_kept_and_retried_then_its_record_deleted(big: Settings):
    model = Flaky()
    with client_for(big, model) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        model.gate.clear()  # the first write holds the writer thread; the second waits behind it
        first = c.post("/collections/notes/documents", json={"doc_id": "one", "text": article("seals", 1, 12)})
        second = c.post("/collections/notes/documents", json={"doc_id": "two", "text": article("terns", 1, 12)})
        job_id = second.json()["job"]
        r = c.delete(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["cancel_requested"] and r.json()["state"] == "queued"
        retry = c.post(f"/jobs/{job_id}/retry")
        assert retry.status_code == 409 and "still queued" in retry.json()["detail"]
        model.gate.set()
        assert _wait(c, first.json()["job"], ("succeeded",))["state"] == "succeeded"
        cancelled = _wait(c, job_id, ("cancelled",))
        assert [(e["item"], e["reason"]) for e in cancelled["errors"]] == [("two", "cancelled before it was written")]
        assert c.get("/collections/notes/documents/two").json()["status"] == "failed"
        assert c.post(f"/jobs/{job_id}/retry").status_code == 202
        assert _wait(c, job_id, ("succeeded",))["runs"] == 2
        assert c.get("/collections/notes/documents/two").json()["status"] == "completed"
        assert c.delete(f"/jobs/{job_id}").status_code == 204
        assert c.get(f"/jobs/{job_id}").status_code == 404


def test_keys_see_only_their_own_jobs_on_collections_they_read(big: Settings):
    settings = big.model_copy(update={"api_key": SecretStr("admin-secret"), "key_rate_per_second": 10_000})
    keys = KeyStore(settings.index_dir)
    writer_a = {"Authorization": f"Bearer {keys.create('writer-a', 'writer', ['a'])[1]}"}
    reader_a = {"Authorization": f"Bearer {keys.create('reader-a', 'reader', ['a'])[1]}"}
    other_a = {"Authorization": f"Bearer {keys.create('other-a', 'writer', ['a'])[1]}"}
    with client_for(settings) as c:
        assert c.post("/collections", json={"name": "a"}, headers=ADMIN).status_code == 201
        r = c.post("/collections/a/documents", json={"doc_id": "big", "text": article("krill", 1, 12)},
                   headers=writer_a)
        job_id = r.json()["job"]
        assert _wait(c, job_id, ("succeeded",), writer_a)["owner"] == "writer-a"
        assert [j["id"] for j in c.get("/jobs", headers=writer_a).json()] == [job_id]
        assert [j["id"] for j in c.get("/jobs", headers=ADMIN).json()] == [job_id]
        for stranger in (reader_a, other_a):  # they read collection a, but did not start it
            assert c.get("/jobs", headers=stranger).json() == []
            r = c.get(f"/jobs/{job_id}", headers=stranger)
            assert r.status_code == 404 and r.json()["detail"] == f"no job with id '{job_id}'"
            assert c.delete(f"/jobs/{job_id}", headers=stranger).status_code == 404
        assert c.get("/jobs").status_code == 401
        assert c.delete(f"/jobs/{job_id}", headers=writer_a).status_code == 204


@pytest.mark.parametrize("job_id", ["nope", "job-" + "0" * 24, "job-" + "0" * 23 + "%0A", "..%2F..%2Fkeys"])
def test_bad_ids_are_404s_with_a_message(client: TestClient, job_id: str):
    for method, path in (("GET", f"/jobs/{job_id}"), ("DELETE", f"/jobs/{job_id}"),
                         ("POST", f"/jobs/{job_id}/retry")):
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["detail"], (method, path, r.text)  # a message, never a 500
        if "%2F" not in job_id:  # a slash makes it another path: no such route
            assert "job" in r.json()["detail"]


def test_a_damaged_job_record_does_not_break_the_listing(built: Settings):
    jobs = Jobs(built.index_dir)
    kept = jobs.create("export", "notes", {}, "admin")
    (built.index_dir / "jobs" / ("job-" + "a" * 24 + ".json")).write_text("{not json")
    with client_for(built) as c:
        assert [j["id"] for j in c.get("/jobs").json()] == [kept.id]
        r = c.get("/jobs/job-" + "a" * 24)
        assert r.status_code == 404 and "damaged" in r.json()["detail"]
        r = c.post(f"/jobs/{kept.id}/retry")  # still queued, of no process: not retryable as it stands
        assert r.status_code == 409


def test_unfinished_jobs_are_resumed_at_start_up_by_their_kinds_handler(built: Settings,
                                                                        monkeypatch: pytest.MonkeyPatch):
    seen: list[str] = []
    monkeypatch.setattr(runners, "_KINDS", dict(runners._KINDS))  # registered for this test only

    def handler(engine: Any, job: Job) -> None:
        seen.append(job.id)
        job.start()
        job.progress(job.done + 1, 2)
        job.finish()

    runners.register("test-kind", handler)
    jobs = Jobs(built.index_dir)
    stopped = jobs.create("test-kind", "notes", {"from": 1}, "admin", total=2)
    stopped.start()
    stopped.progress(1)
    stopped.pid = _dead_pid()  # its process was killed
    stopped.touch()
    alive = jobs.create("test-kind", "notes", {}, "admin")  # this process's: not resumed
    unknown = jobs.create("no-handler", "notes", {}, "cli")
    unknown.pid = _dead_pid()
    unknown.touch()
    with client_for(built) as c:
        deadline = time.monotonic() + 10
        while c.get(f"/jobs/{stopped.id}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert seen == [stopped.id]
        assert c.get(f"/jobs/{stopped.id}").json()["done"] == 2
        assert c.get(f"/jobs/{alive.id}").json()["state"] == "queued"
        assert c.get(f"/jobs/{unknown.id}").json()["stalled"] is True  # left for its own kind's runner
        r = c.post(f"/jobs/{unknown.id}/retry")
        assert r.status_code == 409 and "does not run jobs of kind 'no-handler'" in r.json()["detail"]


def test_an_acknowledged_upload_whose_service_died_resumes_as_its_job(big: Settings):
    with client_for(big) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
    folder = big.index_dir / "collections" / "notes"
    jobs = Jobs(big.index_dir)
    # what a killed service left: a saved write and its job (queued), one that ran and was
    # written (its entry gone), and one recorded but never saved (not acknowledged)
    queued = jobs.create("upload", "notes", {"doc_id": "later"}, "writer-a", total=1)
    doc = text_document(article("walrus", 1, 12), "later", None, None)
    spool.save(folder, Spooled("notes", doc, replace=False, clean=True, job=queued.id))
    written = jobs.create("upload", "notes", {"doc_id": "done"}, "writer-a", total=1)
    written.start()
    never = jobs.create("upload", "notes", {"doc_id": "lost"}, "writer-a", total=1)
    legacy = Spooled("notes", text_document(article("puffin", 1, 12), "old", None, None), replace=False, clean=True)
    spool.save(folder, legacy)  # an entry from before jobs
    dead = _dead_pid()
    for job in (queued, written, never):
        job.pid = dead
        job.touch()
    with client_for(big) as c:
        assert _wait(c, queued.id, ("succeeded",))["done"] == 1
        assert c.get("/collections/notes/documents/later").json()["status"] == "completed"
        assert _wait(c, written.id, ("succeeded",))["state"] == "succeeded"
        lost = _wait(c, never.id, ("failed",))
        assert "never acknowledged" in lost["error"]
        adopted = [j for j in c.get("/jobs").json() if j["id"] not in (queued.id, written.id, never.id)]
        assert [(j["kind"], j["owner"]) for j in adopted] == [("upload", "unknown")]
        assert _wait(c, adopted[0]["id"], ("succeeded",))["state"] == "succeeded"
        assert c.get("/collections/notes/documents/old").json()["status"] == "completed"
