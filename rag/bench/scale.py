"""`rag bench scale N`: build an N-chunk collection and measure it.

The rows (rag.bench.rows) are, by default, N distinct vectors drawn from a Gaussian fitted
to SciFact's real chunk vectors (embedded by the configured model, the cached `rag eval
--beir` index), with texts sampled from SciFact's words; `--vectors FILE.npy [--queries
FILE.npy] [--texts FILE.jsonl]` brings the user's own; `--rows near-copies` is the old
generator (near copies of each real chunk: it flatters IVF). Queries are SciFact's 300 test
questions embedded by the same model (or the `--queries` vectors, with the questions'
texts for BM25).

Measured, per backend (`local`, `milvus`):
- the build, from the precomputed vectors, in a child process: seconds and its peak RSS
  (the streamed writer's memory, without this process's);
- search p50/p99 over the queries, each side alone (top 10) and hybrid (each side's top
  `fusion_depth`, fused, top 10), after one warm-up pass;
- dense recall@10 against an exact scan of the same N vectors (regenerated in blocks);
- size on disk, and a real `rag serve` on the collection: seconds until /ready, RSS after
  50 queries (not when the vectors' dimension is not the model's: it could not encode them).

Left out: sentences (highlights) in the synthetic collection, and concurrent load (that
is `rag bench serve` on the seed corpus).
"""

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from rag.bench.child import in_child
from rag.bench.rows import FileRows, Rows, RowsSpec, normalised, open_rows
from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.errors import CorpusError
from rag.evaluation.beir import beir_store, judged_queries
from rag.evaluation.metrics import percentile
from rag.ingest.build import build_manifest, spec_of
from rag.search.fusion import fuse
from rag.search.sides import both_sides
from rag.settings import Settings
from rag.stores.factory import open_store, open_writer
from rag.stores.local.ann import recall_at
from rag.stores.local.store import LocalStore
from rag.stores.manifest import size_on_disk
from rag.types import Filters, Fusion


def run_scale(settings: Settings, n: int, backend: str, scifact: Path, log: Callable[[str], None],
              rows: str = "gaussian", vectors: Path | None = None, queries: Path | None = None,
              texts: Path | None = None) -> dict[str, Any]:
    embedder, source_store, questions = scifact_source(settings, scifact, log)
    spec = RowsSpec("file" if vectors else rows, str(source_store.folder),
                    None if vectors is None else str(vectors), None if texts is None else str(texts))
    source = open_rows(spec)
    if isinstance(source, FileRows):
        source.check(n)
    question_vectors = query_vectors(queries, source.dimension, embedder, questions, settings.embed_batch_size)
    servable = source.dimension == embedder.dimension
    work = settings.cache_dir / "scale"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{backend}-{n}-") as tmp:
        target = settings.model_copy(update={
            "vector_store": backend, "index_dir": Path(tmp) / "index", "milvus_uri": str(Path(tmp) / "milvus.db"),
            "highlights": False})
        log(f"building {n} rows: {source.describe(n)}")
        build_s, peak_rss_mb = build_in_child(target, n, spec)
        log(f"built {n} chunks in {build_s:.0f} s (peak RSS {peak_rss_mb:.0f} MB)")
        # first, and alone: a Milvus Lite file serves one process at a time
        served = _serve(target, questions) if servable else {"serve_ready_s": None, "serve_rss_mb": None}
        log("measuring searches")
        store = open_store(target, spec_of(target) if servable else None)
        try:
            timings = _search_timings(store, questions, question_vectors, Fusion.parse(settings.fusion,
                                                                                       settings.fusion_depth))
            recall = _recall(store, source, n, question_vectors)
            index = store.manifest["store"].get("dense_index", store.manifest["store"].get("index"))
        finally:
            store.close()
        disk_mb = size_on_disk(Path(tmp)) / 2**20
    timings["dense"]["recall_at_10"] = round(recall, 4)
    queried = f"{len(question_vectors)} query vectors from {queries.name}" if queries else \
        f"{scifact.name}'s {len(questions)} test questions embedded by {settings.model} ({settings.embed_backend})"
    return {"backend": backend, "chunks": n, "index": index, **timings, "build_s": round(build_s, 1),
            "peak_rss_mb": round(peak_rss_mb, 1), "disk_mb": round(disk_mb, 1), **served,
            "rows": spec.kind, "source": f"{source.describe(n)}; {queried}"}


