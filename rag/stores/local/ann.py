"""Dense search of the local store: exact below a size, an approximate FAISS index above it.

- up to `EXACT_LIMIT` chunks: one matrix product over the vectors and a partial sort (exact);
- above it, what a build makes (`KIND`):
  - `ivf_pq` (the default): IVF, `nlist` ~ 4 * sqrt(N) lists (a power of two), k-means on
    64 vectors per list, over 4-bit PQ codes in FAISS's fast-scan layout (one code per
    PQ_DIMS_PER_CODE dimensions); a search ranks the probed lists by their codes and re-ranks
    the best 10 * REFINE_FACTOR (or the depth asked for, if more) by exact products with the
    stored vectors, so the scores returned are exact;
  - `ivf` (IndexIVFFlat: exact vectors in the lists) and `hnsw` (IndexHNSWFlat), kept for
    builds made with them and for comparison.
  Why IVF-PQ: on a million distinct rows fitted to real embeddings (the hard case: no near
  copies), IVF-Flat needs nprobe ~512 of 4,096 lists for recall 0.95, scanning 190 MB a query;
  HNSW (M 32) had recall 0.72 at efSearch 256 and took 5+ minutes to insert; the 4-bit codes
  scan the same lists at ~1/16 of the bytes, and the exact re-ranking gives back what the
  codes lose (docs/benchmarks.md#the-dense-index-at-a-million-distinct-rows).
- The search breadth (nprobe; efSearch for HNSW) is chosen at build time by measurement: the
  smallest whose recall@10 against exact search, on CALIBRATION_QUERIES pseudo-queries,
  reaches RECALL_TARGET. A pseudo-query is the normalised sum of QUERY_ROWS stored vectors
  drawn at random: like a real question it lies near no single row (its nearest sit at cosine
  ~0.5-0.7, a real question's at ~0.5) and between several neighbourhoods. Measured against
  SciFact's real questions on a million distinct Gaussian-fitted rows and on a million rows
  in 2,000 clusters, it is pessimistic on the first and within ~0.01 on the second at the
  breadth it chooses, where a stored vector plus noise (the calibration before) was right on
  one and far too easy on the other (docs/benchmarks.md#ann-calibration-on-distinct-rows).
  `rag bench scale` reports the calibrated recall beside the real questions'. Type,
  parameters and the calibrated recall
  go into the manifest.

Filters are pushed in: a filter that leaves few rows (<= EXACT_LIMIT) is searched exactly over
those rows, a wider one goes into the index as an ID selector, with the breadth widened in
proportion to the share of rows it hides.

Left out: GPUs, and indexes that need no stored vectors (the re-ranking reads them, memory-mapped).
"""

import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag.stores.base import Ranking, ranking

EXACT_LIMIT = 50_000  # chunks; above it, the exact scan's ~4.5 ms a query (at 50k) keeps growing linearly
RECALL_TARGET = 0.95  # the promise; the pseudo-queries above are pessimistic or within ~0.01 of real ones
QUERY_ROWS = 3  # stored vectors summed into a pseudo-query (see above)
CALIBRATION_QUERIES = 200
FILE = "ann.faiss"
KINDS = ("ivf_pq", "ivf", "hnsw")
KIND = "ivf_pq"  # what a build makes above EXACT_LIMIT: ivf_pq, ivf or hnsw (chosen by measurement: docs/benchmarks.md)
PQ_DIMS_PER_CODE = 2  # IVF-PQ: dimensions a 4-bit code stands for (384-d: 192 codes, 96 bytes a vector)
REFINE_FACTOR = 16  # IVF-PQ: rows re-ranked exactly per row of a top 10 (160), or the depth asked for if more
HNSW_M = 32  # graph links per vector (x2 on the bottom layer): 1M vectors hold 256 MB of links
HNSW_EF_CONSTRUCTION = 40  # candidates kept while linking a vector: build time grows with it
HNSW_EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)  # tried in order at build time until recall meets the target


def faiss_version() -> str:
    return str(faiss.__version__)


