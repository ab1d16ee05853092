"""A 202 is a promise kept: a big write is on disk before it is acknowledged.

Before a big document is answered 202, the document and how to write it are saved in its
collection's folder, `.spool/<doc_id>@<time in ns>.json`, written atomically and fsynced
(rag.files.replace_text): one entry per write, so a second write of a document queued
behind the first is an entry of its own. The writer removes a write's entry once it is
committed, and on failure leaves `.spool/<doc_id>@failed.json` holding the reason. The service resumes every
entry it finds when it starts, so a write acknowledged before a crash (SIGKILL, OOM, power
cut) is applied after the restart; applying it twice is harmless, since a document written
again with the same content is `unchanged`. Any process that shares the index folder
answers a write's state from these files, across restarts.

Example: `.spool/report@01796212962000000000.json` {"doc_id": "report", "text": "...", ...}
    -> in_progress until written; then gone (completed), or report@failed.json (failed)

Each entry names its job (rag.jobs, kind upload: `GET /jobs`), and a failure keeps the
write's content beside its reason, so `POST /jobs/{id}/retry` runs it again (`failure`);
a retry's entry is saved before the failure it replaces is removed, so the content is
always in one of them.

A vector store file's big write is spooled the same way (its document, with the file's
attributes in its metadata); what it records on success is the collection's own.

Left out: sync writes (answered only once committed: a crash before the answer leaves
nothing acknowledged); a spool in Milvus itself (it lives in the index folder that a
service's replicas share).
"""

import glob
import json
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from api.engine.writes import State
from rag.errors import NotFoundError, RagError
from rag.files import fsync_path, replace_text
from rag.ingest.corpus import SourceDocument
from rag.jobs import ID, Job, Jobs, new_id

SPOOL = ".spool"
FAILED = "@failed.json"  # '@' is in no doc_id (rag.ingest.uploads.checked_doc_id)


@dataclass(frozen=True)
class Spooled:
    collection: str
    doc: SourceDocument
    replace: bool
    clean: bool
    path: Path | None = None  # its entry, once saved
    job: str | None = None  # its job's id (rag.jobs); None in entries older than jobs


@dataclass(frozen=True)
class Failure:
    reason: str
    job: str | None
    entry: Spooled | None  # the write, to retry; None if the failure kept no content (older ones)


def save(folder: Path, entry: Spooled) -> Spooled:
    """The write on disk, fsynced, before it is acknowledged: its own entry, named by the
    document and the time (ns), so two writes of one document queued together are two
    entries, resumed in the order they were acknowledged."""
    spool = folder / SPOOL
    if not spool.is_dir():
        spool.mkdir(exist_ok=True)
        fsync_path(folder)
    path = spool / f"{entry.doc.doc_id}@{time.time_ns():020d}.json"
    replace_text(path, json.dumps(_fields(entry)))
    with suppress(FileNotFoundError):  # a new write of the document speaks for it now (once saved: a retry's
        (spool / f"{entry.doc.doc_id}{FAILED}").unlink()  # content is in the failure until then)
    return replace(entry, path=path)


def _fields(entry: Spooled) -> dict[str, Any]:
    doc = entry.doc
    return {"doc_id": doc.doc_id, "name": doc.path.name, "text": doc.text, "metadata": doc.metadata,
            "replace": entry.replace, "clean": entry.clean, "job": entry.job}


def _entry(collection: str, raw: dict[str, Any], path: Path | None) -> Spooled:
    doc = SourceDocument(raw["doc_id"], Path(raw["name"]), raw["text"], raw["metadata"])
    job = raw.get("job")
    return Spooled(collection, doc, bool(raw["replace"]), bool(raw["clean"]), path,
                   job if isinstance(job, str) else None)


def finish(entry: Spooled, error: str | None) -> None:
    """The write is committed (`error` None) or failed: its entry goes, a failure stays, with
    the write's content (for a retry)."""
    assert entry.path is not None
    if error is not None:
        fail(entry.path.parent.parent, entry, error)
    drop(entry)


