"""`rag bench reembed`: a re-embed's rate against `rag build`'s on the same chunks, and the
queries a real `rag serve` answers while it runs.

1. The same N SciFact documents on every side (real abstracts, already clean: built with
   `rules=None`, as `rag eval --beir` does, and so one section each).
2. The build, in a child process: `build_index` (what `rag build` runs) of the N documents
   with the TARGET backend, the model loaded before the clock starts. Timed: the whole
   build (clean, chunk, embed, write, commit), and apart from it the model's encode calls.
3. The live side: the N documents built with the configured backend (the served corpus
   `default`, timed the same way), exported and imported as two live collections, `quiet`
   and `live` (no embedding: the vectors travel in the archive).
4. `rag reembed --collection quiet --backend TARGET` in a child process, nothing else running;
   then `rag serve` on the index and one client (aiohttp) posting /query to `live`, paced at
   QPS questions a second (`--qps 0`: closed loop, as fast as answers come back): idle for
   PHASE_SECONDS, then while `rag reembed --collection live --backend TARGET` runs, to its exit.
   A re-embed is timed from its start (the target recorded in the collection's manifest,
   after the model loaded) to its cutover (the manifest swapped), both seen by polling the
   manifest every POLL_S.

Target (issue 25): a re-embed's chunks per second >= RATIO x the build's, and no query fails.
A re-embed runs at nice 10 (rag.cli.portable) and, with the client, shares the cores with
the queries it serves: both re-embeds are reported, each against the build. A closed-loop
client keeps `rag serve` busy on both cores, and a niced re-embed then gets a small share of
them: that load is `--qps 0`, reported as such, not the default.

Left out: Milvus (the local store only), sentences (highlights off on every side).
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.bench.child import in_child
from rag.bench.portable import PHASE_SECONDS, query_phase
from rag.bench.scale import serve_env, serving
from rag.bench.server import cpu_seconds
from rag.errors import BadQueryError
from rag.settings import Settings

RATIO = 0.9  # the target: a re-embed's rate over the build's
QPS = 5.0  # the default load while a re-embed runs: questions a second, a team's busy service
POLL_S = 0.05


def target_backend(backend: str) -> str:
    """The backend a collection made with `backend` moves to: the issue's switch, onnx -> onnx-int8."""
    return "onnx" if backend == "onnx-int8" else "onnx-int8"


