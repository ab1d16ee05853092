"""Writes: they embed on their own thread (`Writer`), never on the event loop, and queue
behind each other; RAG_READ_ONLY turns them off (`writes_allowed`).

The states of writes the service tracks past their request, by (collection, doc_id):
`in_progress` (with the content's hash), then `completed` or `failed` with the reason
(paths scrubbed from it, as from every error response: api.errors.scrub_paths).
A big document is answered 202 and written later on the writer thread
(`Writer.write_later`); a vector store file is tracked while its write runs. The writer thread
records outcomes while the event loop starts, reads and forgets writes, so every change
takes one lock, and an outcome is recorded only if its write is still the one tracked:
a later write of the same document, queued behind it, speaks for the document.

A write waits its turn; a request whose deadline passes before its write started cancels
it (503, retry: it will never land); once started, the write finishes and the request
answers with its outcome, late. At shutdown (`close`) no write is taken, those not started
are dropped (a big one's is in its spool: api.engine.spool) and the running one gets the
grace period (RAG_SHUTDOWN_GRACE_SECONDS).

Left out: keeping these states across restarts (api.engine.spool keeps big writes' on disk).
"""

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from api.errors import scrub_paths
from rag.collections import Collections
from rag.errors import OverloadedError, RagError, ReadOnlyError
from rag.settings import Settings

T = TypeVar("T")
log = logging.getLogger("rag.engine")

Key = tuple[str, str]  # (collection, doc_id)
State = dict[str, str | None]  # status, error, content_hash


class WriteStates:
    def __init__(self) -> None:
        self._states: dict[Key, State] = {}
        self._lock = threading.Lock()

    def get(self, key: Key) -> State | None:
        with self._lock:
            found = self._states.get(key)
            return dict(found) if found is not None else None

    def items(self) -> Iterator[tuple[Key, State]]:
        """A snapshot, safe to iterate while writes go on."""
        with self._lock:
            snapshot = [(key, dict(state)) for key, state in self._states.items()]
        return iter(snapshot)

    def start(self, key: Key, content_hash: str | None = None) -> State:
        """Track a new write of the document (replacing what was tracked); its token for `finish`."""
        state: State = {"status": "in_progress", "error": None, "content_hash": content_hash}
        with self._lock:
            self._states[key] = state
        return state

    def finish(self, key: Key, started: State, outcome: State | None) -> None:
        """Record a write's outcome (None: forget it), unless another write of the document
        was started since."""
        with self._lock:
            if self._states.get(key) is started:
                if outcome is None:
                    del self._states[key]
                else:
                    self._states[key] = outcome

    def forget(self, key: Key) -> State | None:
        """Drop a finished write's state (a delete, or a later write that succeeded); one in
        progress is kept. The state dropped, if any."""
        with self._lock:
            state = self._states.get(key)
            if state is None or state["status"] == "in_progress":
                return None
            return self._states.pop(key)


def writes_allowed(settings: Settings) -> None:
    """Every write's gate: RAG_READ_ONLY turns them off (403)."""
    if settings.read_only:
        raise ReadOnlyError("this service is read-only (RAG_READ_ONLY): writes are off")


class _Ticket:
    """A write's place in the queue, shared by the request that waits for it and the writer
    thread: a request that gives up (its deadline passed) cancels a write not yet started;
    one already started runs to its end and the request reports it (a write is never
    answered "retry" and then committed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "queued"  # then running, or cancelled

    def begin(self) -> bool:
        with self._lock:
            if self._state == "cancelled":
                return False
            self._state = "running"
            return True

    def cancel(self) -> bool:
        """True if the write will not run."""
        with self._lock:
            if self._state == "queued":
                self._state = "cancelled"
            return self._state == "cancelled"


SKIPPED = object()  # a write that never ran: its request gave up, or the service is stopping


async def finish_anyway(future: "asyncio.Future[T]", cancel: Callable[[], bool] = lambda: False) -> T:
    """The result of work handed to a thread, even if this request is cancelled meanwhile
    (its deadline passed), unless `cancel()` stops the work before it starts: work that
    will be done is reported done, late, never "retry"."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if future.cancelled() or cancel():
            raise
        return await future


