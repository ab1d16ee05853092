"""A 202 is a promise kept (api.engine.spool): big writes acknowledged with 202, then a
SIGKILL of the server before they ran; after the restart every one completes, once."""

import os
import signal
import time

import httpx
import pytest

from rag.settings import Settings
from tests.helpers import article, start_service


@pytest.mark.slow
def test_ten_acknowledged_202s_survive_a_sigkill_and_complete_once(built: Settings):
    settings = built.model_copy(update={"sync_write_chars": 1000})  # every document below is a 202
    server, url = start_service(settings, slow_writes=True)  # still queued when it dies
    texts = {f"big{i}": article(f"topic{i}", 1, 12) for i in range(10)}
    try:
        assert httpx.post(url + "/collections", json={"name": "notes"}).status_code == 201
        for doc_id, text in texts.items():
            r = httpx.post(url + "/collections/notes/documents", json={"doc_id": doc_id, "text": text}, timeout=10)
            assert r.status_code == 202, r.text
        queued = [httpx.get(f"{url}/collections/notes/documents/{d}").json()["status"] for d in texts]
        assert queued.count("in_progress") >= 5  # most were not yet written when the server dies
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    server, url = start_service(settings)  # the restart resumes them
    try:
        deadline = time.monotonic() + 60
        states: dict[str, dict] = {}
        while time.monotonic() < deadline:
            states = {d: httpx.get(f"{url}/collections/notes/documents/{d}").json() for d in texts}
            if all(s.get("status") == "completed" for s in states.values()):
                break
            time.sleep(0.2)
        assert all(s.get("status") == "completed" for s in states.values()), states
        listed = httpx.get(url + "/collections/notes/documents").json()
        assert sorted(d["doc_id"] for d in listed) == sorted(texts)  # each once
        total = httpx.get(url + "/collections/notes").json()
        assert total["chunks"] == sum(s["chunks"] for s in states.values())  # no chunk twice
        for doc_id, text in texts.items():  # whole: the text that was sent
            assert httpx.get(f"{url}/collections/notes/documents/{doc_id}/text").json()["text"].startswith(text[:80])
        assert not list((settings.index_dir / "collections" / "notes" / ".spool").glob("*.json"))  # all done
    finally:
        server.terminate()
        server.wait()


def test_a_failed_202_is_told_by_a_fresh_service_and_goes_with_delete(built: Settings):
    from tests.helpers import client_for

    settings = built.model_copy(update={"sync_write_chars": 10})
    with client_for(settings) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        r = c.post("/collections/notes/documents", json={"doc_id": "nothing", "text": "Photo: AP\n" * 5})
        assert r.status_code == 202
        deadline = time.monotonic() + 10
        while c.get("/collections/notes/documents/nothing").json()["status"] == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with client_for(settings) as c:  # another process, or this one restarted: the failure is on disk
        state = c.get("/collections/notes/documents/nothing").json()
        assert state["status"] == "failed" and "nothing is left after cleaning" in state["error"], state
        assert c.delete("/collections/notes/documents/nothing").status_code == 204
        assert c.get("/collections/notes/documents/nothing").status_code == 404


def _wait_completed(url: str, collection: str, doc_ids: list[str], seconds: float = 60) -> dict[str, dict]:
    deadline = time.monotonic() + seconds
    states: dict[str, dict] = {}
    while time.monotonic() < deadline:
        states = {d: httpx.get(f"{url}/collections/{collection}/documents/{d}").json() for d in doc_ids}
        if all(s.get("status") == "completed" for s in states.values()):
            break
        time.sleep(0.2)
    return states


@pytest.mark.slow
@pytest.mark.parametrize(("first_paragraphs", "grace"), [(12, 4.0), (300, 1.0)],
                         ids=["running-write-finishes", "running-write-outlives-grace"])
