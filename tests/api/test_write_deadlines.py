"""A write whose request deadline passes is either cancelled before it starts (503, retry:
it never lands) or reported done: never "retry" for a write that then lands (api.engine.writes)."""

import threading
import time
from collections.abc import Sequence

import numpy as np

from rag.settings import Settings
from tests.helpers import FakeEmbedder, article, client_for


class SlowWrites(FakeEmbedder):
    """Writes (several texts at once) take `seconds`; questions (one text) are fast."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if len(texts) > 1:
            time.sleep(self.seconds)
        return super().encode(texts, batch_size)


def _settings(built: Settings) -> Settings:
    """The collection is made first, under the default deadline: on a loaded machine its
    creation alone can pass 0.5 s, and these tests are about document writes."""
    with client_for(built, FakeEmbedder()) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
    return built.model_copy(update={"request_timeout_seconds": 0.5, "sync_write_chars": 3000})


def test_a_write_that_started_is_reported_done_past_its_deadline(built: Settings):
    with client_for(_settings(built), SlowWrites(1.5)) as c:
        r = c.post("/collections/notes/documents", json={"doc_id": "small", "text": article("ferries", 1, 3)})
        assert r.status_code == 201, r.text  # 1.5 s of embedding against a 0.5 s deadline: late, and true
        assert c.get("/collections/notes/documents/small").json()["status"] == "completed"


def test_a_write_still_queued_at_its_deadline_is_cancelled_and_never_lands(built: Settings):
    with client_for(_settings(built), SlowWrites(1.5)) as c:
        big = c.post("/collections/notes/documents", json={"doc_id": "big", "text": article("harbours", 1, 30)})
        assert big.status_code == 202  # the writer is busy with it for 1.5 s or more
        r = c.post("/collections/notes/documents", json={"doc_id": "small", "text": article("ferries", 1, 3)})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        deadline = time.monotonic() + 20
        while c.get("/collections/notes/documents/big").json()["status"] == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.2)  # the writer's queue is empty: a write cancelled is not run after it
        assert c.get("/collections/notes/documents/small").status_code == 404
        # the retry the 503 asked for writes it, once
        again = c.post("/collections/notes/documents", json={"doc_id": "small", "text": article("ferries", 1, 3)})
        assert again.status_code == 201, again.text


def test_writes_refused_while_stopping_and_the_running_one_finishes(built: Settings):
    from api.engine.writes import Writer
    from rag.errors import OverloadedError

    writer = Writer(built)
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def running(_: object) -> None:
        started.set()
        release.wait(5)
        done.append("running")

    writer.write_later(lambda: None, ("notes", "a"), running)  # type: ignore[arg-type, return-value]
    writer.write_later(lambda: None, ("notes", "b"), lambda _: done.append("queued"))  # type: ignore[arg-type]
    assert started.wait(5)
    assert writer.close(0.2) is False and writer.busy  # the running one outlives a short grace
    release.set()
    assert writer.close(5) is True and not writer.busy
    assert done == ["running"]  # the queued one was dropped (a big write's spool keeps it)
    try:
        writer.write_later(lambda: None, ("notes", "c"), lambda _: None)  # type: ignore[arg-type]
    except OverloadedError as exc:
        assert "shutting down" in str(exc)
    else:
        raise AssertionError("a write was taken after close")
