"""rag: cited-passage retrieval over a folder of articles.

The pipeline, one package per stage:
    ingest, clean, chunk (rag.ingest) -> embed (rag.encoders)
    -> store (FAISS + BM25 + manifest: rag.stores) -> retrieve (rag.search)
`rag.ingest.build.build_index` runs the first five; `rag.search.retriever.Retriever` answers queries.
"""

import os

# OpenMP threads (torch's and FAISS's) spin on idle cores after each parallel region; on a
# 2-core machine that steals the cores from the event loop and from clients (measured with
# `rag bench serve`: docs/benchmarks.md#openmp-threads-rag__init__py). Must be set
# before torch or faiss is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Nothing may download at run time. huggingface_hub reads this once, when it is first
# imported (by transformers, tokenizers' hub helpers, ...), so it is set here, before any of
# them; a CI run stalled in the hub's retry backoff for a model name that is not cached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
