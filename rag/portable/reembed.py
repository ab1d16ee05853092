"""`rag reembed`: move a live collection to another model or backend while it serves.

1. **Start.** The target (a new SQLite file in the collection's folder, or new Milvus
   collections, of the new model's dimension) is recorded in the collection's manifest
   under `reembed`, with a new build id, so every process reopens the collection and from
   then on writes each document to both (rag.collections `writing`: under the collection's
   file lock, which every write takes, with the manifest re-read).
2. **Copy.** The documents are read from the collection as it is, chunked and embedded with
   the new model *outside* the lock (a batch at a time: a build's batching), and written to
   the target under the lock, only if the document is still the one embedded. Queries keep
   using the old vectors and model meanwhile. Progress, rate and time left are a job's
   (rag.jobs, kind `reembed`): `rag jobs`, `rag collections` and /ready show it.
3. **Cutover.** Under the lock: what the copy missed (written or deleted meanwhile) is made
   equal, then the manifest is replaced by the target's (one atomic rename). From then on
   queries encode with the new model (each collection embeds with its own:
   rag.encoders.pool). The old vectors are removed a moment later (other processes see the
   cutover within RECHECK_S and reopen).

A kill at any point loses nothing: before the cutover the old collection serves and the
target is only added to; running the same `rag reembed` again resumes (a document already
in the target with its content hash is not embedded again). `--cancel` drops the target.

Left out: re-embedding the built corpus (`default`: rebuild it, `rag build` with the new
model); changing the chunker (an export and `import --reembed` does).
"""

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.collections import DEFAULT, Collections, check_name
from rag.encoders.base import Embedder
from rag.errors import BadQueryError, ConflictError
from rag.files import replace_text
from rag.ingest.build import Batches, build_manifest
from rag.ingest.clean import CleanRules
from rag.jobs import Job, Jobs
from rag.portable.records import as_source
from rag.records import DocumentRecord
from rag.settings import Settings
from rag.stores.base import LiveStore, Write
from rag.stores.factory import milvus_token
from rag.stores.manifest import RECHECK_S, new_manifest

GROUP = 64  # documents embedded together outside the lock (rag.ingest.build's BATCH_DOCUMENTS)
PROGRESS_S = 5.0  # seconds between progress lines
Log = Callable[[str], None]


@dataclass(frozen=True)
class Reembedded:
    name: str
    model: str
    backend: str
    documents: int
    embedded: int  # documents embedded by this run (a resumed one skips what is done)
    seconds: float


def target_of(manifest: dict[str, Any], model: str | None, backend: str | None) -> tuple[str, str]:
    """The model and backend to move to: what is given, the rest as the collection has it
    (or as the re-embed under way has it: a second run resumes it)."""
    if not model and not backend:
        raise BadQueryError("give --model, --backend or both: the model the collection moves to")
    current = manifest.get("reembed", {}).get("manifest", manifest)["model"]
    return model or str(current["name"]), backend or str(current.get("backend", "torch"))


def reembed(collections: Collections, name: str, model: str | None, backend: str | None, job: Job | None = None,
            log: Log = lambda message: None) -> Reembedded:
    """Move collection `name` to `model` / `backend` (either may stay as it is)."""
    started = time.perf_counter()
    if check_name(name) == DEFAULT:
        raise ConflictError("the built corpus is re-embedded by rebuilding it: `rag build` with the new model")
    kb = collections.get(name, recheck=True)
    target_model, target_backend = target_of(kb.manifest, model, backend)
    if (target_model, target_backend) == (kb.manifest["model"]["name"], kb.manifest["model"].get("backend")):
        log(f"'{name}' already uses {target_model} ({target_backend})")
        return Reembedded(name, target_model, target_backend, len(kb.documents), 0, 0.0)
    embedder = collections.models.get(target_model, target_backend)
    settings = collections.settings.model_copy(update={"model": target_model, "embed_backend": target_backend})
    _begin(collections, name, settings, embedder, log)
    total = len(_both(collections, name)[0].documents)
    if job is not None:  # this run counts from 0 (a resume walks past what is done): its rate too
        job.progress(0, total)
        job.start()
    embedded = done = 0
    said = time.monotonic()
    for group in _groups(collections, name):
        embedded += _copy(collections, name, settings, embedder, group)
        done += len(group)
        if time.monotonic() - said > PROGRESS_S:
            said = time.monotonic()
            rate = done / (time.perf_counter() - started)
            log(f"{done}/{total} documents, {rate:.1f}/s, ~{(total - done) / rate:.0f} s left")
        if job is not None:
            job.progress(min(done, total), total)
            if job.cancelled:
                log(f"paused after {done} of {total} documents: run it again to go on, or --cancel")
                return Reembedded(name, target_model, target_backend, total, embedded, time.perf_counter() - started)
    embedded += _cutover(collections, name, settings, embedder, log)
    log(f"'{name}' now uses {target_model} ({target_backend}): {embedded} documents embedded")
    return Reembedded(name, target_model, target_backend, total, embedded, time.perf_counter() - started)


