"""The eval harness end to end with the fake model: report shape, exact metric values on a
hand-built case, failure listing, reports on disk, and the CLI's regression gate."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag import service
from rag.cli import app
from rag.errors import RagError
from rag.evaluation.retrieval import evaluate, load_questions, variants
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.stores.local.store import open_local
from tests.helpers import REPO, FakeEmbedder

QUESTIONS = REPO / "eval" / "questions.jsonl"


@pytest.fixture
def retriever(built: Settings) -> Retriever:
    return Retriever(open_local(built.index_dir), FakeEmbedder())


def test_report_shape_over_every_mode(retriever: Retriever):
    report = evaluate(retriever, load_questions(QUESTIONS, retriever.store))
    assert report["answerable"] == 70 and report["questions"] == 87
    assert list(report["modes"]) == ["dense", "lexical", "hybrid"]
    for result in report["modes"].values():
        assert set(result["overall"]) == {"recall@1", "recall@3", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
        assert all(0 <= v <= 1 for v in result["overall"].values())
        assert result["overall"]["recall@1"] <= result["overall"]["recall@5"] <= result["overall"]["recall@10"]
        assert sum(v["n"] for v in result["by_type"].values()) == 70
        assert set(result["by_doc"]) == set(retriever.store.documents)
        assert result["latency_ms"]["p50"] <= result["latency_ms"]["p95"]


def test_exact_values_on_a_hand_built_question(retriever: Retriever, tmp_path: Path):
    index = retriever.store
    chunk = index.chunks[0]
    quote = chunk.text[10:60]
    row = {"id": "own", "question": chunk.text, "type": "fact/number", "answerable": True,
           "doc_ids": [chunk.doc_id], "gold_quotes": [{"doc_id": chunk.doc_id, "quote": quote}]}
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(row) + "\n")
    report = evaluate(retriever, load_questions(path, index), variants(("lexical",)))
    # asking with the chunk's own text puts that chunk first in BM25: every metric is 1,
    # and nDCG is 1 only if every other chunk holding the quote follows right after it
    overall = report["modes"]["lexical"]["overall"]
    assert overall["recall@1"] == 1.0 and overall["mrr@10"] == 1.0
    assert report["modes"]["lexical"]["failures"] == []


def test_failures_show_what_came_back(retriever: Retriever, tmp_path: Path):
    doc_id = "usip-china-russia-global-cooperation"
    row = {"id": "miss", "question": "zzz qqq", "type": "fact/number", "answerable": True,
           "doc_ids": [doc_id], "gold_quotes": [{"doc_id": doc_id, "quote": "Serbia sits on Europe’s periphery."}]}
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(row) + "\n")
    failures = evaluate(retriever, load_questions(path, retriever.store), variants(("dense",)))["modes"]["dense"]["failures"]
    assert [f["id"] for f in failures] == ["miss"]
    assert len(failures[0]["returned"]) == 3 and {"doc_id", "section", "text", "relevant"} <= set(failures[0]["returned"][0])


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "a"}', "not a valid question: question: Field required"),
    ('{"id": "a", "question": 123, "type": "t", "answerable": false}', "question: Input should be a valid string"),
    ('{"id": "a", "question": "q", "type": "t", "answerable": "yes"}', "answerable: Input should be a valid boolean"),
    ('{"id": "a", "question": "q", "type": "t", "answerable": true, "gold_quotes": [{"doc_id": "d"}]}',
     "gold_quotes.0.quote: Field required"),
    ('["a list"]', "not a valid question: the line: Input should be a valid dictionary"),
    ('{"id": "a", "question"', r"q.jsonl:1: not valid JSON"),
    ('{"id": "a", "question": "q", "type": "fact/number", "answerable": true, "gold_quotes": '
     '[{"doc_id": "nope", "quote": "x"}]}', "gold quote cites unknown document 'nope'"),
    ('{"id": "a", "question": "q", "type": "fact/number", "answerable": true, "gold_quotes": '
     '[{"doc_id": "fp-china-russia-axis", "quote": "not in the text at all"}]}', "gold quote not in the cleaned text"),
    ('{"id": "a", "question": "q", "type": "fact/number", "answerable": true, "gold_quotes": []}', "has no gold quote"),
])
def test_bad_question_files_are_refused(retriever: Retriever, tmp_path: Path, line: str, message: str):
    path = tmp_path / "q.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(RagError, match=message):
        load_questions(path, retriever.store)


def test_a_question_file_that_is_not_utf8_is_refused(retriever: Retriever, tmp_path: Path):
    (tmp_path / "q.jsonl").write_bytes(b'{"id": "a", "question": "caf\xe9"}\n')
    with pytest.raises(RagError, match="is not UTF-8 text"):
        load_questions(tmp_path / "q.jsonl", retriever.store)


def test_duplicate_ids_are_refused(retriever: Retriever, tmp_path: Path):
    row = '{"id": "a", "question": "q", "type": "unanswerable", "answerable": false}\n'
    (tmp_path / "q.jsonl").write_text(row * 2)
    with pytest.raises(RagError, match="duplicate question id 'a'"):
        load_questions(tmp_path / "q.jsonl", retriever.store)


def test_cli_writes_reports_and_gates(built: Settings, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RAG_INDEX_DIR", str(built.index_dir))
    monkeypatch.setenv("RAG_MODEL", "fake")
    monkeypatch.setattr(service, "embedder_from", lambda settings: FakeEmbedder())
    out = tmp_path / "reports"
    runner = CliRunner()
    ok = runner.invoke(app, ["eval", "--out-dir", str(out), "--mode", "lexical", "--gate-mode", "lexical",
                             "--min-recall-at-5", "0.1"])
    assert ok.exit_code == 0, ok.output
    assert "recall@5" in ok.stdout and "Recall@5 per document" in ok.stdout
    assert sorted(p.name for p in out.iterdir()) == ["seed.json", "seed.md", "seed.png"]
    assert (out / "seed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recall = json.loads((out / "seed.json").read_text())["modes"]["lexical"]["overall"]["recall@5"]
    gated = runner.invoke(app, ["eval", "--out-dir", str(out), "--mode", "lexical", "--gate-mode", "lexical",
                                "--min-recall-at-5", "1.01", "--min-mrr-at-10", "0"])
    assert gated.exit_code == 2
    assert gated.stderr.strip() == f"error: regression gate failed for mode lexical: recall@5 {recall:.3f} < 1.01"
    answerable_only = tmp_path / "answerable.jsonl"  # found by probing: no unanswerable question was a traceback
    answerable_only.write_text("".join(line + "\n" for line in QUESTIONS.read_text().splitlines()
                                       if '"answerable": true' in line))
    only = runner.invoke(app, ["eval", "--out-dir", str(out), "--mode", "lexical", "--questions", str(answerable_only),
                               "--conversations", str(tmp_path / "none.jsonl")])
    assert only.exit_code == 0, only.output
    assert "- of 0 unanswerable flagged" in only.stdout
    for args, message in ((["--limit", "0"], "Invalid value for '--limit'"),
                          (["--limit", "5"], "--limit applies to --beir only"),
                          (["--beir", str(tmp_path), "--gate-mode", "lexical", "--min-recall-at-5", "0.5"],
                           "recall@5 is not reported for BEIR")):  # it passed without a word
        refused = runner.invoke(app, ["eval", "--mode", "lexical", *args])
        assert refused.exit_code == 2 and message in refused.output, refused.output
    bad = runner.invoke(app, ["eval", "--mode", "fuzzy"])
    assert bad.exit_code == 2 and "unknown mode(s): fuzzy" in bad.stderr
    one_mode = runner.invoke(app, ["eval", "--out-dir", str(out), "--mode", "lexical"])  # no gate: no gate mode
    assert one_mode.exit_code == 0, one_mode.output
    no_mode = runner.invoke(app, ["eval", "--out-dir", str(out), "--mode", "lexical", "--min-mrr-at-10", "0.1"])
    assert no_mode.exit_code == 2
    assert no_mode.stderr.strip() == "error: --gate-mode hybrid is not among the evaluated modes"
