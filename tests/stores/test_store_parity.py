"""The same corpus built into the local store and into Milvus Lite answers alike: the
pipeline (build, retrieve, API) does not know which store it runs on. Also the faults
a Milvus store adds: unreachable, not installed, built with another model."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import REPO, FakeEmbedder

pytest.importorskip("pymilvus")

from api.app import create_app
from rag.evaluation.retrieval import evaluate, load_questions, variants
from rag.ingest.build import build_index, spec_of
from rag.ingest.migrate import migrate_to_milvus
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.stores.factory import open_store

pytestmark = pytest.mark.milvus  # Milvus Lite, in process

QUESTIONS = REPO / "eval" / "questions.jsonl"


@pytest.fixture
def both(settings: Settings, tmp_path: Path) -> tuple[Settings, Settings]:
    milvus = settings.model_copy(update={"vector_store": "milvus", "milvus_uri": str(tmp_path / "milvus.db")})
    for each in (settings, milvus):
        build_index(each, FakeEmbedder())
    return settings, milvus


def retriever(settings: Settings) -> Retriever:
    return Retriever(open_store(settings, spec_of(settings)), FakeEmbedder())


def test_both_stores_give_the_same_answers_and_metrics(both: tuple[Settings, Settings]):
    local, milvus = (retriever(s) for s in both)
    assert milvus.store.count() == local.store.count() and len(milvus.store.documents) == len(local.store.documents)
    for question in ("What was the value of trade between China and Russia in 2024?", "Arctic shipping routes",
                     "Who is Xi Jinping?"):
        for mode in ("dense", "lexical", "hybrid"):
            a, b = local.query(question, k=5, mode=mode), milvus.query(question, k=5, mode=mode)
            assert [p.citation for p in a.passages] == [p.citation for p in b.passages], (question, mode)
            assert [p.highlights for p in a.passages] == [p.highlights for p in b.passages]
            assert [p.score for p in a.passages] == pytest.approx([p.score for p in b.passages], abs=1e-4)
    reports = [evaluate(r, load_questions(QUESTIONS, r.store), variants(("hybrid",))) for r in (local, milvus)]
    first, second = (r["modes"]["hybrid"]["overall"] for r in reports)
    for metric in ("mrr@10", "ndcg@10", "recall@5"):
        assert abs(first[metric] - second[metric]) <= 0.01, metric


def test_a_restarted_milvus_is_read_again(both: tuple[Settings, Settings]):
    """After a restart (for Milvus Lite: any new process) every collection is released."""
    from pymilvus import MilvusClient

    _, milvus = both
    client = MilvusClient(uri=milvus.milvus_uri)
    for name in client.list_collections():
        client.release_collection(name)
    client.close()
    assert retriever(milvus).query("Arctic shipping routes", k=3).passages


def test_filters_and_documents_read_alike(both: tuple[Settings, Settings]):
    local, milvus = (retriever(s) for s in both)
    doc_id = next(iter(local.store.documents))
    assert milvus.store.documents[doc_id] == local.store.documents[doc_id]
    assert milvus.store.rows_of(doc_id) == local.store.rows_of(doc_id)
    from rag.types import Filters

    only = Filters(doc_ids=[doc_id])
    assert [h.row for h in milvus.search("trade", 5, only)] == [h.row for h in local.search("trade", 5, only)]


def test_the_api_serves_milvus(both: tuple[Settings, Settings]):
    _, milvus = both
    with TestClient(create_app(milvus, lambda name: FakeEmbedder()), base_url="http://127.0.0.1") as client:
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["chunks"] > 20
        passage = client.post("/query", json={"question": "Arctic shipping"}).json()["passages"][0]
        document = client.get(f"/documents/{passage['citation']['doc_id']}").json()
        assert document["text"][passage["citation"]["char_start"]:passage["citation"]["char_end"]] == passage["text"]


def test_migrate_copies_the_local_index_without_embedding(built: Settings, tmp_path: Path):
    target = built.model_copy(update={"milvus_uri": str(tmp_path / "moved.db")})
    migrate_to_milvus(target, log=lambda m: None)
    moved = retriever(target.model_copy(update={"vector_store": "milvus"}))
    local = retriever(built)
    assert moved.store.count() == local.store.count()
    a, b = (r.query("Arctic shipping routes", k=5) for r in (local, moved))
    assert [p.citation for p in a.passages] == [p.citation for p in b.passages]
    fake = FakeEmbedder()
    build_index(target.model_copy(update={"vector_store": "milvus"}), fake)  # same corpus: nothing to do
    assert fake.encoded == []


@pytest.mark.parametrize("case", ["unreachable", "mismatch"])
def test_a_milvus_fault_is_a_503_with_the_reason(both: tuple[Settings, Settings], case: str):
    _, milvus = both
    if case == "unreachable":
        milvus = milvus.model_copy(update={"milvus_uri": "http://127.0.0.1:1"})
        reason = "127.0.0.1:1"
    else:
        milvus = milvus.model_copy(update={"model": "another-model"})
        reason = "model: index has 'fake', settings ask for 'another-model'"
    with TestClient(create_app(milvus, lambda name: FakeEmbedder()), base_url="http://127.0.0.1") as client:
        r = client.get("/ready")
        assert r.status_code == 503 and reason in r.json()["detail"]
