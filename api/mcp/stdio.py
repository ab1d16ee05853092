"""`rag mcp`: the MCP tools over stdio, for desktop clients (Claude Desktop, Cursor) that
start the server themselves. It reads the index folder directly: the built corpus and
the live collections, no service needed, as the local user (LOCAL: every collection).

The model is loaded at the first search, not at start-up, so a client's handshake is
answered at once (and nothing a library prints while loading can reach the protocol:
the SDK has diverted stdout to stderr by then). Queries run one at a time on one thread,
as the service's batcher runs them. The built corpus is reloaded when `rag build`
publishes a new build (api.engine.reload.LiveIndex, checked at each call), and a live
collection written by `rag add` or the service is seen at its next query (rag.collections).

Left out: writes (use `rag add` or the HTTP API), and batching concurrent questions.
"""

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio

from api.engine.reload import LiveIndex
from api.mcp.tools import build_server
from rag.access.gate import LOCAL
from rag.collections import DEFAULT, Collections
from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.encoders.rerank import load_reranker
from rag.errors import NotReadyError
from rag.ingest.build import spec_of
from rag.schema import QueryResponse
from rag.search.retriever import Reranker, Retriever
from rag.service import retriever_for
from rag.settings import Settings
from rag.stores.base import LiveStore
from rag.stores.factory import open_store
from rag.types import Filters

T = TypeVar("T")


class LocalKnowledge:
    """The index folder, read as the local user."""

    principal = LOCAL

    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self._embedder, self._reranker = embedder, None if embedder is None else self._load_reranker()
        self._model_lock = threading.Lock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rag-mcp")
        self._index = LiveIndex(settings)
        self._collections = Collections(settings, embedder=None, dropped=self._drop)  # reads embed nothing
        self._retrievers: dict[str, tuple[LiveStore, Retriever]] = {}

    def _load_reranker(self) -> Reranker | None:
        return load_reranker(self.settings.reranker) if self.settings.reranker else None

    def _model(self) -> tuple[Embedder, Reranker | None]:
        with self._model_lock:
            if self._embedder is None:
                self._embedder = embedder_from(self.settings)
                self._reranker = self._load_reranker()
            return self._embedder, self._reranker

    def _drop(self, collection: str) -> None:
        self._retrievers.pop(collection, None)

    def names(self) -> list[str]:
        return self._collections.names()

    async def _on_worker(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    def _load_default(self) -> Retriever:
        embedder, reranker = self._model()
        return retriever_for(self.settings, open_store(self.settings, spec_of(self.settings)), embedder, reranker)

    async def retriever(self, collection: str) -> Retriever:
        if collection == DEFAULT:
            await self._index.reload(self._load_default)  # a new build published since: load it
            if self._index.retriever is None:
                raise NotReadyError(self._index.not_ready or "no index loaded")
            return self._index.retriever
        return await self._on_worker(lambda: self._live(collection))

    def _live(self, collection: str) -> Retriever:
        kb = self._collections.get(collection)
        known = self._retrievers.get(collection)
        if known is None or known[0] is not kb:  # a collection deleted and made again is another one
            embedder, reranker = self._model()
            known = (kb, retriever_for(self.settings, kb, embedder, reranker))
            self._retrievers[collection] = known
        return known[1]

    async def query(self, collection: str, question: str, k: int, filters: Filters) -> QueryResponse:
        retriever = await self.retriever(collection)
        return await self._on_worker(lambda: retriever.query(question, k, filters))

    def link(self, collection: str, doc_id: str, start: int, end: int) -> str | None:
        return None  # no service to open it on

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._collections.close()


def run_stdio(settings: Settings, embedder: Embedder | None = None) -> None:
    """Serve the tools on stdin and stdout until the client closes them. `embedder`: the
    model to use instead of the configured one (tests)."""
    local = LocalKnowledge(settings, embedder)
    server = build_server(lambda ctx: local)
    try:
        anyio.run(server.run_stdio_async)
    finally:
        local.close()

