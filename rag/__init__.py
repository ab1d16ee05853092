"""rag: cited-passage retrieval over a folder of articles.

The pipeline, one package per stage:
    ingest, clean, chunk (rag.ingest) -> embed (rag.encoders)
    -> store (FAISS + BM25 + manifest: rag.stores) -> retrieve (rag.search)
`rag.ingest.build.build_index` runs the first five; `rag.search.retriever.Retriever` answers queries.
"""

import os

# what this module set, not the user: a benchmark's plain-process reference (rag.bench.reference) takes them out
SET_HERE = tuple(name for name in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "HF_HUB_OFFLINE")
                 if name not in os.environ)
# OpenMP threads (torch's and FAISS's) spin on idle cores after each parallel region; on a
# 2-core machine that steals the cores from the event loop and from clients (measured with
# `rag bench serve`: docs/benchmarks.md#openmp-threads-rag__init__py). Must be set
# before torch or faiss is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS (pthreads, not OpenMP) splits a product over 2,000 or more rows across
# threads that then spin ~100 ms before sleeping: measured, a query on a 2,359-chunk
# collection cost rag serve ~115 ms of CPU for ~15 ms of work, a constant tax on every other
# client and on a re-embed beside it (docs/benchmarks.md#numpys-blas-threads-rag__init__py).
# The products on the query path are small; one thread is faster than waking others. FAISS
# has its own OpenBLAS (OpenMP threads, under the policy above), which this leaves alone.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Nothing may download at run time. huggingface_hub reads this once, when it is first
# imported (by transformers, tokenizers' hub helpers, ...), so it is set here, before any of
# them; a CI run stalled in the hub's retry backoff for a model name that is not cached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
