"""Jobs you can see: long work (a big upload, an import, an export, a re-embed, a folder
sync) recorded under `<index_dir>/jobs/`, one JSON file a job, so that `GET /jobs`, `rag
jobs` and every process sharing the index folder see its state, progress, rate, time left
and the items that failed, across restarts.

Who runs a job is not this module's business (the service's runners: api.engine.jobs; the
CLI runs its own): it records. A job file is replaced whole, atomically and fsynced
(rag.files.replace_text), under an exclusive lock on `jobs/.lock`, because two processes
write one job: its runner (progress) and whoever cancels it (`rag jobs cancel`, `DELETE
/jobs/{id}`); each write of the runner merges the cancel flag on disk in, so a cancel is
never lost. Progress is written at most every SAVE_EVERY_S and always at the end, and a
runner re-reads the cancel flag at most as often. Per-item errors keep the first
MAX_ITEM_ERRORS (the rest are counted), so a file stays small. A job names the process
that runs it (host, pid) and when it last wrote: a job whose process is gone is `orphaned`,
for a restart to resume. A file that cannot be parsed is skipped, with a warning.

Example: `jobs/job-5f0c...json` {"id": "job-5f0c...", "kind": "upload", "target": "notes",
"state": "failed", "done": 0, "total": 1, "errors": [{"item": "report", "reason": "...", "at": ...}], ...}

Left out: one queue shared by replicas (each process runs the jobs it started or resumes);
history: a job that succeeded without errors goes KEEP_S after it finished; failed items
stay until retried or deleted. Windows (flock is POSIX, as rag.files' fsyncs are).

Why ~420 lines: a job's own writes (progress, the cancel flag merged in) and the registry's
read-modify-writes (cancel, retry, delete) share one lock and one record format; apart,
each would have to know the other's.
"""

import builtins
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from rag.errors import ConflictError, NotFoundError, RagError, StorageError
from rag.files import replace_text

log = logging.getLogger("rag.jobs")

KINDS = ("upload", "import", "export", "reembed", "sync")  # today's; any name KIND matches is taken
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
UNFINISHED = frozenset({"queued", "running"})
SAVE_EVERY_S = 0.5  # progress and cancel checks: ~2 fsyncs a second at most, a cancel seen within it
MAX_ITEM_ERRORS = 1000
MAX_TEXT = 1000  # characters kept of a reason, a message or an item's name
STALE_S = 60.0  # not written for this long by a runner on another host: taken for gone (runners beat every 10 s)
KEEP_S = 7 * 86400.0
PRUNE_EVERY_S = 60.0
ID = re.compile(r"^job-[0-9a-f]{24}$")
KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HOST = socket.gethostname()
PROCESS = secrets.token_hex(8)  # this process's life: a later one may get its pid (a container's pid 1)


class JobCancelled(RagError):
    """Raised by a runner that stops because its job was cancelled."""


def new_id() -> str:
    return "job-" + secrets.token_hex(12)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


