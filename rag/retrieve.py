"""Answer a question with ranked, cited passages from a loaded index.

Modes: "dense" (cosine similarity of the question's embedding to every chunk, exact
search in FAISS), "lexical" (BM25) and "hybrid" (reciprocal rank fusion of the two:
score = sum over both rankings of 1 / (RRF_K + rank), over each one's top candidates).
All can be restricted to some documents.

Example:
    retriever = Retriever(load_index(Path("index")), load_embedder("all-MiniLM-L6-v2"))
    retriever.query("What was China-Russia trade worth in 2024?", k=3).passages[0].citation

Left out: tuned fusion weights, reranking and highlights.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from rag.embed import Embedder
from rag.errors import BadQueryError
from rag.schema import Citation, Passage, QueryResponse
from rag.store import Index

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
RRF_K = 60  # the constant of Cormack et al. (2009); damps the weight of top ranks
FUSION_CANDIDATES = 100  # each ranking's depth that hybrid fuses


@dataclass(frozen=True)
class Hit:
    row: int  # chunk row in the index
    score: float


class Retriever:
    def __init__(self, index: Index, embedder: Embedder, max_k: int = 50):
        self.index = index
        self.embedder = embedder
        self.max_k = max_k
        rows_by_doc: dict[str, list[int]] = {}
        for row, chunk in enumerate(index.chunks):
            rows_by_doc.setdefault(chunk.doc_id, []).append(row)
        self._rows_by_doc = {d: np.asarray(r, dtype=np.int64) for d, r in rows_by_doc.items()}

    def query(self, question: str, k: int = 5, doc_ids: Sequence[str] | None = None,
              mode: Mode = "dense") -> QueryResponse:
        started = time.perf_counter()
        hits = self.search(question, k, doc_ids, mode)
        passages = [self.passage(rank, hit) for rank, hit in enumerate(hits, start=1)]
        took_ms = (time.perf_counter() - started) * 1000
        return QueryResponse(question=question, passages=passages, took_ms=round(took_ms, 3))

    def search(self, question: str, k: int = 5, doc_ids: Sequence[str] | None = None,
               mode: Mode = "dense", query_vector: np.ndarray | None = None) -> list[Hit]:
        """Top-k chunks; `query_vector` lets a caller that embeds in batches pass its own."""
        self.validate(question, k, doc_ids, mode)
        rows = self._allowed_rows(doc_ids)
        if mode == "lexical":
            return self._lexical(question, k, rows)
        if query_vector is None:
            query_vector = self.embedder.encode([question])[0]
        if mode == "dense":
            return self._dense(query_vector, k, rows)
        depth = max(k, FUSION_CANDIDATES)
        return fuse_rrf([self._dense(query_vector, depth, rows), self._lexical(question, depth, rows)], k)

    def validate(self, question: str, k: int, doc_ids: Sequence[str] | None, mode: str) -> None:
        if not question.strip():
            raise BadQueryError("question must not be empty")
        if not 1 <= k <= self.max_k:
            raise BadQueryError(f"k must be between 1 and {self.max_k}, got {k}")
        if mode not in MODES:
            raise BadQueryError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        unknown = sorted(set(doc_ids or ()) - self.index.documents.keys())
        if unknown:
            raise BadQueryError(f"unknown doc_ids: {', '.join(unknown)}")

    def _allowed_rows(self, doc_ids: Sequence[str] | None) -> np.ndarray | None:
        if doc_ids is None:
            return None
        parts = [self._rows_by_doc.get(d, np.empty(0, dtype=np.int64)) for d in dict.fromkeys(doc_ids)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _dense(self, vector: np.ndarray, k: int, rows: np.ndarray | None) -> list[Hit]:
        params = None
        if rows is not None:
            if not len(rows):
                return []
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(rows))  # type: ignore[call-arg]
        scores, ids = self.index.vectors.search(vector.reshape(1, -1), k, params=params)
        return [Hit(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def _lexical(self, question: str, k: int, rows: np.ndarray | None) -> list[Hit]:
        scores = self.index.lexical.scores(question)
        if rows is not None:
            masked = np.full_like(scores, -np.inf)
            masked[rows] = scores[rows]
            scores = masked
        top = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(i), float(scores[i])) for i in top if scores[i] > 0]

    def passage(self, rank: int, hit: Hit) -> Passage:
        chunk = self.index.chunks[hit.row]
        return Passage(rank=rank, chunk_id=chunk.chunk_id, text=chunk.text, score=round(hit.score, 6),
                       citation=self.citation(hit.row))

    def citation(self, row: int) -> Citation:
        chunk = self.index.chunks[row]
        meta = self.index.documents[chunk.doc_id].metadata
        return Citation(
            doc_id=chunk.doc_id, title=str(meta["title"]), source=str(meta["source"]),
            url=meta.get("url"), section=chunk.section, char_start=chunk.char_start, char_end=chunk.char_end,
        )

    def chunk_count(self, doc_id: str) -> int:
        return len(self._rows_by_doc.get(doc_id, ()))


def fuse_rrf(rankings: list[list[Hit]], k: int) -> list[Hit]:
    """Reciprocal rank fusion. fuse_rrf([[Hit(1, .9), Hit(2, .8)], [Hit(2, 7.0)]], 2)
    -> [Hit(2, 1/62 + 1/61), Hit(1, 1/61)]"""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.row] = fused.get(hit.row, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [Hit(row, score) for row, score in best]
