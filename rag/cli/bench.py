"""`rag bench serve|soak|scale|writes|portable|reembed|backends|attack|crash|auth|agents`: each benchmark
its own subcommand.

SciFact (real texts and queries, distinct vectors) feeds the benchmarks that need a corpus
larger than the seed one; `--scifact` says where it is (the BEIR folder).

Left out: comparing two runs (diff their JSON files).
"""

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rag.cli.base import IndexOpt, fail, load_settings, user_errors

app = typer.Typer(help="Benchmarks: the real server, a soak, a million chunks, live writes, encoder backends, crashes.",
                  no_args_is_help=True)

SciFactOpt = Annotated[Path, typer.Option("--scifact", help="the SciFact BEIR folder (corpus.jsonl, "
                                          "queries.jsonl, qrels/)")]
DEFAULT_SCIFACT = Path("../shared/benchmarks/scifact")  # where the shared benchmarks sit beside a checkout
BackendOpt = Annotated[str | None, typer.Option(help="local or milvus [RAG_VECTOR_STORE]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def _log(message: str) -> None:
    typer.echo(message, err=True)


def _load_generator() -> None:
    """serve and soak drive the server with aiohttp, the `bench` extra: say so, not ImportError."""
    if importlib.util.find_spec("aiohttp") is None:
        fail("this benchmark's load generator needs aiohttp, the `bench` extra: "
             "pip install -e '.[bench]' (make install has it)")


def _store(backend: str | None, configured: str) -> str:
    if backend not in (None, "local", "milvus"):
        fail(f"--backend must be local or milvus, got {backend!r}")
    return backend or configured


@app.command("serve")
@user_errors
def serve(
    repeats: Annotated[int, typer.Option(help="single-client queries (and raw encodes) to time")] = 200,
    queries: Annotated[int, typer.Option(help="queries per concurrency level, split over the rounds")] = 640,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("eval/reports/bench.json"),
    scifact: SciFactOpt = DEFAULT_SCIFACT,
    index: IndexOpt = None,
) -> None:
    """The real server: latency vs raw model time, throughput at 1/8/32 clients, memory."""
    _load_generator()
    from rag.bench.serve import run_bench, table
    from rag.ingest.build import build_index

    settings = load_settings(index=index)
    build_index(settings, log=_log)  # no-op when up to date
    result = run_bench(settings, repeats=repeats, queries=queries, out=out, scifact=scifact)
    typer.echo(table(result))
    typer.echo(f"\nwrote {out}")


@app.command("soak")
@user_errors
def soak(
    seconds: Annotated[float, typer.Argument(help="seconds of mixed load with index swaps", min=40)],
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("eval/reports/soak.json"),
    index: IndexOpt = None,
) -> None:
    """Mixed load with index swaps: failures, p99 and RSS growth."""
    _load_generator()
    from rag.bench.soak import run_soak, soak_table
    from rag.ingest.build import build_index

    settings = load_settings(index=index)
    build_index(settings, log=_log)  # no-op when up to date
    soaked = run_soak(settings, seconds, out=out)
    typer.echo(soak_table(soaked))
    typer.echo(f"\nwrote {out}")
    if soaked["failed"]:
        fail(f"{soaked['failed']} requests failed during the soak")


@app.command("scale")
@user_errors
def scale(
    chunks: Annotated[int, typer.Argument(help="chunks in the collection", min=1000, max=100_000_000)],
    backend: Annotated[str | None, typer.Option(help="local, milvus, or both (one after the other on the same rows "
                                                "and questions, with Milvus's times over the local store's) "
                                                "[RAG_VECTOR_STORE]")] = None,
    rows: Annotated[str, typer.Option(help="gaussian: distinct rows fitted to SciFact's real vectors; near-copies: "
                                      "the old generator (copies of each real chunk, mixed and noised)")] = "gaussian",
    vectors: Annotated[Path | None, typer.Option(help="your own vectors, an N x d .npy file (the first N rows "
                                                 "are used)", exists=True, dir_okay=False)] = None,
    queries: Annotated[Path | None, typer.Option(help="query vectors, a .npy file (default: SciFact's test "
                                                 "questions embedded by the model)", exists=True,
                                                 dir_okay=False)] = None,
    texts: Annotated[Path | None, typer.Option(help="the rows' texts, JSON lines (a string or {\"text\": ...} a "
                                               "line; default: sampled from SciFact's words)", exists=True,
                                               dir_okay=False)] = None,
    as_json: JsonOpt = False,
    scifact: SciFactOpt = DEFAULT_SCIFACT,
    index: IndexOpt = None,
) -> None:
    """Build an N-chunk collection (distinct rows fitted to SciFact's vectors, or your own); time its searches,
    recall against exact, build, memory."""
    from rag.bench.scale import compared, compared_table, run_scale, scale_table

    if rows not in ("gaussian", "near-copies"):
        fail(f"--rows must be gaussian or near-copies, got {rows!r}")
    if vectors is None and (queries or texts):
        fail("--queries and --texts go with --vectors")
    if vectors is not None and rows != "gaussian":
        fail("--vectors brings the rows: leave out --rows")
    settings = load_settings(index=index)

    def measure(store: str) -> dict[str, Any]:
        return run_scale(settings, chunks, store, scifact, log=_log, rows=rows, vectors=vectors, queries=queries,
                         texts=texts)

    if backend == "both":
        both = compared(measure("local"), measure("milvus"))
        typer.echo(json.dumps(both) if as_json else compared_table(both))
        return
    measured = measure(_store(backend, settings.vector_store))
    typer.echo(json.dumps(measured) if as_json else scale_table(measured))


@app.command("writes")
@user_errors
def writes(backend: BackendOpt = None, as_json: JsonOpt = False, scifact: SciFactOpt = DEFAULT_SCIFACT,
           index: IndexOpt = None) -> None:
    """Time adding and deleting a one-page document in live collections of 100 and 100,000 chunks."""
    from rag.bench.writes import run_writes, writes_table

    settings = load_settings(index=index)
    store = _store(backend, settings.vector_store)
    timed = run_writes(settings.model_copy(update={"vector_store": store}), scifact, log=_log)
    typer.echo(json.dumps(timed) if as_json else writes_table(timed))


@app.command("portable")
@user_errors
def portable(
    chunks: Annotated[int, typer.Option(help="chunks in the collection", min=1000, max=100_000_000)] = 100_000,
    as_json: JsonOpt = False,
    scifact: SciFactOpt = DEFAULT_SCIFACT,
) -> None:
    """Export and import of an N-chunk collection against the disk's write speed; /query p99 during an
    export and a backup against idle."""
    _load_generator()
    from rag.bench.portable import portable_table, run_portable

    measured = run_portable(load_settings(), chunks, scifact, log=_log)
    typer.echo(json.dumps(measured) if as_json else portable_table(measured))


@app.command("reembed")
@user_errors
def reembed(
    documents: Annotated[int, typer.Option(help="SciFact documents, the same chunks on every side (1000: 2,359 "
                                           "chunks, ~45 s of onnx-int8 on 2 cores)", min=1, max=100_000)] = 1000,
    qps: Annotated[float, typer.Option(help="the /query load during the second re-embed: questions a second "
                                       "from one client; 0: closed loop (saturates rag serve)", min=0, max=1000)] = 5.0,
    as_json: JsonOpt = False,
    scifact: SciFactOpt = DEFAULT_SCIFACT,
) -> None:
    """A re-embed's chunks/s against `rag build`'s on the same chunks, alone and while /query is served."""
    _load_generator()
    from rag.bench.reembed import reembed_table, run_reembed

    measured = run_reembed(load_settings(), documents, scifact, log=_log, qps=qps)
    typer.echo(json.dumps(measured) if as_json else reembed_table(measured))


@app.command("backends")
@user_errors
def backends(scifact: SciFactOpt = DEFAULT_SCIFACT, index: IndexOpt = None) -> None:
    """Cosine of every vector of each encoder backend to torch's, on the seed corpus and cached SciFact."""
    from rag.bench.profile import compare_backends

    for backend, sets in compare_backends(load_settings(index=index), scifact).items():
        for name, c in sets.items():
            typer.echo(f"{backend:<10} {name:<16} {c['vectors']:>6} vectors  cosine to torch: "
                       f"min {c['min']:.7f}, mean {c['mean']:.7f}")


@app.command("attack")
@user_errors
def attack(
    clients: Annotated[int, typer.Option(help="good clients")] = 4,
    idle_seconds: Annotated[float, typer.Option(help="good load alone, the baseline")] = 20.0,
    attack_seconds: Annotated[float, typer.Option(help="good load with hostile clients beside it")] = 40.0,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("eval/reports/attack.json"),
    as_json: JsonOpt = False,
    index: IndexOpt = None,
) -> None:
    """Good clients beside hostile ones (slowloris, upload bombs, huge filters, regex bombs): p99, failures, RSS."""
    from rag.bench.attack import attack_table, run_attack
    from rag.ingest.build import build_index

    settings = load_settings(index=index)
    build_index(settings, log=_log)  # no-op when up to date
    result = run_attack(settings, clients, idle_seconds, attack_seconds, log=_log)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result) if as_json else attack_table(result))
    typer.echo(f"\nwrote {out}", err=as_json)