class Job:
    """One job, as its runner changes it (`start`, `progress`, `item_failed`, `finish`) or as
    a reader sees it (`as_dict`). Thread-safe: a runner's thread and a heartbeat share it."""

    def __init__(self, jobs: "Jobs", data: dict[str, Any]):
        self._jobs = jobs
        self._lock = threading.RLock()
        self._saved_at, self._checked_at = time.monotonic(), float("-inf")  # the first cancel check reads
        self.id = str(data["id"])
        if not ID.fullmatch(self.id):
            raise ValueError(f"bad job id {self.id!r}")
        self.kind, self.target = str(data["kind"]), str(data["target"])
        self.owner, self.owner_id = str(data["owner"]), str(data.get("owner_id", data["owner"]))
        self.state = str(data["state"])
        if self.state not in STATES:
            raise ValueError(f"bad state {self.state!r}")
        self.unit = str(data.get("unit", "documents"))
        self.done, self.start_done = int(data.get("done", 0)), int(data.get("start_done", 0))
        self.total: int | None = None if data.get("total") is None else int(data["total"])
        self.created_at = float(data["created_at"])
        self.started_at: float | None = _time(data.get("started_at"))
        self.finished_at: float | None = _time(data.get("finished_at"))
        self.updated_at = float(data.get("updated_at", self.created_at))
        self.message, self.error = _text(data.get("message")), _text(data.get("error"))
        self.errors: list[dict[str, Any]] = [{"item": str(e["item"]), "reason": str(e["reason"]), "at": float(e["at"])}
                                             for e in data.get("errors", [])]
        self.errors_dropped = int(data.get("errors_dropped", 0))
        self.params: dict[str, Any] = dict(data.get("params") or {})
        self.cancel_requested = bool(data.get("cancel_requested", False))
        self.runs = int(data.get("runs", 1))
        retrying = data.get("retrying")
        self.retrying: list[str] | None = None if retrying is None else [str(i) for i in retrying]
        self.host, self.process = _text(data.get("host")), _text(data.get("process"))
        self.pid: int | None = None if data.get("pid") is None else int(data["pid"])

    # ------------------------------------------------------------ what a runner does

    def start(self) -> None:
        with self._lock:
            self.state, self.started_at, self.finished_at = "running", time.time(), None
            self.start_done = self.done  # the rate counts this run's progress (a resumed job's too)
            self.claim()
            self._save(force=True)

    def progress(self, done: int, total: int | None = None) -> None:
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            self._save()

    def say(self, message: str) -> None:
        with self._lock:
            self.message = _cut(message)
            self._save()

    def item_failed(self, item: str, reason: str) -> None:
        """`item` (a document, a file) failed: listed with its reason until retried or
        deleted; the same item again replaces its entry."""
        with self._lock:
            entry = {"item": _cut(item), "reason": _cut(reason), "at": time.time()}
            for i, known in enumerate(self.errors):
                if known["item"] == entry["item"]:
                    self.errors[i] = entry
                    break
            else:
                if len(self.errors) < MAX_ITEM_ERRORS:
                    self.errors.append(entry)
                else:
                    self.errors_dropped += 1
            self._save(force=self.finished)  # a finished job has no later write to carry it

    def item_retried(self, item: str) -> None:
        with self._lock:
            self.errors = [e for e in self.errors if e["item"] != item]
            self._save(force=self.finished)

    def finish(self, error: str | None = None) -> None:
        """Succeeded, or failed with `error`; cancelled if a cancel came before the work was
        all done (one that came too late to stop it changes nothing). Once only."""
        with self._lock:
            if self.finished:
                return
            complete = self.total is not None and self.done >= self.total
            if error is not None:
                self.state, self.error = "failed", _cut(error)
            elif self.cancelled and not complete:
                self.state = "cancelled"
            else:
                self.state = "succeeded"
            self.finished_at = time.time()
            self._save(force=True)

    @property
    def cancelled(self) -> bool:
        """Was a cancel asked for (from any process)? Read from disk at most every SAVE_EVERY_S."""
        with self._lock:
            now = time.monotonic()
            if not self.cancel_requested and now - self._checked_at >= SAVE_EVERY_S:
                self._checked_at = now
                with suppress(OSError, ValueError, KeyError, TypeError):
                    on_disk = json.loads(self._jobs.path(self.id).read_text(encoding="utf-8"))
                    self.cancel_requested = bool(on_disk.get("cancel_requested"))
            return self.cancel_requested

    def claim(self) -> None:
        """This process runs it now (written with the next save)."""
        self.host, self.pid, self.process = HOST, os.getpid(), PROCESS

    def touch(self) -> None:
        """The runner's heartbeat: written now (progress held back included), so that other
        hosts do not take the job for orphaned."""
        with self._lock:
            if not self.finished:
                self._save(force=True)

    # ------------------------------------------------------------ what a reader sees

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED

    @property
    def orphaned(self) -> bool:
        """Unfinished, and the process that ran it is gone (this host: its pid is dead, or is
        this process's after a restart; another host: no write for STALE_S)."""
        if self.finished:
            return False
        if self.host == HOST and self.pid is not None:
            return self.process != PROCESS if self.pid == os.getpid() else not _alive(self.pid)
        return time.time() - self.updated_at > STALE_S

    @property
    def rate(self) -> float | None:
        """Units a second over this run."""
        if self.started_at is None:
            return None
        elapsed = (self.finished_at or time.time()) - self.started_at
        return (self.done - self.start_done) / elapsed if elapsed > 0 else None

    @property
    def seconds_left(self) -> float | None:
        rate = self.rate
        if self.state != "running" or self.total is None or not rate or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.id, "kind": self.kind, "target": self.target, "owner": self.owner,
                "owner_id": self.owner_id, "state": self.state, "unit": self.unit, "done": self.done,
                "total": self.total, "start_done": self.start_done, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at, "updated_at": self.updated_at,
                "message": self.message, "error": self.error, "errors": [dict(e) for e in self.errors],
                "errors_dropped": self.errors_dropped, "params": self.params,
                "cancel_requested": self.cancel_requested, "runs": self.runs, "retrying": self.retrying,
                "host": self.host, "pid": self.pid, "process": self.process,
                # computed, not read back
                "rate": self.rate, "seconds_left": self.seconds_left,
                "errors_count": len(self.errors) + self.errors_dropped, "stalled": self.orphaned,
            }

    # ------------------------------------------------------------ disk

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY_S:  # the next save, or the heartbeat, writes it
            return
        try:
            with self._jobs.locked():
                self.write_locked()
        except OSError as exc:  # progress is advisory: the work goes on; a lost end is resumed (orphaned)
            log.warning("job %s: its record could not be written: %r", self.id, exc)
            return
        self._saved_at = now

    def write_locked(self, merge_cancel: bool = True) -> None:
        """Write the job, the cancel flag on disk merged in unless a new run clears it (the
        caller holds `Jobs.locked`)."""
        with self._lock:
            path = self._jobs.path(self.id)
            with suppress(OSError, ValueError, AttributeError):
                if merge_cancel and json.loads(path.read_text(encoding="utf-8")).get("cancel_requested"):
                    self.cancel_requested = True
            self.updated_at = time.time()
            data = self.as_dict()
            for computed in ("rate", "seconds_left", "errors_count", "stalled"):
                del data[computed]
            replace_text(path, json.dumps(data))