def run_reembed(settings: Settings, n: int, scifact: Path, log: Callable[[str], None],
                qps: float = QPS) -> dict[str, Any]:
    from rag.collections import Collections
    from rag.evaluation.beir import judged_queries

    documents, queries, _, judged = judged_queries(scifact, None)
    if not 1 <= n <= len(documents):
        raise BadQueryError(f"--documents {n}: {scifact.name} has {len(documents)}")
    questions = [queries[q] for q in judged]
    source = settings.model_copy(update={"vector_store": "local", "highlights": False})
    target = target_backend(source.embed_backend)
    work = settings.cache_dir / "reembed"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{n}-") as tmp_name:
        tmp = Path(tmp_name)
        source = source.model_copy(update={"index_dir": tmp / "index"})
        env = {**os.environ, **serve_env(source), "RAG_EMBED_BACKEND": source.embed_backend}
        log(f"building {n} documents with {target} (the baseline), then with {source.embed_backend} (served)")
        build = build_in_child(source.model_copy(update={"embed_backend": target, "index_dir": tmp / "build"}),
                               scifact, n)
        served = build_in_child(source, scifact, n)
        log(f"{build['chunks']} chunks: built at {build['chunks_s']}/s ({target}), {served['chunks_s']}/s "
            f"({source.embed_backend}); importing as collections 'quiet' and 'live'")
        _rag(["export", "default", "-o", str(tmp / "default.tar")], env)
        for name in ("quiet", "live"):
            _rag(["import", str(tmp / "default.tar"), "--as", name], env)
        with open(tmp / "children.log", "ab") as child_log:
            def reembed(name: str) -> subprocess.Popen[bytes]:
                return subprocess.Popen([sys.executable, "-m", "api.cli", "reembed", "--collection", name,
                                         "--backend", target], env=env, stdout=subprocess.DEVNULL, stderr=child_log)

            log(f"rag reembed --collection quiet --backend {target}, alone")
            with Cutover(source.index_dir / "collections" / "quiet", target) as quiet:
                if reembed("quiet").wait():
                    raise RuntimeError(f"rag reembed of 'quiet' failed: see {tmp / 'children.log'}")
            with serving(source) as (server, url, ready_s):
                if ready_s is None:
                    raise RuntimeError("rag serve on the benchmark's index never got ready")
                log(f"rag serve ready in {ready_s:.1f} s; /query on 'live' idle, then during rag reembed")
                cpu = cpu_seconds(server.pid)
                idle = asyncio.run(query_phase(url, questions, PHASE_SECONDS, None, collection="live", qps=qps))
                idle["serve_cpu_ms"] = (cpu_seconds(server.pid) - cpu) * 1000
                cpu = cpu_seconds(server.pid)
                with Cutover(source.index_dir / "collections" / "live", target) as live:
                    during = asyncio.run(query_phase(url, questions, 0.0, lambda i: reembed("live"),
                                                     collection="live", qps=qps))
                during["serve_cpu_ms"] = (cpu_seconds(server.pid) - cpu) * 1000
        for phase in (idle, during):  # what serving a query costs: more during the re-embed means more work
            phase["serve_cpu_ms_per_request"] = round(phase.pop("serve_cpu_ms") / phase["requests"], 1)
        with Collections(source, None) as collections:
            moved = {name: (collections.get(name).manifest["model"]["backend"], collections.get(name).count())
                     for name in ("quiet", "live")}
    if moved != {"quiet": (target, build["chunks"]), "live": (target, build["chunks"])}:
        raise RuntimeError(f"the re-embeds left {moved}, not {build['chunks']} chunks on {target} each")
    during["p99_over_idle"] = round(during["p99_ms"] / idle["p99_ms"], 2)
    return {"documents": n, "chunks": build["chunks"], "date": time.strftime("%Y-%m-%d"), "model": settings.model,
            "from_backend": source.embed_backend, "to_backend": target, "cores": os.cpu_count(),
            "build": build, "served_build": served,
            "reembed_alone": quiet.rate(build), "reembed_serving": {**live.rate(build), "failed": during["failed"]},
            "serve_ready_s": round(ready_s, 1), "latency": {"idle": idle, "reembed": during},
            "qps": qps, "questions": f"{scifact.name}'s {len(questions)} test questions in order (cycling past "
                                     f"the last), one client, {load(qps)}, k=5, collection live"}


def load(qps: float) -> str:
    return f"paced at {qps:g} questions/s" if qps else "closed loop"


def _rag(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"rag {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")


class Cutover:
    """Watches a collection's manifest: when a re-embed to `backend` began (its target
    recorded) and when it cut over (the manifest is the target's)."""

    def __init__(self, folder: Path, backend: str):
        self.path, self.backend = folder / "manifest.json", backend
        self.began: float | None = None
        self.cut: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Cutover":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.cut is None:
            try:
                manifest = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # replaced as we read it: again at the next poll
                manifest = {}
            now = time.perf_counter()
            if "reembed" in manifest and self.began is None:
                self.began = now
            elif "model" in manifest and "reembed" not in manifest and self.began is not None \
                    and manifest["model"].get("backend") == self.backend:
                self.cut = now
            self._stop.wait(POLL_S)

    def rate(self, build: dict[str, Any]) -> dict[str, Any]:
        """Chunks per second from the start to the cutover, and over the build's rates."""
        if self.began is None or self.cut is None:
            raise RuntimeError(f"the re-embed's start or cutover was not seen in {self.path}")
        seconds = self.cut - self.began
        rate = build["chunks"] / seconds
        ratio = rate / build["chunks_s"]
        return {"seconds": round(seconds, 1), "chunks_s": round(rate, 1), "over_build": round(ratio, 3),
                "over_embedding": round(rate / build["embed_chunks_s"], 3), "met": ratio >= RATIO}


