"""A collection created or deleted by a process killed (SIGKILL) at any step is whole or
gone: a forked child creates, fills and deletes collections with every file-system call
(mkdir, rename, replace, unlink, rmdir, fsync) counted, and kills itself before the k-th,
for every k; then a fresh `Collections` and the HTTP app see each name either complete
(manifest readable, GET 200, its acknowledged document there) or absent, no debris after
start-up, and a new POST of the same name works.

SIGKILL keeps the page cache, so this checks the order of the steps, not the fsyncs
(a power cut is not simulated)."""

import os
import signal
from pathlib import Path

import pytest

from rag.collections import Collections, text_document
from rag.settings import Settings
from rag.stores.local.builds import clean_orphans
from tests.helpers import FakeEmbedder, client_for

pytestmark = pytest.mark.slow
STEPS = ("mkdir", "rename", "replace", "unlink", "rmdir", "fsync")
DOC = text_document("Krill swarms feed the whales of the Southern Ocean.", "krill", "Krill", None)


def child(settings: Settings, kill_at: int, report: int) -> None:
    """The work that is killed, in the forked process: never returns."""
    count = 0

    def counted(call):  # type: ignore[no-untyped-def]
        def step(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal count
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return call(*args, **kwargs)
        return step

    try:
        for name in STEPS:
            setattr(os, name, counted(getattr(os, name)))
        with Collections(settings, FakeEmbedder()) as collections:
            collections.create("a")
            collections.upsert("a", DOC, replace=False)
            os.write(report, b"upserted\n")
            collections.create("b")
            collections.delete("a")
            os.write(report, b"deleted\n")
        os.write(report, f"steps {count}\n".encode())
    finally:
        os._exit(0)


def run(settings: Settings, kill_at: int) -> str:
    """Fork the child, killed before its `kill_at`-th step (0: never); what it reported."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        child(settings, kill_at, write)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) == (kill_at > 0), (kill_at, status)
    return said


def check_whole_or_gone(settings: Settings, said: str, k: int) -> None:
    root = settings.index_dir / "collections"
    clean_orphans(settings.index_dir)
    assert not [p.name for p in root.glob(".*")], k  # start-up removes every .tmp- and .del-
    with Collections(settings, FakeEmbedder()) as collections:
        names = collections.names()
        stray = [p.name for p in root.iterdir() if p.name not in names] if root.is_dir() else []
        assert not stray, (k, stray)  # a folder left without its manifest strands the name
        if "a" in names:
            assert "deleted" not in said, k  # a delete that returned stays done
            documents = len(collections.get("a").documents)  # type: ignore[union-attr]
            assert documents == (1 if "upserted" in said else documents), k  # never half a collection
            assert documents in (0, 1), k
    with client_for(settings) as client:
        for name in ("a", "b"):
            there = name in names
            assert client.get(f"/collections/{name}").status_code == (200 if there else 404), (k, name)
            if there:
                assert client.delete(f"/collections/{name}").status_code == 204, (k, name)
            assert client.post("/collections", json={"name": name}).status_code in (200, 201), (k, name)
            assert client.get(f"/collections/{name}").status_code == 200, (k, name)


def test_a_collection_created_or_deleted_by_a_killed_process_is_whole_or_gone(settings: Settings,
                                                                               tmp_path: Path):
    said = run(settings, 0)
    steps = int(said.split("steps ")[1])
    assert steps >= 10
    for k in range(1, steps + 1):
        at = settings.model_copy(update={"index_dir": tmp_path / f"kill-{k}"})
        said = run(at, k)
        assert "steps" not in said, k
        check_whole_or_gone(at, said, k)
