"""`rag bench soak SECONDS`: a long mixed load on the real server, to show that nothing
fails and nothing leaks.

The server (`rag serve`, real model) runs on a private copy of the index, and for the
whole run:
- `clients` concurrent clients send a mix: /query (60%), /context (15%), streaming chat
  (10%), plain chat (10%), and hostile requests (5%: a lone surrogate in the question,
  which must get a 422 and must not fail anyone else's request);
- every `swap_seconds` this process rebuilds the index (`--force`: rewritten, vectors
  reused) and the server swaps to it while answering.

A failure is any response other than the expected status (200, or 422 for the hostile
ones), a stream that does not end with [DONE], or a connection error. Reports requests,
failures, latency p50/p99 per kind, swaps seen by the server, and the server's RSS
after a warm-up (the first `warmup_seconds`, when allocators and caches fill) and at the
end. Target: 0 failures, RSS growth <= 5%.

Left out: writes to live collections during the soak (`rag bench writes` times them apart).
"""

import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from rag.bench.server import QUESTIONS, rss_mb, start_server, wait_ready
from rag.evaluation.metrics import percentile
from rag.settings import Settings

KINDS = ["query"] * 12 + ["context"] * 3 + ["chat_stream"] * 2 + ["chat"] * 2 + ["hostile"]  # 60/15/10/10/5 %
HOSTILE_BODY = b'{"question": "trade \\ud800 in 2024"}'


async def _one(session: aiohttp.ClientSession, kind: str, i: int) -> None:
    """One request of `kind`; raises on anything but the expected outcome."""
    question = QUESTIONS[i % len(QUESTIONS)]
    chat = {"model": "rag", "messages": [{"role": "user", "content": question}]}
    if kind == "hostile":
        async with session.post("/query", data=HOSTILE_BODY, headers={"content-type": "application/json"}) as r:
            await r.read()
            if r.status != 422:
                raise RuntimeError(f"hostile request got {r.status}")
        return
    if kind == "chat_stream":
        async with session.post("/v1/chat/completions", json={**chat, "stream": True}) as r:
            body = await r.read()
            if r.status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
                raise RuntimeError(f"stream got {r.status} without [DONE]")
        return
    path, payload = {"query": ("/query", {"question": question, "k": 5}),
                     "context": ("/context", {"question": question, "k": 8, "max_tokens": 800}),
                     "chat": ("/v1/chat/completions", chat)}[kind]
    async with session.post(path, json=payload) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{kind} got {r.status}")


async def _load(url: str, clients: int, seconds: float, record: dict[str, Any]) -> None:
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client() -> None:
            while time.monotonic() < deadline:
                i = next(counter)
                kind = KINDS[i % len(KINDS)]
                started = time.perf_counter()
                try:
                    await _one(session, kind, i)
                except Exception as exc:  # counted, never fatal: the run goes on
                    record["failures"].append(f"{kind}: {exc!r}"[:200])
                record["latency"][kind].append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client() for _ in range(clients)))


def _swapper(settings: Settings, every: float, stop: threading.Event, swaps: list[str], errors: list[str]) -> None:
    from rag.encoders.load import embedder_from
    from rag.ingest.build import build_index

    try:
        embedder = embedder_from(settings)
        while not stop.wait(every):
            swaps.append(build_index(settings, embedder, force=True).build_id)
    except Exception as exc:  # reported with the results: a soak without swaps is not the soak asked for
        errors.append(f"index swaps stopped: {exc!r}")


def run_soak(settings: Settings, seconds: float, clients: int = 8, swap_seconds: float = 20.0,
             warmup_seconds: float = 30.0, out: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rag-soak-") as tmp:
        index_dir = Path(tmp) / "index"
        shutil.copytree(settings.index_dir, index_dir, ignore=shutil.ignore_patterns(".lock"))
        private = settings.model_copy(update={"index_dir": index_dir})
        server, url = start_server(index_dir, reload_poll_seconds=1)
        record: dict[str, Any] = {"failures": [], "latency": defaultdict(list)}
        stop, swaps, swap_errors = threading.Event(), list[str](), list[str]()
        swapper = threading.Thread(target=_swapper, args=(private, swap_seconds, stop, swaps, swap_errors),
                                   daemon=True)
        warmup = min(warmup_seconds, seconds / 4)  # RSS growth is measured over the rest
        try:
            wait_ready(url, server, time.perf_counter())
            swapper.start()
            asyncio.run(_load(url, clients, warmup, record))
            rss_start = rss_mb(server.pid)["VmRSS"]
            asyncio.run(_load(url, clients, seconds - warmup, record))
            rss_end = rss_mb(server.pid)["VmRSS"]
        finally:
            stop.set()
            if swapper.is_alive():
                swapper.join(timeout=120)
            server.terminate()
            server.wait(timeout=30)
    latency = record["latency"]
    every = [x for values in latency.values() for x in values]
    result = {
        "seconds": seconds, "clients": clients,
        "requests": len(every), "failed": len(record["failures"]),
        "failures_sample": record["failures"][:10],
        "p50_ms": round(statistics.median(every), 1) if every else None,
        "p99_ms": round(percentile(every, 0.99), 1) if every else None,
        "per_kind": {k: {"requests": len(v), "p50_ms": round(statistics.median(v), 1),
                         "p99_ms": round(percentile(v, 0.99), 1)} for k, v in sorted(latency.items())},
        "index_swaps": len(swaps), "swap_errors": swap_errors, "warmup_seconds": warmup,
        "rss_mb_after_warmup": round(rss_start, 1), "rss_mb_end": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_start - 1, 4),
        "targets": {"failed": "== 0", "rss_growth": "<= 0.05"},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def soak_table(r: dict[str, Any]) -> str:
    def ok(good: bool) -> str:
        return "met" if good else "MISSED"

    lines = [f"soak: {r['seconds']:g} s, {r['clients']} clients, {r['index_swaps']} index swaps"
             + "".join(f" ({e})" for e in r["swap_errors"]),
             f"  requests {r['requests']}, failed {r['failed']}   (target 0: {ok(r['failed'] == 0)})",
             f"  latency p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"]
    lines += [f"    {k:<12} {v['requests']:>7} requests  p50 {v['p50_ms']:>7} ms  p99 {v['p99_ms']:>8} ms"
              for k, v in r["per_kind"].items()]
    lines.append(f"  server RSS {r['rss_mb_after_warmup']:.0f} MB after {r['warmup_seconds']:g} s of warm-up -> "
                 f"{r['rss_mb_end']:.0f} MB at the end ({r['rss_growth']:+.1%}; target <= +5%: "
                 f"{ok(r['rss_growth'] <= 0.05)})")
    lines += [f"  failure: {f}" for f in r["failures_sample"]]
    return "\n".join(lines)
