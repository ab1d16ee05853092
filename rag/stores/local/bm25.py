"""BM25 postings on disk, written in a stream: the local store's lexical index.

The index is plain arrays plus a JSON vocabulary (no pickle), in the layout bm25s uses:
for term t, `docs[ptr[t]:ptr[t+1]]` are the rows that hold it (ascending) and
`weights[...]` their precomputed BM25 term weights, Lucene's variant:

    idf(t)     = ln(1 + (N - df + 0.5) / (df + 0.5))
    weight     = idf(t) * tf / (tf + k1 * (1 - b + b * doc_len / avg_doc_len))

(Lucene 8+ and bm25s drop the classic constant factor k1 + 1, which changes no ranking)
    score(q,d) = sum of weight(t, d) over the query's tokens (a repeated token counts again)

so `scores()` adds a few slices of memory-mapped arrays into one score per row (tested equal
to bm25s's scores), and `top()` finds the best rows without reading every slice whole
(MaxScore, rag.stores.local.bm25_top), from `max_weights[t]`, each term's highest weight,
written with the arrays (and computed on load for builds from before that file).

Why not bm25s itself: its `index()` takes every document's tokens in memory at once
(several GB of Python lists at a million chunks); this writer holds one batch of postings
(`spill_postings`, ~24 MB) and spills it to disk, then places the spills into the final
arrays by term with a counting sort, so memory stays bounded by the vocabulary and the
batch, whatever the corpus size.

Tokens: `rag.lexical.tokenize` (lowercase words, English stopwords, Snowball stemmer).

Left out: deleting or updating rows in place (a build writes new arrays), phrase queries.
"""

import json
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from rag.lexical import DEFAULT_B, DEFAULT_K1, tokenize
from rag.stores.local import bm25_top
from rag.stores.local.bm25_top import dense_scores

FILES = ("ptr.npy", "docs.npy", "weights.npy", "max_weights.npy", "vocab.json")


