"""`rag bench attack`: good clients query and upload while hostile clients run beside them.

One run, on a private copy of the index, against `rag serve` in a subprocess:
1. idle: `clients` good clients ask distinct questions (and one uploads a short note every
   2 s) for `idle_seconds`;
2. attack: the same good load, while hostile clients run: a slowloris of 300 connections
   trickling header bytes; hostile uploads in turn (a text whose lines repeat within a
   paragraph, a YAML alias bomb, a PDF of 10,000 pages, 50 MB of text); queries whose
   filters name 10,000 values; Open WebUI task-prompt regex bombs;
3. recovery: `recovery_seconds` of nothing, then the server's RSS again.
It reports the good clients' p50 and p99 in each phase (the ratio is measured in the same
run), good requests failed, each hostile input's outcome, the server's RSS over time, and
how many tracebacks the server's log holds. Targets: p99 under attack <= 3x idle, no good
request failed, every hostile input refused or failed within its limit, RSS back within
10% of its start.

Left out: attackers with many addresses (a proxy's per-address limits are the defence
there), and TLS.
"""

import json
import random
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from rag.bench.server import QUESTIONS, rss_mb, start_server, wait_ready
from rag.evaluation.metrics import percentile
from rag.settings import Settings

SLOWLORIS = 300  # connections
TARGETS = {"p99_attack_over_idle": "<= 3", "good_failed": "== 0", "hostile_within_limits": "all",
           "rss_after_over_start": "<= 1.10"}
NOTE = ("Penguin colonies on the Antarctic peninsula are counted every summer; krill surveys follow them. "
        "The counts show which colonies grow and which shrink as the sea ice changes.")