def build_ann(vectors: np.ndarray, folder: Path, log: Any = None, exact_limit: int = EXACT_LIMIT,
              seed: int = 0, kind: str = KIND) -> dict[str, Any]:
    """Write the ANN index of `vectors` (normalised float32, one per row) into `folder`, if
    the collection is big enough to need one; returns its manifest entry."""
    n, dimension = vectors.shape
    if n <= exact_limit:
        return {"type": "exact", "exact_limit": exact_limit}
    if kind not in KINDS:
        raise ValueError(f"unknown dense index kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "hnsw":
        return _build_hnsw(vectors, folder, log, exact_limit, np.random.default_rng(seed))
    if kind == "ivf_pq":
        return _build_ivf_pq(vectors, folder, log, exact_limit, np.random.default_rng(seed))
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


def _build_ivf_pq(vectors: np.ndarray, folder: Path, log: Any, exact_limit: int,
                  rng: np.random.Generator) -> dict[str, Any]:
    """IVF over 4-bit PQ codes (FAISS's fast-scan layout), whose candidates are re-ranked by the
    exact vectors: the codes rank many lists fast, the exact products fix their order."""
    n, dimension = vectors.shape
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    codes = next(m for m in range(dimension // PQ_DIMS_PER_CODE, 0, -1) if dimension % m == 0)
    index: Any = faiss.index_factory(dimension, f"IVF{nlist},PQ{codes}x4fs", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10  # k-means iterations: recall is then set by nprobe, measured below
    sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
    _say(log, f"training IVF-PQ ({nlist} lists, {codes} 4-bit codes a vector) on {len(sample)} vectors")
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    step = 65_536
    for start in range(0, n, step):
        index.add(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32))
    queries = pseudo_queries(vectors, CALIBRATION_QUERIES, rng)
    truth = exact_top(vectors, queries, 10)
    refined = Refined(index, vectors, nprobe=1, candidates=10 * REFINE_FACTOR)
    recall, rung = 0.0, 0
    while True:  # nprobe 1, 2, 4, ... then steps of sqrt(2) from 64: each step of 2 there costs ~2x the time
        refined.nprobe = min(nlist, 2 ** rung if rung <= 6 else round(64 * 2 ** ((rung - 6) / 2)))
        found = np.stack([np.pad(refined.search(q[None], 10, None, None)[0], (0, 10), constant_values=-1)[:10]
                          for q in queries])
        recall = recall_at(found, truth)
        _say(log, f"nprobe {refined.nprobe}: recall@10 {recall:.3f}")
        if recall >= RECALL_TARGET or refined.nprobe >= nlist:
            break
        rung += 1
    faiss.write_index(index, str(folder / FILE))
    return {"type": "ivf_pq_refined", "exact_limit": exact_limit, "metric": "inner_product", "nlist": nlist,
            "pq_codes": codes, "nprobe": refined.nprobe, "refine_candidates": refined.candidates,
            "calibration": {"queries": CALIBRATION_QUERIES, "recall_at_10": round(recall, 4), "target": RECALL_TARGET}}


class Filtered:
    """The rows a filter keeps, as FAISS reads them: an ID selector over a bit array. SWIG keeps
    no reference to either, so the caller keeps this object until its search returns."""

    def __init__(self, allowed: np.ndarray, kept: int):
        self.total, self.kept = len(allowed), kept
        self.bits = np.packbits(allowed, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(self.bits))

    def widened(self, breadth: int, cap: int) -> int:
        """A filter hides a share of each list (or neighbourhood): `breadth` (nprobe, efSearch)
        widened in proportion, for the same recall, up to `cap`."""
        return min(cap, math.ceil(breadth * self.total / self.kept))


class Refined:
    """An IVF-PQ search whose `candidates` best rows by their codes are re-ranked by exact products."""

    def __init__(self, index: Any, vectors: np.ndarray, nprobe: int, candidates: int):
        self.index, self.vectors, self.nprobe, self.candidates = index, vectors, nprobe, candidates

    def search(self, query: np.ndarray, depth: int, allowed: np.ndarray | None, rows: np.ndarray | None) -> Ranking:
        params = faiss.SearchParametersIVF()
        params.nprobe = self.nprobe
        filtered = None if allowed is None or rows is None else Filtered(allowed, len(rows))
        if filtered is not None:
            params.nprobe, params.sel = filtered.widened(self.nprobe, self.index.nlist), filtered.selector
        limit = len(self.vectors) if rows is None else len(rows)
        _, found = self.index.search(query, min(limit, max(depth, self.candidates)), params=params)
        del filtered  # referenced until the search returned
        found = np.sort(found[0][found[0] >= 0])  # ascending: a forward read of the vectors' file
        ranked, scores = ranking(np.asarray(self.vectors[found]) @ query[0], depth)
        return found[ranked].astype(np.int64), scores.astype(np.float32)


def _build_hnsw(vectors: np.ndarray, folder: Path, log: Any, exact_limit: int,
                rng: np.random.Generator) -> dict[str, Any]:
    n, dimension = vectors.shape
    hnsw = faiss.IndexHNSWFlat(dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    step = 65_536
    for start in range(0, n, step):
        hnsw.add(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32))
        _say(log, f"HNSW graph: {min(n, start + step):,} of {n:,} vectors")
    queries = pseudo_queries(vectors, CALIBRATION_QUERIES, rng)
    truth = exact_top(vectors, queries, 10)
    ef_search, recall = HNSW_EF_SEARCH[0], 0.0
    for ef_search in HNSW_EF_SEARCH:
        params = faiss.SearchParametersHNSW(efSearch=ef_search)  # type: ignore[attr-defined]  # (not in faiss's stubs)
        _, found = hnsw.search(queries, 10, params=params)
        recall = recall_at(found, truth)
        _say(log, f"efSearch {ef_search}: recall@10 {recall:.3f}")
        if recall >= RECALL_TARGET:
            break
    faiss.write_index(hnsw, str(folder / FILE))
    return {"type": "hnsw_flat", "exact_limit": exact_limit, "metric": "inner_product", "m": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": ef_search,
            "calibration": {"queries": CALIBRATION_QUERIES, "recall_at_10": round(recall, 4), "target": RECALL_TARGET}}


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
    """Normalised sums of QUERY_ROWS stored vectors drawn at random (see the module docstring)."""
    total = sum(np.asarray(vectors[np.sort(rng.choice(len(vectors), size=count, replace=len(vectors) < count))],
                           dtype=np.float32) for _ in range(QUERY_ROWS))
    return (total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)).astype(np.float32)


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
        self._hnsw: Any = None  # faiss.IndexHNSWFlat
        self._refined: Refined | None = None
        if self.kind in ("ivf_flat", "hnsw_flat", "ivf_pq_refined"):
            index: Any = faiss.read_index(str(folder / FILE))
            if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
                raise ValueError(f"{folder / FILE} holds {index.ntotal} vectors of dimension {index.d}")
            if self.kind == "ivf_flat":
                self._ivf, index.nprobe = index, entry["nprobe"]
            elif self.kind == "ivf_pq_refined":
                self._refined = Refined(index, vectors, int(entry["nprobe"]), int(entry["refine_candidates"]))
            else:
                self._hnsw, self.ef_search = index, int(entry["ef_search"])
        elif self.kind != "exact":
            raise ValueError(f"unknown dense index type {self.kind!r}")

    def search(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None) -> Ranking:
        """Top `depth` rows by inner product; `allowed` (a boolean row mask) pushed into the search."""
        rows = None if allowed is None else np.flatnonzero(allowed)
        approximate = self._ivf is not None or self._hnsw is not None or self._refined is not None
        if rows is not None and (not approximate or len(rows) <= self.exact_limit):
            ranked, scores = ranking(np.asarray(self.vectors[rows]) @ vector, depth)
            return rows[ranked], scores
        if not approximate:
            return ranking(self.vectors @ vector, depth)
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        if self._hnsw is not None:
            return self._search_hnsw(query, depth, allowed, rows)
        if self._refined is not None:
            return self._refined.search(query, depth, allowed, rows)
        if allowed is None or rows is None:
            scores, found = self._ivf.search(query, min(depth, len(self.vectors)))
        else:
            filtered = Filtered(allowed, len(rows))  # referenced until the search returns
            params = faiss.SearchParametersIVF()
            params.sel, params.nprobe = filtered.selector, filtered.widened(self._ivf.nprobe, self._ivf.nlist)
            scores, found = self._ivf.search(query, min(depth, len(rows)), params=params)
        keep = found[0] >= 0  # fewer than depth reachable in the probed lists: -1 padding
        return found[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def _search_hnsw(self, query: np.ndarray, depth: int, allowed: np.ndarray | None,
                     rows: np.ndarray | None) -> Ranking:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # (faiss's stubs lack it)
        # the graph walk keeps efSearch candidates: at least the depth asked for
        params.efSearch = max(self.ef_search, depth)
        filtered = None if allowed is None or rows is None else Filtered(allowed, len(rows))
        if filtered is not None:
            params.efSearch, params.sel = filtered.widened(params.efSearch, len(self.vectors)), filtered.selector
        limit = len(self.vectors) if rows is None else len(rows)
        scores, found = self._hnsw.search(query, min(depth, limit), params=params)
        del filtered  # referenced until the search returned
        keep = found[0] >= 0
        return found[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)