def query_vectors(path: Path | None, dimension: int, embedder: Embedder, questions: list[str],
                  batch_size: int) -> np.ndarray:
    """The `--queries` vectors (normalised), or the questions embedded by the model."""
    if path is None:
        if embedder.dimension != dimension:
            raise CorpusError(f"the vectors have dimension {dimension} and the model {embedder.dimension}: "
                              "give --queries FILE.npy, query vectors of the vectors' dimension")
        return embedder.encode(questions, batch_size=batch_size)
    try:
        found = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorpusError(f"--queries {path}: not a readable .npy array ({exc})") from None
    if found.ndim != 2 or found.shape[1] != dimension or found.dtype.kind != "f" or not len(found):
        raise CorpusError(f"--queries {path}: {found.dtype} {found.shape}, not a float array of rows of dimension "
                          f"{dimension}")
    if not np.isfinite(found).all():
        raise CorpusError(f"--queries {path}: a vector is not finite")
    return normalised(found)


def scifact_source(settings: Settings, scifact: Path,
                   log: Callable[[str], None]) -> tuple[Embedder, LocalStore, list[str]]:
    """The configured model, SciFact's local index embedded by it (cached; built if missing)
    and SciFact's 300 test questions."""
    embedder = embedder_from(settings)
    documents, queries, _, judged = judged_queries(scifact, None)
    local_settings = settings.model_copy(update={"vector_store": "local"})  # the source is always the local cache
    _, source_store = beir_store(scifact, local_settings, embedder, documents, log)
    assert isinstance(source_store, LocalStore)
    return embedder, source_store, [queries[q] for q in judged]


# ------------------------------------------------------------------ the build (child process)


def build_in_child(target: Settings, n: int, spec: RowsSpec) -> tuple[float, float]:
    """Build in a fresh process: its time and peak RSS are the build's alone."""
    seconds = in_child(build_synthetic, target, n, spec)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, of the largest child
    return float(seconds), peak_kb / 1024


def build_synthetic(target: Settings, n: int, spec: RowsSpec) -> float:
    """Write the N-chunk collection into the target store; returns the seconds it took
    from the rows' vectors, not counting loading the source."""
    from rag.stores.manifest import read_manifest

    model = read_manifest(Path(spec.source_folder))["model"]
    source = open_rows(spec)
    started = time.perf_counter()
    documents_total = 0
    with open_writer(target, source.dimension, log=lambda m: tqdm.write(m, file=sys.stderr)) as writer:
        with tqdm(total=n, unit="chunk", desc="writing", unit_scale=True) as bar:
            for rows, vectors in source.blocks(n):
                documents, chunks, texts = source.records(rows)
                writer.add_documents(documents)
                writer.add_chunks(chunks, vectors, lexical_texts=texts)
                documents_total += len(documents)
                bar.update(len(rows))
        writer.commit(build_manifest(target, source.dimension, model["max_tokens"],
                                     corpus={"hash": f"synthetic-{spec.kind}-{n}", "documents": {}},
                                     counts={"documents": documents_total, "chunks": n}))
    return time.perf_counter() - started


# ------------------------------------------------------------------ measurements


def _search_timings(store: Any, questions: list[str], vectors: np.ndarray, fusion: Fusion) -> dict[str, Any]:
    searches = {
        "dense": lambda q, v: store.dense(v, 10, Filters()),
        "lexical": lambda q, v: store.lexical(q, 10, Filters()),
        # as the retriever runs it: the two sides at once where the collection is big (rag.search.sides)
        "hybrid": lambda q, v: fuse(*both_sides(store, q, v, fusion.depth, Filters()), fusion)[0][:10],
        # hybrid's parts: each side at the fusion depth, and the fusion (ours, whatever the store)
        "dense_at_fusion_depth": lambda q, v: store.dense(v, fusion.depth, Filters()),
        "lexical_at_fusion_depth": lambda q, v: store.lexical(q, fusion.depth, Filters()),
    }
    out = {name: _timed(search, questions, vectors) for name, search in searches.items()}
    sides = {q: both_sides(store, q, v, fusion.depth, Filters()) for q, v in zip(questions, vectors)}
    out["fusion"] = _timed(lambda q, v: fuse(*sides[q], fusion), questions, vectors)
    return out


