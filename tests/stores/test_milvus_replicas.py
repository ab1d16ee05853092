"""Replicas that share one index folder and one Milvus cannot corrupt each other (issue 22,
item 4): a collection one deletes or makes again is seen by the others within a second,
and two writers never share a generation, so neither removes the other's rows.

Milvus Lite serves one process at a time, so two writers of one store are tested by the
means there are: two Collections objects in one process (each with its own Milvus client,
as two replicas have), interleaved at a chosen client call, and processes that take turns
on the file. Only a Milvus server with several processes at once would show writes
interleaved anywhere in Milvus's own ordering (the claim holds for any order, given Strong
reads: the argument is in rag.stores.milvus.claims), recovery by one replica while another
writes (there, intents younger than RECOVER_AFTER_S are left; here, those in flight in the
process), and replicas on a network mount of the index folder (the registry re-reads the
manifest with an open, which NFS revalidates).
"""

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from rag.collections import Collections, text_document
from rag.errors import NotFoundError
from rag.settings import Settings
from tests.helpers import REPO, FakeEmbedder, article

pytest.importorskip("pymilvus")

from rag.stores.milvus import live, versions
from rag.stores.milvus.client import NO_VECTOR, release_lite
from rag.stores.milvus.live import MilvusCollection
from rag.stores.milvus.versions import Pointer

TOPICS = ("penguins", "walrus")


@pytest.fixture(params=["local", pytest.param("milvus", marks=pytest.mark.milvus)])
def either(request: pytest.FixtureRequest, tmp_path: Path, corpus_dir: Path) -> Settings:
    return Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index", model="fake",
                    vector_store=request.param, milvus_uri=str(tmp_path / "milvus.db"))


@pytest.fixture
def milvus(tmp_path: Path, corpus_dir: Path) -> Settings:
    return Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index", model="fake", vector_store="milvus",
                    milvus_uri=str(tmp_path / "milvus.db"))


def doc(topic: str) -> Any:
    return text_document(article(topic, 1), topic, None, None)


def within_a_second(seen: Callable[[], bool]) -> float:
    """How long until `seen()` holds; fails past one second."""
    start = time.monotonic()
    while not seen():
        assert time.monotonic() - start < 1.0, "not seen within 1 s"
        time.sleep(0.02)
    return time.monotonic() - start


def whole(kb: MilvusCollection, doc_id: str) -> Pointer:
    """The document's live version, checked: every row its pointer names is there and its
    own, and its text is its own."""
    pointer = kb.pointer(doc_id)
    assert pointer is not None
    for kind in ("chunks", "sentences", "parts"):
        found = kb._get(kind, pointer.keys(kind), ["doc_id", "gen"])
        assert len(found) == getattr(pointer, kind) > 0
        assert {(r["doc_id"], r["gen"]) for r in found} == {(doc_id, pointer.gen)}
    text = kb.documents[doc_id].text
    assert all((topic in text) == (topic == doc_id) for topic in TOPICS)
    return pointer


def forced_draws(monkeypatch: pytest.MonkeyPatch, gen: int, same: int = 2) -> None:
    """The first `same` draws of a gen give `gen`, later ones gens above it, as two writers
    drawing in the same second with the same random bits would."""
    draws = itertools.count()

    def draw(last: int) -> int:
        n = next(draws)
        return gen if n < same else max(gen + n, last + 1)

    monkeypatch.setattr(versions, "next_gen", draw)
    monkeypatch.setattr(live, "next_gen", draw, raising=False)  # where the draw was looked up before claims


# ------------------------------------------------------------------ the registry


def test_a_collection_deleted_by_another_replica_is_gone_within_a_second(either: Settings):
    dropped: list[str] = []
    with Collections(either, FakeEmbedder()) as one, \
            Collections(either, FakeEmbedder(), dropped=dropped.append) as two:
        one.create("notes")
        one.upsert("notes", doc("penguins"), replace=False)
        held = two.get("notes")
        assert held.count() > 0
        one.delete("notes")

        def gone() -> bool:
            try:
                two.get("notes")
            except NotFoundError:
                return True
            return False

        within_a_second(gone)
        assert dropped == ["notes"] and held.closed  # the service's retriever of it goes too


