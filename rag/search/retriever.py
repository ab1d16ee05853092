"""Answer a question with ranked, cited passages from a loaded index.

The searching is the store's (`rag.stores`: rankings with filters pushed down); this
module turns rankings into passages. Modes:
- "dense": cosine similarity of the question's embedding to the chunks';
- "lexical": BM25;
- "hybrid": each side's top `fusion.depth` fused (`rag.search.fusion`; RRF or a convex
  combination, set by `fusion`); only the top few become hits.
Each passage reports the component scores its mode computed (`scores`).

A result never holds two near-duplicates: chunks of one document whose shared span is at
least `collapse_overlap` (half) of the shorter one; the lower-ranked one is dropped.
Neighbours that share only their ~40-token overlap both stay: they carry different
content (collapsing every overlap cost 9 points of dense Recall@10 on the seed set).
`max_per_doc` caps passages per document. Filters: document ids, document `source`,
chunk `section`. An optional reranker (a cross-encoder) reorders the top `rerank_depth`
candidates before that.

Every response says whether the corpus seems to hold an answer: `confidence` is a
logistic function of the best dense cosine similarity, the specifics the passages miss
and the answer's lead-sentence score (rag.evaluation.calibrate, calibrated on the seed questions with
`rag eval --calibrate`), 0 when no passage comes back, and `answerable` is
`confidence >= 0.5`. The passages themselves (text, citation, highlights, answer
sentences) are assembled by `rag.search.passages.Passages`.

Example:
    retriever = Retriever(open_local(Path("index")), load_embedder("all-MiniLM-L6-v2"))
    retriever.query("What was China-Russia trade worth in 2024?", k=3).passages[0].highlights

Left out: query expansion, and highlights below sentence level.
"""

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from itertools import chain, islice
from typing import Any, Protocol

import numpy as np

from rag.encoders.base import Embedder
from rag.errors import BadQueryError
from rag.lexical import tokenize
from rag.records import ChunkRecord
from rag.schema import Citation, QueryResponse
from rag.search import answer as answers
from rag.search import conversation
from rag.search.fusion import MISSING_SCORE, fuse
from rag.search.passages import Passages, candidates, group_hits
from rag.search.sides import both_sides
from rag.stores.base import FILTER_FIELDS, ChunkStore, Ranking
from rag.text import is_unicode_text
from rag.types import DEFAULT_FUSION, MODES, Abstention, Filters, Fusion, Hit, Laps, Mode, lap


class Reranker(Protocol):
    name: str

    def score(self, question: str, texts: Sequence[str]) -> Sequence[float]: ...


