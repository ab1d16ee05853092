"""`rag bench serve`: measure the real server against the raw model, in one run.

1. launch `rag serve` as a subprocess on a free port and time /ready from launch;
2. one question at a time: sentence-transformers' torch encode as a user runs it, in a plain
   process of its own (rag.bench.reference: PyTorch's default threads and wait policy), the
   serving backend's raw encode, and /query with one client, measured in alternating rounds
   so that every median sees the same machine noise, each round on the same distinct
   questions (a fresh slice of SciFact's questions every round: none is asked twice);
3. throughput (queries/s) with 1, 8 and 32 concurrent clients, in alternating rounds too,
   each figure the median of its rounds. Their questions are distinct: SciFact's 1,109
   questions (not the seed eval set), shuffled, no question twice in a run (each at most
   twice over all runs: the server caches no answers); and, in the same run, the ceiling
   32 clients could reach: the serving model's own rate on those questions at batch 32
   (tokenised outside the timing, sorted by length: the least padding), and the share of it
   that 32 clients get;
4. the server's resident memory (VmRSS, and its peak VmHWM);
5. where a /query's time goes, from the same one-client requests: the server sends each one's
   steps in a Server-Timing header (RAG_SERVER_TIMING, set for this server only), and the
   client's wait beyond their sum is the HTTP round trip, uvicorn and the middleware.

Prints a table with the ratios that the targets are stated in and writes JSON.
Every figure comes from this one run, on this machine, so ratios compare like with like.

The load generator is aiohttp: it costs ~0.4 ms of CPU per request where httpx cost
~3.7 ms (measured with /proc CPU times during a 32-client run), and on 2 shared cores every
millisecond the client burns is taken from the server being measured.

Left out: multi-machine load generation; the client shares the machine's cores with the
server, as a co-located frontend would.
"""

import asyncio
import json
import os
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from rag.bench.reference import TorchReference
from rag.bench.server import QUESTIONS, rss_mb, start_server, wait_ready
from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from, load_embedder, resolve_model_path
from rag.evaluation.metrics import percentile
from rag.ingest.build import spec_of
from rag.ingest.chunk import embed_input
from rag.settings import Settings

EMBED_SAMPLE = 384  # passages timed per embedding run
TARGETS = {"p50_over_torch_encode": "<= 0.6", "qps_32_over_1": ">= 3.5", "qps_32_over_ceiling": ">= 0.85",
           "server_peak_rss_mb": "<= 700",
           "ready_seconds": "<= 5", "build_over_raw_best": ">= 0.9"}
ROUNDS = 10  # alternations of raw-encode and one-client blocks
THROUGHPUT_ROUNDS = 5  # alternations of the 1-, 8- and 32-client runs


def encode_times_ms(embedder: Embedder, n: int, questions: list[str] = QUESTIONS) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        embedder.encode([questions[i % len(questions)]])
        times.append((time.perf_counter() - started) * 1000)
    return times


