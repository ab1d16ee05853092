"""Open the index and model that the settings name: the one entry point that the CLI,
the HTTP service and the eval harness share.

Left out: caching across calls (the HTTP service holds its own long-lived Retriever).
"""

from rag.build import spec_of
from rag.embed import load_embedder
from rag.retrieve import Retriever
from rag.settings import Settings
from rag.store import load_index


def open_retriever(settings: Settings) -> Retriever:
    """Load the index first (fast, and fails fast with a clear message), then the model."""
    index = load_index(settings.index_dir, spec_of(settings))
    return Retriever(index, load_embedder(settings.model), max_k=settings.max_k)
