"""Retrieval quality features on hand-made cases: fusion, near-duplicate collapsing,
max_per_doc, filters, highlights, reranking, abstention."""

import math

import numpy as np
import pytest

from rag.errors import BadQueryError
from rag.evaluation.calibrate import fit_logistic, held_back, rates
from rag.records import ChunkRecord
from rag.search.fusion import fuse
from rag.search.retriever import Retriever, near_duplicates
from rag.settings import Settings
from rag.stores.base import Ranking, ranking, top_rows
from rag.stores.local.store import open_local
from rag.types import Abstention, Filters, Fusion
from tests.helpers import REPO, FakeEmbedder

INF = -np.inf


# ------------------------------------------------------------------ fusion


def rankings(dense: np.ndarray, lexical: np.ndarray, depth: int = 1000) -> tuple[Ranking, Ranking]:
    """Each side's top `depth`, as the retriever hands them to fusion (BM25 0: not retrieved)."""
    return ranking(dense, depth), ranking(np.where(lexical > 0, lexical, INF), depth)


def test_rrf_by_hand():
    rows, fused = fuse(*rankings(np.array([0.9, 0.5, 0.1]), np.array([0.0, 4.0, 2.0])), Fusion("rrf", rrf_k=60))
    assert rows.tolist() == [1, 2, 0]
    assert fused.tolist() == pytest.approx([1 / 62 + 1 / 61, 1 / 63 + 1 / 62, 1 / 61])


def test_convex_by_hand():
    dense, lexical = np.array([0.9, 0.5, 0.1]), np.array([0.0, 4.0, 2.0])
    rows, fused = fuse(*rankings(dense, lexical), Fusion("convex", alpha=0.5))
    assert rows.tolist() == [1, 0, 2]  # row 0, no lexical match, scores the floor 0 there
    assert fused.tolist() == pytest.approx([0.75, 0.5, 0.25])
    rows, fused = fuse(*rankings(dense, lexical), Fusion("convex", alpha=1.0))
    assert rows.tolist() == [0, 1, 2]  # alpha 1 is dense alone


def test_a_candidate_missing_from_one_side_scores_the_floor_there():
    dense = (np.array([4, 7]), np.array([0.9, 0.6]))  # row 2 is lexical only, row 7 dense only
    lexical = (np.array([2, 4]), np.array([8.0, 2.0]))
    rows, fused = fuse(dense, lexical, Fusion("convex", alpha=0.5))
    by_row = dict(zip(rows.tolist(), fused.tolist()))
    # dense over the candidates [2, 4, 7] is [0, 0.9, 0.6] -> [0, 1, 2/3]; lexical [8, 2, 0] -> [1, 0.25, 0]
    assert by_row == pytest.approx({4: 0.5 * 1 + 0.5 * 0.25, 2: 0.5 * 0 + 0.5 * 1, 7: 0.5 * (2 / 3) + 0.5 * 0})


def test_a_lone_candidate_fuses_to_the_top_not_to_zero():
    """One candidate (a narrow filter): each side that retrieved it scores it as its best."""
    lone = (np.array([5]), np.array([0.35]))
    rows, fused = fuse(lone, (np.array([5]), np.array([0.9])), Fusion("convex", alpha=0.7))
    assert rows.tolist() == [5] and fused.tolist() == pytest.approx([1.0])
    rows, fused = fuse(lone, (np.array([], dtype=np.int64), np.array([])), Fusion("convex", alpha=0.7))
    assert fused.tolist() == pytest.approx([0.7])  # no lexical match: the floor there
    tied = (np.array([1, 2]), np.array([0.5, 0.5]))
    rows, fused = fuse(tied, (np.array([2]), np.array([3.0])), Fusion("convex", alpha=0.5))
    assert dict(zip(rows.tolist(), fused.tolist())) == pytest.approx({2: 1.0, 1: 0.5})


def test_fusion_depth_and_filtered_rows():
    dense = np.array([0.9, 0.8, 0.7, INF])  # row 3 filtered out
    lexical = np.array([0.0, 0.0, 5.0, INF])
    rows, _ = fuse(*rankings(dense, lexical, depth=1), Fusion("rrf", depth=1))
    assert rows.tolist() == [0, 2]  # each ranking's top 1 only; row 3 never appears


def test_top_rows_breaks_ties_by_row():
    assert top_rows(np.array([1.0, 3.0, 3.0, INF, 2.0]), 3).tolist() == [1, 2, 4]
    tied = np.array([1.0] * 10 + [2.0] + [1.0] * 50)  # ties at the cut go to the lower rows
    assert top_rows(tied, 5).tolist() == [10, 0, 1, 2, 3]


@pytest.mark.parametrize(("name", "fusion"), [("rrf60", Fusion("rrf", rrf_k=60)), ("convex0.7", Fusion("convex", alpha=0.7))])
def test_parse_fusion(name, fusion):
    assert Fusion.parse(name) == fusion and fusion.name == name


@pytest.mark.parametrize("name", ["rrf", "convex1.5", "magic"])
def test_bad_fusion_names(name):
    with pytest.raises(ValueError, match="unknown fusion"):
        Fusion.parse(name)