def _session(url: str, clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def _ask(session: aiohttp.ClientSession, i: int, questions: list[str] = QUESTIONS) -> dict[str, float]:
    """Asks one question; returns the server's steps for it (its Server-Timing header, ms)."""
    async with session.post("/query", json={"question": questions[i % len(questions)], "k": 5}) as r:
        r.raise_for_status()
        await r.read()
        return server_timing(r.headers.get("Server-Timing", ""))


def server_timing(header: str) -> dict[str, float]:
    """`encode;dur=3.1, dense-search;dur=0.2` -> {"encode": 3.1, "dense search": 0.2}."""
    steps = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, duration = part.partition(";dur=")
        steps[name.replace("-", " ")] = float(duration)
    return steps


async def one_client_latencies(url: str, n: int, questions: list[str] = QUESTIONS,
                               steps: list[dict[str, float]] | None = None) -> list[float]:
    """Each request's milliseconds at the client; its server-side steps appended to `steps`."""
    async with _session(url, 1) as session:
        times = []
        for i in range(n):
            started = time.perf_counter()
            answered = await _ask(session, i, questions)
            times.append((time.perf_counter() - started) * 1000)
            if steps is not None:
                steps.append(answered)
        return times


OUTSIDE = "outside the handler: HTTP, middleware, the client"


def steps_p50(latencies: list[float], steps: list[dict[str, float]]) -> dict[str, float]:
    """p50 of each server step over the same requests, in the order the server took them, and
    of what the client waited beyond them (the HTTP round trip, uvicorn, the middleware and the
    client's own work)."""
    names = list(dict.fromkeys(name for request in steps for name in request))
    out = {name: round(statistics.median([request.get(name, 0.0) for request in steps]), 3) for name in names}
    out[OUTSIDE] = round(statistics.median([ms - sum(request.values()) for ms, request in zip(latencies, steps)]), 3)
    return out


async def throughput(url: str, clients: int, total: int, questions: list[str] = QUESTIONS) -> float:
    async with _session(url, clients) as session:
        counter = iter(range(total))

        async def client() -> None:
            for i in counter:
                await _ask(session, i, questions)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return total / (time.perf_counter() - started)


def run_bench(settings: Settings, repeats: int = 200, queries: int = 640,
              out: Path | None = None, scifact: Path | None = None) -> dict[str, Any]:
    torch_model = load_embedder(settings.model, "torch")
    served = torch_model if settings.embed_backend == "torch" else embedder_from(settings)
    for model in (torch_model, served):
        encode_times_ms(model, 20)  # warm up
    launched = time.perf_counter()
    server, url = start_server(settings.index_dir, reload_poll_seconds=0, env={"RAG_SERVER_TIMING": "true"})
    try:
        ready_s = wait_ready(url, server, launched)
        asyncio.run(one_client_latencies(url, 20))  # warm the connection path
        torch_raw: list[float] = []
        served_raw: list[float] = []
        latencies: list[float] = []
        steps: list[dict[str, float]] = []  # each one-client request's server-side steps
        pool, per_round = distinct_questions(scifact), repeats // ROUNDS
        with TorchReference(resolve_model_path(settings.model)) as reference:
            reference.times_ms(QUESTIONS)  # warm up
            for r in range(ROUNDS):  # alternating, so that every median sees the same machine noise
                # the same distinct questions for all three in a round, a fresh slice every round
                asked = [pool[(r * per_round + i) % len(pool)] for i in range(per_round)] if pool else QUESTIONS
                torch_raw += reference.times_ms([asked[i % len(asked)] for i in range(per_round)])
                served_raw += encode_times_ms(served, per_round, asked)
                latencies += asyncio.run(one_client_latencies(url, per_round, asked, steps))
        rounds: dict[int, list[float]] = {1: [], 8: [], 32: []}
        batches = {"sum": 0.0, "count": 0.0}  # of the 32-client runs
        per_run = queries // THROUGHPUT_ROUNDS
        ceilings = []
        for r in range(THROUGHPUT_ROUNDS):
            ceilings.append(model_rate(served, pool))
            for j, n in enumerate(rounds):
                start = (r * len(rounds) + j) * per_run  # a fresh slice of the pool for every run
                run = [pool[(start + i) % len(pool)] for i in range(per_run)] if pool else QUESTIONS
                before = batch_histogram(url)
                rounds[n].append(asyncio.run(throughput(url, n, per_run, run)))
                if n == 32:
                    batches = {k: v + batch_histogram(url)[k] - before[k] for k, v in batches.items()}
        qps = {n: statistics.median(v) for n, v in rounds.items()}
        memory = rss_mb(server.pid)
        torch_in_server = "libtorch" in Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    from rag.bench.profile import embed_rates, sample_passages
    from rag.stores.factory import open_store

    store = open_store(settings, spec_of(settings))
    seed = [embed_input(str(store.documents[c.doc_id].metadata["title"]), c.section, c.text) for c in store.chunks]
    texts, passages_from = sample_passages(EMBED_SAMPLE, scifact, seed, torch_model, settings)
    rates = {"torch": embed_rates(torch_model, texts, settings.embed_batch_size)}
    if served is not torch_model:
        rates[settings.embed_backend] = embed_rates(served, texts, settings.embed_batch_size)
    p50, torch_ms = statistics.median(latencies), statistics.median(torch_raw)
    result = {
        "backend": settings.embed_backend,
        "torch_encode_ms_p50": round(torch_ms, 2),
        "backend_encode_ms_p50": round(statistics.median(served_raw), 2),
        "query_ms_p50": round(p50, 2),
        "query_ms_p95": round(percentile(latencies, 0.95), 2),
        "p50_over_torch_encode": round(p50 / torch_ms, 2),
        "steps_ms_p50": steps_p50(latencies, steps),
        "qps": {str(n): round(v, 1) for n, v in qps.items()},
        "qps_rounds": {str(n): [round(x, 1) for x in v] for n, v in rounds.items()},
        "qps_32_over_1": round(qps[32] / qps[1], 2),
        "model_ceiling_qps": round(statistics.median(ceilings), 1) if ceilings[0] else None,
        "qps_32_over_ceiling": round(qps[32] / statistics.median(ceilings), 3) if ceilings[0] else None,
        "throughput_questions": f"{len(pool)} distinct SciFact questions, {per_run} a run, none twice in a run"
                                if pool else f"{len(QUESTIONS)} fixed questions, cycled",
        "mean_batch_size_32_clients": round(batches["sum"] / batches["count"], 2) if batches["count"] else None,
        "embed_rates": rates, "embed_passages": passages_from,
        "server_rss_mb": round(memory.get("VmRSS", 0.0), 1),
        "server_peak_rss_mb": round(memory.get("VmHWM", 0.0), 1),
        "torch_loaded_in_server": torch_in_server,
        "ready_seconds": round(ready_s, 2),
        "targets": TARGETS,
        "cpu_count": os.cpu_count(),
        "repeats": repeats, "queries_per_throughput_run": queries,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def distinct_questions(scifact: Path | None, seed: int = 0) -> list[str]:
    """SciFact's questions (all of them, not the seed eval set), shuffled; [] without SciFact."""
    if scifact is None or not (scifact / "queries.jsonl").is_file():
        return []
    with open(scifact / "queries.jsonl", encoding="utf-8") as lines:
        questions = list(dict.fromkeys(json.loads(line)["text"] for line in lines if line.strip()))
    random.Random(seed).shuffle(questions)
    return questions


def model_rate(embedder: Embedder, questions: list[str], batch_size: int = 32) -> float:
    """Questions per second of the model alone on `questions` at `batch_size` (0 without a
    `model_only` or without questions): the ceiling a server's clients could reach."""
    if not questions or not hasattr(embedder, "model_only"):
        return 0.0
    run = embedder.model_only(questions, batch_size)
    run()  # warm: the first calls at a new shape
    started = time.perf_counter()
    run()
    return len(questions) / (time.perf_counter() - started)


def batch_histogram(url: str) -> dict[str, float]:
    """Sum and count of the server's rag_batch_size histogram."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found = dict(re.findall(r"^rag_batch_size_(sum|count) ([0-9.e+]+)$", text, re.M))
    return {k: float(v) for k, v in found.items()}


def table(r: dict[str, Any]) -> str:
    def ok(good: bool) -> str:
        return "met" if good else "MISSED"

    backend = r["backend"]
    rows = [
        ("raw encode, one question, torch (p50)", f"{r['torch_encode_ms_p50']:.2f} ms", ""),
        (f"raw encode, one question, {backend} (p50)", f"{r['backend_encode_ms_p50']:.2f} ms", ""),
        ("/query, one client (p50)", f"{r['query_ms_p50']:.2f} ms", ""),
        ("/query, one client (p95)", f"{r['query_ms_p95']:.2f} ms", ""),
        ("/query p50 / torch encode", f"{r['p50_over_torch_encode']:.2f}x",
         f"<= 0.6x   {ok(r['p50_over_torch_encode'] <= 0.6)}"),
        *[(f"throughput, {n} client(s)", f"{v:.1f} q/s", "") for n, v in r["qps"].items()],
        ("throughput 32 / 1", f"{r['qps_32_over_1']:.2f}x", f">= 3.5x   {ok(r['qps_32_over_1'] >= 3.5)}"),
        *([("model ceiling (raw model, batch 32)", f"{r['model_ceiling_qps']:.1f} q/s", ""),
           ("throughput 32 / model ceiling", f"{r['qps_32_over_ceiling']:.2f}x",
            f">= 0.85x  {ok(r['qps_32_over_ceiling'] >= 0.85)}")] if r.get("model_ceiling_qps") else []),
        ("mean model batch, 32 clients", f"{r['mean_batch_size_32_clients']}", ""),
        ("server RSS (peak)", f"{r['server_rss_mb']:.0f} MB ({r['server_peak_rss_mb']:.0f})",
         f"<= 700    {ok(r['server_peak_rss_mb'] <= 700)}"),
        ("torch loaded by the server", "yes" if r["torch_loaded_in_server"] else "no", ""),
        ("/ready after launch", f"{r['ready_seconds']:.2f} s", f"<= 5 s    {ok(r['ready_seconds'] <= 5)}"),
    ]
    lines = [f"{a:<42}{b:>16}   {c}" for a, b, c in rows]
    lines.append(f"\n/query steps, p50 ms ({backend}; the one-client requests' own Server-Timing):")
    lines += [f"  {name:<40}{ms:>10.3f}" for name, ms in r["steps_ms_p50"].items()]
    sample = next(iter(r["embed_rates"].values()))["passages"]
    lines.append(f"\nchunk embedding, passages/s ({sample} {r['embed_passages']}):")
    for name, e in r["embed_rates"].items():
        lines.append(f"  {name:<10} raw model best {e['raw_best_per_s']:>7.1f} (batch {e['raw_best_batch']}), "
                     f"build {e['build_per_s']:>7.1f}: {e['build_over_raw_best']:.2f}x   "
                     f">= 0.9x  {ok(e['build_over_raw_best'] >= 0.9)}")
    return "\n".join(lines)
