"""`rag bench scale N`: build an N-chunk collection from real embeddings and measure it.

The data is real, not uniform noise (on which ANN recall means nothing): SciFact's
chunks, embedded by the configured model (the cached `rag eval --beir` index), expanded
to N rows. Row i is copy i // M of source chunk i % M (M = SciFact's 12,395 chunks):
its vector is the source vector plus a random share (0-35%) of another chunk's vector
plus Gaussian noise, normalised (cosine ~0.9 to the source: a paraphrase, not a clone),
and its text, title and offsets are the source chunk's, so BM25 sees real term
statistics. Copy c of document d is document `d.c` (a valid doc_id: an export of it imports),
with the same embedding input and so the same `embed_hash`. Queries are SciFact's 300 test
questions, embedded by the same model.

Measured, per backend (`local`, `milvus`):
- the build, from the precomputed vectors, in a child process: seconds and its peak RSS
  (the streamed writer's memory, without this process's);
- search p50/p99 over the 300 questions, each side alone (top 10) and hybrid (each
  side's top `fusion_depth`, fused, top 10), after one warm-up pass;
- dense recall@10 against an exact scan of the same N vectors (regenerated in blocks);
- size on disk, and a real `rag serve` on the collection: seconds until /ready, RSS after 50 queries.

Left out: sentences (highlights) in the synthetic collection, and concurrent load (that
is `rag bench serve` on the seed corpus).
"""

import json
import math
import multiprocessing
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

from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.evaluation.beir import beir_store, judged_queries
from rag.evaluation.metrics import percentile
from rag.ingest.build import build_manifest, spec_of
from rag.ingest.chunk import embed_input
from rag.records import ChunkRecord, DocumentRecord
from rag.search.fusion import fuse
from rag.settings import Settings
from rag.stores.factory import open_store, open_writer
from rag.stores.local.ann import recall_at
from rag.stores.local.store import LocalStore
from rag.stores.manifest import size_on_disk
from rag.types import Filters, Fusion

BLOCK = 8192  # synthetic rows generated, written and scanned at a time
MIX = 0.35  # at most this share of another chunk's vector is mixed in
NOISE = 0.25  # norm of the Gaussian noise added to a unit vector


class Source:
    """SciFact's chunks, vectors and documents, the material the collection is made of."""

    def __init__(self, store: LocalStore):
        self.vectors = store.matrix()
        self.chunks = list(store.chunks)
        self.documents = {doc_id: store.documents[doc_id] for doc_id in store.documents}
        firsts: dict[str, int] = {}
        for row, chunk in enumerate(self.chunks):
            firsts.setdefault(chunk.doc_id, row)
        self.first_of_document = set(firsts.values())

    def blocks(self, n: int, seed: int = 0) -> Iterator[tuple[range, np.ndarray]]:
        """Rows and vectors of the collection, BLOCK rows at a time, the same on every call."""
        m, dimension = self.vectors.shape
        for start in range(0, n, BLOCK):
            rows = range(start, min(n, start + BLOCK))
            rng = np.random.default_rng([seed, start])
            source = np.arange(rows.start, rows.stop) % m
            other = rng.integers(0, m, size=len(rows))
            mixed = self.vectors[source] + rng.uniform(0, MIX, size=(len(rows), 1)) * self.vectors[other]
            mixed += rng.normal(size=mixed.shape) * (NOISE / math.sqrt(dimension))
            yield rows, (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)

    def records(self, rows: range) -> tuple[list[DocumentRecord], list[ChunkRecord], list[str]]:
        """The documents that start in `rows`, the chunks of `rows` and their BM25 texts."""
        m = len(self.chunks)
        documents, chunks, texts = [], [], []
        for row in rows:
            copy, source = divmod(row, m)
            c = self.chunks[source]
            doc = self.documents[c.doc_id]
            if source in self.first_of_document:
                documents.append(DocumentRecord(f"{doc.doc_id}.{copy}", doc.metadata, doc.text, doc.sections,
                                                f"{doc.content_hash[:16]}.{copy}"))
            chunks.append(ChunkRecord(f"{c.chunk_id}.{copy}", f"{c.doc_id}.{copy}", c.section, c.char_start,
                                      c.char_end, c.text, c.n_tokens, c.n_model_tokens, c.embed_hash))
            texts.append(embed_input(str(doc.metadata["title"]), c.section, c.text))
        return documents, chunks, texts