def test_sigterm_exits_within_the_grace_and_every_acknowledged_write_resumes(built: Settings, first_paragraphs: int,
                                                                              grace: float):
    settings = built.model_copy(update={"sync_write_chars": 1000, "shutdown_grace_seconds": grace})
    server, url = start_service(settings, slow_writes=True)  # each batch a write embeds takes a second
    texts = {f"big{i}": article(f"topic{i}", 1, first_paragraphs if i == 0 else 12) for i in range(5)}
    try:
        assert httpx.post(url + "/collections", json={"name": "notes"}).status_code == 201
        for doc_id, text in texts.items():
            r = httpx.post(url + "/collections/notes/documents", json={"doc_id": doc_id, "text": text}, timeout=10)
            assert r.status_code == 202, r.text
        time.sleep(0.3)  # the first is running: ~2 s of embedding, or ~10 s
        asked = time.monotonic()
        server.send_signal(signal.SIGTERM)
        # uvicorn raises the signal again once it has shut down: -SIGTERM, after the grace
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        took = time.monotonic() - asked
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert took < grace + 3, took  # no request in flight: the running write's grace, then the exit
    spooled = {p.stem.split("@")[0] for p in (settings.index_dir / "collections" / "notes" / ".spool").glob("*.json")}
    # a write that finished in the grace is off the spool; one cut off, and those never started, wait on it
    assert spooled == (set(texts) if first_paragraphs > 12 else set(texts) - {"big0"}), spooled
    server, url = start_service(settings)
    try:
        states = _wait_completed(url, "notes", list(texts))
        assert all(s.get("status") == "completed" for s in states.values()), states
        listed = httpx.get(url + "/collections/notes/documents").json()
        assert sorted(d["doc_id"] for d in listed) == sorted(texts)
    finally:
        server.terminate()
        server.wait()


@pytest.mark.slow
def test_a_big_vector_store_file_in_progress_survives_a_sigkill(built: Settings):
    from openai import OpenAI

    settings = built.model_copy(update={"sync_write_chars": 1000})
    server, url = start_service(settings, slow_writes=True)
    try:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        store = client.vector_stores.create(name="Field Notes")
        files = [client.files.create(file=(f"notes{i}.txt", article(f"penguins{i}", 1, 12).encode()),
                                     purpose="assistants") for i in range(4)]
        attached = [client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id,
                                                      attributes={"n": i}) for i, f in enumerate(files)]
        assert [a.status for a in attached].count("in_progress") == 4  # acknowledged, queued
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    server, url = start_service(settings)
    try:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [client.vector_stores.files.retrieve(f.id, vector_store_id=store.id) for f in files]
            if all(s.status == "completed" for s in states):
                break
            time.sleep(0.2)
        assert [s.status for s in states] == ["completed"] * 4, states
        assert [s.attributes for s in states] == [{"n": i} for i in range(4)]  # written as acknowledged
        assert client.vector_stores.retrieve(store.id).file_counts.completed == 4
    finally:
        server.terminate()
        server.wait()


@pytest.mark.slow
def test_a_second_202_of_one_document_survives_the_first_ones_commit_and_a_sigkill(built: Settings):
    settings = built.model_copy(update={"sync_write_chars": 1000})
    first, second = article("harbours", 1, 12), article("lighthouses", 2, 12)
    server, url = start_service(settings, slow_writes=True)
    try:
        assert httpx.post(url + "/collections", json={"name": "notes"}).status_code == 201
        assert httpx.post(url + "/collections/notes/documents", json={"doc_id": "x", "text": first}).status_code == 202
        assert httpx.put(url + "/collections/notes/documents/x", json={"text": second}).status_code == 202
        deadline = time.monotonic() + 30
        while True:  # the first is committed, the second not yet: kill now
            r = httpx.get(url + "/collections/notes/documents/x/text")
            if r.status_code == 200 and r.json()["text"].startswith(first[:60]):
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    server, url = start_service(settings)
    try:
        states = _wait_completed(url, "notes", ["x"])
        assert states["x"].get("status") == "completed", states
        assert httpx.get(url + "/collections/notes/documents/x/text").json()["text"].startswith(second[:60])
    finally:
        server.terminate()
        server.wait()
