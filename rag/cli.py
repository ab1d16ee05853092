"""The `rag` command: build the index, query it, serve it, evaluate it.

Domain errors (`rag.errors`) and invalid settings become one line on stderr and exit
status 2; nothing prints a traceback for a mistake the user can fix.
"""

import difflib
import json
import os
import statistics
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from rag.errors import RagError
from rag.settings import Settings

app = typer.Typer(
    help="Cited-passage retrieval over a folder of articles.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])

CorpusOpt = Annotated[Path | None, typer.Option("--corpus", help="corpus folder [RAG_CORPUS_DIR]")]
IndexOpt = Annotated[Path | None, typer.Option("--index", help="index folder [RAG_INDEX_DIR]")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command: F) -> F:
    """Turn domain errors and bad settings into a one-line message and exit status 2."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RagError as exc:
            fail(str(exc))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            fail(f"invalid settings: {problems}")
        except SettingsError as exc:  # a value pydantic-settings cannot even parse
            fail(f"invalid settings: {exc}")

    return wrapper  # type: ignore[return-value]


def load_settings(corpus: Path | None = None, index: Path | None = None, **overrides: Any) -> Settings:
    given = {"corpus_dir": corpus, "index_dir": index, **overrides}
    for line in unknown_settings(os.environ):
        typer.echo(f"warning: {line}", err=True)
    return Settings(**{k: v for k, v in given.items() if v is not None})


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """RAG_* variables that set nothing (a typo is otherwise silently ignored), with the
    closest setting: "RAG_CHUNK_TOKEN is not a setting; did you mean RAG_CHUNK_TOKENS?"."""
    known = {f"RAG_{name.upper()}" for name in Settings.model_fields}
    out = []
    for name in sorted(n for n in environ if n.startswith("RAG_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        out.append(f"{name} is not a setting" + (f"; did you mean {close[0]}?" if close else ""))
    return out


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
    from rag.build import build_index

    settings = load_settings(corpus, index)
    if collection is not None and collection != "default":
        from rag.build import embedder_from
        from rag.collections import Collections
        from rag.ingest import load_corpus

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
    from rag.migrate import migrate_to_milvus

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
    from rag.build import embedder_from
    from rag.collections import Collections
    from rag.uploads import uploaded_document

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
    from rag.build import embedder_from
    from rag.collections import DEFAULT, Collections
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
    from rag.bench import run_bench, table
    from rag.build import build_index

    settings = load_settings(index=index)
    if backend not in (None, "local", "milvus"):
        fail(f"--backend must be local or milvus, got {backend!r}")
    if writes:
        from rag.bench import DEFAULT_SCIFACT
        from rag.writes_bench import run_writes, writes_table

        timed = run_writes(settings.model_copy(update={"vector_store": backend or settings.vector_store}),
                           DEFAULT_SCIFACT, log=lambda m: typer.echo(m, err=True))
        typer.echo(json.dumps(timed) if as_json else writes_table(timed))
        return
    if scale is not None:
        from rag.bench import DEFAULT_SCIFACT
        from rag.scale import run_scale, scale_table

        measured = run_scale(settings, scale, backend or settings.vector_store, DEFAULT_SCIFACT,
                             log=lambda m: typer.echo(m, err=True))
        typer.echo(json.dumps(measured) if as_json else scale_table(measured))
        return
    if backends:
        from rag.bench import DEFAULT_SCIFACT
        from rag.profile import compare_backends

        for backend, sets in compare_backends(settings, DEFAULT_SCIFACT).items():
            for name, c in sets.items():
                typer.echo(f"{backend:<10} {name:<16} {c['vectors']:>6} vectors  cosine to torch: "
                           f"min {c['min']:.7f}, mean {c['mean']:.7f}")
        return
    build_index(settings, log=lambda m: typer.echo(m, err=True))  # no-op when up to date
    if soak is not None:
        from rag.soak import run_soak, soak_table

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


@app.command("eval")
@user_errors
def eval_command(
    questions: Annotated[Path, typer.Option(help="question set (JSONL)")] = Path("eval/questions.jsonl"),
    beir: Annotated[Path | None, typer.Option(help="evaluate on a BEIR dataset folder instead")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="modes to compare (repeatable); default all")] = None,
    fusion: Annotated[list[str] | None, typer.Option(help="also compare hybrid with this fusion, e.g. rrf60, "
                                                      "convex0.5 (repeatable)")] = None,
    sweep: Annotated[bool, typer.Option(help="also compare a grid of RRF and convex fusions")] = False,
    out_dir: Annotated[Path, typer.Option(help="where reports go")] = Path("eval/reports"),
    gate_mode: Annotated[str, typer.Option(help="the mode the --min-* gates apply to")] = "hybrid",
    min_recall_at_5: Annotated[float | None, typer.Option(help="fail below this Recall@5")] = None,
    min_recall_at_10: Annotated[float | None, typer.Option(help="fail below this Recall@10")] = None,
    min_mrr_at_10: Annotated[float | None, typer.Option(help="fail below this MRR@10")] = None,
    min_ndcg_at_10: Annotated[float | None, typer.Option(help="fail below this nDCG@10")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="BEIR: only the first N queries (quick runs)")] = None,
    calibrate: Annotated[bool, typer.Option(help="print the abstention settings fitted on this set")] = False,
    fit_answer: Annotated[bool, typer.Option("--fit-answer", help="print the answer-sentence weights fitted on "
                                             "this set, and how they score on the half they were not fitted on")
                          ] = False,
    conversations: Annotated[Path, typer.Option(help="multi-turn chats whose later turns are scored with and "
                                               "without the conversation (skipped if missing)")] = Path(
        "eval/conversations.jsonl"),
    min_answer: Annotated[float | None, typer.Option(help="fail below this share of answerable questions whose "
                                                     "extractive answer holds a gold quote")] = None,
    whole_docs: Annotated[bool, typer.Option(help="BEIR: the published setting, one truncated vector per "
                                             "document, instead of chunks")] = False,
    index: IndexOpt = None,
) -> None:
    """Measure retrieval (Recall@k, MRR@10, nDCG@10, latency) per mode; gate on thresholds."""
    from rag.evaluate import SWEEP, variants
    from rag.report import terminal_details, terminal_summary, write_reports
    from rag.types import MODES

    if unknown := [m for m in mode or () if m not in MODES]:
        fail(f"unknown mode(s): {', '.join(unknown)}; choose from {', '.join(MODES)}")
    modes = tuple(m for m in MODES if not mode or m in mode)
    settings = load_settings(index=index)
    try:
        columns = variants(modes, tuple(dict.fromkeys([*(fusion or ()), *(SWEEP if sweep else ())])),
                           settings.fusion_depth)
    except ValueError as exc:
        fail(str(exc))
    gates = {"recall@5": min_recall_at_5, "recall@10": min_recall_at_10, "mrr@10": min_mrr_at_10,
             "ndcg@10": min_ndcg_at_10}
    gated = any(threshold is not None for threshold in gates.values())
    if gated and not whole_docs and gate_mode not in [c.label for c in columns]:
        fail(f"--gate-mode {gate_mode} is not among the evaluated modes")
    if limit is not None and beir is None:
        fail("--limit applies to --beir only (the question set is evaluated whole)")
    if beir is not None and (unreported := [m for m in BEIR_UNREPORTED if gates[m] is not None]):
        fail(f"{', '.join(unreported)} is not reported for BEIR (nDCG@10, Recall@10, Recall@100, MRR@10 are): "
             "a gate on it would never run")
    if beir is not None:
        from rag.beir import evaluate_beir, evaluate_whole_docs

        if whole_docs:
            report = evaluate_whole_docs(beir, settings, limit=limit, log=lambda m: typer.echo(m, err=True))
            name, title, gate_mode = f"beir-{beir.name}-whole", f"BEIR {beir.name}, whole documents", "dense-whole"
        else:
            report = evaluate_beir(beir, settings, columns, limit=limit, log=lambda m: typer.echo(m, err=True))
            name, title = f"beir-{beir.name}", f"BEIR {beir.name}"
    else:
        from rag.abstain import calibrate as fit_abstention
        from rag.evaluate import answer_hits, evaluate, highlight_hits, load_questions
        from rag.service import open_retriever

        retriever = open_retriever(settings)
        question_set = load_questions(questions, retriever.store)
        report = evaluate(retriever, question_set, columns)
        report["abstention"] = fit_abstention(retriever, question_set)
        report["highlights"] = highlight_hits(retriever, question_set)
        report["answer"] = answer_hits(retriever, question_set)
        if fit_answer:
            from rag.answer_fit import fit_answer as fit_answer_weights

            report["answer"]["fit"] = fit_answer_weights(retriever, question_set)
        if conversations.is_file():
            from rag.conversations import follow_up_recall, load_conversations

            report["conversations"] = follow_up_recall(retriever, load_conversations(conversations, retriever.store))
        name, title = "seed", f"Seed questions ({questions.name})"
    typer.echo(terminal_summary(report))
    for line in terminal_details(report, calibrate=calibrate, fit_answer=fit_answer):
        typer.echo(line)
    paths = write_reports(report, out_dir, name, title)
    typer.echo("reports: " + ", ".join(str(p) for p in paths))

    if min_answer is not None and (answer := report.get("answer")) and answer["contains_gold"] < min_answer:
        fail(f"answer gate failed: {answer['contains_gold']:.3f} of answers hold a gold quote < {min_answer}")
    if not gated:
        return
    overall = report["modes"][gate_mode]["overall"]
    below = [f"{metric} {overall[metric]:.3f} < {threshold}" for metric, threshold in gates.items()
             if threshold is not None and metric in overall and overall[metric] < threshold]
    if below:
        fail(f"regression gate failed for mode {gate_mode}: " + "; ".join(below))


BEIR_UNREPORTED = ("recall@5",)  # rag.beir reports nDCG@10, Recall@10/100 and MRR@10


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