def _time(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class Jobs:
    """The jobs of one index folder (`<index_dir>/jobs/`)."""

    def __init__(self, index_dir: Path):
        self.folder = index_dir / "jobs"
        self._pruned = 0.0

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The registry's lock, across processes (flock: released if the holder dies)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def create(self, kind: str, target: str, params: dict[str, Any], owner: str, unit: str = "documents",
               total: int | None = None, *, owner_id: str | None = None, job_id: str | None = None) -> Job:
        """A queued job, on disk before this returns. `owner` is the key's name (or "cli"),
        `owner_id` the key's id if names may be reused (default: `owner`); `params` is what
        a runner needs to resume it (JSON). `job_id`: a known id (one a spool entry recorded)."""
        if not KIND.fullmatch(kind):
            raise ValueError(f"job kind must match {KIND.pattern}, got {kind!r}")
        json.dumps(params)  # a TypeError now, not a job that cannot be saved later
        job_id = job_id or new_id()
        now = time.time()
        job = Job(self, {"id": job_id, "kind": kind, "target": target, "owner": owner, "owner_id": owner_id or owner,
                         "state": "queued", "unit": unit, "total": total, "created_at": now, "params": params,
                         "host": HOST, "pid": os.getpid(), "process": PROCESS})
        try:
            with self.locked():
                if self.path(job_id).exists():
                    raise ConflictError(f"job '{job_id}' exists")
                job.write_locked()
        except OSError as exc:
            raise StorageError(f"cannot record job {job_id}: {exc.strerror or exc}") from exc
        if time.monotonic() - self._pruned > PRUNE_EVERY_S:
            self._pruned = time.monotonic()
            self.prune()
        return job

    def get(self, job_id: str) -> Job:
        if not ID.fullmatch(job_id):
            raise NotFoundError(f"no job with id '{job_id[:80]}'")
        try:
            return self._read(self.path(job_id))
        except FileNotFoundError:
            raise NotFoundError(f"no job with id '{job_id}'") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("job %s: its record cannot be read: %r", job_id, exc)
            raise NotFoundError(f"job '{job_id}' cannot be read: its record is damaged") from None

    def _read(self, path: Path) -> Job:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("id") != path.stem:
            raise ValueError("not a job record")
        return Job(self, data)

    def list(self) -> list[Job]:
        """Every job, newest first; a record that cannot be read is skipped, with a warning."""
        found = []
        for path in self.folder.glob("job-*.json") if self.folder.is_dir() else ():
            try:
                found.append(self._read(path))
            except FileNotFoundError:  # deleted meanwhile
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping job record %s: %r", path.name, exc)
        return sorted(found, key=lambda j: (j.created_at, j.id), reverse=True)

    def unfinished(self) -> builtins.list[Job]:
        """Queued and running jobs, oldest first (the order they are resumed in)."""
        return [job for job in reversed(self.list()) if not job.finished]

    def cancel(self, job_id: str) -> Job:
        """Ask a queued or running job to stop (its runner checks `cancelled`); one whose
        process is gone is cancelled at once. A finished job is returned as it is."""
        with self.locked():
            job = self.get(job_id)
            if not job.finished:
                job.cancel_requested = True
                if job.orphaned:  # nobody will see the flag
                    job.state, job.finished_at = "cancelled", time.time()
                job.write_locked()
        return job

    def delete(self, job_id: str) -> None:
        """A finished job's record, its failed items with it; ConflictError while it runs."""
        with self.locked():
            job = self.get(job_id)
            if not job.finished:
                raise ConflictError(f"job '{job_id}' is {job.state}: cancel it first")
            with suppress(FileNotFoundError):
                self.path(job_id).unlink()

    def retry(self, job_id: str) -> Job:
        """A new run of a finished job that has failed items (or failed, or was cancelled),
        or of an unfinished one whose process is gone (a resume): queued again, by this
        process, its listed items as `retrying` (None: the whole job, when some were only
        counted or none is listed). ConflictError if it runs or has nothing to retry."""
        with self.locked():
            job = self.get(job_id)
            if not job.finished and not job.orphaned:
                raise ConflictError(f"job '{job_id}' is still {job.state}: wait for it, or cancel it (DELETE)")
            if job.state == "succeeded" and not job.errors and not job.errors_dropped:
                raise ConflictError(f"job '{job_id}' has no failed items to retry")
            items = [e["item"] for e in job.errors]
            job.retrying = items if items and not job.errors_dropped else None
            job.errors, job.errors_dropped = [], 0  # listed until retried: a failure again lists them again
            job.state, job.error, job.cancel_requested = "queued", None, False
            job.started_at = job.finished_at = None
            job.done, job.start_done = 0, 0
            if job.retrying is not None:
                job.total = len(job.retrying)
            job.runs += 1
            job.message = f"run {job.runs}: retrying " + (f"{len(items)} failed items" if job.retrying else "the job")
            job.claim()
            job.write_locked(merge_cancel=False)
        return job

    def prune(self, now: float | None = None) -> builtins.list[str]:
        """Remove jobs that succeeded (or were cancelled) without failed items more than
        KEEP_S ago. Best effort: never raises. The ids removed."""
        now = time.time() if now is None else now
        removed = []
        with suppress(OSError):
            for job in self.list():
                if (job.state in ("succeeded", "cancelled") and not job.errors and not job.errors_dropped
                        and job.finished_at is not None and now - job.finished_at > KEEP_S):
                    with suppress(FileNotFoundError):
                        self.path(job.id).unlink()
                    removed.append(job.id)
        return removed
