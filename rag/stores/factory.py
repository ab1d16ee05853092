"""The factory of stores, chosen by `RAG_VECTOR_STORE`: `local` (files under the index
folder) or `milvus` (a Milvus server, cluster or Milvus Lite file, an optional extra)."""

from typing import Any

from rag.settings import Settings
from rag.stores.base import ChunkStore, StoreWriter
from rag.stores.manifest import IndexSpec


def open_store(settings: Settings, spec: IndexSpec | None) -> ChunkStore:
    """The live build of the configured store, checked against `spec`."""
    if settings.vector_store == "milvus":
        from rag.stores.milvus.store import open_milvus

        return open_milvus(settings.milvus_uri, spec, settings.milvus_collection, token=milvus_token(settings))
    from rag.stores.local.store import open_local

    return open_local(settings.index_dir, spec)


def open_writer(settings: Settings, dimension: int, log: Any = None) -> StoreWriter:
    """A writer for a new build of the configured store (use it as a context manager)."""
    if settings.vector_store == "milvus":
        from rag.stores.milvus.writer import milvus_writer

        return milvus_writer(settings.milvus_uri, dimension, settings.milvus_collection, token=milvus_token(settings))
    from rag.stores.local.writer import LocalWriter

    return LocalWriter(settings.index_dir, dimension, log)


def milvus_token(settings: Settings) -> str | None:
    """RAG_MILVUS_TOKEN's secret, or None."""
    return settings.milvus_token.get_secret_value() if settings.milvus_token else None
