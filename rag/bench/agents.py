"""`rag bench agents`: what the agents' interfaces cost beside `/query`, in the same run.

The real server (`rag serve`, the configured model) on the built index; the seed set's
distinct questions (eval/questions.jsonl), each asked once per interface, the interfaces
taking turns question by question so that a noisy minute hits them all alike:
- `POST /query` (k 5), the reference;
- the MCP `search` tool over streamable HTTP (one session, the SDK's client);
- `POST /v1/embeddings` with the question as its one input;
- `POST /v1/chat/completions` (no upstream model: the extractive answer);
- `POST /v1/responses` with file_search over `vs_default` (no upstream model).
p50 of each and its ratio to /query's (or chat's, for responses), against issue 24's
targets. Then 64 short texts (the questions) in one `/v1/embeddings` call, against the
same model's own batch encode in a plain process of its own: texts a second, and the ratio.

Left out: concurrency (rag bench serve measures it for /query); upstream models.
"""

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from rag.bench.server import start_server, wait_ready

TARGETS = {"mcp_search": 1.5, "embeddings_one": 1.2, "responses": 1.3}  # at most this x the reference
BATCH_TARGET = 0.8  # at least this x the raw model's batch rate
RAW_BATCH = """
import json, sys, time
from rag.encoders.load import embedder_from
from rag.settings import Settings
texts = json.loads(sys.stdin.read())
embedder = embedder_from(Settings())
embedder.encode(texts)  # the first call pays one-off costs
runs = []
for _ in range(5):
    started = time.perf_counter()
    embedder.encode(texts)
    runs.append(time.perf_counter() - started)
print(json.dumps(sorted(runs)[2]))
"""


def questions(path: Path = Path("eval/questions.jsonl")) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def _timed(asked: list[str], url: str) -> dict[str, list[float]]:
    from httpx2 import AsyncClient as McpHttp
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    times: dict[str, list[float]] = {k: [] for k in ("query", "mcp_search", "embeddings_one", "chat", "responses")}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http, McpHttp(timeout=60) as mcp_http, \
            Client(streamable_http_client(url + "/mcp", http_client=mcp_http)) as mcp:
        calls = {
            "query": lambda q: http.post("/query", json={"question": q, "k": 5}),
            "mcp_search": lambda q: mcp.call_tool("search", {"query": q}),
            "embeddings_one": lambda q: http.post("/v1/embeddings", json={"model": "rag", "input": q}),
            "chat": lambda q: http.post("/v1/chat/completions", json={
                "model": "rag", "messages": [{"role": "user", "content": q}]}),
            "responses": lambda q: http.post("/v1/responses", json={
                "model": "rag", "input": q, "store": False,
                "tools": [{"type": "file_search", "vector_store_ids": ["vs_default"]}]}),
        }
        for call in calls.values():  # warm each path once, with a question not timed
            await call("warm-up: which ports does the report name?")
        for question in asked:
            for name, call in calls.items():
                started = time.perf_counter()
                answer = await call(question)
                times[name].append((time.perf_counter() - started) * 1000)
                if isinstance(answer, httpx.Response) and answer.status_code != 200:
                    raise RuntimeError(f"{name}: {answer.status_code} {answer.text[:200]}")
                if getattr(answer, "is_error", False):
                    raise RuntimeError(f"{name}: {getattr(answer, 'content', answer)}")
    return times


def _batch_rate(url: str, texts: list[str]) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=120) as http:
        http.post("/v1/embeddings", json={"model": "rag", "input": texts})
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            http.post("/v1/embeddings", json={"model": "rag", "input": texts}).raise_for_status()
            runs.append(time.perf_counter() - started)
    raw = subprocess.run([sys.executable, "-c", RAW_BATCH], input=json.dumps(texts), capture_output=True,
                         text=True, check=True)
    served, plain = statistics.median(runs), float(raw.stdout.strip())
    return {"texts": len(texts), "served_per_s": round(len(texts) / served, 1),
            "raw_per_s": round(len(texts) / plain, 1), "ratio": round(plain / served, 3), "target": BATCH_TARGET}


def run_agents(index_dir: Path, limit: int | None = None) -> dict[str, Any]:
    asked = questions()[:limit]
    server, url = start_server(index_dir, 0)
    try:
        wait_ready(url, server, time.perf_counter())
        times = asyncio.run(_timed(asked, url))
        batch = _batch_rate(url, (questions() * 2)[:64])
    finally:
        server.terminate()
        server.wait()
    p50 = {name: round(statistics.median(ms), 2) for name, ms in times.items()}
    ratios = {"mcp_search": p50["mcp_search"] / p50["query"], "embeddings_one": p50["embeddings_one"] / p50["query"],
              "responses": p50["responses"] / p50["chat"]}
    return {"questions": len(asked), "p50_ms": p50, "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "targets": TARGETS, "met": {k: ratios[k] <= TARGETS[k] for k in TARGETS} | {
                "embeddings_batch": batch["ratio"] >= BATCH_TARGET}, "batch": batch}


def agents_table(result: dict[str, Any]) -> str:
    p50, ratios, met = result["p50_ms"], result["ratios"], result["met"]
    lines = [f"{result['questions']} distinct questions, each once per interface (p50 ms):",
             f"  /query                 {p50['query']:>7}",
             f"  MCP search             {p50['mcp_search']:>7}   {ratios['mcp_search']:.2f}x /query "
             f"(target <= {TARGETS['mcp_search']}x: {'met' if met['mcp_search'] else 'NOT met'})",
             f"  /v1/embeddings, 1 text {p50['embeddings_one']:>7}   {ratios['embeddings_one']:.2f}x /query "
             f"(target <= {TARGETS['embeddings_one']}x: {'met' if met['embeddings_one'] else 'NOT met'})",
             f"  /v1/chat/completions   {p50['chat']:>7}",
             f"  /v1/responses          {p50['responses']:>7}   {ratios['responses']:.2f}x chat "
             f"(target <= {TARGETS['responses']}x: {'met' if met['responses'] else 'NOT met'})"]
    b = result["batch"]
    lines.append(f"{b['texts']} texts in one /v1/embeddings call: {b['served_per_s']} texts/s; the model alone in "
                 f"a plain process: {b['raw_per_s']} texts/s: {b['ratio']:.2f}x (target >= {b['target']}x: "
                 f"{'met' if met['embeddings_batch'] else 'NOT met'})")
    return "\n".join(lines)
