"""Retrieval quality on the seed question set, per retrieval mode, side by side.

A question's gold quotes are exact substrings of its documents' cleaned text; their spans
are found once, when the set is loaded. A passage is relevant when it contains a gold
quote or its span overlaps one. Per mode, over the answerable questions:
    Recall@k   share of a question's gold quotes found in the top k (k = 1, 3, 5, 10)
    MRR@10     reciprocal rank of the first relevant passage
    nDCG@10    binary relevance; the ideal ranking holds every relevant chunk
and the same broken down per document and per question type, plus query latency
(p50/p95, question embedding included). A question "fails" when some gold quote is not
in its top 5; failures are listed with what came back instead.

Example:
    report = evaluate(retriever, load_questions(Path("eval/questions.jsonl"), store))
    report["modes"]["dense"]["overall"]["recall@5"]

Left out: judging answerable=false questions (nothing to retrieve; abstention is scored
by its own calibration) and graded relevance.
"""

import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from rag.errors import RagError
from rag.evaluation.metrics import latency_summary, mrr_at_k, ndcg_at_k, recall_at_k
from rag.search.retriever import Retriever
from rag.stores.base import ChunkStore
from rag.types import MODES, Fusion, Mode

RECALL_KS = (1, 3, 5, 10)
DEPTH = 10
FAIL_AT = 5


# the fusions `rag eval --sweep` compares with the configured one
SWEEP = ("rrf10", "rrf30", "rrf60", "rrf100", "convex0.3", "convex0.4", "convex0.5", "convex0.6",
         "convex0.7", "convex0.8")


@dataclass(frozen=True)
class Variant:
    """One column of a report: a mode, and for hybrid the fusion it uses."""

    label: str
    mode: Mode
    fusion: Fusion | None = None


def variants(modes: tuple[Mode, ...], fusions: tuple[str, ...] = (), depth: int = 1000) -> list[Variant]:
    """variants(("dense", "hybrid"), ("convex0.5",)) -> dense, hybrid (configured fusion),
    hybrid-convex0.5"""
    out = [Variant(m, m) for m in modes]
    out += [Variant(f"hybrid-{name}", "hybrid", Fusion.parse(name, depth)) for name in fusions]
    return out


@dataclass(frozen=True)
class GoldQuote:
    doc_id: str
    quote: str
    char_start: int
    char_end: int


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    type: str
    answerable: bool
    doc_ids: list[str]
    gold: list[GoldQuote]
    topic: str | None = None  # unanswerable ones: "near" (about the corpus's subjects) or "off"


class GoldRow(BaseModel):
    doc_id: str
    quote: str = Field(min_length=1)


class QuestionRow(BaseModel):
    """A line of a question set, as written (extra keys, such as `note`, are kept out)."""
    model_config = ConfigDict(extra="ignore")
    id: StrictStr | StrictInt
    question: str = Field(min_length=1)
    type: str
    answerable: StrictBool
    doc_ids: list[str] = []
    gold_quotes: list[GoldRow] = []
    topic: str | None = None


Row = TypeVar("Row", bound=BaseModel)


def valid_row(model: type[Row], row: Any, where: str) -> Row:
    """A parsed JSONL line as `model`, or a RagError naming the first bad field:
    "q.jsonl:3: not a valid question: answerable: Input should be a valid boolean"."""
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "the line"
        raise RagError(f"{where}: {field}: {first['msg']}") from None


def jsonl_rows(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line; a RagError naming the line if
    one is not JSON, or the file if it cannot be read."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RagError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RagError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RagError(f"{path}:{number}: not valid JSON ({exc})") from exc


def load_questions(path: Path, store: ChunkStore) -> list[Question]:
    """Read the JSONL set and locate each gold quote in its document's cleaned text."""
    questions, seen = [], set()
    for number, row in jsonl_rows(path, "question set"):
        valid = valid_row(QuestionRow, row, f"{path}:{number}: not a valid question")
        qid = str(valid.id)
        gold = [locate(g.doc_id, g.quote, store) for g in valid.gold_quotes]
        question = Question(qid, valid.question, valid.type, valid.answerable, valid.doc_ids, gold, valid.topic)
        if qid in seen:
            raise RagError(f"{path}:{number}: duplicate question id '{qid}'")
        if question.answerable and not gold:
            raise RagError(f"{path}:{number}: answerable question '{qid}' has no gold quote")
        seen.add(qid)
        questions.append(question)
    return questions


def locate(doc_id: str, quote: str, store: ChunkStore) -> GoldQuote:
    document = store.documents.get(doc_id)
    if document is None:
        raise RagError(f"gold quote cites unknown document '{doc_id}'")
    start = document.text.find(quote)
    if start < 0:
        raise RagError(f"gold quote not in the cleaned text of {doc_id}: {quote[:60]!r}")
    return GoldQuote(doc_id, quote, start, start + len(quote))


def quotes_in(doc_id: str, start: int, end: int, gold: list[GoldQuote]) -> set[str]:
    """Indices (as strings) of the gold quotes that span [start, end) of `doc_id` contains or
    overlaps: quotes_in("d", 0, 10, [GoldQuote("d", "x", 9, 12)]) == {"0"}."""
    return {str(i) for i, g in enumerate(gold) if g.doc_id == doc_id and start < g.char_end and g.char_start < end}


def covered_quotes(store: ChunkStore, row: int, gold: list[GoldQuote]) -> set[str]:
    """Gold quotes that chunk `row` contains or overlaps."""
    chunk = store.chunks[row]
    return quotes_in(chunk.doc_id, chunk.char_start, chunk.char_end, gold)


def relevant_chunks(store: ChunkStore, question: Question) -> int:
    """How many chunks hold part of a gold quote: the ideal ranking's length for nDCG."""
    cited = {g.doc_id for g in question.gold}
    return sum(1 for doc_id in cited for row in store.rows_of(doc_id) if covered_quotes(store, row, question.gold))


def _scores(retriever: Retriever, question: Question, variant: Variant, relevant_rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    hits = retriever.search(question.question, DEPTH, mode=variant.mode, fusion=variant.fusion)
    ms = (time.perf_counter() - started) * 1000
    store = retriever.store
    covered = [covered_quotes(store, hit.row, question.gold) for hit in hits]
    flags = [bool(c) for c in covered]
    metrics = {f"recall@{k}": recall_at_k(covered, len(question.gold), k) for k in RECALL_KS}
    metrics["mrr@10"] = mrr_at_k(flags, DEPTH)
    metrics["ndcg@10"] = ndcg_at_k(flags, relevant_rows, DEPTH)
    returned = [{"chunk_id": c.chunk_id, "doc_id": c.doc_id, "section": c.section, "relevant": f, "text": c.text[:160]}
                for c, f in zip((store.chunks[h.row] for h in hits[:3]), flags[:3])]
    return {"metrics": metrics, "ms": ms, "returned": returned}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(r[key] for r in rows), 4) for key in rows[0]} if rows else {}


