"""What the service runs on: the model, loaded once at start-up, and the three parts that
share it: the built corpus kept current (`reload.LiveIndex`), questions answered in
batches (`batching.Batcher`), writes on their own thread (`writes.Writer`), and jobs on
theirs (`jobs.Runner`: a big write is a job too, api.engine.handlers). Live
collections get a retriever each, made once and kept while the collection is open: dropped
when it is deleted or released by the collections' LRU (`RAG_MAX_OPEN_COLLECTIONS`).

Left out: several worker processes (one process with batching keeps one model copy in
memory); GPU placement.

Why ~310 lines: start-up and shutdown order every part above (the model before the
collections, the spool before the jobs, the writer's grace before the runner), and the
routes reach them all through this one object.
"""

import asyncio
import contextlib
import ctypes
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from api.engine import spool
from api.engine.batching import Batcher, Job
from api.engine.jobs import Runner
from api.engine.reload import LiveIndex
from api.engine.writes import Key, Writer, WriteStates
from rag.collections import DEFAULT, Collections
from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.encoders.pool import ModelPool
from rag.encoders.rerank import load_reranker
from rag.errors import NotReadyError, RagError
from rag.ingest.build import spec_of
from rag.jobs import Job as JobRecord
from rag.jobs import JobCancelled, Jobs
from rag.schema import QueryResponse
from rag.search.conversation import trim_history
from rag.search.retriever import Reranker, Retriever
from rag.service import retriever_for
from rag.settings import Settings
from rag.stores.base import FILTER_FIELDS, LiveStore
from rag.stores.factory import open_store
from rag.stores.local.builds import clean_orphans
from rag.types import Filters, Laps, Mode

T = TypeVar("T")
log = logging.getLogger("rag.engine")
WARM_UP_QUESTION = "How do China and Russia cooperate?"
TRIM_EVERY = 32  # collections dropped between two malloc_trim calls (~1 ms each)
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform == "linux" else None


