"""A real uvicorn server on a free loopback port, queried with httpx: rebuilding the index
while queries run fails none of them, and answers switch to the new index."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import CORPUS, FakeEmbedder, free_port, running_server

pytestmark = pytest.mark.slow


@pytest.fixture
def live(built: Settings) -> Iterator[tuple[str, Settings]]:
    settings = built.model_copy(update={"reload_poll_seconds": 0.05})
    fake = FakeEmbedder()
    with running_server(create_app(settings, embedder_factory=lambda name: fake)) as url:
        yield url, settings


def test_rebuild_under_load_fails_no_request_and_switches(live: tuple[str, Settings]):
    url, settings = live
    question = {"question": "penguins waddle on antarctic ice", "k": 1}
    failures: list[str] = []
    top_docs: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(2000):  # bounded; the test stops it much sooner
                if stop.is_set():
                    return
                try:
                    r = http.post("/query", json=question)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                    else:
                        top_docs.append(r.json()["passages"][0]["citation"]["doc_id"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    (settings.corpus_dir / "penguins.txt").write_text("Penguins waddle across Antarctic ice shelves. " * 10)
    build_index(settings, FakeEmbedder())
    deadline = time.monotonic() + 10
    while (not top_docs or top_docs[-1] != "penguins") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=10)

    assert failures == []
    assert top_docs[0] != "penguins" and top_docs[-1] == "penguins"
    switched_at = top_docs.index("penguins")
    assert set(top_docs[switched_at + len(threads):]) == {"penguins"}  # no flip-flopping back


@pytest.mark.model
def test_rag_serve_with_the_real_model(tmp_path: Path):
    """`rag serve` as users run it: a subprocess with the bundled model on a fresh index."""
    index_dir = tmp_path / "index"
    build_index(Settings(corpus_dir=CORPUS, index_dir=index_dir))
    port = free_port()
    env = {**os.environ, "RAG_INDEX_DIR": str(index_dir), "RAG_PORT": str(port)}
    launched = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            ready = None
            while time.monotonic() - launched < 60 and proc.poll() is None:
                try:
                    ready = http.get("/ready")
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert ready is not None and ready.status_code == 200, proc.stderr.read() if proc.stderr else ""
            r = http.get("/query", params={"q": "What was the value of trade between China and Russia in 2024?",
                                           "k": 3})
            assert r.status_code == 200
            assert any("$245 billion" in p["text"] for p in r.json()["passages"])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
