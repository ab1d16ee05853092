"""The seed question set is well formed and its gold quotes are in the cleaned texts."""

import json
from collections import Counter

from rag.ingest.clean import clean
from rag.ingest.corpus import load_corpus
from tests.helpers import CORPUS, REPO

TYPES = {"fact/number", "who/when/where", "why/how", "multi-passage", "compare", "unanswerable"}
ROWS = [json.loads(line) for line in (REPO / "eval" / "questions.jsonl").read_text().splitlines() if line.strip()]
TEXTS = {d.doc_id: clean(d.text, d.metadata["title"]) for d in load_corpus(CORPUS)}


def test_ids_are_unique_and_fields_complete():
    ids = [r["id"] for r in ROWS]
    assert len(ids) == len(set(ids))
    for r in ROWS:
        assert r["type"] in TYPES and isinstance(r["answerable"], bool) and r["question"].strip()
        assert (r["type"] == "unanswerable") == (not r["answerable"])


def test_every_gold_quote_is_in_its_cleaned_document_exactly_once():
    for r in ROWS:
        for g in r["gold_quotes"]:
            assert TEXTS[g["doc_id"]].text.count(g["quote"]) == 1, (r["id"], g["quote"])
            assert g["doc_id"] in r["doc_ids"]


def test_size_and_spread():
    answerable = [r for r in ROWS if r["answerable"]]
    assert len(answerable) >= 60 and len(ROWS) - len(answerable) >= 15
    assert all(r["gold_quotes"] for r in answerable)
    per_doc = Counter(d for r in answerable for d in r["doc_ids"])
    assert set(per_doc) == set(TEXTS) and min(per_doc.values()) >= 15
    assert {r["type"] for r in answerable} == TYPES - {"unanswerable"}
    assert all(len(r["doc_ids"]) >= 2 for r in answerable if r["type"] == "compare")


def test_questions_reach_most_sections():
    reached: dict[str, set[str | None]] = {d: set() for d in TEXTS}
    for r in ROWS:
        for g in r["gold_quotes"]:
            doc = TEXTS[g["doc_id"]]
            start = doc.text.index(g["quote"])
            reached[g["doc_id"]] |= {s.title for s in doc.sections if s.char_start <= start < s.char_end}
    for doc_id, doc in TEXTS.items():
        titled = {s.title for s in doc.sections if s.title}
        assert len(reached[doc_id] & titled) >= len(titled) - 2, doc_id


def test_questions_do_not_copy_their_answer():
    for r in ROWS:
        for g in r["gold_quotes"]:
            assert g["quote"].lower() not in r["question"].lower()
