"""What the service runs on: the model, the live index, micro-batching and hot reload.

Micro-batching: questions wait in a bounded queue; one worker thread takes everything
queued, embeds it in one model call and searches each question. While a batch runs, new
questions queue up and form the next batch, so a lone client pays no waiting window and
many clients share model calls. `batch_wait_ms` adds a fixed window for bigger batches.
The event loop never runs model or search code.

Isolation: a question the model rejects fails alone. When a batch's model call raises,
each question is encoded on its own and only the ones that fail again get an error.
A full queue answers at once (OverloadedError, 503 with Retry-After) instead of piling
up work nobody will wait for, and every question has a deadline (`request_timeout_seconds`).
The batch loop survives any exception; if it ever stops, /ready says so.

Hot reload: a background task polls `index/CURRENT` (every `reload_poll_seconds`) and,
when it names a new build, loads it in a thread and swaps the retriever reference.
A request in flight keeps the retriever it started with, so nothing fails mid-swap.
`POST /admin/reload` does the same at once. A build that fails to load, with any
exception, is reported by /ready's `reload_error` while the previous one keeps serving;
it is not retried every poll unless the failure may pass (the build changed while it was
read, or reading it failed: EIO, EMFILE), and the watcher itself never dies.

Left out: several worker processes (one process with batching keeps one model copy in
memory); GPU placement; priorities between clients.
"""

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from api.write_states import State, WriteStates
from rag.collections import DEFAULT, Collections
from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.encoders.rerank import load_reranker
from rag.errors import (
    BadQueryError,
    DeadlineError,
    IndexBusyError,
    NotReadyError,
    OverloadedError,
    RagError,
    ReadOnlyError,
    ReloadError,
    StorageError,
)
from rag.ingest.build import spec_of
from rag.schema import QueryResponse
from rag.search.conversation import trim_history
from rag.search.retriever import Reranker, Retriever
from rag.service import retriever_for
from rag.settings import Settings
from rag.stores.base import LiveStore
from rag.stores.factory import open_store
from rag.stores.local.builds import clean_orphans
from rag.types import Filters, Mode

T = TypeVar("T")
log = logging.getLogger("rag.engine")
WARM_UP_QUESTION = "How do China and Russia cooperate?"


