"""Where the time goes, for `rag bench serve`: chunk-embedding rates of the build against the
raw model on the same passages. (A /query's steps come from the server's Server-Timing header
on the benchmark's own requests: rag.bench.serve.)

- `embed_rates`: passages/s of the raw model at its best batch size (the model call
  alone, on batches already tokenised and sorted by length for the ONNX backend; the
  sentence-transformers `encode` at that batch size for torch), against the build's own
  path (`rag.ingest.build.embed_texts`: everything a build does to embed, tokenisation included).

Left out: profiling inside the model call (ONNX Runtime's own profiler does that).
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.encoders.base import Embedder
from rag.settings import Settings

BATCH_SIZES = (16, 32, 64)


def sample_passages(limit: int, scifact: Path | None, fallback: Sequence[str], embedder: Embedder,
                    settings: Settings) -> tuple[list[str], str]:
    """Up to `limit` real chunk texts (title, section, text as embedded) of SciFact, chunked
    as `settings` say, when its folder is there, else of the seed index."""
    if scifact is None or not (scifact / "corpus.jsonl").is_file():
        return list(fallback)[:limit], "seed corpus chunks"
    from rag.evaluation.beir import load_beir
    from rag.ingest.build import as_is
    from rag.ingest.chunk import ChunkParams, chunk_document

    documents, _, _ = load_beir(scifact)
    params = ChunkParams(settings.chunk_tokens, settings.chunk_overlap_tokens, embedder.max_tokens)
    texts: list[str] = []
    for doc in documents:
        chunks = chunk_document(doc.doc_id, str(doc.metadata["title"]), as_is(doc.text), params,
                                embedder.count_tokens)
        texts += [c.embed_input for c in chunks]
        if len(texts) >= limit:
            break
    return texts[:limit], "SciFact chunks"


def embed_rates(embedder: Embedder, texts: list[str], batch_size: int) -> dict[str, Any]:
    """Passages/s: the raw model's best over BATCH_SIZES, and the build's path."""
    from rag.ingest.build import embed_texts

    raw = {b: len(texts) / _raw_model_call(embedder, texts, b) for b in BATCH_SIZES}
    best = max(raw, key=lambda b: raw[b])
    started = time.perf_counter()
    embed_texts(texts, embedder, batch_size)
    build = len(texts) / (time.perf_counter() - started)
    return {"passages": len(texts), "raw_per_s": {str(b): round(r, 1) for b, r in raw.items()},
            "raw_best_per_s": round(raw[best], 1), "raw_best_batch": best, "build_per_s": round(build, 1),
            "build_over_raw_best": round(build / raw[best], 3)}


def _raw_model_call(embedder: Any, texts: list[str], batch_size: int) -> float:
    """The model alone (the encoder's `model_only`); returns the seconds spent in it."""
    run = embedder.model_only(texts, batch_size)
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def compare_backends(settings: Settings, scifact: Path | None) -> dict[str, Any]:
    """Cosine of every vector of each backend to torch's: the seed corpus's chunks and
    sentences (indexes built here, in a temporary folder), and SciFact's chunks when
    `rag eval --beir` has cached its index for every backend."""
    import tempfile

    import numpy as np

    from rag.encoders.base import VECTOR_FAMILY
    from rag.evaluation.beir import cache_key
    from rag.ingest.build import build_index, spec_of
    from rag.stores.local.store import open_local

    def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        c = (a * b).sum(axis=1)
        return {"min": round(float(c.min()), 7), "mean": round(float(c.mean()), 7), "vectors": len(c)}

    backends = list(VECTOR_FAMILY)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rag-backends-") as tmp:
        seed = {}
        for backend in backends:
            local = settings.model_copy(update={"embed_backend": backend, "index_dir": Path(tmp) / backend})
            build_index(local)
            seed[backend] = open_local(local.index_dir, spec_of(local))
        for backend in backends[1:]:
            out[backend] = {"seed chunks": cosines(seed["torch"].matrix(), seed[backend].matrix())}
            reference, other = seed["torch"].matrix(sentences=True), seed[backend].matrix(sentences=True)
            if len(reference) and len(other):
                out[backend]["seed sentences"] = cosines(reference, other)
    if scifact is not None and (scifact / "corpus.jsonl").is_file():
        cached = {}
        for backend in backends:
            local = settings.model_copy(update={"embed_backend": backend, "highlights": False})
            folder = settings.cache_dir / "beir" / f"{scifact.name}-{cache_key(scifact, local)}"
            if (folder / "CURRENT").exists():
                cached[backend] = open_local(folder).matrix()
        for backend in backends[1:]:
            if "torch" in cached and backend in cached:
                out[backend]["SciFact chunks"] = cosines(cached["torch"], cached[backend])
    return out