# ------------------------------------------------------------------ the build (child process)


def build_in_child(target: Settings, scifact: Path, n: int) -> dict[str, Any]:
    """`build_index` of the first `n` SciFact documents in a fresh process, timed after the model loaded."""
    return dict(in_child(timed_build, target, scifact, n))


def timed_build(target: Settings, scifact: Path, n: int) -> dict[str, Any]:
    from rag.encoders.load import embedder_from
    from rag.evaluation.beir import load_beir
    from rag.ingest.build import build_index

    documents = load_beir(scifact)[0][:n]
    started = time.perf_counter()
    embedder = embedder_from(target)
    load_s = time.perf_counter() - started
    encoding = [0.0]
    encode = embedder.encode

    def timed_encode(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            encoding[0] += time.perf_counter() - t0
    setattr(embedder, "encode", timed_encode)  # noqa: B010 (an instance's method, timed)
    report = build_index(target, embedder, force=True, rules=None, documents=documents)
    return {"backend": target.embed_backend, "documents": report.documents, "chunks": report.chunks,
            "model_load_s": round(load_s, 1), "seconds": round(report.seconds, 1),
            "chunks_s": round(report.embedded / report.seconds, 1), "embed_seconds": round(encoding[0], 1),
            "embed_chunks_s": round(report.embedded / encoding[0], 1)}


def reembed_table(result: dict[str, Any]) -> str:
    b, target = result["build"], result["to_backend"]
    lines = [f"reembed: {result['documents']:,} SciFact documents = {result['chunks']:,} chunks, {result['model']} "
             f"{result['from_backend']} -> {target}, {result['cores']} cores, measured {result['date']}",
             f"  {'':<48}{'seconds':>9}{'chunks/s':>10}{'x build':>9}{'x encode':>10}   "
             f"target: >= {RATIO}x build"]
    for label, row in ((f"rag build ({target})", b),
                       ("  its encode calls alone", {"seconds": b["embed_seconds"], "chunks_s": b["embed_chunks_s"]}),
                       (f"rag build ({result['from_backend']}, served)", result["served_build"]),
                       ("rag reembed, alone", result["reembed_alone"]),
                       (f"rag reembed, /query {load(result.get('qps', 0.0))}", result["reembed_serving"])):
        ratio = f"{row['over_build']:>9.3f}{row['over_embedding']:>10.3f}" if "over_build" in row else f"{'':>19}"
        verdict = ("met" if row["met"] else "NOT met") if "met" in row else ""
        lines.append(f"  {label:<48}{row['seconds']:>9.1f}{row['chunks_s']:>10.1f}{ratio}   {verdict}".rstrip())
    lines.append(f"  builds: after the model loaded ({b['model_load_s']} s); re-embeds: from the target's start to "
                 "the cutover (rag reembed runs at nice 10)")
    lines.append(f"  /query, rag serve ready in {result['serve_ready_s']} s; {result['questions']}")
    lines.append(f"  {'phase':<20}{'requests':>9}{'failed':>8}{'distinct':>10}{'p50 ms':>9}{'p99 ms':>9}"
                 f"{'p99/idle':>10}{'seconds':>9}{'serve CPU ms/request':>22}")
    for name, row in result["latency"].items():
        ratio = f"{row['p99_over_idle']:>10.2f}" if "p99_over_idle" in row else f"{'':>10}"
        cpu = row.get("serve_cpu_ms_per_request", "-")
        lines.append(f"  {name:<20}{row['requests']:>9}{row['failed']:>8}{row['distinct_questions']:>10}"
                     f"{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{ratio}{row['seconds']:>9.1f}{cpu:>22}")
    failed = result["latency"]["reembed"]["failed"]
    lines.append(f"  queries during the re-embed: {'none failed: met' if not failed else f'{failed} failed: NOT met'}")
    return "\n".join(lines)