def test_a_collection_made_again_by_another_replica_is_the_new_one_within_a_second(either: Settings):
    dropped: list[str] = []
    with Collections(either, FakeEmbedder()) as one, \
            Collections(either, FakeEmbedder(), dropped=dropped.append) as two:
        one.create("notes")
        one.upsert("notes", doc("penguins"), replace=False)
        held = two.get("notes")
        assert held.count() > 0
        one.delete("notes")
        made = one.create("notes")
        within_a_second(lambda: two.get("notes").manifest["build_id"] == made.manifest["build_id"])
        now = two.get("notes")
        assert now is not held and held.closed and dropped == ["notes"]
        assert now.count() == 0 and "penguins" not in now.documents
        two.upsert("notes", doc("walrus"), replace=False)  # and it writes the new one
        assert list(now.documents) == ["walrus"]


@pytest.mark.milvus
def test_a_delete_removes_the_collection_on_disk_not_the_one_it_held(milvus: Settings):
    """At once, not within a second: else it would remove the new one's folder and the old
    one's Milvus collections, leaving the new one's in Milvus for good."""
    with Collections(milvus, FakeEmbedder()) as one, Collections(milvus, FakeEmbedder()) as two:
        one.create("notes")
        two.get("notes")
        one.delete("notes")
        one.create("notes")
        two.delete("notes")
        assert one.names() == ["default"]
        from pymilvus import MilvusClient

        assert not [n for n in MilvusClient(uri=milvus.milvus_uri).list_collections() if "_live_" in n]


# ------------------------------------------------------------------ generations


