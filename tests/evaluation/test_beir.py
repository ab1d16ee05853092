"""BEIR evaluation: a tiny hand-made collection with the fake model (fast, exact), and a
marked slice of the real SciFact with the real model (`pytest -m beir`)."""

import json
import random
from pathlib import Path

import pytest

from rag.errors import RagError
from rag.evaluation import beir
from rag.evaluation.retrieval import variants
from rag.settings import Settings
from tests.helpers import REPO, FakeEmbedder


def write_beir(folder: Path, docs: dict[str, tuple[str, str]], queries: dict[str, str],
               qrels: list[tuple[str, str]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels))
    return folder


def test_tiny_collection_exact_scores(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(beir, "embedder_from", lambda settings: FakeEmbedder())
    folder = write_beir(tmp_path / "tiny", {
        "d1": ("Penguins", "Penguins live on Antarctic ice."),
        "d2": ("Camels", "Camels cross hot deserts."),
        "d3": ("Owls", "Owls hunt at night in forests."),
    }, {"q1": "antarctic penguins ice", "q2": "desert camels", "q3": "unjudged query"},
        [("q1", "d1"), ("q2", "d2")])
    settings = Settings(model="fake", cache_dir=tmp_path / "cache")
    report = beir.evaluate_beir(folder, settings, variants(("lexical", "dense", "hybrid")))
    assert report["queries"] == 2 and report["documents"] == 3
    for mode in ("lexical", "dense", "hybrid"):
        assert report["modes"][mode]["overall"] == {"ndcg@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    again = beir.evaluate_beir(folder, settings, variants(("lexical",)))  # the cached index is reused
    assert again["build_id"] == report["build_id"]


def test_whole_documents_mode(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(beir, "embedder_from", lambda settings: FakeEmbedder())
    folder = write_beir(tmp_path / "tiny", {"d1": ("Penguins", "Penguins live on ice."),
                                            "d2": ("Camels", "Camels cross deserts.")},
                        {"q1": "penguins ice", "q2": "camels deserts"}, [("q1", "d1"), ("q2", "d2")])
    settings = Settings(model="fake", cache_dir=tmp_path / "cache")
    report = beir.evaluate_whole_docs(folder, settings)
    assert list(report["modes"]) == ["dense-whole", "lexical-whole"]
    assert all(m["overall"]["ndcg@10"] == 1.0 for m in report["modes"].values())
    assert len(list((tmp_path / "cache" / "beir").glob("*-whole.npy"))) == 1  # vectors cached


def test_not_a_beir_folder(tmp_path: Path):
    with pytest.raises(RagError, match="is not a BEIR dataset: corpus.jsonl is missing"):
        beir.load_beir(tmp_path)


def test_a_bad_corpus_line_is_named_by_its_number(tmp_path: Path):
    write_beir(tmp_path, {"d1": ("T", "text"), "d2": ("U", "more")}, {"q1": "text"}, [("q1", "d1")])
    with open(tmp_path / "corpus.jsonl", "a") as handle:
        handle.write('{"_id": "d3", "title": \n')
    with pytest.raises(RagError, match=r"corpus.jsonl:3: not valid JSON"):  # it said line 1
        beir.load_beir(tmp_path)


SCIFACT = REPO.parent / "shared" / "benchmarks" / "scifact"


@pytest.mark.beir
@pytest.mark.slow
@pytest.mark.skipif(not SCIFACT.is_dir(), reason="shared/benchmarks/scifact is not beside the repo")
def test_scifact_slice_with_the_real_model(tmp_path: Path):
    """20 judged queries against their relevant abstracts plus 400 random others."""
    rows = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    qrels = [line.split("\t") for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    judged = sorted({q for q, _, _ in qrels}, key=int)[:20]
    pairs = [(q, d) for q, d, _ in qrels if q in judged]
    wanted = {d for _, d in pairs}
    others = random.Random(1).sample([r for r in rows if r["_id"] not in wanted], 400)
    docs = {r["_id"]: (r["title"], r["text"]) for r in rows if r["_id"] in wanted} | {
        r["_id"]: (r["title"], r["text"]) for r in others}
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (SCIFACT / "queries.jsonl").read_text().splitlines()}
    folder = write_beir(tmp_path / "slice", docs, {q: queries[q] for q in judged}, pairs)
    report = beir.evaluate_beir(folder, Settings(cache_dir=tmp_path / "cache"), variants(("dense", "lexical")))
    assert report["queries"] == 20
    assert report["modes"]["dense"]["overall"]["ndcg@10"] > 0.6
    assert report["modes"]["lexical"]["overall"]["ndcg@10"] > 0.6
