"""The handlers of today's job kinds in the service (api.engine.jobs.register): big uploads
and imports of archives (see `import_archive_job`).

A big write answered 202 is a job of kind `upload` from the moment it is acknowledged
(Engine.write_spooled records it before the write is saved; the answer names it); its
spool entry names the job. The spool is what resumes such writes at start-up
(Engine._resume: every entry, each as its job, api.engine.spool.job_of), as before jobs;
this handler speaks for the upload jobs left unfinished that no entry resumed, and runs
retries:

- a retry (`POST /jobs/{id}/retry`): the failed write's content, kept in its
  `@failed.json`, is saved as a new entry and queued again (api.engine.spool keeps the
  content in one of the two at every moment, so a crash never loses it);
- a job whose entry is still there (its process died while this one ran): queued here;
- a job that ran (state running) and whose entry is gone was written before the restart
  (succeeded), unless its failure is on record (failed, with the reason);
- one still queued with no entry was never saved, so never acknowledged (failed, saying so).

Folder syncs (`rag build --collection`, kind `sync`) are the CLI's: it records them and
resumes an unfinished one when run again; the service has no handler for them.

Left out: a vector store file whose content fails its checks after it was spooled is a
failure of the store's (its sidecar, `last_error`), not of the job (which says succeeded).
"""

from api.engine import spool
from api.engine.jobs import register
from api.engine.lifecycle import Engine
from api.errors import scrub_paths
from rag.errors import RagError
from rag.jobs import Job
from rag.portable.archive import Archive
from rag.portable.importing import import_archive, inbox
from rag.stores.manifest import manifest_at


def upload(engine: Engine, job: Job) -> None:
    doc_id = str(job.params.get("doc_id", ""))
    folder = engine.live_collections().root / job.target
    if (entry := spool.pending_of(folder, job.id)) is not None:  # saved, not done: its process died (applied
        engine.write_spooled(entry, resumed=True, job=job)  # twice, if it did not, is harmless: `unchanged`)
        return
    failed = spool.failure(folder, doc_id)
    ours = failed if failed is not None and failed.job == job.id else None
    if job.state == "queued" and job.retrying is not None:  # a retry, to run
        if ours is not None and ours.entry is not None:
            try:
                engine.write_spooled(ours.entry, job=job)  # saved (its failure then goes), queued: acknowledged
            except RagError as exc:  # refused (a quota, the queue full): listed again, its content kept
                job.item_failed(doc_id, scrub_paths(str(exc)))
                job.finish(error=scrub_paths(str(exc)))
            return
        reason = "nothing to retry: the write's content is gone (the document was deleted, or written since)"
        job.item_failed(doc_id, reason)
        job.finish(error=reason)
    elif ours is not None:  # it failed, and the process stopped before its job said so
        job.item_failed(doc_id, ours.reason)
        job.finish(error=ours.reason)
    elif job.state == "running":  # it ran and its entry is gone: written
        job.progress(1)
        job.finish()
    else:
        job.finish(error="the service stopped before this write was saved: it was never acknowledged")


def import_archive_job(engine: Engine, job: Job) -> None:
    """An archive sent to POST /collections/{name}/import, in <index>/imports/: imported whole
    or not at all (rag.portable.importing), then removed. Resumed after a restart: a
    collection its archive already made is the job done; otherwise the import runs again
    (what a cut-off one left was removed at start-up)."""
    path = inbox(engine.settings.index_dir) / str(job.params.get("archive", ""))
    made = manifest_at(engine.live_collections().root / job.target)
    if made is not None and made.get("imported_from", {}).get("archive") == path.name:
        job.finish()
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        job.finish(error="its archive is gone (the job was retried after it ended): send the archive again")
        return
    if engine.embedder is None:
        raise RagError(engine.not_ready or "the model is not loaded")
    job.start()
    total: list[int] = []

    def tick(what: str, done: int) -> None:
        if what == "documents":
            job.progress(done, total[0])

    try:
        with Archive(path) as archive:
            total.append(archive.counts["documents"])
        imported = import_archive(engine.settings, path, engine.embedder, job.target,
                                  reembed=bool(job.params.get("reembed")), collections=engine.live_collections(),
                                  progress=tick)
        job.say(str(imported))
        job.finish()
    finally:
        path.unlink(missing_ok=True)  # done, or refused: a retry needs the archive sent again


def export_cut_off(engine: Engine, job: Job) -> None:
    """An export streams to the client that asked for it: one a restart cut off is over."""
    job.finish(error="the service stopped during the export: ask for it again")


def register_handlers() -> None:
    """Today's kinds (the HTTP app calls it)."""
    register("upload", upload, inline=True)
    register("import", import_archive_job)
    register("export", export_cut_off, inline=True)
