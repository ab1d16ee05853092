"""Live collections in Milvus Lite (rag.stores.milvus.live), where a write is several
Milvus calls and no transaction: a write cut off between them shows the old version or
the new one, never both or part of either, and the next open removes what it left."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.collections import Collections, text_document
from rag.errors import ConflictError
from rag.search.retriever import Retriever
from rag.settings import Settings
from tests.helpers import FakeEmbedder, article

pytest.importorskip("pymilvus")

from rag.stores.milvus.live import MilvusCollection

pytestmark = pytest.mark.milvus  # Milvus Lite, in process


@pytest.fixture
def milvus(tmp_path: Path, corpus_dir: Path) -> Settings:
    return Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index", model="fake", vector_store="milvus",
                    milvus_uri=str(tmp_path / "milvus.db"))


@pytest.fixture
def collections(milvus: Settings) -> Iterator[Collections]:
    with Collections(milvus, FakeEmbedder()) as made:
        made.create("notes")
        made.upsert("notes", text_document(article("penguins", 1), "penguins", None, None), replace=False)
        yield made


def stored_rows(kb: MilvusCollection, kind: str = "chunks") -> int:
    """Rows in Milvus, live or not."""
    return int(kb._query(kind, "", ["count(*)"])[0]["count(*)"])


def versions(kb: MilvusCollection) -> set[str]:
    found = Retriever(kb, FakeEmbedder()).query("penguins policy", 10).passages
    return {p.text.split("(version ")[1][0] for p in found}


class Cut(Exception):
    """The write stops here, as a crash would."""


def crash_at(kb: MilvusCollection, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    def cut(*args: Any, **kwargs: Any) -> None:
        raise Cut

    monkeypatch.setattr(kb, method, cut)


def reopened(collections: Collections, name: str = "notes") -> MilvusCollection:
    collections.close()
    kb = collections.get(name)
    assert isinstance(kb, MilvusCollection)
    return kb


def test_a_write_cut_before_its_switch_leaves_the_old_version(collections: Collections,
                                                              monkeypatch: pytest.MonkeyPatch):
    kb = collections.get("notes")
    assert isinstance(kb, MilvusCollection)
    live_rows = stored_rows(kb)
    crash_at(kb, monkeypatch, "_upsert_pointers")
    with pytest.raises(Cut):
        collections.upsert("notes", text_document(article("penguins", 2), "penguins", None, None), replace=True)
    assert versions(kb) == {"1"} and stored_rows(kb) > live_rows  # the new rows are there, and hidden
    monkeypatch.undo()
    kb = reopened(collections)
    assert versions(kb) == {"1"} and stored_rows(kb) == live_rows == kb.count()  # and removed on open
    assert stored_rows(kb, "pending") == 0


def test_a_write_cut_after_its_switch_shows_the_new_version(collections: Collections,
                                                            monkeypatch: pytest.MonkeyPatch):
    kb = collections.get("notes")
    assert isinstance(kb, MilvusCollection)
    crash_at(kb, monkeypatch, "_delete_version")  # the old version's rows stay
    with pytest.raises(Cut):
        collections.upsert("notes", text_document(article("penguins", 2), "penguins", None, None), replace=True)
    assert versions(kb) == {"2"}
    monkeypatch.undo()
    kb = reopened(collections)
    assert versions(kb) == {"2"} and stored_rows(kb) == kb.count() == kb.chunk_count("penguins")
    assert kb.documents["penguins"].text.count("(version 2)") == 6


def test_a_delete_cut_after_its_switch_is_a_delete(collections: Collections, monkeypatch: pytest.MonkeyPatch):
    kb = collections.get("notes")
    assert isinstance(kb, MilvusCollection)
    crash_at(kb, monkeypatch, "_delete_version")
    with pytest.raises(Cut):
        collections.remove("notes", "penguins")
    assert versions(kb) == set() and "penguins" not in kb.documents
    monkeypatch.undo()
    kb = reopened(collections)
    assert stored_rows(kb) == stored_rows(kb, "parts") == stored_rows(kb, "sentences") == 0


def test_a_collection_lives_in_the_store_it_was_made_in(milvus: Settings):
    local = milvus.model_copy(update={"vector_store": "local"})
    with Collections(local, FakeEmbedder()) as made:
        made.create("mine")
    with Collections(milvus, FakeEmbedder()) as served:
        assert served.names() == ["default"] and served.names(every_store=True) == ["default", "mine"]
        with pytest.raises(ConflictError, match="lives in the local store"):
            served.get("mine")
        with pytest.raises(ConflictError, match="exists"):  # its name is taken all the same
            served.create("mine")


def test_a_deleted_collection_leaves_nothing_in_milvus(collections: Collections):
    kb = collections.get("notes")
    assert isinstance(kb, MilvusCollection)
    client = kb._client
    made = [n for n in client.list_collections() if "_live_" in n]
    assert len(made) == 5
    collections.delete("notes")
    from pymilvus import MilvusClient

    assert not [n for n in MilvusClient(uri=collections.settings.milvus_uri).list_collections() if "_live_" in n]


def test_a_write_by_another_client_is_seen_through_the_stamp(collections: Collections, milvus: Settings):
    """On a Milvus server another process may write the collection: a reader notices the
    stamp row move and reloads the pointers. Two clients of one Milvus Lite file stand in
    for the two processes (marked shared, as a server's collections are)."""
    kb = collections.get("notes")
    assert isinstance(kb, MilvusCollection)
    reader = MilvusCollection(milvus.milvus_uri, kb.manifest)
    kb._shared = reader._shared = True
    serving = Retriever(reader, FakeEmbedder())
    assert versions(reader) == {"1"}
    collections.upsert("notes", text_document(article("penguins", 2), "penguins", None, None), replace=True)
    assert versions(reader) == {"2"}
    collections.upsert("notes", text_document(article("walrus", 1), "walrus", None, None), replace=False)
    assert "walrus" in reader.documents and reader.count() == kb.count()
    collections.remove("notes", "penguins")
    assert serving.query("penguins policy", 10).passages[0].citation.doc_id == "walrus"
    reader.close()


def test_a_milvus_lite_file_held_by_another_process_is_one_clear_error(tmp_path: Path):
    import subprocess
    import sys

    from rag.errors import StorageError
    from rag.stores.milvus.client import connect

    uri = str(tmp_path / "held.db")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pymilvus import MilvusClient\n"
                               f"MilvusClient(uri={uri!r}); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StorageError, match="another process has it open"):
            connect(uri, "rag", None, 5.0)
    finally:
        holder.kill()
        holder.wait()