class Writer:
    """The writer thread, and the states of the writes it runs past their request. At most
    `max_write_queue` writes wait or run at once; more: OverloadedError (503, Retry-After).
    `close` (at shutdown) takes no more, drops those not started (a big write's is in its
    spool, for the next start) and waits for the one running, up to the grace period."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pending = WriteStates()  # big writes answered 202, and vector store files being written
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-write")
        self._queued = 0
        self._running = 0
        self._closing = False
        self._lock = threading.Condition()

    async def write(self, collections: Callable[[], Collections], work: Callable[[Collections], T]) -> T:
        """Run a write (it embeds) on the writer thread; read-only service: 403, checked
        before `collections` is asked for (a read-only service that is not ready says 403).
        A request cancelled (its deadline) before the write started cancels it: 503, retry;
        after it started, the write's outcome is the answer, however late."""
        writes_allowed(self.settings)
        live = collections()
        self._take()
        ticket = _Ticket()
        future = asyncio.get_running_loop().run_in_executor(self._thread, self._run, work, live, ticket)
        result = await finish_anyway(future, ticket.cancel)
        if result is SKIPPED:
            raise OverloadedError("the service is shutting down; retry in a moment")
        return result

    def _take(self, bounded: bool = True) -> None:
        with self._lock:
            if self._closing:
                raise OverloadedError("the service is shutting down; retry in a moment")
            if bounded and self._queued >= self.settings.max_write_queue:
                raise OverloadedError(f"{self._queued} writes are already queued; retry in a moment "
                                      "(RAG_MAX_WRITE_QUEUE)")
            self._queued += 1

    def _run(self, work: Callable[[Collections], T], collections: Collections, ticket: _Ticket | None = None) -> Any:
        """On the writer thread: the work, unless its request gave up or the service is stopping."""
        with self._lock:
            if self._closing or (ticket is not None and not ticket.begin()):
                self._queued -= 1
                return SKIPPED
            self._running += 1
        try:
            return work(collections)
        finally:
            with self._lock:
                self._queued -= 1
                self._running -= 1
                self._lock.notify_all()

    def write_later(self, collections: Callable[[], Collections], key: Key, work: Callable[[Collections], Any],
                    content_hash: str | None = None, on_done: Callable[[str | None], None] | None = None,
                    resumed: bool = False) -> None:
        """Queue a long write (a big file) on the writer thread and return at once; its
        state is in `pending[key]` (in_progress, with the content's hash, then completed or
        failed with the reason), until a later write of the same document replaces it.
        `on_done` hears the outcome (None, or the reason it failed) before `pending` does;
        a `resumed` write (one acknowledged before a restart) skips the gates it passed then."""
        if not resumed:
            writes_allowed(self.settings)
        live = collections()
        self._take(bounded=not resumed)
        state = self.pending.start(key, content_hash)

        def run() -> None:
            try:
                if self._run(work, live) is SKIPPED:  # stopping: its spool entry stays, for the next start
                    return
                outcome: State = {"status": "completed", "error": None}
            except RagError as exc:  # its message, without the server's paths (as every error response)
                outcome = {"status": "failed", "error": scrub_paths(str(exc))}
            except Exception as exc:  # a bug fails this write, and says so
                log.exception("write %s failed", key)
                outcome = {"status": "failed", "error": f"internal error: {type(exc).__name__}"}
            if on_done is not None:
                try:
                    on_done(outcome["error"] if outcome["status"] == "failed" else None)
                except OSError as exc:  # the write stands; its record on disk could not be updated
                    log.error("write %s: its spool entry could not be updated: %r", key, exc)
            self.pending.finish(key, state, outcome)  # unless a later write of the document was queued

        self._thread.submit(run)

    def close(self, grace_seconds: float) -> bool:
        """Take no more writes, drop those not started, and wait up to `grace_seconds` for
        the one running. True if none is running any more."""
        with self._lock:
            self._closing = True
        self._thread.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            return self._lock.wait_for(lambda: self._running == 0, timeout=grace_seconds)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running > 0