@pytest.mark.milvus
def test_two_writers_that_draw_one_gen_keep_their_documents_apart(milvus: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """Writer A records its intent; writer B, having drawn the same gen, runs its whole
    write; then A goes on. Before the claim both versions took one gen, so one's rows
    overwrote the other's and deleting one removed the other's."""
    with Collections(milvus, FakeEmbedder()) as one, Collections(milvus, FakeEmbedder()) as two:
        one.create("notes")
        a = one.get("notes")
        assert isinstance(a, MilvusCollection) and isinstance(two.get("notes"), MilvusCollection)
        gen = versions.next_gen(0)
        forced_draws(monkeypatch, gen)
        insert, interleaved = a._client.insert, []

        def then_b(name: str, rows: Any, *args: Any, **kwargs: Any) -> Any:
            done = insert(name, rows, *args, **kwargs)
            if name.endswith("_pending") and not interleaved:  # A's intent is recorded: B writes
                interleaved.append(two.upsert("notes", doc("walrus"), replace=False))
            return done

        monkeypatch.setattr(a._client, "insert", then_b)
        one.upsert("notes", doc("penguins"), replace=False)
        monkeypatch.undo()
        assert interleaved and interleaved[0].status == "created"
    with Collections(milvus, FakeEmbedder()) as fresh:
        kb = fresh.get("notes")
        assert isinstance(kb, MilvusCollection)
        assert whole(kb, "penguins").gen == gen != whole(kb, "walrus").gen  # A kept it: B saw A's intent, drew again
        fresh.remove("notes", "penguins")
        whole(kb, "walrus")
        assert kb.count() == kb.chunk_count("walrus") and not kb._query("pending", "", ["gen"], 10)


@pytest.mark.milvus
def test_an_intent_left_by_a_writer_that_lost_its_claim_removes_nothing_live(milvus: Settings):
    """A writer that drew the winner's gen, lost the claim and died before removing its
    intent leaves an intent naming that gen: recovery keeps the winner's rows."""
    with Collections(milvus, FakeEmbedder()) as one:
        one.create("notes")
        one.upsert("notes", doc("walrus"), replace=False)
        kb = one.get("notes")
        assert isinstance(kb, MilvusCollection)
        winner = whole(kb, "walrus")
        loser = {"gen": (1 << 62) + 12_345, "doc_id": "penguins", "at": 0, "_": NO_VECTOR,
                 "versions": json.dumps([asdict(winner)])}  # its new version, drawn with the winner's gen
        kb._client.insert(kb._names["pending"], [loser])
        one.close()
        kb = one.get("notes")  # opened again: recovery
        assert isinstance(kb, MilvusCollection)
        assert whole(kb, "walrus") == winner and not kb._query("pending", "", ["gen"], 10)


@pytest.mark.milvus
def test_a_replica_that_opens_during_a_write_leaves_the_write_alone(milvus: Settings,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """Opening recovers the writes that died; in one process (Milvus Lite's only way to two
    writers) a write in flight is not one of them, as on a server a young intent is not."""
    with Collections(milvus, FakeEmbedder()) as one, Collections(milvus, FakeEmbedder()) as two:
        one.create("notes")
        a = one.get("notes")
        assert isinstance(a, MilvusCollection)
        upsert, opened = a._client.upsert, []

        def open_b_first(name: str, rows: Any, *args: Any, **kwargs: Any) -> Any:
            if not opened:  # A's rows are in, its switch is next: B opens, and recovers
                opened.append(two.get("notes"))
            return upsert(name, rows, *args, **kwargs)

        monkeypatch.setattr(a._client, "upsert", open_b_first)
        one.upsert("notes", doc("penguins"), replace=False)
        monkeypatch.undo()
        assert opened
        whole(a, "penguins")


TAKE_A_TURN = """
import sys
from pathlib import Path
from rag.collections import Collections, text_document
from rag.settings import Settings
from rag.stores.milvus import live, versions
from tests.helpers import FakeEmbedder, article
index, corpus, uri, gen = sys.argv[1:]
for module in (versions, live):  # the first draw gives `gen`, the draws in live.py before claims.py too
    setattr(module, "next_gen", lambda last: max(int(gen), last + 1))
settings = Settings(corpus_dir=Path(corpus), index_dir=Path(index), model="fake", vector_store="milvus", milvus_uri=uri)
with Collections(settings, FakeEmbedder()) as collections:
    collections.upsert("notes", text_document(article("walrus", 1), "walrus", None, None), replace=False)
    print(collections.get("notes").pointer("walrus").gen)
"""


@pytest.mark.milvus
def test_processes_taking_turns_never_reuse_a_gen_that_has_rows(milvus: Settings, monkeypatch: pytest.MonkeyPatch):
    """Another process writes the Milvus Lite file and exits; this one, drawing the very gen
    the other's live version has, claims another."""
    gen = versions.next_gen(0)
    with Collections(milvus, FakeEmbedder()) as one:
        one.create("notes")
    release_lite(milvus.milvus_uri)  # Milvus Lite serves one process: this one lets go of the file
    turn = subprocess.run([sys.executable, "-c", TAKE_A_TURN, str(milvus.index_dir), str(milvus.corpus_dir),
                           milvus.milvus_uri, str(gen)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert turn.returncode == 0, turn.stderr[-2000:]
    assert int(turn.stdout.split()[-1]) == gen
    forced_draws(monkeypatch, gen, same=1)
    with Collections(milvus, FakeEmbedder()) as again:
        again.upsert("notes", doc("penguins"), replace=False)
        kb = again.get("notes")
        assert isinstance(kb, MilvusCollection)
        assert whole(kb, "walrus").gen == gen != whole(kb, "penguins").gen


@pytest.mark.milvus
def test_start_up_sweeps_milvus_collections_a_crash_left_unregistered(milvus: Settings):
    from pymilvus import MilvusClient

    with Collections(milvus, FakeEmbedder()) as made:
        made.create("kept")
        kept_tag = made.get("kept").manifest["store"]["tag"]
    old = f"{int(time.time()) - 3600:08x}beef"  # made an hour ago, then the process died before the rename
    young = versions.new_tag()  # a replica's create in progress
    for tag in (old, young):
        versions.create_collection(milvus.milvus_uri, milvus.milvus_collection, tag, FakeEmbedder().dimension)
    release_lite(milvus.milvus_uri)
    with Collections(milvus, FakeEmbedder()) as fresh:
        assert fresh.sweep_milvus() == [old]
        assert fresh.get("kept").count() == 0  # the registered one is whole
    release_lite(milvus.milvus_uri)
    left = {n.split("_live_")[1][:12] for n in MilvusClient(uri=milvus.milvus_uri).list_collections() if "_live_" in n}
    assert left == {kept_tag, young}


@pytest.mark.milvus
def test_milvus_collections_past_the_bound_give_back_their_clients_and_still_answer(milvus: Settings):
    bounded = milvus.model_copy(update={"max_open_collections": 2})
    released: list[str] = []
    with Collections(bounded, FakeEmbedder(), dropped=released.append) as c:
        held = {}
        for i in range(4):
            c.create(f"c{i}")
            c.upsert(f"c{i}", text_document(f"Penguin colony {i} counts krill.", f"d{i}", None, None), replace=False)
            held[f"c{i}"] = c.get(f"c{i}")
        assert released[:2] == ["c0", "c1"] and held["c0"]._connection is None  # its client closed
        assert held["c0"].count() > 0 and "d0" in held["c0"].documents  # a holder still reads: it reconnects
        assert c.get("c0").documents["d0"].text.startswith("Penguin colony 0")
