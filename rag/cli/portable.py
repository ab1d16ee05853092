"""`rag export`, `rag import`, `rag backup` and `rag restore`: knowledge bases that move
between machines, versions and stores (rag.portable). Export and backup run at a lower CPU
priority (nice 10), so a service on the same machine keeps its cores for queries.

Left out: reading an archive from standard input (an import checks every digest before it
writes, which needs the whole file first).
"""

import os
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from rag.cli.base import IndexOpt, fail, load_settings, user_errors

NICE = 10  # below a service's default priority: an export on a busy machine waits for queries


def _yield_cpu() -> None:
    with suppress(OSError):  # not allowed here: run at the usual priority
        os.nice(NICE)


@user_errors
def export(
    collection: Annotated[str, typer.Argument(help="the collection: `default` (the built corpus) or a live one")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the archive to write (a .tar)")],
    index: IndexOpt = None,
) -> None:
    """Write a collection, with its documents, chunks and vectors, to one archive."""
    from rag.portable.exporting import export_collection

    _yield_cpu()
    manifest = export_collection(load_settings(index=index), collection, output)
    counts = manifest["counts"]
    typer.echo(f"exported '{collection}' to {output}: {counts['documents']} documents, {counts['chunks']} chunks, "
               f"{counts['sentences']} sentences ({output.stat().st_size / 1e6:.1f} MB)")


@user_errors
def import_command(
    archive: Annotated[Path, typer.Argument(help="an archive written by `rag export`")],
    as_name: Annotated[str | None, typer.Option("--as", help="the collection to make (default: the archive's)")] = None,
    store: Annotated[str | None, typer.Option(help="local or milvus (default: RAG_VECTOR_STORE)")] = None,
    reembed: Annotated[bool, typer.Option(help="embed the documents again with this model (an archive made with "
                                               "another model or chunker)")] = False,
    replace: Annotated[bool, typer.Option(help="with --as default: replace the built corpus")] = False,
    index: IndexOpt = None,
) -> None:
    """Make a collection from an archive: the same passages, offsets and scores as where it was exported."""
    from rag.ingest.build import embedder_from
    from rag.portable.importing import import_archive

    settings = load_settings(index=index, vector_store=store) if store else load_settings(index=index)
    imported = import_archive(settings, archive, embedder_from(settings), as_name, reembed=reembed, replace=replace)
    typer.echo(str(imported))


@user_errors
def backup(
    output: Annotated[Path, typer.Option("--output", "-o", help="a new folder for the backup")],
    index: IndexOpt = None,
) -> None:
    """Back up every collection, the built corpus, stored files, keys and the audit log, while serving."""
    from rag.portable.backup import backup as run_backup

    _yield_cpu()
    done = run_backup(load_settings(index=index), output, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"backed up {len(done.collections)} collections ({', '.join(done.collections) or 'none'}) and "
               f"{done.state_files} state files to {output}: {done.bytes / 1e6:.1f} MB in {done.seconds:.1f} s")


@user_errors
def restore(
    folder: Annotated[Path, typer.Argument(help="a folder written by `rag backup`")],
    index: IndexOpt = None,
) -> None:
    """Restore a backup into an empty index folder."""
    from rag.ingest.build import embedder_from
    from rag.portable.backup import restore as run_restore

    settings = load_settings(index=index)
    for imported in run_restore(settings, folder, embedder_from(settings),
                                log=lambda line: typer.echo(line, err=True)):
        typer.echo(str(imported))


@user_errors
def reembed(
    collection: Annotated[str | None, typer.Option(help="the live collection to move")] = None,
    every: Annotated[bool, typer.Option("--all", help="every live collection of this store")] = False,
    model: Annotated[str | None, typer.Option(help="the model to move to (default: the collection's)")] = None,
    backend: Annotated[str | None, typer.Option(help="torch, onnx or onnx-int8 (default: the collection's)")] = None,
    cancel: Annotated[bool, typer.Option("--cancel", help="drop a re-embed under way instead")] = False,
    index: IndexOpt = None,
) -> None:
    """Move live collections to another model or backend while they serve; run it again to resume."""
    from rag.collections import DEFAULT, Collections
    from rag.jobs import Jobs
    from rag.portable import reembed as moving

    if (collection is None) == (not every):
        fail("give --collection NAME or --all")
    if backend is not None and backend not in ("torch", "onnx", "onnx-int8"):
        fail(f"--backend {backend!r}: use torch, onnx or onnx-int8")
    if model is not None and Path(model).exists():  # a folder: named whole, as other processes will read it
        model = str(Path(model).resolve())
    _yield_cpu()
    settings = load_settings(index=index)
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    with Collections(settings, None) as collections:
        names = [collection] if collection else [n for n in collections.names() if n != DEFAULT]
        for name in names:
            if cancel:
                if not moving.cancel(collections, name, say):
                    say(f"'{name}': no re-embed under way")
                jobs = Jobs(settings.index_dir)
                for job in jobs.list():  # a killed run's job ends too (else listed as stalled for ever)
                    if job.kind == "reembed" and job.target == name and not job.finished:
                        jobs.cancel(job.id)
                continue
            target = moving.target_of(collections.get(name).manifest, model, backend)
            job = _job(Jobs(settings.index_dir), name, {"model": target[0], "backend": target[1]})
            try:
                done = moving.reembed(collections, name, *target, job=job, log=say)
            except BaseException as exc:
                job.finish(str(exc) or type(exc).__name__)
                raise
            job.finish()
            typer.echo(f"{name}: {done.model} ({done.backend}), {done.documents} documents, {done.embedded} embedded "
                       f"by this run in {done.seconds:.1f} s")


def _job(jobs: Any, name: str, params: dict[str, str]) -> Any:
    """The re-embed's job: the one a killed run left (resumed: its progress goes on), or a new one."""
    for job in jobs.list():
        if job.kind == "reembed" and job.target == name and not job.finished and job.orphaned \
                and job.params == params:
            job.claim()
            return job
    return jobs.create("reembed", name, params, owner="cli")
