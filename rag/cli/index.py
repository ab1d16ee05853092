"""`rag build`, `rag migrate` and `rag query`: the built index, made, copied and asked.

Left out: `rag serve`, which starts the service (`api.cli` registers it: rag never imports
api).
"""

import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from rag.cli.base import CorpusOpt, IndexOpt, fail, load_settings, user_errors
from rag.errors import RagError
from rag.settings import Settings


@user_errors
def build(
    corpus: CorpusOpt = None,
    index: IndexOpt = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if nothing changed")] = False,
    collection: Annotated[str | None, typer.Option(help="instead: sync the folder into this live collection "
                                                   "(new and changed files written, gone ones removed; "
                                                   "uploaded documents kept)")] = None,
) -> None:
    """Clean, chunk and embed the corpus into the index (skips work when nothing changed)."""
    from rag.ingest.build import build_index

    settings = load_settings(corpus, index)
    if collection is not None and collection != "default":
        sync_folder(settings, collection)
        return
    report = build_index(settings, force=force, log=lambda m: typer.echo(m, err=True),
                         progress=sys.stderr.isatty())
    if report.skipped:
        typer.echo(f"index is up to date: {report.chunks} chunks from {report.documents} "
                   f"documents ({report.location})")
        return
    tokens = sorted(report.token_counts) or [0]
    typer.echo(
        f"built {report.location}\n"
        f"  documents {report.documents}, chunks {report.chunks} "
        f"(embedded {report.embedded}, reused {report.reused})\n"
        f"  chunk tokens (cl100k): min {tokens[0]}, median {statistics.median(tokens):g}, "
        f"max {tokens[-1]}\n"
        f"  {report.seconds:.1f} s"
        + (f", {report.bytes_on_disk / 1024:.0f} KiB on disk" if report.bytes_on_disk is not None else "")
    )


def sync_folder(settings: Settings, collection: str) -> None:
    """The corpus folder synced into a live collection, as a job (kind sync, `rag jobs`): a
    file or document that fails is listed there with its reason and the others go on (exit
    status 1 then); an unfinished sync of the same folder whose process is gone is resumed
    (a new run of it) rather than started again."""
    from rag.collections import Collections
    from rag.ingest.build import embedder_from
    from rag.ingest.corpus import load_corpus
    from rag.ingest.sandbox import parse_limits
    from rag.jobs import Jobs

    folder, jobs = settings.corpus_dir.resolve(), Jobs(settings.index_dir)
    stopped = [j for j in jobs.unfinished() if j.kind == "sync" and j.target == collection and j.orphaned
               and j.params.get("folder") == str(folder)]
    job = jobs.retry(stopped[-1].id) if stopped else jobs.create("sync", collection, {"folder": str(folder)}, "cli")
    unreadable = []

    def failed(path: Path, reason: str) -> None:
        unreadable.append(path.name)
        job.item_failed(path.name, reason)
        typer.echo(f"failed    {path.name}: {reason}", err=True)

    job.start()
    try:
        documents = load_corpus(folder, parse_limits(settings), failed=failed)
        job.progress(0, len(documents))
        with Collections(settings, embedder_from(settings)) as collections:
            counts = collections.sync(collection, documents, log=lambda m: typer.echo(m, err=True), job=job,
                                      remove_missing=not unreadable)
    except RagError as exc:
        job.finish(error=str(exc))
        raise
    except BaseException as exc:  # Ctrl-C, a bug: the job says so (a kill leaves it to the next run)
        job.finish(error="interrupted" if isinstance(exc, KeyboardInterrupt) else f"internal error: {exc!r}")
        raise
    counts["failed"] += len(unreadable)
    if counts["failed"]:  # the sync itself succeeded: its failed files are its items
        job.say(f"{counts['failed']} of {len(documents) + len(unreadable)} files failed")
    job.finish()
    typer.echo(f"synced {settings.corpus_dir} into collection {collection}: "
               + ", ".join(f"{n} {what}" for what, n in counts.items()))
    if unreadable:
        typer.echo(f"{len(unreadable)} files could not be read: no document was removed this time", err=True)
    if job.state == "cancelled" or counts["failed"]:
        typer.echo(f"job {job.id} {job.state}" + (f", {counts['failed']} failed: `rag jobs show {job.id}` "
                                                  "lists them with their reasons" if counts["failed"] else ""),
                   err=True)
        raise typer.Exit(1)


@user_errors
def migrate(
    to: Annotated[str, typer.Option(help="the store to copy the live local index into (milvus)")] = "milvus",
    index: IndexOpt = None,
) -> None:
    """Copy the live local index into Milvus (RAG_MILVUS_URI) without embedding again."""
    from rag.ingest.migrate import migrate_to_milvus

    if to != "milvus":
        fail(f"--to must be milvus (to go back, rebuild with RAG_VECTOR_STORE=local rag build), got {to!r}")
    settings = load_settings(index=index)
    built = migrate_to_milvus(settings, log=lambda m: typer.echo(m, err=True), progress=sys.stderr.isatty())
    typer.echo(f"copied into Milvus at {settings.milvus_uri}: build {built}; serve it with RAG_VECTOR_STORE=milvus")


@user_errors
def query(
    question: Annotated[str, typer.Argument(help="the question to answer")],
    k: Annotated[int, typer.Option("-k", "--k", help="passages to return")] = 5,
    mode: Annotated[str | None, typer.Option(help="dense, lexical or hybrid [RAG_DEFAULT_MODE]")] = None,
    doc_id: Annotated[list[str] | None, typer.Option("--doc", help="only this document (repeatable)")] = None,
    source: Annotated[list[str] | None, typer.Option(help="only documents from this source (repeatable)")] = None,
    section: Annotated[list[str] | None, typer.Option(help="only this section (repeatable)")] = None,
    max_per_doc: Annotated[int | None, typer.Option(help="at most this many passages per document")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the /query response body")] = False,
    collection: Annotated[str, typer.Option(help="default (the built corpus) or a live collection")] = "default",
    index: IndexOpt = None,
) -> None:
    """Print the passages that best answer QUESTION, each with its citation."""
    from rag.collections import DEFAULT, Collections
    from rag.ingest.build import embedder_from
    from rag.service import open_retriever, retriever_for
    from rag.types import Filters

    settings = load_settings(index=index)
    filters = Filters(doc_ids=doc_id, sources=source, sections=section)
    with ExitStack() as opened:
        if collection == DEFAULT:
            retriever = open_retriever(settings)
        else:
            collections = opened.enter_context(Collections(settings, embedder_from(settings)))
            retriever = retriever_for(settings, collections.get(collection), collections.embedder)
        response = retriever.query(question, k=k, filters=filters, mode=mode, max_per_doc=max_per_doc)  # type: ignore[arg-type]
    if as_json:
        typer.echo(response.model_dump_json(indent=2))
        return
    for p in response.passages:
        c = p.citation
        where = f"{c.title}" + (f" › {c.section}" if c.section else "")
        typer.echo(f"[{p.rank}] {p.score:.3f}  {where}  ({c.doc_id} {c.char_start}-{c.char_end})")
        typer.echo(f"    {p.text}\n")
    if not response.passages:
        typer.echo("no passages found")
    if not response.answerable:
        typer.echo(f"(the corpus seems to hold no answer: confidence {response.confidence:.2f})")




