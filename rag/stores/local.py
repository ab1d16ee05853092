"""The local store: exact search over an index loaded in memory.

- dense: exact inner product over the normalised vectors, as one numpy matrix product
  and a partial sort (on SciFact's 12,395 chunks 0.44 ms a query for the top 1000 and
  0.34 ms for the top 100, against 0.69 and 0.56 ms for FAISS `IndexFlatIP.search`);
  filtered-out rows score -inf before the sort;
- lexical: BM25 scores of every chunk (bm25s), masked by the filter, top `depth`;
- filters: one boolean row mask per request, from per-chunk document, source and
  section columns built once per loaded index.

Left out: an approximate index and on-disk chunks for collections past what memory holds.
"""

import numpy as np

from rag.fusion import Ranking, ranking
from rag.store import Index
from rag.types import Filters


class LocalStore:
    def __init__(self, index: Index):
        self.index = index
        self._matrix = index.vector_matrix()  # float32, one row per chunk
        chunks = index.chunks
        self._columns = {
            "doc_ids": np.array([c.doc_id for c in chunks], dtype=object),
            "sources": np.array([index.documents[c.doc_id].metadata["source"] for c in chunks], dtype=object),
            "sections": np.array([c.section or "" for c in chunks], dtype=object),
        }
        self._known = {name: set(column) - {""} for name, column in self._columns.items()}
        self._known["doc_ids"] = set(index.documents)  # a document without chunks is still a document

    def count(self) -> int:
        return len(self.index.chunks)

    def known(self, field: str) -> set[str]:
        return self._known[field]

    def dense(self, vector: np.ndarray, depth: int, filters: Filters) -> Ranking:
        scores = self._matrix @ vector
        allowed = self._allowed(filters)
        return ranking(scores if allowed is None else np.where(allowed, scores, -np.inf), depth)

    def lexical(self, text: str, depth: int, filters: Filters) -> Ranking:
        scores = self.index.lexical.scores(text)
        allowed = self._allowed(filters)
        matched = scores > 0 if allowed is None else (scores > 0) & allowed
        return ranking(np.where(matched, scores, -np.inf), depth)

    def chunk_count(self, doc_id: str) -> int:
        return int(np.count_nonzero(self._columns["doc_ids"] == doc_id))

    def _allowed(self, filters: Filters) -> np.ndarray | None:
        """Rows the filters allow, or None for all."""
        mask = None
        for name, values in (("doc_ids", filters.doc_ids), ("sources", filters.sources),
                             ("sections", filters.sections)):
            if values is not None:
                this = np.isin(self._columns[name], list(values))
                mask = this if mask is None else mask & this
        return mask