@dataclass
class _Job:
    question: str
    k: int
    filters: Filters
    mode: Mode | None
    max_per_doc: int | None
    future: asyncio.Future[QueryResponse] = field(repr=False)
    history: tuple[str, ...] = ()  # earlier user turns, oldest first
    retriever: Retriever | None = None  # a live collection's; None: the built corpus's
    queued_at: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(self, settings: Settings, embedder_factory: Callable[[str], Embedder] | None = None):
        self.settings = settings
        self._embedder_factory = embedder_factory or (lambda name: embedder_from(settings))
        self.embedder: Embedder | None = None
        self.reranker: Reranker | None = None
        self.retriever: Retriever | None = None
        self.not_ready: str | None = "starting: loading the model"
        self.reload_error: str | None = None
        self.worker_error: str | None = None  # set if the batch loop ever stops
        self.on_batch: Callable[[int], None] = lambda size: None  # the app counts batch sizes for /metrics
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_queue)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-query")
        # writes embed on their own thread, never on the event loop, and queue behind each other
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-write")
        self.collections: Collections | None = None
        self.pending = WriteStates()  # big writes answered 202, and vector store files being written
        self._collection_retrievers: dict[str, tuple[LiveStore, Retriever]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._failed_build: str | None = None  # a build that failed to load for good: not retried by polls

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, clean_orphans, self.settings.index_dir)
        try:
            self.embedder = await loop.run_in_executor(self._worker, self._load_model)
        except Exception as exc:  # the process stays up and /ready says why
            log.exception("model not loaded")
            self.not_ready = f"model not loaded: {exc}"
            return
        self.collections = Collections(self.settings, self.embedder)
        with contextlib.suppress(RagError):
            await self.reload()
        batch = asyncio.create_task(self._batch_loop())
        batch.add_done_callback(self._batch_loop_ended)
        self._tasks.append(batch)
        if self.settings.reload_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(self._watch_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True, cancel_futures=True)
        if self.collections is not None:
            self.collections.close()

    async def write(self, work: Callable[[Collections], T]) -> T:
        """Run a write (it embeds) on the writer thread; read-only service: 403."""
        writes_allowed(self.settings)
        collections = self.live_collections()
        return await asyncio.get_running_loop().run_in_executor(self._writer, work, collections)

    def write_later(self, key: tuple[str, str], work: Callable[[Collections], Any],
                    content_hash: str | None = None) -> None:
        """Queue a long write (a big file) on the writer thread and return at once; its
        state is in `pending[key]` (in_progress, with the content's hash, then completed or
        failed with the reason), until a later write of the same document replaces it."""
        writes_allowed(self.settings)
        collections = self.live_collections()
        state = self.pending.start(key, content_hash)

        def run() -> None:
            try:
                work(collections)
                outcome: State = {"status": "completed", "error": None}
            except RagError as exc:
                outcome = {"status": "failed", "error": str(exc)}
            except Exception as exc:  # a bug fails this write, and says so
                log.exception("write %s failed", key)
                outcome = {"status": "failed", "error": f"internal error: {type(exc).__name__}"}
            self.pending.finish(key, state, outcome)  # unless a later write of the document was queued

        self._writer.submit(run)

    def live_collections(self) -> Collections:
        if self.collections is None:
            raise NotReadyError(self.not_ready or "collections are not open yet")
        return self.collections

    def retriever_of(self, collection: str) -> Retriever:
        """The built corpus's retriever for `default`, else the live collection's."""
        if collection == DEFAULT:
            return self.live()
        kb = self.live_collections().get(collection)
        known = self._collection_retrievers.get(collection)
        if known is None or known[0] is not kb:  # a collection deleted and made again is another one
            assert self.embedder is not None
            known = (kb, retriever_for(self.settings, kb, self.embedder, self.reranker))
            self._collection_retrievers[collection] = known
        return known[1]

    def _load_model(self) -> Embedder:
        embedder = self._embedder_factory(self.settings.model)
        embedder.encode([WARM_UP_QUESTION])  # first call pays one-off costs; no request will
        if self.settings.reranker:  # once: index reloads reuse it
            self.reranker = load_reranker(self.settings.reranker)
        return embedder

    def _batch_loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.worker_error = f"the query worker stopped: {task.exception()!r}"
        log.error(self.worker_error)

    # ------------------------------------------------------------ reload

    def _pointer(self) -> str | None:
        try:
            return (self.settings.index_dir / "CURRENT").read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    @property
    def served_build(self) -> str | None:
        return self.retriever.store.build_id if self.retriever is not None else None

    async def reload(self, explicit: bool = False) -> bool:
        """Load the live build if it differs from the one served. True if swapped.
        With `explicit`, a build that fails to load raises ReloadError; otherwise the
        failure is recorded for /ready."""
        if self.embedder is None:  # the model failed to load: nothing to serve an index with
            if explicit:
                raise NotReadyError(self.not_ready or "the model is not loaded")
            return False
        async with self._reload_lock:
            pointer = self._pointer()
            if pointer is not None and pointer == self.served_build:
                return False
            loop = asyncio.get_running_loop()
            try:  # loading and preparing an index is CPU work: never on the event loop
                retriever = await loop.run_in_executor(None, self._load_retriever)
            except Exception as exc:  # any failure: keep serving, and say why
                transient = _may_pass(exc)
                message = str(exc) if isinstance(exc, RagError) else f"{type(exc).__name__}: {exc}"
                if not transient:
                    self._failed_build = pointer
                if self.retriever is None:
                    self.not_ready = message
                else:
                    self.reload_error = message
                log.warning("index not loaded: %s", message)
                if explicit:
                    serving = f"; still serving build {self.served_build}" if self.retriever else ""
                    raise ReloadError(f"the new build could not be loaded: {message}{serving}") from exc
                return False
            self.retriever = retriever
            self._failed_build = None
            self.not_ready = self.reload_error = None
            log.info("serving index build %s (%d chunks)", retriever.store.build_id, retriever.store.count())
            return True

    def _load_retriever(self) -> Retriever:
        assert self.embedder is not None
        store = open_store(self.settings, spec_of(self.settings))
        return retriever_for(self.settings, store, self.embedder, self.reranker)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_poll_seconds)
            try:
                pointer = self._pointer()
                if pointer is not None and pointer not in (self.served_build, self._failed_build):
                    await self.reload()
            except Exception:  # the watcher must outlive anything a build can do to it
                log.exception("index watcher: reload failed")

    # ------------------------------------------------------------ queries

    def live(self) -> Retriever:
        if self.worker_error is not None:
            raise NotReadyError(self.worker_error)
        if self.retriever is None:
            raise NotReadyError(self.not_ready or "no index loaded")
        return self.retriever

    async def query(self, question: str, k: int, filters: Filters, mode: Mode | None,
                    max_per_doc: int | None = None, history: Sequence[str] = (),
                    collection: str = DEFAULT) -> QueryResponse:
        retriever = self.retriever_of(collection)
        history = tuple(trim_history(history, self.settings.max_history_turns, self.settings.max_history_chars))
        # checked before queueing
        retriever.validate(question, k, filters, mode or retriever.default_mode, max_per_doc, history)
        future: asyncio.Future[QueryResponse] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(question, k, filters, mode, max_per_doc, future, history=history,
                                        retriever=None if collection == DEFAULT else retriever))
        except asyncio.QueueFull:
            raise OverloadedError(f"{self.settings.max_queue} questions are already waiting; "
                                  "retry in a moment") from None
        try:  # a timed-out future is cancelled, and the batch loop skips it
            return await asyncio.wait_for(future, self.settings.request_timeout_seconds)
        except TimeoutError:
            raise DeadlineError(f"no answer within {self.settings.request_timeout_seconds:g} s; "
                                "the service is busy, retry in a moment") from None

    async def _next_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        wait = self.settings.batch_wait_ms / 1000
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
        return [job for job in batch if not job.future.done()]  # skip clients that gave up

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = await self._next_batch()
            if not live:
                continue
            self.on_batch(len(live))
            results: list[QueryResponse | BaseException]
            try:
                results = list(await loop.run_in_executor(self._worker, self._answer, self._default(), live))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a bug must fail these requests, never the loop
                log.exception("batch of %d failed", len(live))
                results = [exc if isinstance(exc, RagError) else RuntimeError("internal error")] * len(live)
            for job, result in zip(live, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _default(self) -> Retriever | NotReadyError:
        """The built corpus's retriever, or why there is none (which fails only its own queries:
        a live collection answers without it)."""
        try:
            return self.live()
        except NotReadyError as exc:
            return exc

    def _answer(self, default: Retriever | NotReadyError, jobs: list[_Job]) -> list[QueryResponse | Exception]:
        """Runs in the worker thread: one model call for the batch, then one search each.
        Every mode needs the question's vector: confidence and highlights use it."""
        assert self.embedder is not None  # the batch loop starts after the model loaded
        vectors = encode_each(self.embedder, [j.question for j in jobs])
        out: list[QueryResponse | Exception] = []
        for job, vector in zip(jobs, vectors):
            if isinstance(vector, Exception):
                out.append(vector)
                continue
            retriever = job.retriever or default
            if isinstance(retriever, NotReadyError):
                out.append(retriever)
                continue
            try:
                response = retriever.query(job.question, job.k, job.filters, job.mode, job.max_per_doc,
                                           query_vector=vector, history=job.history)
                took_ms = round((time.perf_counter() - job.queued_at) * 1000, 3)
                out.append(response.model_copy(update={"took_ms": took_ms}))
            except Exception as exc:
                out.append(exc)
        return out


def writes_allowed(settings: Settings) -> None:
    """Every write's gate: RAG_READ_ONLY turns them off (403)."""
    if settings.read_only:
        raise ReadOnlyError("this service is read-only (RAG_READ_ONLY): writes are off")


PASSING_ERRNOS = {errno.EIO, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EINTR}


def _may_pass(exc: Exception) -> bool:
    """A load failure a later poll may not repeat: the build moved while it was read, or
    reading it hit EIO or ran out of file handles. Permission denied does not pass."""
    if isinstance(exc, IndexBusyError):
        return True
    cause = exc if isinstance(exc, OSError) else exc.__cause__ if isinstance(exc, StorageError) else None
    return isinstance(cause, OSError) and cause.errno in PASSING_ERRNOS


INPUT_ERRORS = (TypeError, ValueError, UnicodeError)  # what tokenizers raise for text they cannot take


def encode_each(embedder: Embedder, questions: list[str]) -> list[np.ndarray | Exception]:
    """One model call for all; if it raises, one call per question, so that a question the
    model rejects fails alone and the others are answered. A rejection of the text itself
    (TypeError, ValueError, UnicodeError) is the question's fault: 422. Anything else (the
    runtime out of memory, a broken model) is the server's, and stays a 500."""
    try:
        return list(embedder.encode(questions))
    except Exception as exc:
        if len(questions) == 1:
            return [_rejected(exc)]
    out: list[np.ndarray | Exception] = []
    for question in questions:
        try:
            out.append(embedder.encode([question])[0])
        except Exception as exc:
            out.append(_rejected(exc))
    return out


def _rejected(exc: Exception) -> Exception:
    if not isinstance(exc, INPUT_ERRORS):
        log.error("the model failed on a question: %r", exc)
        return exc
    log.warning("the model rejected a question: %r", exc)
    return BadQueryError(f"the embedding model cannot encode this question ({type(exc).__name__})")