def fail(folder: Path, entry: Spooled, error: str) -> None:
    """Record the write as failed in `folder`'s spool, its content kept for a retry."""
    spool = folder / SPOOL
    spool.mkdir(exist_ok=True)
    replace_text(spool / f"{entry.doc.doc_id}{FAILED}", json.dumps({"error": error, **_fields(entry)}))


def failure(folder: Path, doc_id: str) -> Failure | None:
    """A document's failed write: its reason, its job, and the write (if kept)."""
    try:
        raw = json.loads((folder / SPOOL / f"{doc_id}{FAILED}").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    try:
        entry: Spooled | None = _entry(folder.name, raw, None)
    except (KeyError, TypeError):  # a failure recorded before jobs: the reason only
        entry = None
    job = raw.get("job")
    return Failure(str(raw.get("error")), job if isinstance(job, str) else None, entry)


def drop(entry: Spooled) -> None:
    """This write's entry only (refused after it was saved, or done)."""
    assert entry.path is not None
    with suppress(FileNotFoundError):
        entry.path.unlink()
        fsync_path(entry.path.parent)


def forget(folder: Path, doc_id: str) -> None:
    """A deleted document's failure, and any entry of it, go with it."""
    for path in _entries(folder / SPOOL, doc_id):
        with suppress(FileNotFoundError):
            path.unlink()
    with suppress(FileNotFoundError):
        (folder / SPOOL / f"{doc_id}{FAILED}").unlink()


def state(folder: Path, doc_id: str) -> State | None:
    """in_progress while an entry of it is there, failed with the reason after, else None."""
    spool = folder / SPOOL
    if _entries(spool, doc_id):
        return {"status": "in_progress", "error": None}
    try:
        failed = json.loads((spool / f"{doc_id}{FAILED}").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return {"status": "failed", "error": str(failed.get("error"))}


def _entries(spool: Path, doc_id: str) -> list[Path]:
    return sorted(p for p in spool.glob(f"{glob.escape(doc_id)}@*.json") if not p.name.endswith(FAILED))


def pending(root: Path) -> Iterator[Spooled]:
    """Every write acknowledged and not yet done, in every collection under `root`; one
    document's in the order they were acknowledged."""
    for spool in sorted(root.glob(f"*/{SPOOL}")):
        yield from _pending_in(spool)


def _pending_in(spool: Path) -> Iterator[Spooled]:
    for path in sorted(spool.glob("*@*.json")):
        if path.name.endswith(FAILED) or path.name.startswith("."):
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # replace_text never leaves half a file: unreadable is foreign
            continue
        yield _entry(spool.parent.name, raw, path)


def pending_of(folder: Path, job_id: str) -> Spooled | None:
    """The write of job `job_id` still waiting in `folder`'s spool, if any."""
    return next((entry for entry in _pending_in(folder / SPOOL) if entry.job == job_id), None)


def job_of(jobs: Jobs, entry: Spooled) -> Job:
    """The job of a saved write being resumed: its record; or one recorded now, for an entry
    older than jobs or whose record is lost (owner unknown: admins see it); or, if even that
    cannot be written (a full disk), one in memory: the write resumes all the same."""
    try:
        job = jobs.get(entry.job or "")
    except NotFoundError:
        known = entry.job if entry.job and ID.fullmatch(entry.job) and not jobs.path(entry.job).exists() else None
        params, now = {"doc_id": entry.doc.doc_id}, time.time()
        try:
            return jobs.create("upload", entry.collection, params, "unknown", total=1, owner_id="", job_id=known)
        except RagError:
            return Job(jobs, {"id": known or new_id(), "kind": "upload", "target": entry.collection, "owner": "unknown",
                              "owner_id": "", "state": "queued", "total": 1, "created_at": now, "params": params})
    if job.finished:  # cancelled while no process ran it: it runs again, and is refused as it starts (kept, listed)
        job.state, job.error, job.finished_at = "queued", None, None
    return job
