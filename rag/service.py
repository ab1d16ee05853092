"""Open the index and model that the settings name: the one entry point that the CLI,
the HTTP service and the eval harness share.

Left out: caching across calls (the HTTP service holds its own long-lived Retriever).
"""

from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.encoders.rerank import load_reranker
from rag.ingest.build import spec_of
from rag.search.retriever import Reranker, Retriever
from rag.settings import Settings
from rag.stores.base import ChunkStore
from rag.stores.factory import open_store
from rag.types import Abstention, Fusion


def open_retriever(settings: Settings) -> Retriever:
    """Open the index first (fast, and fails fast with a clear message), then the model."""
    store = open_store(settings, spec_of(settings))
    return retriever_for(settings, store, embedder_from(settings))


def retriever_for(settings: Settings, store: ChunkStore, embedder: Embedder,
                  reranker: Reranker | None = None) -> Retriever:
    """A retriever configured by `settings` over an index and models already loaded
    (the reranker is loaded here if the settings name one and none is given)."""
    if reranker is None and settings.reranker:
        reranker = load_reranker(settings.reranker)
    return Retriever(
        store, embedder, max_k=settings.max_k, default_mode=settings.default_mode,
        fusion=Fusion.parse(settings.fusion, depth=settings.fusion_depth),
        abstention=Abstention(settings.abstain_slope, settings.abstain_offset, settings.abstain_missing_weight,
                              settings.abstain_answer_weight, settings.abstain_answer_center),
        reranker=reranker,
        rerank_depth=settings.rerank_depth, collapse_overlap=settings.collapse_overlap,
        max_filter_values=settings.max_filter_values,
        highlight_lexical_weight=settings.highlight_lexical_weight,
    )
