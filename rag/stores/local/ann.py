"""Dense search of the local store: exact below a size, an IVF index (FAISS) above it.

- up to `EXACT_LIMIT` chunks: one matrix product over the vectors and a partial sort
  (exact; measured by `rag bench scale`: docs/benchmarks.md#storage-at-scale);
- above it: `IndexIVFFlat`, inner product, `nlist` ~ 4 * sqrt(N) lists (a power of two),
  k-means trained on a sample of 64 vectors per list. `nprobe` is chosen at build time by
  measurement: the smallest power of two whose recall@10 against exact search, on
  CALIBRATION_QUERIES pseudo-queries, reaches RECALL_TARGET. A pseudo-query is a stored
  vector plus Gaussian noise of norm QUERY_NOISE (cosine ~0.3 to where it came from):
  measured on 100k SciFact-derived chunks, that noise needs the same nprobe as SciFact's
  real test questions at every recall level, while pseudo-queries near their source choose
  too small an nprobe (docs/benchmarks.md#ann-calibration-ragstoreslocalannpy). Type,
  nlist, nprobe and the measured recall go into the manifest.

IVF-Flat over HNSW: at a million 384-d vectors it trains and adds in about a minute on 2
cores (HNSW takes several times longer to insert), it keeps the exact vectors (no
quantisation loss), and a filter is pushed into it as an ID selector (HNSW with a
restrictive filter walks a graph that is mostly filtered out). A filter that leaves few
rows (<= EXACT_LIMIT) is searched exactly over those rows instead.

Left out: quantised indexes (PQ/SQ: the 1M target fits in memory without them) and GPUs.
"""

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag.stores.base import Ranking, ranking

EXACT_LIMIT = 50_000  # chunks; above it, the exact scan's ~4.5 ms a query (at 50k) keeps growing linearly
RECALL_TARGET = 0.97  # 0.95 is the promise; the margin covers real questions vs pseudo-queries
QUERY_NOISE = 3.0  # norm of a pseudo-query's noise, for unit vectors (see above)
CALIBRATION_QUERIES = 200
FILE = "ann.faiss"


def faiss_version() -> str:
    return str(faiss.__version__)


def build_ann(vectors: np.ndarray, folder: Path, log: Any = None, exact_limit: int = EXACT_LIMIT,
              seed: int = 0) -> dict[str, Any]:
    """Write the ANN index of `vectors` (normalised float32, one per row) into `folder`, if
    the collection is big enough to need one; returns its manifest entry."""
    n, dimension = vectors.shape
    if n <= exact_limit:
        return {"type": "exact", "exact_limit": exact_limit}
    rng = np.random.default_rng(seed)
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
    quantizer = faiss.IndexFlatIP(dimension)
    ivf = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10  # k-means iterations: recall is then set by nprobe, measured below
    _say(log, f"training IVF ({nlist} lists) on {len(sample)} vectors")
    ivf.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    step = 65_536
    for start in range(0, n, step):
        ivf.add(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32))
    nprobe, recall = _calibrate(ivf, vectors, rng, log)
    faiss.write_index(ivf, str(folder / FILE))
    return {"type": "ivf_flat", "exact_limit": exact_limit, "metric": "inner_product", "nlist": nlist, "nprobe": nprobe,
            "calibration": {"queries": CALIBRATION_QUERIES, "recall_at_10": recall, "target": RECALL_TARGET}}


def _calibrate(ivf: Any, vectors: np.ndarray, rng: np.random.Generator, log: Any) -> tuple[int, float]:
    queries = pseudo_queries(vectors, CALIBRATION_QUERIES, rng)
    truth = exact_top(vectors, queries, 10)
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        _, found = ivf.search(queries, 10)
        recall = recall_at(found, truth)
        _say(log, f"nprobe {nprobe}: recall@10 {recall:.3f}")
        if recall >= RECALL_TARGET or nprobe >= ivf.nlist:
            return nprobe, round(recall, 4)
        nprobe *= 2


def pseudo_queries(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Stored vectors plus noise of norm ~QUERY_NOISE, normalised."""
    rows = rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)
    base = np.asarray(vectors[np.sort(rows)], dtype=np.float32)
    noise = rng.normal(size=base.shape).astype(np.float32) * (QUERY_NOISE / math.sqrt(base.shape[1]))
    queries = base + noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 16_384) -> np.ndarray:
    """Rows of the exact top k for each query, scanning `vectors` in blocks (memory-mapped is fine;
    a block of 16k rows keeps the scratch arrays of 200 queries near 60 MB)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[start:start + block], dtype=np.float32).T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, rows = np.hstack([best_scores, scores]), np.hstack([best_rows, rows])
        keep = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top k that `found` holds."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def _say(log: Any, message: str) -> None:
    if log is not None:
        log(message)


class DenseIndex:
    """Search over the vectors of one build: exact, or IVF with exact search of small filtered subsets."""

    def __init__(self, vectors: np.ndarray, folder: Path, entry: dict[str, Any]):
        self.vectors = vectors  # exact collections: in memory; IVF: memory-mapped, read for filtered subsets
        self.kind = entry["type"]
        self.exact_limit = int(entry.get("exact_limit", EXACT_LIMIT))  # filtered subsets up to it: exact
        self._ivf: Any = None  # faiss.IndexIVFFlat (SWIG: untyped attributes)
        if self.kind == "ivf_flat":
            self._ivf = faiss.read_index(str(folder / FILE))
            self._ivf.nprobe = entry["nprobe"]
            if self._ivf.ntotal != len(vectors) or self._ivf.d != vectors.shape[1]:
                raise ValueError(f"{folder / FILE} holds {self._ivf.ntotal} vectors of dimension {self._ivf.d}")
        elif self.kind != "exact":
            raise ValueError(f"unknown dense index type {self.kind!r}")

    def search(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None) -> Ranking:
        """Top `depth` rows by inner product; `allowed` (a boolean row mask) pushed into the search."""
        rows = None if allowed is None else np.flatnonzero(allowed)
        if rows is not None and (self._ivf is None or len(rows) <= self.exact_limit):
            ranked, scores = ranking(np.asarray(self.vectors[rows]) @ vector, depth)
            return rows[ranked], scores
        if self._ivf is None:
            return ranking(self.vectors @ vector, depth)
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        if allowed is None or rows is None:
            scores, found = self._ivf.search(query, min(depth, len(self.vectors)))
        else:
            # a filter keeps a share of each list: probe proportionally more lists for the same recall
            nprobe = min(self._ivf.nlist, math.ceil(self._ivf.nprobe * len(self.vectors) / len(rows)))
            bits = np.packbits(allowed, bitorder="little")  # kept referenced until the search returns
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            params = faiss.SearchParametersIVF()
            params.sel, params.nprobe = selector, nprobe  # selector and bits stay referenced below
            scores, found = self._ivf.search(query, min(depth, len(rows)), params=params)
        keep = found[0] >= 0  # fewer than depth reachable in the probed lists: -1 padding
        return found[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)