def run_scale(settings: Settings, n: int, backend: str, scifact: Path, log: Callable[[str], None]) -> dict[str, Any]:
    embedder, source_store, questions = scifact_source(settings, scifact, log)
    source = Source(source_store)
    question_vectors = embedder.encode(questions, batch_size=settings.embed_batch_size)
    work = settings.cache_dir / "scale"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{backend}-{n}-") as tmp:
        target = settings.model_copy(update={
            "vector_store": backend, "index_dir": Path(tmp) / "index", "milvus_uri": str(Path(tmp) / "milvus.db"),
            "highlights": False})
        build_s, peak_rss_mb = build_in_child(target, n, source_store.folder)
        log(f"built {n} chunks in {build_s:.0f} s (peak RSS {peak_rss_mb:.0f} MB); starting rag serve on it")
        # first, and alone: a Milvus Lite file serves one process at a time
        served = _serve(target, questions)
        log("measuring searches")
        store = open_store(target, spec_of(target))
        try:
            timings = _search_timings(store, questions, question_vectors, Fusion.parse(settings.fusion,
                                                                                       settings.fusion_depth))
            recall = _recall(store, source, n, question_vectors)
            index = store.manifest["store"].get("dense_index", store.manifest["store"].get("index"))
        finally:
            store.close()
        disk_mb = size_on_disk(Path(tmp)) / 2**20
    timings["dense"]["recall_at_10"] = round(recall, 4)
    return {"backend": backend, "chunks": n, "index": index, **timings, "build_s": round(build_s, 1),
            "peak_rss_mb": round(peak_rss_mb, 1), "disk_mb": round(disk_mb, 1), **served,
            "source": f"{scifact.name}: {len(source.chunks)} chunks embedded by {settings.model} "
                      f"({settings.embed_backend}), mixed and noised to {n}; {len(questions)} test questions"}


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


def build_in_child(target: Settings, n: int, source_folder: Path) -> tuple[float, float]:
    """Build in a fresh process: its time and peak RSS are the build's alone."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_build_child, args=(target.model_dump_json(), n, str(source_folder), results))
    child.start()
    outcome = results.get()
    child.join()
    if isinstance(outcome, str):
        raise RuntimeError(f"the scale build failed: {outcome}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, of the largest child
    return float(outcome), peak_kb / 1024


def _build_child(target_json: str, n: int, source_folder: str, results: Any) -> None:
    try:
        results.put(build_synthetic(Settings.model_validate_json(target_json), n, Path(source_folder)))
    except Exception as exc:  # the parent reports it
        results.put(f"{type(exc).__name__}: {exc}")


def build_synthetic(target: Settings, n: int, source_folder: Path) -> float:
    """Write the N-chunk collection into the target store; returns the seconds it took
    from precomputed vectors (the source's), not counting loading the source."""
    from rag.stores.manifest import read_manifest

    model = read_manifest(source_folder)["model"]
    source = Source(LocalStore(source_folder, read_manifest(source_folder)))
    started = time.perf_counter()
    with open_writer(target, model["dimension"], log=lambda m: tqdm.write(m, file=sys.stderr)) as writer:
        with tqdm(total=n, unit="chunk", desc="writing", unit_scale=True) as bar:
            for rows, vectors in source.blocks(n):
                documents, chunks, texts = source.records(rows)
                writer.add_documents(documents)
                writer.add_chunks(chunks, vectors, lexical_texts=texts)
                bar.update(len(rows))
        documents_total = sum(1 for r in range(n) if r % len(source.chunks) in source.first_of_document)
        writer.commit(build_manifest(target, model["dimension"], model["max_tokens"],
                                     corpus={"hash": f"synthetic-{n}", "documents": {}},
                                     counts={"documents": documents_total, "chunks": n}))
    return time.perf_counter() - started


# ------------------------------------------------------------------ measurements


def _search_timings(store: Any, questions: list[str], vectors: np.ndarray, fusion: Fusion) -> dict[str, Any]:
    searches = {
        "dense": lambda q, v: store.dense(v, 10, Filters()),
        "lexical": lambda q, v: store.lexical(q, 10, Filters()),
        "hybrid": lambda q, v: fuse(store.dense(v, fusion.depth, Filters()),
                                    store.lexical(q, fusion.depth, Filters()), fusion)[0][:10],
    }
    out = {}
    for name, search in searches.items():
        for q, v in zip(questions, vectors):  # warm-up: page cache and FAISS's first-call costs
            search(q, v)
        ms = []
        for q, v in zip(questions, vectors):
            started = time.perf_counter()
            search(q, v)
            ms.append((time.perf_counter() - started) * 1000)
        out[name] = {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 0.99), 3)}
    return out


def _recall(store: Any, source: Source, n: int, vectors: np.ndarray) -> float:
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
    for side in ("dense", "lexical", "hybrid"):
        row = result[side]
        extra = f", recall@10 {row['recall_at_10']}" if "recall_at_10" in row else ""
        lines.append(f"  {side:<8} p50 {row['p50_ms']:>8.2f} ms   p99 {row['p99_ms']:>8.2f} ms{extra}")
    return "\n".join(lines)