class Bm25Writer:
    def __init__(self, folder: Path, k1: float = DEFAULT_K1, b: float = DEFAULT_B, spill_postings: int = 2_000_000):
        self.folder, self.k1, self.b, self.spill_postings = folder, k1, b, spill_postings
        folder.mkdir(parents=True, exist_ok=True)
        self.vocab: dict[str, int] = {}
        self.df = array("q")  # documents holding each term, by term id
        self.doc_lens = array("i")  # tokens of each row
        # the batch's postings as C arrays: 4 bytes each, not a Python int's 36
        self._terms, self._docs, self._tfs = array("i"), array("i"), array("f")
        self._spills: list[Path] = []

    def add(self, texts: Iterable[str]) -> None:
        """Index the next texts; their rows continue from the texts added before."""
        for text in texts:
            counts = Counter(tokenize(text))
            row = len(self.doc_lens)
            self.doc_lens.append(sum(counts.values()))
            for term, tf in counts.items():
                term_id = self.vocab.get(term)
                if term_id is None:
                    term_id = self.vocab[term] = len(self.df)
                    self.df.append(0)
                self.df[term_id] += 1
                self._terms.append(term_id)
                self._docs.append(row)
                self._tfs.append(tf)
            if len(self._terms) >= self.spill_postings:
                self._spill()

    def _spill(self) -> None:
        if not self._terms:
            return
        terms = np.frombuffer(self._terms, dtype=np.int32)
        order = np.argsort(terms, kind="stable")  # by term; rows stay ascending within a term
        path = self.folder / f".spill-{len(self._spills)}.npz"
        np.savez(path, terms=terms[order], docs=np.frombuffer(self._docs, dtype=np.int32)[order],
                 tfs=np.frombuffer(self._tfs, dtype=np.float32)[order])
        self._spills.append(path)
        self._terms, self._docs, self._tfs = array("i"), array("i"), array("f")

    def finish(self) -> dict[str, float | int]:
        """Write the final arrays; returns the parameters for the manifest."""
        self._spill()
        n_docs = len(self.doc_lens)
        df = np.asarray(self.df, dtype=np.int64)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        doc_lens = np.asarray(self.doc_lens, dtype=np.float32)
        avg_len = float(doc_lens.mean()) if n_docs else 0.0
        norms = self.k1 * (1 - self.b + self.b * doc_lens / (avg_len or 1.0))  # per row
        ptr = np.zeros(len(df) + 1, dtype=np.int64)
        np.cumsum(df, out=ptr[1:])
        total = int(ptr[-1])
        docs = np.lib.format.open_memmap(self.folder / "docs.npy", mode="w+", dtype=np.int32, shape=(total,))
        weights = np.lib.format.open_memmap(self.folder / "weights.npy", mode="w+", dtype=np.float32, shape=(total,))
        cursor = ptr[:-1].copy()
        highest = np.zeros(len(df), dtype=np.float32)  # each term's highest weight: top()'s bounds
        for path in self._spills:  # in row order: each term's rows stay ascending
            with np.load(path) as spill:
                terms, rows, tfs = spill["terms"], spill["docs"], spill["tfs"]
            unique, first, counts = np.unique(terms, return_index=True, return_counts=True)
            offsets = np.arange(len(terms)) - np.repeat(first, counts)
            at = cursor[terms] + offsets
            docs[at] = rows
            weights[at] = placed = (idf[terms] * tfs / (tfs + norms[rows])).astype(np.float32, copy=False)
            highest[unique] = np.maximum(highest[unique], np.maximum.reduceat(placed, first))
            cursor[unique] += counts
            path.unlink()
        docs.flush()
        weights.flush()
        del docs, weights
        np.save(self.folder / "ptr.npy", ptr, allow_pickle=False)
        np.save(self.folder / "max_weights.npy", highest, allow_pickle=False)
        vocab = sorted(self.vocab, key=self.vocab.__getitem__)  # position = term id
        (self.folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return {"k1": self.k1, "b": self.b, "documents": n_docs, "terms": len(vocab), "postings": total,
                "avg_doc_tokens": round(avg_len, 3)}


def bm25_scorer(texts: list[str]) -> "Bm25Index":
    """A throw-away index of `texts` (its files in a temporary folder, read into memory)."""
    with tempfile.TemporaryDirectory(prefix="rag-bm25-") as folder:
        writer = Bm25Writer(Path(folder))
        writer.add(texts)
        writer.finish()
        return Bm25Index(Path(folder), len(texts), in_memory=True)


class Bm25Index:
    """Scores of every row for a query, or its top rows, from the memory-mapped arrays."""

    def __init__(self, folder: Path, rows: int, in_memory: bool = False):
        self.rows = rows
        mmap: Literal["r"] | None = None if in_memory else "r"
        self._ptr = np.load(folder / "ptr.npy", allow_pickle=False)
        self._docs = np.load(folder / "docs.npy", mmap_mode=mmap, allow_pickle=False)
        self._weights = np.load(folder / "weights.npy", mmap_mode=mmap, allow_pickle=False)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        self._vocab = {term: i for i, term in enumerate(vocab)}
        if len(self._ptr) != len(vocab) + 1 or self._ptr[-1] != len(self._docs) or len(self._docs) != len(
                self._weights):
            raise ValueError(f"BM25 arrays in {folder} disagree in length")
        if (folder / "max_weights.npy").is_file():
            self._max_weights = np.load(folder / "max_weights.npy", allow_pickle=False)
        else:  # a build from before the file: one pass over the weights (0.13 s at 100M postings, cached)
            self._max_weights = max_weights(self._ptr, self._weights)
        if self._max_weights.shape != (len(vocab),):
            raise ValueError(f"BM25 arrays in {folder} disagree in length (max_weights)")

    def _tokens(self, query: str) -> np.ndarray:
        """The query's term ids, in order, repeats kept; unknown tokens left out."""
        return np.array([t for t in map(self._vocab.get, tokenize(query)) if t is not None], dtype=np.int64)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every row (float32; 0 where no query term occurs)."""
        return dense_scores(self._ptr, self._docs, self._weights, self.rows, self._tokens(query))

    def top(self, query: str, depth: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The `depth` best rows (int64) with a score > 0 among those `allowed` keeps (a row mask,
        or None for all), and their scores (float32), best first, ties to the lower row: the
        top of scores(), found without scoring every posting (rag.stores.local.bm25_top)."""
        return bm25_top.top(self._ptr, self._docs, self._weights, self._max_weights, self.rows, self._tokens(query),
                            depth, allowed)


def max_weights(ptr: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each term's highest weight (0 for a term without postings)."""
    out = np.zeros(len(ptr) - 1, dtype=np.float32)
    held = np.flatnonzero(ptr[1:] > ptr[:-1])
    if len(held):  # reduceat runs from each start to the next: the empty terms between hold nothing
        out[held] = np.maximum.reduceat(weights, ptr[held])
    return out