def _begin(collections: Collections, name: str, settings: Settings, embedder: Embedder, log: Log) -> None:
    """Record the target in the manifest, or find the one a run before this recorded."""
    with collections.writing(name, alone=True) as (kb, _):
        running = kb.manifest.get("reembed")
        if running is not None:
            wanted = (settings.model, settings.embed_backend)
            if (running["manifest"]["model"]["name"], running["manifest"]["model"]["backend"]) != wanted:
                theirs = running["manifest"]["model"]
                raise ConflictError(f"collection '{name}' is being re-embedded with {theirs['name']} "
                                    f"({theirs['backend']}): run that again to finish it, or cancel it first")
            log(f"resuming the re-embed of '{name}' with {settings.model} ({settings.embed_backend})")
            return
        target = build_manifest(settings, embedder.dimension, embedder.max_tokens, collection=name)
        if collections.settings.vector_store == "milvus":
            from rag.stores.milvus.versions import create_collection, new_tag

            target["store"] = create_collection(collections.settings.milvus_uri, collections.settings.milvus_collection,
                                                new_tag(), embedder.dimension, milvus_token(collections.settings))
        else:
            target["store"] = {"backend": "local", "database": f"kb-{secrets.token_hex(6)}.sqlite"}
        _publish(collections, name, {**kb.manifest, "build_id": new_manifest()["build_id"],
                                     "reembed": {"manifest": target, "started_at": time.time()}})
        log(f"re-embedding '{name}' with {settings.model} ({settings.embed_backend}): writes go to both until "
            "the cutover")


def _publish(collections: Collections, name: str, manifest: dict[str, Any]) -> None:
    """The collection's new manifest, atomically (the caller holds its write lock)."""
    replace_text(collections.root / name / "manifest.json", json.dumps(manifest, indent=2))


def _groups(collections: Collections, name: str) -> Iterator[list[str]]:
    """The documents of the collection as it was when the copy started, GROUP at a time."""
    ids = list(_both(collections, name)[0].documents)
    for start in range(0, len(ids), GROUP):
        yield ids[start:start + GROUP]


def _copy(collections: Collections, name: str, settings: Settings, embedder: Embedder, group: list[str]) -> int:
    """Embed the group's documents that the target lacks (outside the lock), then write each
    one that is still as it was (under it); the number embedded."""
    kb, shadow = _both(collections, name)
    wanted: list[tuple[DocumentRecord, str]] = []
    for doc_id in group:
        doc = kb.documents.get(doc_id)
        have = shadow.documents.get(doc_id)
        if doc is not None and (have is None or have.content_hash != doc.content_hash):
            wanted.append((doc, kb.origin(doc_id) or "upload"))
    writes = _embedded(settings, embedder, shadow, wanted)
    with collections.writing(name, alone=True) as (now, shadow_now):
        if shadow_now is None:
            raise ConflictError(f"the re-embed of '{name}' was cancelled or finished elsewhere")
        for write, docs in writes:
            still = {d.doc_id for d in docs if (current := now.documents.get(d.doc_id)) is not None
                     and current.content_hash == d.content_hash}
            _apply(shadow_now, write, still)  # the others changed meanwhile: the cutover's check takes them
    return len(wanted)


def _embedded(settings: Settings, embedder: Embedder, shadow: LiveStore, docs: list[tuple[DocumentRecord, str]]
              ) -> list[tuple[Write, list[DocumentRecord]]]:
    """Each origin's documents chunked and embedded, in writes not yet applied."""
    out = []
    for origin in dict.fromkeys(o for _, o in docs):
        mine = [d for d, o in docs if o == origin]
        write = Write(origin)
        Batches(settings, embedder, CleanRules(), shadow).write([as_source(d) for d in mine], write)
        out.append((write, mine))
    return out