def highlight_hits(retriever: Retriever, questions: list[Question], k: int = 5) -> dict[str, Any]:
    """Over the top-k passages (default mode) that hold a gold quote: how often the first
    highlight overlaps one."""
    hits = total = 0
    for q in questions:
        if not q.answerable:
            continue
        for p in retriever.query(q.question, k).passages:
            doc_id = p.citation.doc_id
            if p.highlights and quotes_in(doc_id, p.citation.char_start, p.citation.char_end, q.gold):
                total += 1
                h = p.highlights[0]
                hits += bool(quotes_in(doc_id, h.char_start, h.char_end, q.gold))
    return {"relevant_passages": total, "first_highlight_on_gold": round(hits / total, 4) if total else None}


def covers_quote(spans: list[tuple[str, int, int]], gold: list[GoldQuote], share: float = 0.5) -> bool:
    """Whether (doc_id, start, end) spans cover at least `share` of some gold quote's characters."""
    for g in gold:
        covered = sum(max(0, min(end, g.char_end) - max(start, g.char_start))
                      for doc_id, start, end in spans if doc_id == g.doc_id)
        if covered >= share * (g.char_end - g.char_start):
            return True
    return False


def answer_hits(retriever: Retriever, questions: list[Question], k: int = 5) -> dict[str, Any]:
    """Over the answerable questions (default mode, top k): the share whose answer sentences
    (`QueryResponse.answer`, what the extractive chat answer says) cover half of a gold
    quote or more, and the share whose first sentence does."""
    answered = first = 0
    misses = []
    answerable = [q for q in questions if q.answerable]
    for q in answerable:
        answer = retriever.query(q.question, k).answer
        spans = [(s.doc_id, s.char_start, s.char_end) for s in answer]
        answered += covers_quote(spans, q.gold)
        first += covers_quote(spans[:1], q.gold)
        if not covers_quote(spans, q.gold):
            misses.append({"id": q.id, "question": q.question, "answer": " ".join(s.text for s in answer)[:300]})
    n = len(answerable)
    return {"questions": n, "contains_gold": round(answered / n, 4) if n else None,
            "first_sentence_gold": round(first / n, 4) if n else None, "misses": misses}


def evaluate(retriever: Retriever, questions: list[Question], columns: list[Variant] | None = None) -> dict[str, Any]:
    answerable = [q for q in questions if q.answerable]
    if not answerable:
        raise RagError("the question set has no answerable question")
    report: dict[str, Any] = {"questions": len(questions), "answerable": len(answerable),
                              "build_id": retriever.store.build_id, "modes": {}}
    relevant = {q.id: relevant_chunks(retriever.store, q) for q in answerable}  # the same for every variant
    for variant in columns or variants(MODES):
        runs = {q.id: _scores(retriever, q, variant, relevant[q.id]) for q in answerable}
        times = [r["ms"] for r in runs.values()]
        by_doc: dict[str, list[dict[str, float]]] = {}
        by_type: dict[str, list[dict[str, float]]] = {}
        for q in answerable:
            for doc_id in q.doc_ids:
                by_doc.setdefault(doc_id, []).append(runs[q.id]["metrics"])
            by_type.setdefault(q.type, []).append(runs[q.id]["metrics"])
        report["modes"][variant.label] = {
            "overall": _mean([r["metrics"] for r in runs.values()]),
            "by_doc": {d: {"n": len(v), **_mean(v)} for d, v in sorted(by_doc.items())},
            "by_type": {t: {"n": len(v), **_mean(v)} for t, v in sorted(by_type.items())},
            "latency_ms": latency_summary(times),
            "failures": [
                {"id": q.id, "question": q.question, "gold": [g.quote for g in q.gold],
                 f"recall@{FAIL_AT}": runs[q.id]["metrics"][f"recall@{FAIL_AT}"],
                 "returned": runs[q.id]["returned"]}
                for q in answerable if runs[q.id]["metrics"][f"recall@{FAIL_AT}"] < 1.0
            ],
        }
    return report