class Engine:
    def __init__(self, settings: Settings, embedder_factory: Callable[[str], Embedder] | None = None):
        self.settings = settings
        self._custom_models = embedder_factory is not None  # tests: every model is the one they give
        self._embedder_factory = embedder_factory or (lambda name: embedder_from(settings))
        self.embedder: Embedder | None = None
        self.reranker: Reranker | None = None
        self.index = LiveIndex(settings)
        self.batcher = Batcher(settings)
        self.writer = Writer(settings)
        self.jobs = Jobs(settings.index_dir)
        self.runner = Runner(self.jobs, self)
        self.collections: Collections | None = None
        self.models: ModelPool | None = None
        self._collection_retrievers: dict[str, tuple[LiveStore, Retriever]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._drops = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, clean_orphans, self.settings.index_dir)  # builds', collections'
        try:
            self.embedder = await loop.run_in_executor(self.batcher.worker, self._load_model)
        except Exception as exc:  # the process stays up and /ready says why
            log.exception("model not loaded")
            self.index.not_ready = f"model not loaded: {exc}"
            return
        other = (lambda name, backend: self._embedder_factory(name)) if self._custom_models else None
        self.models = ModelPool(self.settings, self.embedder, other)  # a collection on another model loads it
        self.collections = Collections(self.settings, self.embedder, dropped=self._drop_retriever, models=self.models)
        await loop.run_in_executor(None, self._resume)  # reads the spools: not on the event loop
        if not self.settings.read_only:  # other jobs whose process is gone, by their kinds' handlers
            await loop.run_in_executor(None, self.runner.resume)
        await loop.run_in_executor(None, self._sweep)
        with contextlib.suppress(RagError):
            await self.reload()
        self._tasks.append(self.batcher.start(self.embedder, self._default))
        if self.settings.reload_poll_seconds > 0:
            self._tasks.append(asyncio.create_task(self.index.watch(self._load_retriever)))

    async def stop(self) -> None:
        self.runner.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self.batcher.worker.shutdown(wait=True, cancel_futures=True)
        # the writes not started are dropped (big ones are in their spool); the running one gets the grace
        grace = self.settings.shutdown_grace_seconds
        if not await asyncio.get_running_loop().run_in_executor(None, self.writer.close, grace):
            log.warning("a write still runs after %g s (RAG_SHUTDOWN_GRACE_SECONDS): left to the exit; what was "
                        "acknowledged resumes at the next start", grace)
        elif self.collections is not None:  # not under a write still running
            self.collections.close()

    def _drop_retriever(self, collection: str) -> None:
        """A collection was released (LRU) or deleted: its retriever, and the indexes it holds, go;
        every TRIM_EVERY of them, glibc is asked to hand freed memory back to the OS (connections
        opened on many threads leave it in per-thread arenas: 2,000 collections kept ~230 MB)."""
        self._collection_retrievers.pop(collection, None)
        self._drops += 1
        if self._drops % TRIM_EVERY == 0 and _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def _load_model(self) -> Embedder:
        embedder = self._embedder_factory(self.settings.model)
        embedder.encode([WARM_UP_QUESTION])  # first call pays one-off costs; no request will
        if self.settings.reranker:  # once: index reloads reuse it
            self.reranker = load_reranker(self.settings.reranker)
        return embedder

    # ------------------------------------------------------------ what /ready reports

    @property
    def retriever(self) -> Retriever | None:
        return self.index.retriever

    @property
    def not_ready(self) -> str | None:
        return self.index.not_ready

    @property
    def reload_error(self) -> str | None:
        return self.index.reload_error

    @property
    def pending(self) -> WriteStates:
        return self.writer.pending

    # ------------------------------------------------------------ writes

    async def write(self, work: Callable[[Collections], T]) -> T:
        """Run a write (it embeds) on the writer thread; read-only service: 403."""
        return await self.writer.write(self.live_collections, work)

    def write_later(self, key: Key, work: Callable[[Collections], Any], content_hash: str | None = None,
                    on_done: Callable[[str | None], None] | None = None, resumed: bool = False) -> None:
        """Queue a long write (a big file) on the writer thread and return at once
        (`Writer.write_later`)."""
        self.writer.write_later(self.live_collections, key, work, content_hash, on_done, resumed)

    def write_spooled(self, entry: spool.Spooled, resumed: bool = False,
                      work: Callable[[Collections], Any] | None = None, owner: tuple[str, str] = ("local", "local"),
                      job: JobRecord | None = None) -> JobRecord:
        """A big write, saved to its collection's spool first (api.engine.spool) unless it is
        resumed from there: acknowledged only once it is on disk. `work` writes it (default:
        the document's upsert, as a resumed one is written). It is a job (kind upload, of
        `owner`: the key's name and id), recorded before the write is saved, so a saved write
        always has one; `job` runs it as that job (resumed, or retried). Its job."""
        doc = entry.doc
        folder = self.live_collections().root / entry.collection
        if not resumed:  # over a quota: refused now (413), not failed later
            self.live_collections().check_quota(entry.collection, doc)
        fresh = job is None
        if job is None:
            job = self.jobs.create("upload", entry.collection, {"doc_id": doc.doc_id}, owner[0], total=1,
                                   owner_id=owner[1])
        entry = replace(entry, job=job.id)
        if not resumed:
            try:
                entry = spool.save(folder, entry)
            except BaseException:
                job.finish(error="the write could not be saved (the server log says why)")
                if fresh:  # never acknowledged: no job either
                    with contextlib.suppress(RagError, OSError):
                        self.jobs.delete(job.id)
                raise
        saved, running, began = entry, job, threading.Event()
        upsert = work or (lambda c: c.upsert(saved.collection, doc, replace=saved.replace, clean=saved.clean))

        def run(collections: Collections) -> Any:
            if running.cancelled:  # DELETE /jobs/{id} before its turn: not written, kept for a retry
                raise JobCancelled("cancelled before it was written")
            began.set()
            running.start()
            return upsert(collections)

        def done(error: str | None) -> None:
            try:
                spool.finish(saved, error)  # first: a job left running with its entry gone was written (handlers)
            finally:  # the outcome is known, even if the spool could not say it
                if error is None:
                    running.item_retried(doc.doc_id)
                    running.progress(1)
                else:
                    running.item_failed(doc.doc_id, error)
                running.finish(error if began.is_set() else None)  # never started: cancelled

        self.runner.hold(job)
        try:
            self.write_later((entry.collection, doc.doc_id), run, content_hash=doc.content_hash, resumed=resumed,
                             on_done=done)
        except RagError as exc:  # refused (read-only, the queue full)
            if fresh:  # never acknowledged, so not kept, nor its job
                spool.drop(saved)
                job.finish(error=str(exc))
                with contextlib.suppress(RagError, OSError):
                    self.jobs.delete(job.id)
            else:  # a retry's content stays in its failure, for the next one
                spool.fail(folder, saved, str(exc))
                spool.drop(saved)
                job.item_failed(doc.doc_id, str(exc))
                job.finish(error=str(exc))
            raise
        return job

    def _resume(self) -> None:
        """Every write acknowledged before a restart, queued again (applied twice is
        harmless: the same content again is `unchanged`), as its job (one recorded for an
        entry older than jobs)."""
        assert self.collections is not None
        if self.settings.read_only:
            return
        for entry in spool.pending(self.collections.root):
            log.info("resuming the write of %s/%s acknowledged before a restart", entry.collection, entry.doc.doc_id)
            self.write_spooled(entry, resumed=True, job=spool.job_of(self.jobs, entry))

    def _sweep(self) -> None:
        """Milvus collections a crash left unregistered go (best effort: they cost space only)."""
        assert self.collections is not None
        try:
            if dropped := self.collections.sweep_milvus():
                log.info("dropped the Milvus collections of %d unregistered live collections: %s", len(dropped),
                         ", ".join(dropped))
        except Exception as exc:  # Milvus unreachable now: the next start tries again
            log.warning("could not sweep unregistered Milvus collections: %r", exc)

    def live_collections(self) -> Collections:
        if self.collections is None:
            raise NotReadyError(self.not_ready or "collections are not open yet")
        return self.collections

    # ------------------------------------------------------------ reload

    async def reload(self, explicit: bool = False) -> bool:
        """Load the live build if it differs from the one served. True if swapped."""
        if self.embedder is None:  # the model failed to load: nothing to serve an index with
            if explicit:
                raise NotReadyError(self.not_ready or "the model is not loaded")
            return False
        return await self.index.reload(self._load_retriever, explicit)

    def _load_retriever(self) -> Retriever:
        assert self.embedder is not None
        store = open_store(self.settings, spec_of(self.settings))
        return retriever_for(self.settings, store, self.embedder, self.reranker)

    # ------------------------------------------------------------ queries

    def live(self) -> Retriever:
        if self.batcher.worker_error is not None:
            raise NotReadyError(self.batcher.worker_error)
        if self.retriever is None:
            raise NotReadyError(self.not_ready or "no index loaded")
        return self.retriever

    def _default(self) -> Retriever | NotReadyError:
        """The built corpus's retriever, or why there is none (which fails only its own queries:
        a live collection answers without it)."""
        try:
            return self.live()
        except NotReadyError as exc:
            return exc

    def retriever_of(self, collection: str) -> Retriever:
        """The built corpus's retriever for `default`, else the live collection's."""
        if collection == DEFAULT:
            return self.live()
        kb = self.live_collections().get(collection)
        known = self._collection_retrievers.get(collection)
        if known is None or known[0] is not kb:  # a collection deleted and made again is another one
            known = (kb, retriever_for(self.settings, kb, self.live_collections().embedder_of(kb), self.reranker))
            self._collection_retrievers[collection] = known
        return known[1]

    async def query(self, question: str, k: int, filters: Filters, mode: Mode | None,
                    max_per_doc: int | None = None, history: Sequence[str] = (),
                    collection: str = DEFAULT, laps: Laps | None = None) -> QueryResponse:
        """`laps`, when given, collects the milliseconds of the request's steps (Server-Timing)."""
        retriever = self.retriever_of(collection)
        history = tuple(trim_history(history, self.settings.max_history_turns, self.settings.max_history_chars))
        # checked before queueing; filter values are looked up in the store (a remote one for
        # Milvus): then off the event loop
        checks = (question, k, filters, mode or retriever.default_mode, max_per_doc, history)
        if any(getattr(filters, name) for name in FILTER_FIELDS):
            await asyncio.get_running_loop().run_in_executor(None, retriever.validate, *checks)
        else:
            retriever.validate(*checks)
        future: asyncio.Future[QueryResponse] = asyncio.get_running_loop().create_future()
        return await self.batcher.answer(Job(question, k, filters, mode, max_per_doc, future, history=history,
                                             retriever=None if collection == DEFAULT else retriever, laps=laps))