class Retriever:
    def __init__(self, store: ChunkStore, embedder: Embedder, max_k: int = 50, default_mode: Mode = "hybrid",
                 fusion: Fusion = DEFAULT_FUSION, abstention: Abstention = Abstention(),
                 reranker: Reranker | None = None, rerank_depth: int = 20, collapse_overlap: float = 0.5,
                 highlight_lexical_weight: float = 0.3, max_filter_values: int = 100):
        self.store, self.embedder, self.max_k = store, embedder, max_k
        self.default_mode, self.fusion, self.abstention = default_mode, fusion, abstention
        self.reranker, self.rerank_depth = reranker, rerank_depth
        self.collapse_overlap = collapse_overlap
        self.passages = Passages(store, highlight_lexical_weight)
        self.max_filter_values = max_filter_values

    # ------------------------------------------------------------------ answers

    def query(self, question: str, k: int = 5, filters: Filters = Filters(), mode: Mode | None = None,
              max_per_doc: int | None = None, query_vector: np.ndarray | None = None,
              laps: Laps | None = None, history: Sequence[str] = ()) -> QueryResponse:
        """`history`: the earlier user turns, oldest first (a follow-up is read with them,
        rag.search.conversation). `laps`, when given, collects the milliseconds of each step (`rag bench serve`)."""
        with self._consistent():
            return self._query(question, k, filters, mode, max_per_doc, query_vector, laps, history)

    def _consistent(self) -> Any:
        """A live collection's lock (rag.stores.local.live): a query sees the collection before a write or
        after it, never between, and the rows it found are still there when it reads them."""
        return getattr(self.store, "lock", nullcontext())

    def _query(self, question: str, k: int, filters: Filters, mode: Mode | None, max_per_doc: int | None,
               query_vector: np.ndarray | None, laps: Laps | None, history: Sequence[str]) -> QueryResponse:
        started = time.perf_counter()
        mode = mode or self.default_mode
        self.validate(question, k, filters, mode, max_per_doc, history)
        if query_vector is None:  # every mode needs it: confidence and highlights use it
            query_vector = self.embedder.encode([question])[0]
            lap(laps, "encode")
        turn = conversation.resolve(question, query_vector, history, self._encode)
        query_vector = turn.vector
        ranked, best = self._ranked(turn.text, k, filters, mode, query_vector, None, True, laps)
        groups = group_hits(ranked, self.store.chunks, k, max_per_doc)
        terms = set(tokenize(question))
        sentences = [self.passages.sentences(g) for g in groups]
        passages = [self.passages.passage(rank, g, s, query_vector, terms)
                    for rank, (g, s) in enumerate(zip(groups, sentences), start=1)]
        lap(laps, "passages and highlights")
        answer = self.passages.answer(question, query_vector, groups, sentences)
        lap(laps, "answer sentences")
        # dense and hybrid rankings hold the best dense score already; lexical needs the product
        missing = answers.missing_share(question, [p.text for p in passages])
        confidence = self.abstention.confidence(
            best if best is not None else self.best_cosine(query_vector, filters), missing,
            answer[0].score if answer else None) if passages else 0.0  # nothing to answer from
        took_ms = (time.perf_counter() - started) * 1000
        response = QueryResponse(question=question, mode=mode, answerable=confidence >= 0.5,
                                 confidence=round(confidence, 4), passages=passages, took_ms=round(took_ms, 3),
                                 answer=answer)
        lap(laps, "confidence and response")
        return response

    def search(self, question: str, k: int = 5, filters: Filters = Filters(), mode: Mode | None = None,
               query_vector: np.ndarray | None = None, max_per_doc: int | None = None,
               fusion: Fusion | None = None, collapse: bool = True, history: Sequence[str] = ()) -> list[Hit]:
        """Top-k chunks, best first. `query_vector` lets a batching caller pass its own."""
        mode = mode or self.default_mode
        with self._consistent():
            return self._search(question, k, filters, mode, query_vector, max_per_doc, fusion, collapse, history)

    def _search(self, question: str, k: int, filters: Filters, mode: Mode, query_vector: np.ndarray | None,
                max_per_doc: int | None, fusion: Fusion | None, collapse: bool, history: Sequence[str]) -> list[Hit]:
        self.validate(question, k, filters, mode, max_per_doc, history)
        if history:
            if query_vector is None:
                query_vector = self.embedder.encode([question])[0]
            turn = conversation.resolve(question, query_vector, history, self._encode)
            question, query_vector = turn.text, turn.vector
        return self._select(self._ranked(question, k, filters, mode, query_vector, fusion, collapse)[0],
                            k, collapse, max_per_doc)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts)

    def _ranked(self, question: str, k: int, filters: Filters, mode: Mode, query_vector: np.ndarray | None,
                fusion: Fusion | None, collapse: bool, laps: Laps | None = None) -> tuple[Iterable[Hit], float | None]:
        """Candidates best first, before near-duplicates and max_per_doc are applied, and
        the best dense score when the mode computed one. Dense and lexical search their top
        `depth` (enough for near-duplicates and max_per_doc to drop some, and for the
        reranker); hybrid fuses each side's `fusion.depth` and makes hits as they are read."""
        depth = min(self.store.count(), max(4 * k, 40, self.rerank_depth if self.reranker else 0)) \
            if collapse or self.reranker else k
        if mode != "lexical" and query_vector is None:
            query_vector = self.embedder.encode([question])[0]
        best: float | None = None
        hits: Iterable[Hit]
        lap(laps, "other")
        if mode == "lexical":
            hits = _hits("lexical", self.store.lexical(question, depth, filters))
            lap(laps, "lexical search")
        elif mode == "dense":
            assert query_vector is not None
            found = self.store.dense(query_vector, depth, filters)
            hits, best = _hits("dense", found), (float(found[1][0]) if len(found[1]) else None)
            lap(laps, "dense search")
        else:
            assert query_vector is not None
            hits, best = self._hybrid(question, query_vector, filters, fusion or self.fusion, laps)
        return (self._rerank(question, hits) if self.reranker is not None else hits), best

    def validate(self, question: str, k: int, filters: Filters, mode: str, max_per_doc: int | None = None,
                 history: Sequence[str] = ()) -> None:
        if not question.strip():
            raise BadQueryError("question must not be empty")
        if not is_unicode_text(question):
            raise BadQueryError("question is not valid Unicode text (it holds a lone surrogate)")
        for i, turn in enumerate(history):
            if not isinstance(turn, str) or not turn.strip():
                raise BadQueryError(f"history[{i}] must be a non-empty string (an earlier user turn)")
            if not is_unicode_text(turn):
                raise BadQueryError(f"history[{i}] is not valid Unicode text (it holds a lone surrogate)")
        if not 1 <= k <= self.max_k:
            raise BadQueryError(f"k must be between 1 and {self.max_k}, got {k}")
        if mode not in MODES:
            raise BadQueryError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        if max_per_doc is not None and max_per_doc < 1:
            raise BadQueryError(f"max_per_doc must be at least 1, got {max_per_doc}")
        for name in FILTER_FIELDS:
            values = getattr(filters, name)
            if values is None:
                continue
            if not len(values):  # "only these: none" is almost surely a client bug
                raise BadQueryError(f"{name} is empty: leave it out (or null) to search everything")
            if len(values) > self.max_filter_values:  # each is looked up in the store: bounded work
                raise BadQueryError(f"{name} has {len(values)} values; the limit is {self.max_filter_values} "
                                    "(RAG_MAX_FILTER_VALUES)")
            if unknown := self.store.unknown(name, list(values)):
                raise BadQueryError(f"unknown {name}: {', '.join(unknown)}")

    def best_cosine(self, query_vector: np.ndarray, filters: Filters = Filters()) -> float:
        _, scores = self.store.dense(query_vector, 1, filters)
        return float(scores[0]) if len(scores) else -1.0

    # ------------------------------------------------------------------ rankings

    def _hybrid(self, question: str, vector: np.ndarray, filters: Filters, fusion: Fusion,
                laps: Laps | None = None) -> tuple[Iterator[Hit], float | None]:
        dense, lexical = both_sides(self.store, question, vector, fusion.depth, filters, laps)
        rows, fused = fuse(dense, lexical, fusion)
        lap(laps, "fusion")
        return _fused_hits(rows, fused, dense, lexical), float(dense[1][0]) if len(dense[1]) else None

    def _rerank(self, question: str, hits: Iterable[Hit]) -> Iterable[Hit]:
        assert self.reranker is not None
        rest = iter(hits)
        head = list(islice(rest, self.rerank_depth))
        scores = self.reranker.score(question, [self.store.chunks[h.row].text for h in head])
        reranked = [replace(h, score=float(s), components={**h.components, "rerank": float(s)})
                    for h, s in zip(head, scores)]
        return chain(sorted(reranked, key=lambda h: -h.score), rest)

    def _select(self, hits: Iterable[Hit], k: int, collapse: bool, max_per_doc: int | None) -> list[Hit]:
        """Best first; drop a chunk overlapping a better one; at most max_per_doc per document."""
        if not collapse and max_per_doc is None:  # nothing to check: no chunk needs reading
            return list(islice(hits, k))
        kept: list[Hit] = []
        per_doc: dict[str, int] = {}
        for hit in hits:
            chunk = self.store.chunks[hit.row]
            if max_per_doc is not None and per_doc.get(chunk.doc_id, 0) >= max_per_doc:
                continue
            if collapse and any(near_duplicates(chunk, self.store.chunks[h.row], self.collapse_overlap) for h in kept):
                continue
            kept.append(hit)
            per_doc[chunk.doc_id] = per_doc.get(chunk.doc_id, 0) + 1
            if len(kept) == k:
                break
        return kept

    def answer_candidates(self, question: str, k: int = 5) -> tuple[np.ndarray, list[answers.Candidate]]:
        """The question's vector and the sentences its answer is chosen from (`rag eval --fit-answer`)."""
        vector = self.embedder.encode([question])[0]
        ranked, _ = self._ranked(question, k, Filters(), self.default_mode, vector, None, True)
        groups = group_hits(ranked, self.store.chunks, k, None)
        return vector, candidates(groups, [self.passages.sentences(g) for g in groups])

    def citation(self, row: int) -> Citation:
        return self.passages.citation(row)

    def chunk_count(self, doc_id: str) -> int:
        return self.store.chunk_count(doc_id)