def run_attack(settings: Settings, clients: int = 4, idle_seconds: float = 20.0, attack_seconds: float = 40.0,
               recovery_seconds: float = 10.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rag-attack-") as tmp:
        index_dir = Path(tmp) / "index"
        shutil.copytree(settings.index_dir, index_dir, ignore=shutil.ignore_patterns(".lock"))
        server_log = Path(tmp) / "server.log"
        server, url = start_server(index_dir, reload_poll_seconds=0, log=server_log)
        try:
            wait_ready(url, server, time.perf_counter())
            httpx.post(f"{url}/collections", json={"name": "notes"}, timeout=30)
            rss: list[tuple[float, float]] = []
            started = time.perf_counter()
            sampling = _every(0.5, lambda: rss.append((round(time.perf_counter() - started, 1),
                                                       rss_mb(server.pid)["VmRSS"])))
            log(f"idle: {clients} good clients for {idle_seconds:g} s")
            idle = _good_load(url, clients, idle_seconds)
            rss_start = rss_mb(server.pid)["VmRSS"]
            log(f"attack: the same, with hostile clients beside them, for {attack_seconds:g} s")
            stop, hostile = threading.Event(), list[dict[str, Any]]()
            attackers = [threading.Thread(target=fn, args=(url, stop, hostile), daemon=True)
                         for fn in (_slowloris, _hostile_uploads, _hostile_queries)]
            for thread in attackers:
                thread.start()
            attacked = _good_load(url, clients, attack_seconds)
            stop.set()
            for thread in attackers:
                thread.join(timeout=120)
            log(f"recovery: {recovery_seconds:g} s")
            time.sleep(recovery_seconds)
            rss_end = rss_mb(server.pid)["VmRSS"]
            sampling.set()
        finally:
            server.terminate()
            server.wait(timeout=30)
        server_text = server_log.read_text(errors="replace")
    return _result(idle, attacked, hostile, rss, rss_start, rss_end, server_text)


def _result(idle: dict[str, Any], attacked: dict[str, Any], hostile: list[dict[str, Any]],
            rss: list[tuple[float, float]], rss_start: float, rss_end: float, server_text: str) -> dict[str, Any]:
    idle_p99, attack_p99 = percentile(idle["ms"], 0.99), percentile(attacked["ms"], 0.99)
    refusals = [json.loads(line)["detail"] for line in server_text.splitlines()
                if line.startswith("{") and '"detail"' in line]
    return {
        "good": {phase: {"requests": len(r["ms"]), "failed": len(r["failures"]),
                         "p50_ms": round(statistics.median(r["ms"]), 1), "p99_ms": round(percentile(r["ms"], 0.99), 1),
                         "failures_sample": r["failures"][:5]}
                 for phase, r in (("idle", idle), ("attack", attacked))},
        "p99_attack_over_idle": round(attack_p99 / idle_p99, 2),
        "good_failed": len(idle["failures"]) + len(attacked["failures"]),
        "hostile": hostile,
        "hostile_within_limits": all(h["within_limits"] for h in hostile),
        "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(max(v for _, v in rss), 1), "rss_after_over_start": round(rss_end / rss_start, 3),
        "rss_over_time": rss[::4],
        "server_log": {"refusals_logged": len(refusals), "tracebacks": server_text.count("Traceback"),
                       "refusals_sample": sorted(set(refusals))[:12]},
        "targets": TARGETS,
    }


def _every(seconds: float, action: Callable[[], None]) -> threading.Event:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            action()

    threading.Thread(target=loop, daemon=True).start()
    return stop


def _good_load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads asking distinct questions back to back, one of them also uploading a note every 2 s."""
    record: dict[str, Any] = {"ms": [], "failures": []}
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=url, timeout=60) as http:
            next_upload, i = time.perf_counter(), 0
            while time.perf_counter() < deadline:
                body: dict[str, Any]
                if n == 0 and time.perf_counter() >= next_upload:
                    next_upload += 2
                    path, body = "/collections/notes/documents", {"doc_id": f"note-{rng.randrange(10**9)}",
                                                                  "text": NOTE}
                else:  # a number appended: no question is ever asked twice
                    path, body = "/query", {"question": f"{QUESTIONS[(n * 7 + i) % len(QUESTIONS)]} "
                                                        f"({rng.randrange(10**6)})", "k": 5}
                i += 1
                started = time.perf_counter()
                try:
                    response = http.post(path, json=body)
                    ok, why = response.status_code < 300, f"{response.status_code} {response.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                with lock:
                    record["ms"].append((time.perf_counter() - started) * 1000)
                    if not ok:
                        record["failures"].append(why)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return record


def _slowloris(url: str, stop: threading.Event, hostile: list[dict[str, Any]]) -> None:
    """SLOWLORIS connections, each sending one header byte a second; reopened when closed."""
    host, port = url.removeprefix("http://").split(":")
    opened = closed = 0
    sockets: list[socket.socket | None] = [None] * SLOWLORIS
    while not stop.wait(1.0):
        for i, s in enumerate(sockets):
            try:
                if s is None:
                    s = socket.create_connection((host, int(port)), timeout=2)
                    s.sendall(b"GET /query?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    opened += 1
                s.sendall(b"X")
                sockets[i] = s
            except OSError:
                closed += 1
                if s is not None:
                    s.close()
                sockets[i] = None
    for s in sockets:
        if s is not None:
            s.close()
    hostile.append({"kind": "slowloris", "connections": SLOWLORIS, "opened": opened, "closed_by_server": closed,
                    "within_limits": closed > 0})


def _hostile_uploads(url: str, stop: threading.Event, hostile: list[dict[str, Any]]) -> None:
    """Each hostile upload in turn, again and again until the attack ends."""
    uploads = [("repeated-lines.txt", ("A caption that repeats.\n" * 40_000).encode()),
               ("alias-bomb.md", _yaml_bomb(9).encode()),
               ("ten-thousand-pages.pdf", _many_pages_pdf(10_000)),
               ("fifty-mb.txt", b"word " * (10 << 20))]
    outcomes: dict[str, list[Any]] = {name: [] for name, _ in uploads}
    seconds: dict[str, list[float]] = {name: [] for name, _ in uploads}
    details: dict[str, set[str]] = {name: set() for name, _ in uploads}
    with httpx.Client(base_url=url, timeout=120) as http:
        while not stop.is_set():
            for name, data in uploads:
                if stop.is_set():
                    break
                started = time.perf_counter()
                doc_id = f"{name.split('.')[0]}-{len(outcomes[name])}"  # a new document each time
                try:
                    response = http.post("/collections/notes/documents", files={"file": (name, data)},
                                         data={"doc_id": doc_id})
                    status, detail = response.status_code, response.json().get("detail") or ""
                    if status == 202:  # accepted: it must then complete or fail, within its limits
                        status, detail = _settled(http, doc_id)
                except (httpx.HTTPError, ValueError) as exc:  # the server may close an oversized upload's connection
                    status, detail = 0, f"connection closed: {type(exc).__name__}"
                outcomes[name].append(status)
                seconds[name].append(time.perf_counter() - started)
                details[name].add(str(detail)[:160])
    for name, data in uploads:
        statuses = sorted(set(outcomes[name]), key=str)
        hostile.append({"kind": name, "bytes": len(data), "uploads": len(outcomes[name]), "statuses": statuses,
                        "max_seconds": round(max(seconds[name], default=0), 2), "details": sorted(details[name]),
                        "within_limits": bool(statuses) and all(
                            s in (0, 200, 201, "completed", "failed", 413, 415, 422) for s in statuses)})


def _settled(http: httpx.Client, doc_id: str) -> tuple[Any, str]:
    for _ in range(240):
        state = http.get(f"/collections/notes/documents/{doc_id}").json()
        if state.get("status") in ("completed", "failed"):
            return state["status"], str(state.get("error") or "")
        time.sleep(0.5)
    return "in_progress", "still in progress after 120 s"


def _hostile_queries(url: str, stop: threading.Event, hostile: list[dict[str, Any]]) -> None:
    bodies = {"filter of 10,000 values": ("/query", {"question": "trade", "doc_ids": [f"d{i}" for i in range(10_000)]}),
              "Open WebUI regex bomb": ("/v1/chat/completions", {"model": "rag", "messages": [
                  {"role": "user", "content": "### Task:\n" + "<chat_history>" * 4000}]})}
    outcomes: dict[str, list[int]] = {name: [] for name in bodies}
    seconds: dict[str, list[float]] = {name: [] for name in bodies}
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.wait(0.5):
            for name, (path, body) in bodies.items():
                started = time.perf_counter()
                try:
                    outcomes[name].append(http.post(path, json=body).status_code)
                except httpx.HTTPError:
                    outcomes[name].append(0)
                seconds[name].append(time.perf_counter() - started)
    for name in bodies:
        statuses = sorted(set(outcomes[name]))
        hostile.append({"kind": name, "requests": len(outcomes[name]), "statuses": statuses,
                        "max_seconds": round(max(seconds[name], default=0), 3),
                        "within_limits": bool(statuses) and all(400 <= s < 500 for s in statuses)})


def _yaml_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, levels)]
    return "---\n" + "\n".join(lines) + "\n---\nA note.\n"


def _many_pages_pdf(pages: int) -> bytes:
    """A valid PDF of `pages` empty pages, written by hand (no PDF library is needed)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
               + b"] /Count %d >>" % pages]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"] * pages
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def attack_table(r: dict[str, Any]) -> str:
    idle, attack = r["good"]["idle"], r["good"]["attack"]
    met = {
        "p99_attack_over_idle": r["p99_attack_over_idle"] <= 3,
        "good_failed": r["good_failed"] == 0,
        "hostile_within_limits": r["hostile_within_limits"],
        "rss_after_over_start": r["rss_after_over_start"] <= 1.10,
    }
    lines = [
        f"good clients, idle:    {idle['requests']:>6} requests, p50 {idle['p50_ms']:>7} ms, "
        f"p99 {idle['p99_ms']:>7} ms, {idle['failed']} failed",
        f"good clients, attack:  {attack['requests']:>6} requests, p50 {attack['p50_ms']:>7} ms, p99 "
        f"{attack['p99_ms']:>7} ms, {attack['failed']} failed",
        f"p99 attack / idle      {r['p99_attack_over_idle']:>6}x   <= 3x     "
        f"{'met' if met['p99_attack_over_idle'] else 'MISSED'}",
        f"good requests failed   {r['good_failed']:>6}    == 0      {'met' if met['good_failed'] else 'MISSED'}",
        f"server RSS: start {r['rss_start_mb']} MB, peak {r['rss_peak_mb']} MB, after {r['rss_end_mb']} MB: "
        f"{r['rss_after_over_start']}x   <= 1.10x  {'met' if met['rss_after_over_start'] else 'MISSED'}",
        f"server log: {r['server_log']['refusals_logged']} refusals logged with their reason, "
        f"{r['server_log']['tracebacks']} tracebacks",
        "", "hostile inputs:",
    ]
    for h in r["hostile"]:
        facts = ", ".join(f"{k} {v}" for k, v in h.items() if k not in ("kind", "within_limits"))
        lines.append(f"  {h['kind']:<26} {'within limits' if h['within_limits'] else 'NOT WITHIN LIMITS'}: {facts}")
    lines += ["", "what the server logged (a sample):"] + [f"  {d}" for d in r["server_log"]["refusals_sample"]]
    return "\n".join(re.sub(r" +$", "", line) for line in lines)