@app.command("crash")
@user_errors
def crash(
    rounds: Annotated[int, typer.Option(help="SIGKILLs, each followed by a restart and a check", min=1)] = 20,
    writes: Annotated[int, typer.Option(help="mixed writes planned per round (the kill cuts them)", min=1)] = 100,
    seed: Annotated[int, typer.Option(help="seeds the writes and the kill times")] = 0,
    sync_chars: Annotated[int, typer.Option(help="RAG_SYNC_WRITE_CHARS of the server: longer documents "
                                            "get 202", min=500)] = 4000,
    collections: Annotated[int, typer.Option(help="also: N collections created, queried and deleted on a "
                                             "fresh server, its descriptors and RSS before and after; 0: not")] = 0,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("eval/reports/crash.json"),
    as_json: JsonOpt = False,
    scifact: SciFactOpt = DEFAULT_SCIFACT,
    index: IndexOpt = None,
) -> None:
    """Mixed writes (sync and 202) under a random SIGKILL, again and again: acknowledged writes lost,
    applied twice, partial after each restart."""
    from rag.bench.crash import crash_table, run_collections, run_crash
    from rag.ingest.build import build_index

    settings = load_settings(index=index)
    if settings.vector_store != "local":
        fail("rag bench crash runs on the local store (RAG_VECTOR_STORE=local)")
    build_index(settings, log=_log)  # no-op when up to date
    result = run_crash(settings, rounds, writes, seed, sync_chars, scifact, log=_log)
    if collections:
        result["collections"] = run_collections(settings, collections, log=_log)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result) if as_json else crash_table(result))
    typer.echo(f"\nwrote {out}", err=as_json)
    t = result["totals"]
    if t["lost"] or t["twice"] or t["partial"]:
        fail(f"{t['lost']} lost, {t['twice']} applied twice, {t['partial']} partial")


@app.command("auth")
@user_errors
def auth(
    keys: Annotated[int, typer.Option(help="keys in the store", min=1)] = 1000,
    requests: Annotated[int, typer.Option(help="requests checked", min=1)] = 20000,
    as_json: JsonOpt = False,
) -> None:
    """What checking a request's key costs: resolve, rate, the route's rule (p50, p99 in us)."""
    from rag.bench.auth import auth_table, run_auth

    result = run_auth(keys, requests)
    typer.echo(json.dumps(result) if as_json else auth_table(result))


@app.command("agents")
@user_errors
def agents(
    limit: Annotated[int | None, typer.Option(help="questions of the seed set to ask (default: all)", min=1)] = None,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("eval/reports/agents.json"),
    as_json: JsonOpt = False,
    index: IndexOpt = None,
) -> None:
    """MCP search, /v1/embeddings and /v1/responses beside /query and chat, in one run (p50, ratios)."""
    from rag.bench.agents import agents_table, run_agents
    from rag.ingest.build import build_index

    settings = load_settings(index=index)
    build_index(settings, log=_log)  # no-op when up to date
    result = run_agents(settings.index_dir, limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result) if as_json else agents_table(result))