def _apply(store: LiveStore, write: Write, keep: set[str]) -> None:
    """The part of `write` about the documents in `keep`, applied to `store` as one write."""
    if not keep:
        return
    with store.writing(write.origin) as sink:
        sink.add_documents([d for d in write.documents if d.doc_id in keep])
        rows = [i for i, c in enumerate(write.chunks) if c.doc_id in keep]
        if rows:
            sink.add_chunks([write.chunks[i] for i in rows], np.stack([write.vectors[i] for i in rows]),
                            [write.lexical[i] for i in rows])
        spans = [i for i, s in enumerate(write.sentences) if s.doc_id in keep]
        if spans:
            sink.add_sentences([write.sentences[i] for i in spans],
                               np.stack([write.sentence_vectors[i] for i in spans]))


def _both(collections: Collections, name: str) -> tuple[LiveStore, LiveStore]:
    """The collection and the re-embed's target, as its manifest says now."""
    with collections.writing(name) as (kb, shadow):
        if shadow is None:
            raise ConflictError(f"the re-embed of '{name}' was cancelled or finished elsewhere")
        return kb, shadow


def _cutover(collections: Collections, name: str, settings: Settings, embedder: Embedder, log: Log) -> int:
    """Under the lock: the target made equal to the collection, then the manifest swapped."""
    with collections.writing(name, alone=True) as (kb, shadow):
        if shadow is None:
            raise ConflictError(f"the re-embed of '{name}' was cancelled or finished elsewhere")
        source = {d: kb.documents[d].content_hash for d in kb.documents}
        target = {d: shadow.documents[d].content_hash for d in shadow.documents}
        for doc_id in set(target) - set(source):
            shadow.delete(doc_id)
        late = [(kb.documents[d], kb.origin(d) or "upload") for d in source if target.get(d) != source[d]]
        for write, docs in _embedded(settings, embedder, shadow, late):
            _apply(shadow, write, {d.doc_id for d in docs})
        old = kb.manifest
        new = {**old["reembed"]["manifest"], "build_id": new_manifest()["build_id"],
               "reembedded_from": {"model": old["model"], "at": time.time()}}
        _publish(collections, name, new)
    time.sleep(2 * RECHECK_S)  # other processes see the cutover and reopen before the old vectors go
    _drop_old(collections, name, old)
    collections.get(name, recheck=True)
    return len(late)


def under_way(index_dir: Path) -> list[dict[str, Any]]:
    """The re-embeds whose jobs are not finished (one run by `rag reembed`, maybe in another
    process), with their progress: for /ready and `rag collections`."""
    return [{"collection": job.target, "model": job.params.get("model", ""), "backend": job.params.get("backend", ""),
             "state": "stalled" if job.orphaned else job.state, "done": job.done, "total": job.total,
             "rate": None if job.rate is None else round(job.rate, 2),
             "seconds_left": None if job.seconds_left is None else round(job.seconds_left, 1)}
            for job in Jobs(index_dir).list() if job.kind == "reembed" and not job.finished]


def cancel(collections: Collections, name: str, log: Log = lambda message: None) -> bool:
    """Drop a running re-embed's target; False if none runs."""
    with collections.writing(name, alone=True) as (kb, _):
        running = kb.manifest.get("reembed")
        if running is None:
            return False
        _publish(collections, name, {**{k: v for k, v in kb.manifest.items() if k != "reembed"},
                                     "build_id": new_manifest()["build_id"]})
    time.sleep(2 * RECHECK_S)
    _drop_old(collections, name, running["manifest"])
    log(f"cancelled the re-embed of '{name}'")
    return True


def _drop_old(collections: Collections, name: str, manifest: dict[str, Any]) -> None:
    """Best effort: what stays behind costs space, not correctness."""
    store = manifest.get("store", {})
    if store.get("backend") == "milvus":
        from rag.stores.milvus.versions import drop_collection

        drop_collection(collections.settings.milvus_uri, store["prefix"], store["tag"],
                        milvus_token(collections.settings))
        return
    from rag.stores.local.live import database_of

    database = collections.root / name / database_of(manifest)
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        path.unlink(missing_ok=True)
