"""In-memory search over a collection that changes while it serves: vectors and BM25
postings that rows are added to and removed from one document at a time.

A row is a chunk's key in the collection's SQLite file (rag.stores.local.live), never reused, so a slot
here maps to one row for ever. Adding a document appends its chunks' vectors and postings;
removing one marks its slots dead (and takes its terms out of the document frequencies).
Neither touches the other documents: the cost of a write does not grow with the collection.
Searches skip dead slots:
- dense: exact inner product over the live vectors (one matrix product; ~4 ms a query at
  100k chunks of 384 dimensions on 2 cores);
- lexical: BM25 (Lucene's variant, as rag.stores.local.bm25) with the statistics of the live
  rows, computed at query time from per-term postings (slot and term frequency arrays), in
  float32 in the same order as a build's: the same chunks score bit for bit the same in a
  live collection as in a build (so an imported archive ties where its source tied).

Dead slots stay in the arrays (masked) until the owner rebuilds the index from its rows,
which rag.stores.local.live does when they outnumber the live ones: one rewrite for many deletes.

Left out: an ANN index over a changing collection (a collection past the exact limit is
built into the local store by `rag build`, or lives in Milvus), and persistence (rag.stores.local.live
rebuilds this from SQLite on start).
"""

from array import array
from collections import Counter

import numpy as np

from rag.lexical import DEFAULT_B, DEFAULT_K1, tokenize
from rag.stores.base import Ranking, ranking


class LiveIndex:
    def __init__(self, dimension: int, k1: float = DEFAULT_K1, b: float = DEFAULT_B):
        self.dimension, self.k1, self.b = dimension, k1, b
        # grown on demand (doubling): an empty or released collection holds no vector array (a
        # fixed 1,024 slots were 1.5 MB each at 384 dimensions, of 2,000 collections' churn)
        self._vectors = np.zeros((0, dimension), dtype=np.float32)
        self.rows = array("q")  # slot -> row
        self._alive = np.zeros(0, dtype=bool)
        self._slot: dict[int, int] = {}  # row -> slot
        self._lengths = array("i")  # tokens per slot
        self._postings: dict[str, tuple[array, array]] = {}  # term -> (slots, term frequencies)
        self._df: Counter[str] = Counter()  # live slots holding each term
        self._average: float | None = None  # live slots' mean length, as a build computes it (None: stale)

    def __len__(self) -> int:
        return len(self._slot)

    def add(self, rows: list[int], vectors: np.ndarray, texts: list[str]) -> None:
        """Rows with their vectors and the texts BM25 indexes."""
        start = len(self.rows)
        if start + len(rows) > len(self._vectors):
            grown = max(2 * len(self._vectors), start + len(rows), 16)
            kept = np.zeros((grown, self.dimension), dtype=np.float32)
            kept[:start] = self._vectors[:start]
            self._vectors = kept
            alive = np.zeros(grown, dtype=bool)
            alive[:len(self._alive)] = self._alive
            self._alive = alive
        self._vectors[start:start + len(rows)] = vectors
        for offset, (row, text) in enumerate(zip(rows, texts)):
            slot = start + offset
            counts = Counter(tokenize(text))
            self.rows.append(row)
            self._slot[row] = slot
            self._lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                slots, tfs = self._postings.setdefault(term, (array("i"), array("f")))
                slots.append(slot)
                tfs.append(tf)
                self._df[term] += 1
        self._alive[start:start + len(rows)] = True
        self._average = None

    def remove(self, rows: list[int], texts: list[str]) -> None:
        """Rows, with the texts they were added with (their terms leave the document
        frequencies; the caller has them, so the index does not keep every chunk's terms)."""
        for row, text in zip(rows, texts):
            slot = self._slot.pop(row, None)
            if slot is None:
                continue
            self._alive[slot] = False
            self._average = None
            self._df.subtract(set(tokenize(text)))

    @property
    def dead(self) -> int:
        """Slots of removed rows, still in the arrays until the caller rebuilds the index."""
        return len(self.rows) - len(self._slot)

    def dense(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None = None) -> Ranking:
        n = len(self.rows)
        scores = self._vectors[:n] @ vector
        live = self._alive[:n] if allowed is None else self._alive[:n] & allowed
        slots, found = ranking(np.where(live, scores, -np.inf), depth)
        return np.frombuffer(self.rows, dtype=np.int64)[slots].copy(), found

    def lexical(self, text: str, depth: int, allowed: np.ndarray | None = None) -> Ranking:
        n, live_docs = len(self.rows), len(self._slot)
        scores = np.zeros(n, dtype=np.float32)
        if not live_docs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        lengths = np.frombuffer(self._lengths, dtype=np.int32).astype(np.float32)
        if self._average is None:  # float32, in row order, as rag.stores.local.bm25 does: equal scores, equal ties
            self._average = float(lengths[self._alive[:n]].mean())
        norms = self.k1 * (1 - self.b + self.b * lengths / (self._average or 1.0))
        for token in tokenize(text):
            posting = self._postings.get(token)
            df = self._df.get(token, 0)
            if posting is None or df <= 0:
                continue
            slots = np.frombuffer(posting[0], dtype=np.int32)
            tfs = np.frombuffer(posting[1], dtype=np.float32)
            idf = np.float32(np.log1p((live_docs - df + 0.5) / (df + 0.5)))  # float32, as a build's
            scores[slots] += idf * tfs / (tfs + norms[slots])  # dead slots are masked below
        live = self._alive[:n] if allowed is None else self._alive[:n] & allowed
        matched = np.flatnonzero((scores > 0) & live)
        order, found = ranking(scores[matched], depth)
        return np.frombuffer(self.rows, dtype=np.int64)[matched[order]].copy(), found

    def mask(self, rows: list[int]) -> np.ndarray:
        """A slot mask allowing only `rows` (for filters)."""
        allowed = np.zeros(len(self.rows), dtype=bool)
        allowed[[self._slot[r] for r in rows if r in self._slot]] = True
        return allowed

    def vector(self, row: int) -> np.ndarray | None:
        slot = self._slot.get(row)
        return None if slot is None else self._vectors[slot].copy()
