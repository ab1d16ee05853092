"""`Idempotency-Key` (api.idempotency): a retried write is answered again, never applied twice."""

import subprocess
import threading
import time

import httpx

from api.idempotency import INSTANCE, Answers
from rag.settings import Settings
from tests.api.test_write_deadlines import SlowWrites
from tests.helpers import article, client_for

DOC = {"doc_id": "ferry", "text": article("ferries", 1, 3)}


def test_the_same_request_again_is_answered_again_and_applied_once(built: Settings):
    with client_for(built) as c:
        key = {"Idempotency-Key": "create-notes-1"}
        assert c.post("/collections", json={"name": "notes"}, headers=key).status_code == 201
        again = c.post("/collections", json={"name": "notes"}, headers=key)
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert c.post("/collections", json={"name": "notes"}).status_code == 409  # without a key: it exists

        first = c.post("/collections/notes/documents", json=DOC, headers={"Idempotency-Key": "doc-1"})
        assert first.status_code == 201 and first.json()["status"] == "created"
        replayed = c.post("/collections/notes/documents", json=DOC, headers={"Idempotency-Key": "doc-1"})
        assert replayed.status_code == 201 and replayed.json() == first.json()  # not "unchanged": not run
        assert "idempotent-replayed" not in first.headers

        gone = c.delete("/collections/notes/documents/ferry", headers={"Idempotency-Key": "del-1"})
        assert gone.status_code == 204
        assert c.delete("/collections/notes/documents/ferry", headers={"Idempotency-Key": "del-1"}).status_code == 204
        assert c.delete("/collections/notes/documents/ferry").status_code == 404  # without: nothing to delete


def test_a_key_sent_with_another_request_or_malformed_is_refused(built: Settings):
    with client_for(built) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        key = {"Idempotency-Key": "doc-2"}
        assert c.post("/collections/notes/documents", json=DOC, headers=key).status_code == 201
        other = c.post("/collections/notes/documents", json={**DOC, "text": article("harbours")}, headers=key)
        assert other.status_code == 422 and "another request" in other.json()["detail"]
        elsewhere = c.put("/collections/notes/documents/ferry", json={"text": DOC["text"]}, headers=key)
        assert elsewhere.status_code == 422
        for bad in ("", "x" * 256, "caf\u00e9", "two words"):
            r = c.post("/collections/notes/documents", json=DOC, headers={"Idempotency-Key": bad.encode("utf-8")})
            assert r.status_code == 400, (bad, r.text)


def test_kept_answers_outlive_the_process(built: Settings):
    with client_for(built) as c:
        assert c.post("/collections", json={"name": "notes"}, headers={"Idempotency-Key": "k"}).status_code == 201
    with client_for(built) as c:  # a restart, or another replica on the same index folder
        r = c.post("/collections", json={"name": "notes"}, headers={"Idempotency-Key": "k"})
        assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"


def test_a_key_still_running_is_a_409_and_a_503_frees_it(built: Settings):
    settings = built.model_copy(update={"request_timeout_seconds": 0.5, "sync_write_chars": 3000})
    with client_for(settings, SlowWrites(1.5)) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        results: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: results.append(
            c.post("/collections/notes/documents", json=DOC, headers={"Idempotency-Key": "slow"})))
        slow.start()
        time.sleep(0.3)  # its write is embedding
        running = c.post("/collections/notes/documents", json=DOC, headers={"Idempotency-Key": "slow"})
        assert running.status_code == 409 and running.headers["retry-after"] == "1", running.text
        slow.join()
        assert results[0].status_code == 201  # late, and true (api.engine.writes)

        big = {"doc_id": "big", "text": article("harbours", 1, 30)}
        assert c.post("/collections/notes/documents", json=big).status_code == 202  # the writer is busy
        small = {"doc_id": "small", "text": article("ports", 1, 3)}
        refused = c.post("/collections/notes/documents", json=small, headers={"Idempotency-Key": "queued"})
        assert refused.status_code == 503  # cancelled while queued: the key is free for the retry
        time.sleep(3.5)
        retried = c.post("/collections/notes/documents", json=small, headers={"Idempotency-Key": "queued"})
        assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers, retried.text


def test_keys_are_per_caller_and_a_dead_holder_is_taken_over(tmp_path):
    answers = Answers(tmp_path / "idempotency.sqlite3")
    assert answers.claim("caller-a", "k") is None
    assert answers.claim("caller-b", "k") is None  # another caller's key of the same name
    assert answers.claim("caller-a", "k") == ("running", None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with answers._connect() as db:  # a key held by a process of this host that has died
        db.execute("UPDATE answers SET pid = ?, instance = ? WHERE scope = 'caller-a'", (dead.pid, "gone"))
    assert answers.claim("caller-a", "k") is None
    with answers._connect() as db:
        assert db.execute("SELECT instance FROM answers WHERE scope = 'caller-a'").fetchone()[0] == INSTANCE
