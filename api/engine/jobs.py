"""The service's job runners: a handler per job kind (`register`), run on a background
thread (`Runner.submit`), and at start-up every unfinished job whose process is gone
resumed by its kind's handler (`Runner.resume`). The jobs themselves are rag.jobs'.

A handler is `handler(context, job)`, the context being the service's Engine. It runs the
job to its end (`job.start`, `progress`, `item_failed`, `finish`), checks `job.cancelled`
between units of work (cancel is cooperative), and serves three cases alike: a new job, a
resumed one (state queued or running, `done` where it stopped) and a retry (`job.retrying`:
the items to run again, or None for the whole job). A handler that raises fails its job
with the reason. An `inline` handler is called on the caller's thread and returns at once,
having handed the work on (an upload: to the writer thread, which keeps one document's
writes in the order they were acknowledged); the others get a thread each.

While this process holds a job (`hold`), a heartbeat writes it every HEARTBEAT_S, so that a
service on another host sharing the index folder does not take it for orphaned.

Left out: adopting a job whose process dies while this service runs (the next start does);
limiting how many background jobs run at once (each kind's handler decides what it shares).
"""

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api.errors import scrub_paths
from rag.errors import ConflictError, RagError
from rag.jobs import HOST, PROCESS, Job, Jobs

log = logging.getLogger("rag.jobs")
HEARTBEAT_S = 10.0
Handler = Callable[[Any, Job], None]


@dataclass(frozen=True)
class Kind:
    handler: Handler
    inline: bool = False


_KINDS: dict[str, Kind] = {}


def register(kind: str, handler: Handler, inline: bool = False) -> None:
    """Make `handler` run (and resume, and retry) jobs of `kind`; registered again, it replaces
    the one before. Register before the service starts, so that its resumed jobs find it."""
    _KINDS[kind] = Kind(handler, inline)


def registered(kind: str) -> bool:
    return kind in _KINDS


class Runner:
    def __init__(self, jobs: Jobs, context: Any, heartbeat_s: float = HEARTBEAT_S):
        self.jobs, self.context, self.heartbeat_s = jobs, context, heartbeat_s
        self._held: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._beating: threading.Thread | None = None

    def hold(self, job: Job) -> None:
        """This process runs `job` (a handler's, or work handed on elsewhere): its heartbeat
        runs until it is finished."""
        if (job.host, job.pid, job.process) != (HOST, os.getpid(), PROCESS):  # another's before: ours, on disk now
            job.claim()
            job.touch()
        with self._lock:
            self._held[job.id] = job
            if self._beating is None and not self._closing.is_set():
                self._beating = threading.Thread(target=self._beat, name="rag-job-heartbeat", daemon=True)
                self._beating.start()

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._held and not self._held[job_id].finished

    def submit(self, job: Job) -> None:
        """Run `job` by its kind's handler; ConflictError if this service has none."""
        kind = _KINDS.get(job.kind)
        if kind is None:
            raise ConflictError(f"this service has no runner for jobs of kind '{job.kind}'")
        self.hold(job)
        if kind.inline:
            self._run(kind.handler, job)
        else:
            threading.Thread(target=self._run, args=(kind.handler, job), name=f"rag-{job.id}", daemon=True).start()

    def _run(self, handler: Handler, job: Job) -> None:
        try:
            handler(self.context, job)
        except RagError as exc:
            job.finish(error=scrub_paths(str(exc)))
        except Exception as exc:  # a bug fails this job, and says so
            log.exception("job %s (%s) failed", job.id, job.kind)
            job.finish(error=f"internal error: {type(exc).__name__}")

    def resume(self) -> list[Job]:
        """Every unfinished job whose process is gone (a crash, a kill, a restart), oldest
        first, handed to its kind's handler; a kind with no handler here is left as it is
        (the process that runs such jobs resumes them). The jobs resumed."""
        resumed = []
        for job in self.jobs.unfinished():
            if self.holds(job.id) or not job.orphaned:
                continue
            if not registered(job.kind):
                log.info("job %s (%s on %s) stopped with its process; no runner for its kind here", job.id,
                         job.kind, job.target)
                continue
            log.info("resuming job %s (%s on %s)", job.id, job.kind, job.target)
            self.submit(job)
            resumed.append(job)
        return resumed

    def _beat(self) -> None:
        while not self._closing.wait(self.heartbeat_s):
            with self._lock:
                for job_id in [i for i, job in self._held.items() if job.finished]:
                    del self._held[job_id]
                held = list(self._held.values())
            for job in held:
                job.touch()

    def close(self) -> None:
        """Stop the heartbeat. Jobs still running stay unfinished on disk: the next start resumes them."""
        self._closing.set()
