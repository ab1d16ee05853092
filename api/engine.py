"""What the service runs on: the model, the live index, micro-batching and hot reload.

Micro-batching: questions wait in a queue; one worker thread takes everything queued,
embeds it in one model call and searches each question. While a batch runs, new
questions queue up and form the next batch, so a lone client pays no waiting window and
many clients share model calls. `batch_wait_ms` adds a fixed window for bigger batches.
The event loop never runs model or search code.

Hot reload: a background task polls `index/CURRENT` (every `reload_poll_seconds`) and,
when it names a new build, loads it in a thread and swaps the retriever reference.
A request in flight keeps the retriever it started with, so nothing fails mid-swap.
`POST /admin/reload` does the same at once. A build that fails to load is reported by
/ready's `reload_error` while the previous one keeps serving.

Left out: several worker processes (one process with batching keeps one model copy in
memory); GPU placement.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rag.build import spec_of
from rag.embed import Embedder, load_embedder
from rag.errors import RagError
from rag.rerank import load_reranker
from rag.retrieve import Filters, Mode, Reranker, Retriever
from rag.schema import QueryResponse
from rag.service import retriever_for
from rag.settings import Settings
from rag.store import load_index

log = logging.getLogger("rag.engine")
WARM_UP_QUESTION = "How do China and Russia cooperate?"


class NotReadyError(RagError):
    """The service has no index (or model) to answer with yet."""


@dataclass
class _Job:
    question: str
    k: int
    filters: Filters
    mode: Mode | None
    max_per_doc: int | None
    future: asyncio.Future[QueryResponse] = field(repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(self, settings: Settings, embedder_factory: Callable[[str], Embedder] = load_embedder):
        self.settings = settings
        self._embedder_factory = embedder_factory
        self.embedder: Embedder | None = None
        self.reranker: Reranker | None = None
        self.retriever: Retriever | None = None
        self.not_ready: str | None = "starting: loading the model"
        self.reload_error: str | None = None
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes, for /metrics
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-query")
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._current_pointer: str | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.embedder = await loop.run_in_executor(self._worker, self._load_model)
        await self.reload()
        self._tasks.append(asyncio.create_task(self._batch_loop()))
        if self.settings.reload_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(self._watch_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _load_model(self) -> Embedder:
        embedder = self._embedder_factory(self.settings.model)
        embedder.encode([WARM_UP_QUESTION])  # first call pays one-off costs; no request will
        if self.settings.reranker:  # once: index reloads reuse it
            self.reranker = load_reranker(self.settings.reranker)
        return embedder

    # ------------------------------------------------------------ reload

    def _pointer(self) -> str | None:
        try:
            return (self.settings.index_dir / "CURRENT").read_text().strip()
        except OSError:
            return None

    async def reload(self) -> bool:
        """Load the live build if it differs from the one served. True if swapped."""
        async with self._reload_lock:
            pointer = self._pointer()
            if pointer is not None and pointer == self._current_pointer and self.retriever is not None:
                return False
            loop = asyncio.get_running_loop()
            try:  # loading and preparing an index is CPU work: never on the event loop
                retriever = await loop.run_in_executor(None, self._load_retriever)
            except RagError as exc:
                self._current_pointer = pointer  # do not retry a broken build every poll
                if self.retriever is None:
                    self.not_ready = str(exc)
                else:
                    self.reload_error = str(exc)
                log.warning("index not loaded: %s", exc)
                return False
            self.retriever = retriever
            self._current_pointer = pointer
            self.not_ready = self.reload_error = None
            log.info("serving index build %s (%d chunks)", retriever.index.build_id, len(retriever.index.chunks))
            return True

    def _load_retriever(self) -> Retriever:
        assert self.embedder is not None
        index = load_index(self.settings.index_dir, spec_of(self.settings))
        return retriever_for(self.settings, index, self.embedder, self.reranker)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_poll_seconds)
            if self._pointer() != self._current_pointer:
                await self.reload()

    # ------------------------------------------------------------ queries

    def live(self) -> Retriever:
        if self.retriever is None:
            raise NotReadyError(self.not_ready or "no index loaded")
        return self.retriever

    async def query(self, question: str, k: int, filters: Filters, mode: Mode | None,
                    max_per_doc: int | None = None) -> QueryResponse:
        retriever = self.live()
        retriever.validate(question, k, filters, mode or retriever.default_mode, max_per_doc)  # before queueing
        future: asyncio.Future[QueryResponse] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(question, k, filters, mode, max_per_doc, future))
        return await future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.settings.batch_wait_ms / 1000
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait
            while len(batch) < self.settings.max_batch:
                try:
                    if wait and (left := deadline - loop.time()) > 0:
                        batch.append(await asyncio.wait_for(self._queue.get(), left))
                    else:
                        batch.append(self._queue.get_nowait())
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            live = [job for job in batch if not job.future.done()]  # skip cancelled clients
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                results = await loop.run_in_executor(self._worker, self._answer, self.live(), live)
            except Exception as exc:  # a bug must fail these requests, not the loop
                log.exception("batch of %d failed", len(live))
                results = [exc] * len(live)
            for job, result in zip(live, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    @staticmethod
    def _answer(retriever: Retriever, jobs: list[_Job]) -> list[QueryResponse | Exception]:
        """Runs in the worker thread: one model call for the batch, then one search each.
        Every mode needs the question's vector: confidence and highlights use it."""
        vectors = retriever.embedder.encode([j.question for j in jobs])
        out: list[QueryResponse | Exception] = []
        for job, vector in zip(jobs, vectors):
            try:
                response = retriever.query(job.question, job.k, job.filters, job.mode, job.max_per_doc,
                                           query_vector=vector)
                took_ms = round((time.perf_counter() - job.queued_at) * 1000, 3)
                out.append(response.model_copy(update={"took_ms": took_ms}))
            except Exception as exc:
                out.append(exc)
        return out