def test_bad_fusion_setting_is_refused():
    with pytest.raises(ValueError, match="unknown fusion 'best'"):
        Settings(fusion="best")


# ------------------------------------------------------------------ collapsing, filters


def chunk(doc: str, start: int, end: int) -> ChunkRecord:
    return ChunkRecord(f"{doc}-{start}", doc, None, start, end, "x" * (end - start), 1, 1, "h")


def test_near_duplicates_by_hand():
    assert near_duplicates(chunk("a", 0, 100), chunk("a", 40, 140), 0.5)  # share 60 of 100
    assert not near_duplicates(chunk("a", 0, 100), chunk("a", 80, 180), 0.5)  # share 20: neighbours
    assert not near_duplicates(chunk("a", 0, 100), chunk("b", 0, 100), 0.5)  # other document
    assert near_duplicates(chunk("a", 0, 100), chunk("a", 20, 60), 0.9)  # one inside the other


@pytest.fixture
def retriever(built: Settings) -> Retriever:
    return Retriever(open_local(built.index_dir), FakeEmbedder())


def test_results_never_hold_near_duplicates(retriever: Retriever):
    for mode in ("dense", "lexical", "hybrid"):
        hits = retriever.search("Russia China oil trade Arctic", 20, mode=mode)
        chunks = [retriever.store.chunks[h.row] for h in hits]
        assert not [(a.chunk_id, b.chunk_id) for i, a in enumerate(chunks) for b in chunks[i + 1:]
                    if near_duplicates(a, b, 0.5)]


def test_collapse_keeps_the_better_of_two_near_duplicates(retriever: Retriever):
    retriever.collapse_overlap = 0.01  # every overlap counts: adjacent chunks collapse
    hits = retriever.search("Russia China oil trade", 10, mode="dense", collapse=False)
    kept = retriever.search("Russia China oil trade", 10, mode="dense")
    first = retriever.store.chunks[hits[0].row]
    assert kept[0].row == hits[0].row
    assert all(not near_duplicates(first, retriever.store.chunks[h.row], 0.01) for h in kept[1:])


def test_max_per_doc(retriever: Retriever):
    hits = retriever.search("Russia China", 9, mode="hybrid", max_per_doc=2)
    docs = [retriever.store.chunks[h.row].doc_id for h in hits]
    assert len(hits) == 6 and all(docs.count(d) == 2 for d in set(docs))
    with pytest.raises(BadQueryError, match="max_per_doc must be at least 1, got 0"):
        retriever.search("x", 3, max_per_doc=0)


def test_source_and_section_filters(retriever: Retriever):
    hits = retriever.search("oil", 5, Filters(sources=["Foreign Policy"]), mode="hybrid")
    assert hits and {retriever.store.chunks[h.row].doc_id for h in hits} == {"fp-china-russia-axis"}
    hits = retriever.search("oil", 5, Filters(sections=["The Arctic", "North Korea"]), mode="dense")
    assert hits and {retriever.store.chunks[h.row].section for h in hits} <= {"The Arctic", "North Korea"}
    with pytest.raises(BadQueryError, match="unknown sources: Nope"):
        retriever.search("oil", 5, Filters(sources=["Nope"]))
    with pytest.raises(BadQueryError, match="unknown sections: Nowhere"):
        retriever.search("oil", 5, Filters(sections=["Nowhere"]))


def test_component_scores_per_mode(retriever: Retriever):
    q = "Russian oil imports"
    assert set(retriever.query(q, 3, mode="dense").passages[0].scores) == {"dense"}
    assert set(retriever.query(q, 3, mode="lexical").passages[0].scores) == {"lexical"}
    passage = retriever.query(q, 3, mode="hybrid").passages[0]
    assert set(passage.scores) == {"dense", "lexical", "fused"} and passage.score == passage.scores["fused"]


# ------------------------------------------------------------------ highlights


def test_highlights_are_sentences_inside_the_passage(retriever: Retriever):
    sentence = ("But China remained a key buyer—imports of Russian oil rose 49 percent to $76.4 billion that "
                "year, deepening Russia’s reliance on trade with China.")
    response = retriever.query(sentence, 5, mode="hybrid")
    holding = 0
    for p in response.passages:
        assert 1 <= len(p.highlights) <= 2
        text = retriever.store.documents[p.citation.doc_id].text
        for h in p.highlights:
            assert p.citation.char_start <= h.char_start < h.char_end <= p.citation.char_end
            assert text[h.char_start:h.char_end] in p.text
        if sentence in p.text:  # the question itself is a sentence here: cosine 1, the best
            holding += 1
            first = p.highlights[0] if len(p.highlights) == 1 else max(
                p.highlights, key=lambda h: text[h.char_start:h.char_end] == sentence)
            assert text[first.char_start:first.char_end] == sentence
    assert holding >= 1


# ------------------------------------------------------------------ reranker


class ShortestFirst:
    """A fake cross-encoder: the shorter the passage, the higher its score."""

    name = "fake-reranker"

    def score(self, question, texts):  # type: ignore[no-untyped-def]
        return [-float(len(t)) for t in texts]


