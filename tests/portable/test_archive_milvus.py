"""Export and import across stores, on Milvus Lite: local to Milvus and Milvus to local
give the same passages, offsets and scores."""

from pathlib import Path

import pytest

from rag.collections import Collections, text_document
from rag.ingest.build import build_index
from rag.portable.exporting import export_collection
from rag.portable.importing import import_archive
from rag.settings import Settings
from tests.helpers import FakeEmbedder, answers, article, differs

pytest.importorskip("pymilvus")
pytestmark = pytest.mark.milvus  # Milvus Lite, in process


def test_local_to_milvus_and_back(built: Settings, fake_embedder: FakeEmbedder, tmp_path: Path):
    milvus = built.model_copy(update={"vector_store": "milvus", "milvus_uri": str(tmp_path / "milvus.db")})
    export_collection(built, "default", tmp_path / "kb.tar")
    import_archive(milvus, tmp_path / "kb.tar", fake_embedder, "copy")
    expected = answers(built, "default", fake_embedder)
    assert differs(answers(milvus, "copy", fake_embedder), expected) is None
    export_collection(milvus, "copy", tmp_path / "from-milvus.tar")
    import_archive(built, tmp_path / "from-milvus.tar", fake_embedder, "back")
    assert differs(answers(built, "back", fake_embedder), expected) is None


def test_a_milvus_live_collection_and_a_milvus_build_round_trip(tmp_path: Path, corpus_dir: Path,
                                                                 fake_embedder: FakeEmbedder):
    milvus = Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index", model="fake", vector_store="milvus",
                      milvus_uri=str(tmp_path / "milvus.db"))
    build_index(milvus, fake_embedder)
    with Collections(milvus, fake_embedder) as collections:
        collections.create("notes")
        for topic in ("penguins", "volcanoes"):
            collections.upsert("notes", text_document(article(topic), topic, None, None), replace=False)
    export_collection(milvus, "notes", tmp_path / "notes.tar")
    export_collection(milvus, "default", tmp_path / "default.tar")
    local = milvus.model_copy(update={"vector_store": "local", "index_dir": tmp_path / "local"})
    import_archive(local, tmp_path / "notes.tar", fake_embedder, "notes")
    import_archive(local, tmp_path / "default.tar", fake_embedder)  # the built corpus, as a local build
    assert differs(answers(local, "notes", fake_embedder), answers(milvus, "notes", fake_embedder)) is None
    assert differs(answers(local, "default", fake_embedder), answers(milvus, "default", fake_embedder)) is None
