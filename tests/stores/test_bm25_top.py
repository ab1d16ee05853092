"""Bm25Index.top (MaxScore, rag.stores.local.bm25_top) against the exhaustive path it replaces
in LocalStore.lexical: every posting scored by scores(), then the top `depth` of the rows with
a score > 0 that the filter mask allows. Same rows in the same order, same scores bit for bit,
on a random Zipf-like corpus and on the bundled corpus, with each of the search's ways forced
in turn (the cost constants pick between them; a small collection would always take the
exhaustive one)."""

import json
import re

import numpy as np
import pytest

import rag.stores.local.bm25_top as bm25_top
from rag.records import ChunkRecord, DocumentRecord
from rag.stores.base import ranking
from rag.stores.local.bm25 import Bm25Index, Bm25Writer, max_weights
from rag.stores.local.store import open_local
from rag.stores.local.writer import LocalWriter
from rag.stores.manifest import new_manifest
from rag.types import Filters
from tests.helpers import CORPUS

# monkeypatched constants of rag.stores.local.bm25_top for each way through it
NEVER = 1e18
MODES = {
    "as configured": {},  # a collection this small takes the exhaustive path
    "maxscore": {"DENSE_ROWS": 0, "ROW_NS": NEVER},
    "binary searches": {"DENSE_ROWS": 0, "ROW_NS": NEVER, "ADD_NS": NEVER},  # allowed rows looked up too
    "whole-list adds": {"DENSE_ROWS": 0, "ROW_NS": NEVER, "ADD_NS": 0, "MERGE_NS": NEVER},  # and eager lookaheads
    "late lookahead": {"DENSE_ROWS": 0, "ROW_NS": NEVER, "MERGE_NS": 0, "LOOKAHEAD_ROWS": 0},  # none while merging
    "exhaustive last step": {"DENSE_ROWS": 0, "ROW_NS": 0, "ADD_NS": 0, "MERGE_NS": 0},
    "exhaustive fallback": {"DENSE_ROWS": 0, "ROW_NS": 0, "ADD_NS": 0},
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in MODES[request.param].items():
        monkeypatch.setattr(bm25_top, name, value)
    return str(request.param)


def exhaustive(index: Bm25Index, query: str, depth: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """What LocalStore.lexical returned before top()."""
    scores = index.scores(query)
    matched = np.flatnonzero(scores > 0 if allowed is None else (scores > 0) & allowed)
    rows, found = ranking(scores[matched], depth)
    return matched[rows], found


def assert_same(index: Bm25Index, query: str, depth: int, allowed: np.ndarray | None) -> int:
    expected_rows, expected_scores = exhaustive(index, query, depth, allowed)
    rows, scores = index.top(query, depth, allowed)
    assert rows.dtype == np.int64 and scores.dtype == np.float32, (query, depth)
    np.testing.assert_array_equal(rows, expected_rows, err_msg=f"{query!r} at depth {depth}")
    np.testing.assert_array_equal(scores, expected_scores, err_msg=f"{query!r} at depth {depth}")
    return len(rows)


def made_up_words(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct made-up words of 4-8 letters (no stopword, no single letter: tokenize() keeps them)."""
    words: dict[str, None] = {}
    letters = np.array(list("bcdfghjklmnpqrstvwxz"))
    vowels = np.array(list("aeiou"))
    while len(words) < n:
        syllables = rng.integers(2, 5)
        words["".join(str(rng.choice(letters)) + str(rng.choice(vowels)) for _ in range(syllables))] = None
    return list(words)


@pytest.fixture(scope="module")
def zipf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bm25Index, list[str], list[str]]:
    """3,000 texts of 5-80 words drawn from 1,500 words with Zipf frequencies (s = 1.1), so a few
    words are in most texts and most words in a handful; written in many spills."""
    rng = np.random.default_rng(20240611)
    words = made_up_words(rng, 1500)
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    texts = [" ".join(rng.choice(words, size=int(rng.integers(5, 81)), p=p / p.sum())) for _ in range(3000)]
    texts[17] = texts[18] = texts[400]  # identical texts: tied scores, broken by the lower row
    folder = tmp_path_factory.mktemp("zipf") / "bm25"
    writer = Bm25Writer(folder, spill_postings=5000)
    writer.add(texts[:1000])
    writer.add(texts[1000:])
    writer.finish()
    return Bm25Index(folder, len(texts)), words, texts


def zipf_queries(words: list[str], rng: np.random.Generator) -> list[str]:
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    drawn = [" ".join(rng.choice(words, size=int(rng.integers(1, 13)), p=p / p.sum())) for _ in range(30)]
    rare = [" ".join(rng.choice(words[500:], size=int(rng.integers(1, 5)))) for _ in range(6)]
    return [
        *drawn, *rare,
        f"{words[3]} {words[40]} {words[3]} {words[900]} {words[3]}",  # a repeated token counts again
        f"{words[700]} {words[700]}",
        f"{words[0]}",  # in most texts
        f"{words[0]} {words[1]} {words[2]}",  # only very common words
        f"zzqxv {words[12]} qqqzz",  # unknown tokens
        "zzqxv qqqzz",  # nothing known
        "the and of with",  # only stopwords: no tokens
        "",
    ]


DEPTHS = (1, 10, 100, 5000)  # 5000: more than any query matches


def test_top_equals_the_exhaustive_path_on_a_zipf_corpus(zipf, mode):
    index, words, _ = zipf
    rng = np.random.default_rng(7)  # the same queries and masks in every mode
    rows = index.rows
    masks = {
        "none": None,
        "dense": rng.random(rows) < 0.7,
        "sparse": rng.random(rows) < 0.01,
        "one doc's rows": np.isin(np.arange(rows), [17, 18, 19, 20, 400]),
        "nothing": np.zeros(rows, dtype=bool),
    }
    returned = 0
    for query in zipf_queries(words, rng):
        for mask in masks.values():
            for depth in DEPTHS:
                returned += assert_same(index, query, depth, mask)
    assert returned > 10_000  # the comparisons were not all of empty results


def test_a_tie_cut_by_depth_goes_to_the_lower_rows(zipf, mode):
    index, _, texts = zipf
    query = texts[400]  # rows 17, 18 and 400 hold the same text: they tie on it
    rows, scores = exhaustive(index, query, 10_000, None)
    at = rows.tolist().index(17)
    assert rows[at:at + 3].tolist() == [17, 18, 400] and scores[at] == scores[at + 1] == scores[at + 2]
    for depth in (at + 1, at + 2, at + 3):  # the cut falls inside the tie, then after it
        assert_same(index, query, depth, None)
    assert index.top(query, at + 2, None)[0][-2:].tolist() == [17, 18]


def test_the_bounds_written_with_the_index_are_each_terms_highest_weight(zipf):
    index, _, _ = zipf
    np.testing.assert_array_equal(index._max_weights, max_weights(index._ptr, np.asarray(index._weights)))
    assert np.all(index._max_weights > 0)


def test_an_index_written_before_max_weights_existed_computes_them_on_load(tmp_path):
    folder = tmp_path / "bm25"
    writer = Bm25Writer(folder, spill_postings=50)
    texts = ["oil gas pipeline", "gas gas gas exports", "wheat grain", "oil exports to china"] * 20
    writer.add(texts)
    writer.finish()
    written = np.load(folder / "max_weights.npy")
    (folder / "max_weights.npy").unlink()
    old = Bm25Index(folder, len(texts))
    np.testing.assert_array_equal(old._max_weights, written)
    np.save(folder / "max_weights.npy", written[:-1])
    with pytest.raises(ValueError, match="disagree"):
        Bm25Index(folder, len(texts))


def test_max_weights_skips_terms_without_postings():
    ptr = np.array([0, 2, 2, 5, 5, 6])
    weights = np.array([0.5, 0.25, 1.0, 3.0, 2.0, 0.125], dtype=np.float32)
    assert max_weights(ptr, weights).tolist() == [0.5, 0.0, 3.0, 0.0, 0.125]
    assert max_weights(np.array([0]), np.zeros(0, dtype=np.float32)).tolist() == []


def paragraphs() -> list[str]:
    """The bundled corpus split at blank lines (its repeated paragraphs tie)."""
    found = []
    for path in sorted(CORPUS.glob("*.txt")):
        found += [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
    return found


def test_top_equals_the_exhaustive_path_on_the_bundled_corpus(tmp_path, mode):
    texts = paragraphs()
    assert len(texts) > 100
    writer = Bm25Writer(tmp_path / "bm25", spill_postings=1000)
    writer.add(texts)
    writer.finish()
    index = Bm25Index(tmp_path / "bm25", len(texts), in_memory=True)
    rng = np.random.default_rng(3)
    queries = ["China Russia energy pipeline", "Russia's war in Ukraine", "Xi Jinping Putin summit summit",
               "the China-Russia axis takes shape", "sanctions oil gas trade yuan ruble", "Arctic shipping routes",
               json.dumps(texts[5][:80])]
    for _ in range(20):  # a few words of a paragraph, the way a user quotes one
        words = texts[int(rng.integers(len(texts)))].split()
        start = int(rng.integers(max(1, len(words) - 8)))
        queries.append(" ".join(words[start:start + int(rng.integers(2, 9))]))
    masks = [None, rng.random(len(texts)) < 0.5, rng.random(len(texts)) < 0.05]
    returned = 0
    for query in queries:
        for mask in masks:
            for depth in (1, 5, 20, 1000):
                returned += assert_same(index, query, depth, mask)
    assert returned > 500


def test_the_local_stores_lexical_search_is_top_with_its_filters(tmp_path, mode):
    """LocalStore.lexical goes through top(), the filters pushed down as its mask, and the
    build lists max_weights.npy among its checksummed files."""
    texts = paragraphs()
    n, dim = len(texts), 8
    vectors = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    docs = [DocumentRecord(f"doc-{d}", {"title": f"Doc {d}", "source": f"src-{d % 3}"}, "x" * 10_000, [], f"h{d}")
            for d in range(n // 10 + 1)]
    chunks = [ChunkRecord(f"c{i}", f"doc-{i // 10}", "Intro" if i % 2 else None, (i % 10) * 100,
                          (i % 10) * 100 + 50, text, 10, 12, f"e{i}") for i, text in enumerate(texts)]
    with LocalWriter(tmp_path / "index", dim) as writer:
        writer.add_documents(docs)
        writer.add_chunks(chunks, vectors)
        writer.add_sentences([], np.zeros((0, dim), dtype=np.float32))
        writer.commit(new_manifest(model={"name": "fake", "dimension": dim}, counts={"documents": len(docs)}))
    store = open_local(tmp_path / "index")
    assert "bm25/max_weights.npy" in store.manifest["files"]
    for filters in (Filters(), Filters(sources=["src-1"]), Filters(doc_ids=["doc-3", "doc-7"]),
                    Filters(sources=["src-2"], sections=["Intro"])):
        allowed = store._allowed(filters)
        for query in ("China Russia energy pipeline", "Putin Xi summit summit", "sanctions", "war in Ukraine"):
            for depth in (1, 10, 50):
                rows, scores = store.lexical(query, depth, filters)
                expected_rows, expected_scores = exhaustive(store._lexical, query, depth, allowed)
                np.testing.assert_array_equal(rows, expected_rows)
                np.testing.assert_array_equal(scores, expected_scores)
    store.close()