def test_reranker_reorders_the_head(built: Settings):
    plain = Retriever(open_local(built.index_dir), FakeEmbedder())
    reranked = Retriever(open_local(built.index_dir), FakeEmbedder(), reranker=ShortestFirst(), rerank_depth=10)
    head = plain.search("Russia China oil", 10, mode="hybrid", collapse=False)
    after = reranked.search("Russia China oil", 5, mode="hybrid", collapse=False)
    lengths = {h.row: len(plain.store.chunks[h.row].text) for h in head}
    assert [h.row for h in after] == sorted(lengths, key=lambda r: (lengths[r], head.index(next(x for x in head if x.row == r))))[:5]
    assert all(h.components["rerank"] == -lengths[h.row] and "fused" in h.components for h in after)


# ------------------------------------------------------------------ abstention


def test_confidence_is_a_calibrated_logistic():
    a = Abstention(slope=20.0, offset=-10.0)
    assert a.confidence(0.5) == 0.5
    assert a.confidence(0.6) == pytest.approx(1 / (1 + math.exp(-2)))
    assert a.confidence(0.9) > a.confidence(0.6) > a.confidence(0.3)


def test_fit_logistic_recovers_a_known_boundary():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 4000)
    y = (rng.uniform(0, 1, 4000) < 1 / (1 + np.exp(-(10 * x - 4)))).astype(float)
    slope, offset = fit_logistic(x, y)
    assert slope == pytest.approx(10, rel=0.15) and -offset / slope == pytest.approx(0.4, abs=0.03)


def test_an_answering_sentence_is_evidence_and_none_is_neutral():
    a = Abstention(slope=10.0, offset=-5.0, missing_weight=0.0, answer_weight=2.0, answer_center=1.0)
    assert a.confidence(0.5, 0.0, None) == a.confidence(0.5, 0.0, 1.0) == 0.5  # no sentences: no evidence
    assert a.confidence(0.5, 0.0, 1.6) > 0.5 > a.confidence(0.5, 0.0, 0.4)


def test_rates_and_split():
    from rag.evaluation.retrieval import Question

    a = Abstention(slope=10.0, offset=-5.0, missing_weight=-10.0)  # boundary at cosine 0.5 with nothing missing
    questions = [Question(f"q{i}", "q", "t", answerable, [], [], topic) for i, (answerable, topic) in
                 enumerate([(True, None), (True, None), (False, "near"), (False, "off"), (False, "near")])]
    features = [(0.9, 0.0, None), (0.2, 0.0, None), (0.7, 0.0, None), (0.1, 0.0, None),
                (0.9, 1.0, None)]  # the last: all its specifics missing
    assert rates(a, features, questions) == {
        "answerable_flagged": 0.5, "answerable": 2, "unanswerable_flagged": 0.667, "unanswerable": 3,
        "near_topic_flagged": 0.5, "near_topic": 2, "off_topic_flagged": 1.0, "off_topic": 1}
    ids = [f"q{i}" for i in range(300)]
    assert 80 < sum(held_back(i) for i in ids) < 120 and held_back("q1") == held_back("q1")


def test_responses_carry_answerable_and_confidence(retriever: Retriever):
    response = retriever.query("Russia China oil", 3)
    assert 0 <= response.confidence <= 1 and response.answerable == (response.confidence >= 0.5)
    assert response.mode == "hybrid"


def test_no_response_says_a_sentence_twice_over_the_question_set(retriever: Retriever):
    """Overlapping chunks of a document are merged into one passage: across the whole seed
    set, no two passages of a response share a character of a document, every passage is
    still its document's slice, and k passages come back."""

    from rag.evaluation.retrieval import load_questions

    questions = load_questions(REPO / "eval" / "questions.jsonl", retriever.store)
    merged = 0
    for q in questions:
        response = retriever.query(q.question, k=5)
        assert len(response.passages) == 5
        spans = [(p.citation.doc_id, p.citation.char_start, p.citation.char_end) for p in response.passages]
        for i, (doc, a, b) in enumerate(spans):
            assert not any(doc == d and a < y and x < b for d, x, y in spans[i + 1:]), q.id
        for p in response.passages:
            assert retriever.store.documents[p.citation.doc_id].text[p.citation.char_start:p.citation.char_end] == p.text
            assert all(p.citation.char_start <= h.char_start < h.char_end <= p.citation.char_end for h in p.highlights)
        merged += sum(len(p.chunk_ids) > 1 for p in response.passages)
    assert merged  # the set does have overlapping neighbours to merge


def test_no_passage_is_never_answerable(retriever: Retriever, monkeypatch: pytest.MonkeyPatch):
    """A lexical query no chunk matches returns nothing: nothing to answer from, whatever
    the question's cosine to the corpus (found by probing: it said answerable at 0.79)."""
    from rag.evaluation.calibrate import Abstention

    monkeypatch.setattr(retriever, "abstention", Abstention(slope=0.0, offset=5.0))  # answerable to anything
    response = retriever.query("zzqxv wvutq", 3, mode="lexical")
    assert response.passages == [] and response.answer == []
    assert (response.answerable, response.confidence) == (False, 0.0)
