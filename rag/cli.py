"""The `rag` command: build the index, query it, serve it, evaluate it (`rag eval`:
rag.cli_eval; what the commands share: rag.cli_base).

Domain errors (`rag.errors`) and invalid settings become one line on stderr and exit
status 2; nothing prints a traceback for a mistake the user can fix.
"""

import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from rag.cli_base import (  # noqa: F401 (load_settings, unknown_settings: what scripts import from here)
    CorpusOpt,
    IndexOpt,
    app,
    fail,
    load_settings,
    unknown_settings,
    user_errors,
)
from rag.errors import RagError


@app.command()
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
        from rag.collections import Collections
        from rag.ingest.build import embedder_from
        from rag.ingest.corpus import load_corpus

        documents = load_corpus(settings.corpus_dir)
        with Collections(settings, embedder_from(settings)) as collections:
            counts = collections.sync(collection, documents, log=lambda m: typer.echo(m, err=True))
        typer.echo(f"synced {settings.corpus_dir} into collection {collection}: "
                   + ", ".join(f"{n} {what}" for what, n in counts.items()))
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


@app.command()
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


@app.command("collections")
@user_errors
def list_collections(index: IndexOpt = None) -> None:
    """List the collections: `default` (the built corpus) and the live ones."""
    from rag.collections import DEFAULT, Collections

    settings = load_settings(index=index)
    with Collections(settings, embedder=None) as collections:  # listing embeds nothing
        for name in collections.names(every_store=True):
            if name == DEFAULT:
                typer.echo(f"{name:<24} the built corpus ({settings.corpus_dir}; `rag build`)")
                continue
            if (store := collections.store_of(name)) != settings.vector_store:
                typer.echo(f"{name:<24} in the {store or 'unknown'} store (RAG_VECTOR_STORE={store or '?'} serves it)")
                continue
            kb = collections.get(name)
            typer.echo(f"{name:<24} {len(kb.documents):>6} documents {kb.count():>8} chunks")


@app.command()
@user_errors
def add(
    paths: Annotated[list[Path], typer.Argument(help="files to add: .txt, .md, .html, .pdf")],
    collection: Annotated[str, typer.Option(help="the live collection (made if missing)")] = "notes",
    index: IndexOpt = None,
) -> None:
    """Add or replace files in a live collection (a running service sees them at its next query)."""
    from rag.collections import Collections
    from rag.ingest.build import embedder_from
    from rag.ingest.uploads import uploaded_document

    settings = load_settings(index=index)
    with Collections(settings, embedder_from(settings)) as collections:
        if collections.ensure(collection)[1]:
            typer.echo(f"made collection {collection}", err=True)
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                fail(f"cannot read {path}: {exc.strerror}")
            try:
                doc, is_pdf = uploaded_document(path.name, data)
            except RagError as exc:  # a damaged PDF's message does not name the file
                fail(str(exc) if path.name in str(exc) else f"{path}: {exc}")
            written = collections.upsert(collection, doc, replace=True, origin="cli", clean=not is_pdf)
            typer.echo(str(written))


@app.command()
@user_errors
def rm(
    doc_ids: Annotated[list[str], typer.Argument(help="documents to remove")],
    collection: Annotated[str, typer.Option(help="the live collection")] = "notes",
    index: IndexOpt = None,
) -> None:
    """Remove documents from a live collection."""
    from rag.collections import Collections

    settings = load_settings(index=index)
    with Collections(settings, embedder=None) as collections:  # removing embeds nothing
        for doc_id in doc_ids:
            collections.remove(collection, doc_id)
            typer.echo(f"removed {doc_id}")


@app.command()
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


@app.command()
@user_errors
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind [RAG_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [RAG_PORT]")] = None,
    index: IndexOpt = None,
) -> None:
    """Serve the index over HTTP (OpenAPI docs at /docs); reloads when `rag build` writes a new one."""
    from api.app import serve as run_server

    run_server(load_settings(index=index, host=host, port=port))


@app.command()
@user_errors
def bench(
    repeats: Annotated[int, typer.Option(help="single-client queries (and raw encodes) to time")] = 200,
    queries: Annotated[int, typer.Option(help="queries per concurrency level, split over the rounds")] = 640,
    out: Annotated[Path | None, typer.Option(help="JSON results file [eval/reports/bench.json, "
                                                 "or soak.json with --soak]")] = None,
    soak: Annotated[float | None, typer.Option(help="instead: SECONDS of mixed load with index swaps; reports "
                                               "failures, p99 and RSS growth", min=40)] = None,
    backends: Annotated[bool, typer.Option("--backends", help="instead: cosine of every vector of each encoder "
                                           "backend to torch's, on the seed corpus and cached SciFact")] = False,
    scale: Annotated[int | None, typer.Option(help="instead: build an N-chunk collection from SciFact's real "
                                              "embeddings and time its searches, recall, build and memory",
                                              min=1000, max=100_000_000)] = None,
    backend: Annotated[str | None, typer.Option(help="with --scale or --writes: local or milvus "
                                                "[RAG_VECTOR_STORE]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="with --scale or --writes: print one JSON object")] = False,
    writes: Annotated[bool, typer.Option("--writes", help="instead: time adding and deleting a one-page "
                                         "document in live collections of 100 and 100,000 chunks")] = False,
    index: IndexOpt = None,
) -> None:
    """Benchmark the real server: latency vs raw model time, throughput at 1/8/32 clients, memory."""
    from rag.bench.serve import run_bench, table
    from rag.ingest.build import build_index

    settings = load_settings(index=index)
    if backend not in (None, "local", "milvus"):
        fail(f"--backend must be local or milvus, got {backend!r}")
    if writes:
        from rag.bench.serve import DEFAULT_SCIFACT
        from rag.bench.writes import run_writes, writes_table

        timed = run_writes(settings.model_copy(update={"vector_store": backend or settings.vector_store}),
                           DEFAULT_SCIFACT, log=lambda m: typer.echo(m, err=True))
        typer.echo(json.dumps(timed) if as_json else writes_table(timed))
        return
    if scale is not None:
        from rag.bench.scale import run_scale, scale_table
        from rag.bench.serve import DEFAULT_SCIFACT

        measured = run_scale(settings, scale, backend or settings.vector_store, DEFAULT_SCIFACT,
                             log=lambda m: typer.echo(m, err=True))
        typer.echo(json.dumps(measured) if as_json else scale_table(measured))
        return
    if backends:
        from rag.bench.profile import compare_backends
        from rag.bench.serve import DEFAULT_SCIFACT

        for backend, sets in compare_backends(settings, DEFAULT_SCIFACT).items():
            for name, c in sets.items():
                typer.echo(f"{backend:<10} {name:<16} {c['vectors']:>6} vectors  cosine to torch: "
                           f"min {c['min']:.7f}, mean {c['mean']:.7f}")
        return
    build_index(settings, log=lambda m: typer.echo(m, err=True))  # no-op when up to date
    if soak is not None:
        from rag.bench.soak import run_soak, soak_table

        out = out or Path("eval/reports/soak.json")
        soaked = run_soak(settings, soak, out=out)
        typer.echo(soak_table(soaked))
        typer.echo(f"\nwrote {out}")
        if soaked["failed"]:
            fail(f"{soaked['failed']} requests failed during the soak")
        return
    out = out or Path("eval/reports/bench.json")
    result = run_bench(settings, repeats=repeats, queries=queries, out=out)
    typer.echo(table(result))
    typer.echo(f"\nwrote {out}")


from rag import cli_eval  # noqa: E402, F401 (registers `rag eval`, listed after the commands above)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

