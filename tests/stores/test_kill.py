"""A build killed with SIGKILL at any point leaves the previous index serving, on both
stores: a child process builds (the fake model, a corpus big enough to take a while) and
is killed after a varying delay; the live build must then open and answer as before."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rag.ingest.build import build_index, spec_of
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.stores.factory import open_store
from rag.stores.local.builds import clean_orphans
from tests.helpers import REPO, FakeEmbedder

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from tests.helpers import FakeEmbedder
    from rag.ingest.build import build_index
    from rag.settings import Settings
    settings = Settings.model_validate_json(sys.argv[1])
    print("started", flush=True)
    build_index(settings, FakeEmbedder(), force=True)
    print("done", flush=True)
""").format(tests=str(REPO))


def big_corpus(folder: Path, documents: int = 120) -> None:
    for i in range(documents):
        words = " ".join(f"word{(i * 31 + j) % 997} trade oil pipeline" for j in range(400))
        (folder / f"bulk-{i:03d}.txt").write_text(f"Bulk document {i}\n\n{words}.\n", encoding="utf-8")


def answer(settings: Settings) -> list[str]:
    store = open_store(settings, spec_of(settings))
    try:
        return [p.chunk_id for p in Retriever(store, FakeEmbedder()).query("Arctic shipping routes", 5).passages]
    finally:
        store.close()


@pytest.mark.parametrize("store", ["local", pytest.param("milvus", marks=pytest.mark.milvus)])
def test_a_build_killed_at_any_point_leaves_the_previous_index_serving(settings: Settings, tmp_path: Path,
                                                                         store: str):
    if store == "milvus":
        pytest.importorskip("pymilvus")
        settings = settings.model_copy(update={"vector_store": "milvus", "milvus_uri": str(tmp_path / "m.db")})
    build_index(settings, FakeEmbedder())
    before = open_store(settings, None)
    live, chunks = before.build_id, before.count()
    before.close()
    expected = answer(settings)
    big_corpus(settings.corpus_dir)
    mid_build = 0
    for delay in (0.2, 0.6, 1.2, 2.0):  # seconds after the child starts building: different steps
        child = subprocess.Popen([sys.executable, "-c", CHILD, settings.model_dump_json()],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        reopened = open_store(settings, spec_of(settings))
        try:
            if reopened.build_id != live:  # the kill came after the commit: a whole new build
                assert reopened.count() > chunks
                live, chunks = reopened.build_id, reopened.count()
                expected = None
        finally:
            reopened.close()
        if expected is not None:
            assert answer(settings) == expected, delay
            mid_build += 1
    assert mid_build >= 2  # the kills did land before a commit, not only after
    if store == "local":
        clean_orphans(settings.index_dir)
        assert not list((settings.index_dir / "builds").glob(".tmp-*"))