def _timed(search: Callable[[str, np.ndarray], Any], questions: list[str], vectors: np.ndarray) -> dict[str, float]:
    """p50 and p99 ms of `search` over the questions, after one warm-up pass (the page cache
    and FAISS's first-call costs)."""
    for q, v in zip(questions, vectors):
        search(q, v)
    ms = []
    for q, v in zip(questions, vectors):
        started = time.perf_counter()
        search(q, v)
        ms.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 0.99), 3)}


def _recall(store: Any, source: Rows, n: int, vectors: np.ndarray) -> float:
    """Dense recall@10 of the store against an exact scan of the same N vectors."""
    best_scores = np.full((len(vectors), 10), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(vectors), 10), dtype=np.int64)
    for rows, block in source.blocks(n):
        scores = np.hstack([best_scores, vectors @ block.T])
        ids = np.hstack([best_rows, np.broadcast_to(np.arange(rows.start, rows.stop), (len(vectors), len(rows)))])
        keep = np.argpartition(-scores, 9, axis=1)[:, :10]
        best_scores, best_rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    found = np.stack([np.pad(store.dense(v, 10, Filters())[0], (0, 10), constant_values=-1)[:10] for v in vectors])
    return recall_at(found, best_rows)


def _serve(target: Settings, questions: list[str]) -> dict[str, float | None]:
    """Seconds until `rag serve` on the collection is ready (model, index, checksums) and its
    RSS (MB) after 50 queries; None where it never got ready."""
    from rag.bench.server import rss_mb

    with serving(target) as (server, url, ready_s):
        if ready_s is None:
            return {"serve_ready_s": None, "serve_rss_mb": None}
        for question in questions[:50]:
            httpx.post(url + "/query", json={"question": question, "k": 5}, timeout=60).raise_for_status()
        return {"serve_ready_s": round(ready_s, 1), "serve_rss_mb": round(rss_mb(server.pid)["VmRSS"], 1)}


def serve_env(target: Settings) -> dict[str, str]:
    """The environment that points a `rag` child process (serve, export, ...) at the target collection."""
    return {"RAG_INDEX_DIR": str(target.index_dir), "RAG_VECTOR_STORE": target.vector_store,
            "RAG_MILVUS_URI": target.milvus_uri, "RAG_HIGHLIGHTS": "false"}


@contextmanager
def serving(target: Settings) -> Iterator[tuple[subprocess.Popen[bytes], str, float | None]]:
    """`rag serve` on the target collection: the process, its URL and the seconds it took to
    be ready (None where it never got ready within 600 s); stopped when the block ends."""
    from rag.bench.server import start_server

    started = time.monotonic()
    server, url = start_server(target.index_dir, reload_poll_seconds=3600, env=serve_env(target))
    try:
        ready_s: float | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    ready_s = time.monotonic() - started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield server, url, ready_s
    finally:
        server.terminate()
        server.wait(timeout=60)


def scale_table(result: dict[str, Any]) -> str:
    lines = [f"{result['backend']} store, {result['chunks']:,} chunks, index {json.dumps(result['index'])}",
             f"  build {result['build_s']} s, peak RSS {result['peak_rss_mb']} MB, {result['disk_mb']} MB on disk, "
             f"rag serve ready in {result['serve_ready_s']} s, RSS {result['serve_rss_mb']} MB"]
    for side in ("dense", "lexical", "hybrid", "dense_at_fusion_depth", "lexical_at_fusion_depth", "fusion"):
        if side not in result:  # the last three: since 2026-12-02
            continue
        row = result[side]
        extra = f", recall@10 {row['recall_at_10']}" if "recall_at_10" in row else ""
        lines.append(f"  {side:<24} p50 {row['p50_ms']:>8.2f} ms   p99 {row['p99_ms']:>8.2f} ms{extra}")
    return "\n".join(lines)


def compared(local: dict[str, Any], milvus: dict[str, Any]) -> dict[str, Any]:
    """Both stores' reports from one run, and Milvus's p50 over the local store's for each search."""
    searches = ("dense", "lexical", "hybrid", "dense_at_fusion_depth", "lexical_at_fusion_depth")
    return {"local": local, "milvus": milvus,
            "milvus_over_local": {s: round(milvus[s]["p50_ms"] / local[s]["p50_ms"], 1) for s in searches}}


def compared_table(result: dict[str, Any]) -> str:
    ratios = ", ".join(f"{side} {ratio}x" for side, ratio in result["milvus_over_local"].items())
    return "\n\n".join([scale_table(result["local"]), scale_table(result["milvus"]),
                        f"Milvus p50 / local p50 (same run, same rows and questions): {ratios}"])