def _fused_hits(rows: np.ndarray, fused: np.ndarray, dense: Ranking, lexical: Ranking) -> Iterator[Hit]:
    """Hits in fused order, made only as far as they are read (a query reads a few of the
    up to 2 x fusion.depth candidates). A side that did not retrieve a chunk reports
    MISSING_SCORE for it, as fusion counted it."""
    known = {side: dict(zip(found[0].tolist(), found[1].tolist())) for side, found in
             (("dense", dense), ("lexical", lexical))}
    for row, score in zip(rows.tolist(), fused.tolist()):
        yield Hit(row, score, {"dense": known["dense"].get(row, MISSING_SCORE),
                               "lexical": known["lexical"].get(row, MISSING_SCORE), "fused": score})


def _hits(side: str, found: Ranking) -> list[Hit]:
    rows, scores = found
    return [Hit(r, s, {side: s}) for r, s in zip(rows.tolist(), scores.tolist())]


def near_duplicates(a: ChunkRecord, b: ChunkRecord, min_share: float) -> bool:
    """Same document, and the shared span is at least `min_share` of the shorter chunk.
    Spans (0, 100) and (40, 140) share 60 of 100 characters: near duplicates at 0.5."""
    shared = min(a.char_end, b.char_end) - max(a.char_start, b.char_start)
    shorter = min(a.char_end - a.char_start, b.char_end - b.char_start)
    return a.doc_id == b.doc_id and shared > 0 and shared >= min_share * shorter
