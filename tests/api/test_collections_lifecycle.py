"""Collections' resources stay bounded: an LRU of open collections (RAG_MAX_OPEN_COLLECTIONS)
releases the least recently used, which reopens on its next use (a request holding it
included); a deleted or released collection's retriever is dropped; start-up removes the
debris crashed creates, deletes and uploads left. And 2,000 collections created, listed,
queried and deleted under `ulimit -n 1024` leave descriptors and RSS where they started."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rag.collections import Collections, text_document
from rag.settings import Settings
from tests.helpers import REPO, FakeEmbedder, client_for


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_start_up_removes_every_kind_of_orphan(built: Settings):
    settings = built
    debris = [settings.index_dir / "collections" / ".tmp-notes-1a2b3c4d",
              settings.index_dir / "collections" / ".del-old-5e6f7a8b",
              settings.index_dir / "files" / ".tmp-file-0123456789abcdef01234567",
              settings.index_dir / "files" / ".del-file-0123456789abcdef01234567"]
    for folder in debris:
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{", encoding="utf-8")
    with client_for(settings) as client:
        assert client.get("/collections").status_code == 200
    assert not [p for p in debris if p.exists()]


def test_open_collections_are_an_lru_and_a_released_one_reopens(settings: Settings):
    bounded = settings.model_copy(update={"max_open_collections": 2})
    dropped: list[str] = []
    with Collections(bounded, FakeEmbedder(), dropped=dropped.append) as collections:
        for name in ("c0", "c1", "c2", "c3"):
            collections.create(name)
            collections.upsert(name, text_document(f"Krill note {name}.", "krill", None, None), replace=False)
        held = collections.get("c0")  # a request holds it ...
        opened = descriptors()
        for name in ("c1", "c2", "c3") * 3:
            collections.get(name)
        assert len(collections._open) == 2 and "c0" not in collections._open
        assert "c0" in dropped
        assert descriptors() <= opened  # ... and it was released all the same
        assert held.count() == 1 and list(held.documents) == ["krill"]  # reopened on use
        collections.delete("c1")
        assert dropped[-1] == "c1"


def test_a_deleted_or_released_collections_retriever_is_dropped(built: Settings):
    bounded = built.model_copy(update={"max_open_collections": 3})
    with client_for(bounded) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        for i in range(6):
            assert client.post("/collections", json={"name": f"n{i}"}).status_code == 201
            client.post(f"/collections/n{i}/documents", json={"text": "krill whales", "doc_id": "d"})
            assert client.post("/query", json={"question": "krill", "collection": f"n{i}"}).status_code == 200
        assert set(engine._collection_retrievers) <= {"n3", "n4", "n5"}
        assert client.delete("/collections/n5").status_code == 204
        assert "n5" not in engine._collection_retrievers
        assert client.post("/query", json={"question": "krill", "collection": "n0"}).status_code == 200


CHILD = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    from rag.settings import Settings
    from tests.helpers import client_for

    def measure():
        rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
        return len(os.listdir("/proc/self/fd")), rss

    settings = Settings.model_validate_json(sys.argv[1])
    names = [f"c{{i:04d}}" for i in range(int(sys.argv[2]))]
    started = time.monotonic()
    with client_for(settings) as client:
        def cycle(names):
            for name in names:
                assert client.post("/collections", json={{"name": name}}).status_code == 201, name
            assert len(client.get("/collections").json()) == len(names) + 1  # opens every one
            for name in names[::max(1, len(names) // 20)]:
                r = client.post(f"/collections/{{name}}/documents", json={{"text": "krill whales", "doc_id": "d"}})
                assert r.status_code == 201, r.text
                r = client.post("/query", json={{"question": "krill", "collection": name}})
                assert r.status_code == 200 and r.json()["passages"], r.text
            for name in names:
                assert client.delete(f"/collections/{{name}}").status_code == 204, name
            assert len(client.get("/collections").json()) == 1
        cycle([f"warm{{i}}" for i in range(80)])  # lazy imports, thread pools, allocator arenas
        start = measure()
        cycle(names)
        end = measure()
    print(json.dumps({{"start": start, "end": end, "seconds": time.monotonic() - started}}))
""").format(repo=str(REPO))


def churn(settings: Settings, collections: int) -> dict[str, list[int]]:
    command = f"ulimit -n 1024 && exec {sys.executable} -c \"$0\" \"$1\" {collections}"
    done = subprocess.run(["bash", "-c", command, CHILD, settings.model_dump_json()], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    measured: dict[str, list[int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


@pytest.mark.slow
def test_two_thousand_collections_leave_descriptors_and_memory_flat(built: Settings):
    measured = churn(built, 2000)
    (fds, rss), (fds_after, rss_after) = measured["start"], measured["end"]
    print(measured)
    assert fds_after <= fds * 1.05, measured
    assert rss_after <= rss * 1.10, measured
