"""`rag bench portable`: what moving an N-chunk knowledge base costs, against the disk it
is written to, and what an export or a backup costs the queries served meanwhile.

1. The disk: sequential write speed in the benchmark's temporary folder (1 GiB of random
   bytes, made before the clock starts, written in 8 MiB blocks, fsync at the end; removed).
2. An N-chunk built corpus `default` from SciFact's real vectors (rag.bench.scale's synthetic
   build), then, each a `rag` child process timed from launch to exit as a user sees it
   (interpreter, imports and model load included): `rag export default`, `rag import` of that
   archive as the live local collection `copy`, and `rag export copy`.
3. A real `rag serve` on that index and one closed-loop client (aiohttp) posting /query on
   `default`: idle for PHASE_SECONDS, then while `rag export default` runs, then while
   `rag backup` runs (the built corpus and `copy`). A child that ends before PHASE_SECONDS is
   started again, so that each phase's p99 rests on as many requests as the idle one's.
   Each phase asks SciFact's 300 test questions in order, each once, cycling only if it
   needs more; a warm-up with the seed questions comes first.

Targets (issue 25): export and import each >= 0.5x the disk's write speed, or <= 60 s;
/query p99 during an export or a backup <= 2x the idle p99 of the same run.

Left out: Milvus (the local store only), sentences (the synthetic build has none), and
queries during an import or a restore.
"""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from rag.bench.rows import RowsSpec
from rag.bench.scale import build_in_child, scifact_source, serve_env, serving
from rag.bench.server import QUESTIONS
from rag.evaluation.metrics import percentile
from rag.settings import Settings

DISK_BYTES, DISK_BLOCK = 1 << 30, 8 << 20
PHASE_SECONDS = 15.0  # the idle phase, and the least each phase under an export or a backup lasts
SPEED_SHARE, MOVE_SECONDS, P99_RATIO = 0.5, 60.0, 2.0  # the targets
Launch = Callable[[int], subprocess.Popen[bytes]]  # the i-th child of a phase


def disk_write_mb_s(folder: Path, total: int = DISK_BYTES, block: int = DISK_BLOCK) -> float:
    """Sequential write speed in `folder`, MB/s (10^6 bytes): `total` random bytes in `block`s, fsynced."""
    data = memoryview(np.random.default_rng().bytes(total))  # made before the clock starts
    path = folder / f".disk-speed-{os.getpid()}"
    try:
        started = time.perf_counter()
        with open(path, "wb", buffering=0) as out:
            for offset in range(0, total, block):
                out.write(data[offset:offset + block])
            os.fsync(out.fileno())
        return total / (time.perf_counter() - started) / 1e6
    finally:
        path.unlink(missing_ok=True)


def run_portable(settings: Settings, n: int, scifact: Path, log: Callable[[str], None]) -> dict[str, Any]:
    embedder, source_store, questions = scifact_source(settings, scifact, log)
    del embedder  # the children load their own
    work = settings.cache_dir / "portable"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{n}-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"writing {DISK_BYTES >> 20} MiB to {tmp} to time the disk")
        disk = disk_write_mb_s(tmp)
        target = settings.model_copy(update={"vector_store": "local", "index_dir": tmp / "index",
                                             "milvus_uri": str(tmp / "milvus.db"), "highlights": False})
        env = {**os.environ, **serve_env(target)}
        build_s, _ = build_in_child(target, n, RowsSpec("near-copies", str(source_store.folder)))
        source = f"{scifact.name}: {len(source_store.chunks)} chunks embedded by {settings.model} " \
                 f"({settings.embed_backend}), mixed and noised to {n}"
        source_store.close()
        log(f"disk {disk:.0f} MB/s; built {n} chunks in {build_s:.0f} s; rag export default")
        moves = {"export": _rag(["export", "default", "-o", str(tmp / "default.tar")], env, tmp / "default.tar")}
        log(f"exported in {moves['export']['seconds']} s; rag import --as copy")
        moves["import"] = _rag(["import", str(tmp / "default.tar"), "--as", "copy"], env, tmp / "default.tar")
        log(f"imported in {moves['import']['seconds']} s; rag export copy")
        moves["export_copy"] = _rag(["export", "copy", "-o", str(tmp / "copy.tar")], env, tmp / "copy.tar")
        for move in moves.values():
            move["share_of_disk"] = round(move["mb_s"] / disk, 3)
            move["met"] = move["share_of_disk"] >= SPEED_SHARE or move["seconds"] <= MOVE_SECONDS
        with open(tmp / "children.log", "ab") as child_log, serving(target) as (_, url, ready_s):
            if ready_s is None:
                raise RuntimeError("rag serve on the benchmark's index never got ready")

            def rag(*args: str) -> subprocess.Popen[bytes]:
                return subprocess.Popen([sys.executable, "-m", "api.cli", *args], env=env,
                                        stdout=subprocess.DEVNULL, stderr=child_log)
            phases = {
                "idle": None,
                "export": lambda i: rag("export", "default", "-o", str(tmp / "during.tar")),
                "backup": lambda i: rag("backup", "-o", str(tmp / f"backup-{i}")),
            }
            log(f"rag serve ready in {ready_s:.1f} s; /query idle, during rag export, during rag backup")
            latency = {name: asyncio.run(query_phase(url, questions, PHASE_SECONDS, launch))
                       for name, launch in phases.items()}
    idle_p99 = latency["idle"]["p99_ms"]
    for name in ("export", "backup"):
        latency[name]["p99_over_idle"] = round(latency[name]["p99_ms"] / idle_p99, 2)
        latency[name]["met"] = latency[name]["p99_over_idle"] <= P99_RATIO
    return {"chunks": n, "date": time.strftime("%Y-%m-%d"), "disk_write_mb_s": round(disk, 1),
            "build_s": round(build_s, 1), **moves, "serve_ready_s": round(ready_s, 1), "latency": latency,
            "source": source,
            "questions": f"{scifact.name}'s {len(questions)} test questions in order, each once per phase "
                         "(cycling only past the last), one client, closed loop, k=5, collection default"}


