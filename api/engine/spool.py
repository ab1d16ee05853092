"""A 202 is a promise kept: a big write is on disk before it is acknowledged.

Before a big document is answered 202, the document and how to write it are saved in its
collection's folder, `.spool/<doc_id>.json`, written atomically and fsynced
(rag.files.replace_text). The writer removes the entry once the write is committed, or
replaces it with `.spool/<doc_id>.failed.json` holding the reason. The service resumes every
entry it finds when it starts, so a write acknowledged before a crash (SIGKILL, OOM, power
cut) is applied after the restart; applying it twice is harmless, since a document written
again with the same content is `unchanged`. Any process that shares the index folder
answers a write's state from these files, across restarts.

Example: `.spool/report.json` {"doc_id": "report", "text": "...", "replace": false, ...}
    -> in_progress until written; then gone (completed), or report.failed.json (failed)

A vector store file's big write is spooled the same way (its document, with the file's
attributes in its metadata); what it records on success is the collection's own.

Left out: sync writes (answered only once committed: a crash before the answer leaves
nothing acknowledged); a spool in Milvus itself (it lives in the index folder that a
service's replicas share).
"""

import json
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from api.engine.writes import State
from rag.files import fsync_path, replace_text
from rag.ingest.corpus import SourceDocument

SPOOL = ".spool"


@dataclass(frozen=True)
class Spooled:
    collection: str
    doc: SourceDocument
    replace: bool
    clean: bool


def save(folder: Path, entry: Spooled) -> None:
    """The write on disk, fsynced, before it is acknowledged."""
    spool = folder / SPOOL
    if not spool.is_dir():
        spool.mkdir(exist_ok=True)
        fsync_path(folder)
    with suppress(FileNotFoundError):  # a new write of the document speaks for it now
        (spool / f"{entry.doc.doc_id}.failed.json").unlink()
    doc = entry.doc
    replace_text(spool / f"{doc.doc_id}.json", json.dumps({
        "doc_id": doc.doc_id, "name": doc.path.name, "text": doc.text, "metadata": doc.metadata,
        "replace": entry.replace, "clean": entry.clean}))


def finish(folder: Path, doc_id: str, error: str | None) -> None:
    """The write is committed (`error` None) or failed: its entry goes, a failure stays."""
    spool = folder / SPOOL
    if error is not None:
        replace_text(spool / f"{doc_id}.failed.json", json.dumps({"error": error}))
    with suppress(FileNotFoundError):
        (spool / f"{doc_id}.json").unlink()
        fsync_path(spool)


def forget(folder: Path, doc_id: str) -> None:
    """A deleted document's failure, and any entry of it, go with it."""
    for name in (f"{doc_id}.failed.json", f"{doc_id}.json"):
        with suppress(FileNotFoundError):
            (folder / SPOOL / name).unlink()


def state(folder: Path, doc_id: str) -> State | None:
    """in_progress while the entry is there, failed with the reason after, else None."""
    spool = folder / SPOOL
    if (spool / f"{doc_id}.json").exists():
        return {"status": "in_progress", "error": None}
    try:
        failed = json.loads((spool / f"{doc_id}.failed.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return {"status": "failed", "error": str(failed.get("error"))}


def pending(root: Path) -> Iterator[Spooled]:
    """Every write acknowledged and not yet done, in every collection under `root`."""
    for spool in sorted(root.glob(f"*/{SPOOL}")):
        for path in sorted(spool.glob("*.json")):
            if path.name.endswith(".failed.json") or path.name.startswith("."):
                continue
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # replace_text never leaves half a file: unreadable is foreign
                continue
            doc = SourceDocument(raw["doc_id"], Path(raw["name"]), raw["text"], raw["metadata"])
            yield Spooled(spool.parent.name, doc, bool(raw["replace"]), bool(raw["clean"]))

