"""Micro-batching: questions wait in a bounded queue; one worker thread takes everything
queued, embeds it in one model call and searches each question. While a batch runs, new
questions queue up and form the next batch, so a lone client pays no waiting window and
many clients share model calls. `batch_wait_ms` adds a fixed window for bigger batches.
The event loop never runs model or search code.

Texts to embed (POST /v1/embeddings, `Batcher.embed`) share the queue, its bound, the
deadline and the model thread: an `EmbedJob` is one queue entry that brings up to
`max_batch` texts, and a model call holds at most `max_batch` texts (a job that would
take it past that waits for the next call; one bigger than that, which the route refuses,
would go alone).

Isolation: a question the model rejects fails alone. When a batch's model call raises,
each question is encoded on its own and only the ones that fail again get an error.
A full queue answers at once (OverloadedError, 503 with Retry-After) instead of piling
up work nobody will wait for, and every question has a deadline (`request_timeout_seconds`).
The batch loop survives any exception; if it ever stops, /ready says so.

Left out: priorities between clients; several worker threads (one model call at a time
uses every core the model is given); a pipeline that searches one batch while the next is
embedded (measured: no more throughput, since the two cores are busy either way, and 0.17 ms
more a question for the hand-over: docs/benchmarks.md#where-a-query-goes-from-its-own-requests).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from api.engine.encoding import Embedded, embedded, encode_each
from rag.encoders.base import Embedder
from rag.errors import BadQueryError, DeadlineError, NotReadyError, OverloadedError, RagError
from rag.schema import QueryResponse
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.types import Filters, Laps, Mode, lap

T = TypeVar("T")
log = logging.getLogger("rag.engine")
Default = Callable[[], Retriever | NotReadyError]  # the built corpus's retriever, or why there is none


@dataclass
class EmbedJob:
    texts: list[str]
    future: asyncio.Future[Embedded] = field(repr=False)


@dataclass
class Job:
    question: str
    k: int
    filters: Filters
    mode: Mode | None
    max_per_doc: int | None
    future: asyncio.Future[QueryResponse] = field(repr=False)
    history: tuple[str, ...] = ()  # earlier user turns, oldest first
    retriever: Retriever | None = None  # a live collection's; None: the built corpus's
    queued_at: float = field(default_factory=time.perf_counter)
    laps: Laps | None = None  # the request's step timings (Server-Timing), when it collects them


class Batcher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.worker_error: str | None = None  # set if the batch loop ever stops
        self.on_batch: Callable[[int], None] = lambda size: None  # the app counts batch sizes for /metrics
        self._queue: asyncio.Queue[Job | EmbedJob] = asyncio.Queue(maxsize=settings.max_queue)
        self._held: Job | EmbedJob | None = None  # taken from the queue, left for the next model call
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-query")

    async def answer(self, job: Job) -> QueryResponse:
        """Queue the job and wait for its answer, within the request deadline."""
        return await self._wait(job, job.future, "questions")

    async def embed(self, texts: list[str]) -> Embedded:
        """The texts' vectors from the model thread, queued as one job: the queue's bound and
        the request deadline hold as for a question."""
        if not texts:
            raise BadQueryError("no text to embed")
        future: asyncio.Future[Embedded] = asyncio.get_running_loop().create_future()
        return await self._wait(EmbedJob(list(texts), future), future, "requests")

    async def _wait(self, job: Job | EmbedJob, future: asyncio.Future[T], what: str) -> T:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise OverloadedError(f"{self.settings.max_queue} {what} are already waiting; "
                                  "retry in a moment") from None
        try:  # a timed-out future is cancelled, and the batch loop skips it
            return await asyncio.wait_for(future, self.settings.request_timeout_seconds)
        except TimeoutError:
            raise DeadlineError(f"no answer within {self.settings.request_timeout_seconds:g} s; "
                                "the service is busy, retry in a moment") from None

    def start(self, embedder: Embedder, default: Default) -> asyncio.Task[None]:
        batch = asyncio.create_task(self._batch_loop(embedder, default))
        batch.add_done_callback(self._batch_loop_ended)
        return batch

    def _batch_loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.worker_error = f"the query worker stopped: {task.exception()!r}"
        log.error(self.worker_error)

    async def _next_batch(self) -> list[Job | EmbedJob]:
        """Jobs for one model call: at most `max_batch` texts (a job that would take the call
        past it is held for the next one)."""
        loop = asyncio.get_running_loop()
        wait = self.settings.batch_wait_ms / 1000
        held, self._held = self._held, None
        batch = [held or await self._queue.get()]
        texts = size_of(batch[0])
        deadline = loop.time() + wait
        while texts < self.settings.max_batch:
            try:
                if wait and (left := deadline - loop.time()) > 0:
                    job = await asyncio.wait_for(self._queue.get(), left)
                else:
                    job = self._queue.get_nowait()
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if texts + size_of(job) > self.settings.max_batch:
                self._held = job
                break
            batch.append(job)
            texts += size_of(job)
        return [job for job in batch if not job.future.done()]  # skip clients that gave up

    async def _batch_loop(self, embedder: Embedder, default: Default) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = await self._next_batch()
            if not live:
                continue
            self.on_batch(sum(size_of(job) for job in live))
            results: list[QueryResponse | Embedded | BaseException]
            try:
                results = list(await loop.run_in_executor(self.worker, answer_batch, embedder, default(), live))
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
                    job.future.set_result(result)  # type: ignore[arg-type]  # an Embedded for an EmbedJob


def size_of(job: Job | EmbedJob) -> int:
    """Texts the job brings to the model call."""
    return len(job.texts) if isinstance(job, EmbedJob) else 1


def answer_batch(embedder: Embedder, default: Retriever | NotReadyError,
                 jobs: list[Job | EmbedJob]) -> list[QueryResponse | Embedded | Exception]:
    """Runs in the worker thread: one model call for the batch, then one search each question."""
    return search_batch(embedder, default, jobs, encode_batch(embedder, jobs))


def encode_batch(embedder: Embedder, jobs: list[Job | EmbedJob]) -> list[list[np.ndarray | Exception]]:
    """One model call for the batch (one per model in it). A question's laps: "checks and
    queue" (until this batch started), "encode" (the batch's model call, which every question
    of it waits for)."""
    _lap_all(jobs, "checks and queue")
    encoded = _encoded(embedder, jobs)
    _lap_all(jobs, "encode")
    return encoded


def search_batch(embedder: Embedder, default: Retriever | NotReadyError, jobs: list[Job | EmbedJob],
                 encoded: list[list[np.ndarray | Exception]]) -> list[QueryResponse | Embedded | Exception]:
    """One search each question. Every mode needs the question's vector: confidence and
    highlights use it. `default` fails only its own queries: a live collection answers
    without it. An `EmbedJob` gets its texts' vectors, or the first error among them. A
    question's laps: "waiting to be searched" (the batch's searches before it), then its
    own steps."""
    out: list[QueryResponse | Embedded | Exception] = []
    for job, vectors in zip(jobs, encoded):
        if isinstance(job, EmbedJob):
            out.append(embedded(embedder, job.texts, vectors))
            continue
        if job.future.done():  # its client gave up while the batch was embedded
            out.append(DeadlineError("gave up"))
            continue
        lap(job.laps, "waiting to be searched")
        vector = vectors[0]
        if isinstance(vector, Exception):
            out.append(vector)
            continue
        retriever = job.retriever or default
        if isinstance(retriever, NotReadyError):
            out.append(retriever)
            continue
        try:
            response = retriever.query(job.question, job.k, job.filters, job.mode, job.max_per_doc,
                                       query_vector=vector, history=job.history, laps=job.laps)
            took_ms = round((time.perf_counter() - job.queued_at) * 1000, 3)
            out.append(response.model_copy(update={"took_ms": took_ms}))
        except Exception as exc:
            out.append(exc)
    return out


def _lap_all(jobs: list[Job | EmbedJob], name: str) -> None:
    now = time.perf_counter()
    for job in jobs:
        if isinstance(job, Job):
            lap(job.laps, name, now)


def _encoded(embedder: Embedder, jobs: list[Job | EmbedJob]) -> list[list[np.ndarray | Exception]]:
    """Each job's vectors: one model call per model in the batch (a live collection embeds
    with its own model, rag.encoders.pool; everything else with the service's)."""
    models: dict[int, tuple[Embedder, list[int]]] = {}
    for i, job in enumerate(jobs):
        model = job.retriever.embedder if isinstance(job, Job) and job.retriever is not None else embedder
        models.setdefault(id(model), (model, []))[1].append(i)
    out: list[list[np.ndarray | Exception]] = [[] for _ in jobs]
    for model, members in models.values():
        texts = [text for i in members for text in _texts(jobs[i])]
        vectors, at = encode_each(model, texts), 0
        for i in members:
            out[i] = vectors[at:at + len(_texts(jobs[i]))]
            at += len(out[i])
    return out


def _texts(job: Job | EmbedJob) -> list[str]:
    return job.texts if isinstance(job, EmbedJob) else [job.question]