def _rag(args: list[str], env: dict[str, str], archive: Path) -> dict[str, Any]:
    """`rag ARGS` in a child process, timed from launch to exit; `archive`'s size and MB/s."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"rag {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    size = archive.stat().st_size
    return {"seconds": round(seconds, 2), "archive_mb": round(size / 1e6, 1), "mb_s": round(size / seconds / 1e6, 1),
            "said": done.stdout.strip()}


async def query_phase(url: str, questions: list[str], seconds: float, launch: Launch | None,
                      warmup: int = 20, collection: str = "default", qps: float = 0.0) -> dict[str, Any]:
    """/query latencies of one client on `collection` for `seconds`; with `launch`, only while a
    child it started runs (started again until `seconds` have passed: 0 runs one); p50/p99 and
    counts. The client is closed-loop (the next question as soon as an answer is back) or, with
    `qps`, paced: question i is sent at i/qps seconds, or as soon as answer i-1 is back if later."""
    times: list[float] = []
    failed, runs = 0, []
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def ask(question: str) -> bool:
            async with session.post("/query", json={"question": question, "k": 5, "collection": collection}) as r:
                await r.read()
                return r.status == 200
        for i in range(warmup):  # page cache, FAISS's first calls: not these questions, not timed
            await ask(QUESTIONS[i % len(QUESTIONS)])
        started = time.perf_counter()
        child: subprocess.Popen[bytes] | None = None
        child_started = 0.0
        while True:
            if launch is not None and (child is None or child.poll() is not None):
                if child is not None:
                    if child.returncode:
                        raise RuntimeError(f"a child of the phase exited with status {child.returncode}")
                    runs.append(round(time.perf_counter() - child_started, 1))
                    if time.perf_counter() - started >= seconds:
                        break
                child, child_started = launch(len(runs)), time.perf_counter()
            elif launch is None and time.perf_counter() - started >= seconds:
                break
            if qps:
                await asyncio.sleep(max(0.0, started + len(times) / qps - time.perf_counter()))
            t0 = time.perf_counter()
            ok = await ask(questions[len(times) % len(questions)])
            times.append((time.perf_counter() - t0) * 1000)
            failed += not ok
    return {"requests": len(times), "failed": failed, "distinct_questions": min(len(times), len(questions)),
            "seconds": round(time.perf_counter() - started, 1), "child_runs_s": runs,
            "p50_ms": round(statistics.median(times), 1), "p99_ms": round(percentile(times, 0.99), 1)}


def portable_table(result: dict[str, Any]) -> str:
    disk = result["disk_write_mb_s"]
    lines = [f"portable: {result['chunks']:,} chunks ({result['source']}), measured {result['date']}",
             f"  disk: sequential write {disk} MB/s ({DISK_BYTES >> 20} MiB in {DISK_BLOCK >> 20} MiB blocks, "
             f"fsync); build {result['build_s']} s",
             f"  {'':<20}{'seconds':>9}{'archive MB':>12}{'MB/s':>9}{'x disk':>8}   target: >= {SPEED_SHARE}x disk "
             f"or <= {MOVE_SECONDS:.0f} s"]
    for key, label in (("export", "rag export default"), ("import", "rag import --as copy"),
                       ("export_copy", "rag export copy")):
        m = result[key]
        lines.append(f"  {label:<20}{m['seconds']:>9.1f}{m['archive_mb']:>12.1f}{m['mb_s']:>9.1f}"
                     f"{m['share_of_disk']:>8.3f}   {'met' if m['met'] else 'NOT met'}")
    lines.append(f"  /query on default, rag serve ready in {result['serve_ready_s']} s; {result['questions']}")
    lines.append(f"  {'phase':<20}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'p99/idle':>10}"
                 f"   child runs (s)        target: p99 <= {P99_RATIO:.0f}x idle")
    for name, row in result["latency"].items():
        ratio = f"{row['p99_over_idle']:>10.2f}" if "p99_over_idle" in row else f"{'':>10}"
        verdict = ("met" if row["met"] else "NOT met") if "met" in row else ""
        runs = ", ".join(f"{s}" for s in row["child_runs_s"]) or "-"
        lines.append(f"  {name:<20}{row['requests']:>9}{row['failed']:>8}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
                     f"{ratio}   {runs:<22}{verdict}".rstrip())
    return "\n".join(lines)
