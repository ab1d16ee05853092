"""rag: cited-passage retrieval over a folder of articles.

The pipeline, one module per step:
    ingest -> clean -> chunk -> embed -> store (FAISS + BM25 + manifest) -> retrieve
`rag.build.build_index` runs the first five; `rag.retrieve.Retriever` answers queries.
"""

__version__ = "0.1.0"
