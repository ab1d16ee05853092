"""`rag bench crash`: acknowledged writes survive a SIGKILL of the service (issue 22): none
lost, none applied twice, none partial, checked after every restart.

Each round runs `rag serve` (real model) on a private copy of the index, kept across
rounds; `CLIENTS` threads send `writes` mixed writes to one collection: new small
documents (POST, written before the 201), new big ones (POST, 202 once spooled), PUT
replacements (small or big) and deletes, with distinct real texts (SciFact abstracts, else
paragraphs of the corpus); a quarter of the big writes are followed at once by another big
one of the same document, so two 202s of it wait in the queue. Big means over `sync_chars`
(RAG_SYNC_WRITE_CHARS, lowered from 20,000 so a round takes seconds; the 202 path is the
same). A thread owns its documents, so a document's writes are sequential and "its last
acknowledged write" is defined. At a moment uniform over the time a round's writes take
(as the earlier rounds measured it) the server is SIGKILLed; the writes not sent by then
are dropped. It is restarted, the writes it resumes are waited for, and every document
is checked against what was acknowledged. A document may hold the state of its last
acknowledged write, or of a later write cut off by the kill (it may or may not have
landed); otherwise:
- lost: absent (or in progress, or failed) where an acknowledged write put a text; or
  holding an earlier text where the last acknowledged write was a 202 (it never landed);
- twice: holding an earlier text where the last acknowledged write was committed before
  its answer (a synchronous write, a delete) or was in place at the last check: an old
  write applied again (a stale spool entry replayed); or more chunk rows than its text
  makes, or more chunks in the collection's search index than in its documents' rows, or
  a doc_id listed twice;
- partial: its text is none of the texts sent for it, or it has fewer chunk rows than its
  text makes.
A text's chunk count is computed here by the service's own cleaning and chunking
(rag.ingest) with the model's tokenizer; every synchronous write's answer (chunks) is
checked against it, so a reference that drifted from the service is reported, not trusted.
The 202s acknowledged before the kill and still spooled at it are counted (`resumed`).

`--collections N` measures the second target beside it: N collections created, listed,
queried and deleted on a fresh server, its descriptors and RSS at the start (after a
warm-up of WARM_COLLECTIONS) and at the end.

Left out: kills during start-up and during the resume (the kill falls among the writes),
power cuts (SIGKILL leaves the page cache; fsync's part is trusted), multipart file
uploads, several writers of one document at once, and the Milvus store.

Why ~410 lines: one benchmark whose plan, kill, restart and check are one model of what
must hold; the check alone is a third, and its fake-service tests read its internals.
"""

import json
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

from rag.bench.server import rss_mb, start_server, wait_ready
from rag.collections import text_document
from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.ingest.chunk import ChunkParams, chunk_document
from rag.ingest.clean import CleanRules, clean
from rag.settings import Settings

CLIENTS = 4
NAME = "crash"
MIX = {"new-small": 40, "new-big": 20, "put-small": 12, "put-big": 13, "delete": 15}  # percent of writes
WARM_COLLECTIONS = 80
SECONDS_PER_WRITE = 0.4  # the first round's guess of how long the writes take (2 cores: ~0.4)


@dataclass
class Write:
    doc_id: str
    kind: str
    text: str | None  # None: a delete
    outcome: str = "unsent"  # acked, unacked (cut off by the kill), refused (4xx/5xx), unsent
    answer: str = ""  # status and body, or the transport error
    chunks: int | None = None  # what a synchronous write answered


class Texts:
    """Distinct real texts, each sent once; their cleaned form and chunk count as the service makes them."""

    def __init__(self, settings: Settings, scifact: Path, sync_chars: int, embedder: Embedder | None = None):
        self.sync_chars = sync_chars
        corpus = scifact / "corpus.jsonl"
        if corpus.is_file():
            with corpus.open(encoding="utf-8") as lines:
                self.pieces = [t for t in (json.loads(line)["text"].strip() for line in lines) if len(t) > 300]
        else:
            self.pieces = [p.strip() for f in sorted(settings.corpus_dir.glob("*.txt"))
                           for p in f.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 300]
        self.used = 0
        embedder = embedder or embedder_from(settings)
        self._tokens = embedder.count_tokens
        self._params = ChunkParams(settings.chunk_tokens, settings.chunk_overlap_tokens, embedder.max_tokens)
        self.ref: dict[str, tuple[str, int]] = {}  # sent text -> (stored text, chunks)
        self.by_stored: dict[str, str] = {}

    def _piece(self) -> str:
        piece = self.pieces[self.used % len(self.pieces)]
        lap, self.used = self.used // len(self.pieces), self.used + 1
        return piece if lap == 0 else f"{piece} (Revision {lap}.)"  # past the end: distinct still

    def new(self, doc_id: str, big: bool) -> str:
        if big:
            parts = [self._piece()]
            while sum(len(p) + 2 for p in parts) <= self.sync_chars * 1.2:
                parts.append(self._piece())
            text = "\n\n".join(parts)
        else:
            text = self._piece()
            if len(text) > self.sync_chars:  # at a sentence's end if there is one
                text = text[:text.rfind(". ", 0, self.sync_chars) + 1 or self.sync_chars]
        doc = text_document(text, doc_id, _title(doc_id), None)
        title = str(doc.metadata["title"])
        cleaned = clean(text, title=title, rules=CleanRules())
        self.ref[text] = (cleaned.text, len(chunk_document(doc_id, title, cleaned, self._params, self._tokens)))
        self.by_stored[cleaned.text] = text
        return text


def _title(doc_id: str) -> str:
    return f"Crash note {doc_id}"


def _plan(rng: random.Random, present: set[str], writes: int, texts: Texts, round_no: int) -> list[Write]:
    """`writes` writes; replacements and deletes name documents present at that point, most of
    them one of the last few written; a quarter of the big writes are replaced at once by
    another big one (a corrected upload: two 202s of one document in the queue)."""
    live, recent, plan = set(present), list[str](), list[Write]()
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=writes)
    for n, kind in enumerate(kinds):
        if not kind.startswith("new") and not live:
            kind = "new-small"
        if kind.startswith("new"):
            doc_id = f"r{round_no}-{n}"
        elif plan and plan[-1].kind.endswith("big") and rng.random() < 0.25:
            kind, doc_id = "put-big", plan[-1].doc_id  # the next write, so the same client's next
        else:
            pool = [d for d in recent[-4:] if d in live] if rng.random() < 0.7 else []
            doc_id = rng.choice(pool or sorted(live))
        text = None if kind == "delete" else texts.new(doc_id, big=kind.endswith("big"))
        plan.append(Write(doc_id, kind, text))
        (live.discard if kind == "delete" else live.add)(doc_id)
        recent.append(doc_id)
    return plan


def _send(http: httpx.Client, w: Write) -> httpx.Response:
    path = f"/collections/{NAME}/documents"
    if w.text is None:
        return http.delete(f"{path}/{w.doc_id}")
    body = {"doc_id": w.doc_id, "text": w.text, "title": _title(w.doc_id)}
    return http.post(path, json=body) if w.kind.startswith("new") else http.put(f"{path}/{w.doc_id}", json=body)


def _load(url: str, plan: list[Write], kill_at: float, kill: Callable[[], None]) -> float:
    """The plan from CLIENTS threads (each document's writes on one), SIGKILL `kill_at` seconds
    after the first is sent (if the plan ran out first: the writer's backlog, or an idle
    server). The seconds the plan took, or an estimate from the share of it sent."""
    killed, done = threading.Event(), list[float]()
    owned: dict[int, list[Write]] = defaultdict(list)
    owners: dict[str, int] = {}
    for w in plan:
        owned[owners.setdefault(w.doc_id, len(owners) % CLIENTS)].append(w)

    def client(writes: list[Write]) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for w in writes:
                if killed.is_set():
                    return
                try:
                    r = _send(http, w)
                except httpx.TransportError as exc:
                    w.outcome, w.answer = "unacked", repr(exc)[:200]
                    return
                w.outcome = "acked" if r.status_code < 300 else "refused"
                w.answer = f"{r.status_code} {r.text[:200]}"
                if r.status_code in (200, 201) and w.text is not None:
                    w.chunks = r.json().get("chunks")
        done.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(owned[i],)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(kill_at)
    kill()
    killed.set()
    for thread in threads:
        thread.join()
    sent = sum(w.outcome != "unsent" for w in plan)
    return max(done) if len(done) == CLIENTS else kill_at * len(plan) / max(sent, 1)


def _spooled(index_dir: Path) -> dict[str, str]:
    """The big writes on disk, not yet done: doc_id -> text (the spool's files, read as files)."""
    spool = index_dir / "collections" / NAME / ".spool"
    out = {}
    for path in spool.glob("*.json"):
        if not path.name.endswith(("@failed.json", ".failed.json")) and not path.name.startswith("."):
            entry = json.loads(path.read_text(encoding="utf-8"))
            out[entry["doc_id"]] = entry["text"]
    return out


def _settle(http: httpx.Client, doc_ids: set[str], seconds: float = 300) -> dict[str, dict[str, Any]]:
    """Each document's status once none is in progress (or `seconds` passed)."""
    deadline, states = time.monotonic() + seconds, {}
    while True:
        states = {d: http.get(f"/collections/{NAME}/documents/{d}").json() for d in sorted(doc_ids)}
        if time.monotonic() > deadline or all(s.get("status") != "in_progress" for s in states.values()):
            return states
        time.sleep(0.25)


def _check(http: httpx.Client, texts: Texts, present: dict[str, str], history: dict[str, set[str]],
           plan: list[Write], states: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every document against what was acknowledged; `present` becomes what is there. The issues."""
    listed = http.get(f"/collections/{NAME}/documents").json()
    chunks = {d["doc_id"]: d["chunks"] for d in listed}
    info = http.get(f"/collections/{NAME}").json()
    issues: list[dict[str, Any]] = []
    if len(chunks) != len(listed):
        issues.append({"kind": "twice", "why": f"{len(listed)} documents listed, {len(chunks)} doc_ids"})
    if info["chunks"] != sum(chunks.values()):
        issues.append({"kind": "twice" if info["chunks"] > sum(chunks.values()) else "partial",
                       "why": f"the search index holds {info['chunks']} chunks, the documents' rows "
                              f"{sum(chunks.values())}"})
    writes: dict[str, list[Write]] = defaultdict(list)
    for w in plan:
        if w.outcome in ("acked", "unacked"):
            writes[w.doc_id].append(w)
    for doc_id in sorted(set(present) | set(writes) | set(chunks)):
        start = present.get(doc_id)
        acked = [w.text for w in writes[doc_id] if w.outcome == "acked"]
        expected = acked[-1] if acked else start
        allowed = {expected} | {w.text for w in writes[doc_id] if w.outcome == "unacked"}
        stored = http.get(f"/collections/{NAME}/documents/{doc_id}/text").json()["text"] if doc_id in chunks else None
        seen = None if stored is None else texts.by_stored.get(stored, stored)
        kind = why = None
        if seen in allowed:
            made = texts.ref[seen][1] if seen is not None and seen in texts.ref else None
            if seen is not None and made is not None and chunks[doc_id] != made:
                kind = "twice" if chunks[doc_id] > made else "partial"
                why = f"{chunks[doc_id]} chunk rows; its text makes {made}"
        elif seen is None:
            kind, why = "lost", "absent, or its write never completed"
        elif seen in (history[doc_id] | set(acked)) - allowed:
            # an earlier text back: a later write committed before its answer (sync, delete, or one
            # checked at the last restart) was undone by the earlier one applied again; a later 202 was lost
            last = next((w for w in reversed(writes[doc_id]) if w.outcome == "acked"), None)
            kind = "lost" if last is not None and last.kind.endswith("big") else "twice"
            why = "holds an earlier text than its last acknowledged write"
        else:
            kind, why = "partial", "holds a text never sent for it"
        if kind is not None:
            issues.append({"kind": kind, "doc_id": doc_id, "why": why, "status": states.get(doc_id),
                           "stored": None if stored is None else stored[:120],
                           "expected": None if expected is None else texts.ref.get(expected, (expected,))[0][:120],
                           "writes": [{"kind": w.kind, "outcome": w.outcome, "answer": w.answer[:160],
                                       "text": None if w.text is None else w.text[:60]} for w in writes[doc_id]]})
        if seen is None:
            present.pop(doc_id, None)
        else:
            present[doc_id] = seen
        history[doc_id].update(t for t in acked if t is not None)
    return issues


def _mismatched_references(plan: list[Write], texts: Texts) -> list[str]:
    """Synchronous writes whose answered chunk count is not the one computed here."""
    return [f"{w.doc_id}: the service made {w.chunks} chunks, the reference {texts.ref[w.text][1]}"
            for w in plan if w.chunks is not None and w.text is not None and w.chunks != texts.ref[w.text][1]]


def run_crash(settings: Settings, rounds: int, writes: int, seed: int, sync_chars: int, scifact: Path,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    rng, texts = random.Random(seed), Texts(settings, scifact, sync_chars)
    present: dict[str, str] = {}
    history: dict[str, set[str]] = defaultdict(set)
    out: dict[str, Any] = {"rounds": [], "writes": writes, "seed": seed, "sync_chars": sync_chars,
                           "clients": CLIENTS, "mix": MIX, "model": settings.model, "issues": []}
    env, started = {"RAG_SYNC_WRITE_CHARS": str(sync_chars)}, time.perf_counter()
    took: list[float] = []  # seconds a round's writes took (measured, or estimated from the share sent)
    with tempfile.TemporaryDirectory(prefix="rag-crash-") as tmp:
        index_dir = Path(tmp) / "index"
        shutil.copytree(settings.index_dir, index_dir, ignore=shutil.ignore_patterns(".lock"))

        def start(n: int) -> tuple[subprocess.Popen[bytes], str]:
            launched = time.perf_counter()
            server, url = start_server(index_dir, reload_poll_seconds=0, env=env, log=Path(tmp) / f"server-{n}.log")
            wait_ready(url, server, launched)
            return server, url

        server, url = start(0)
        try:
            httpx.post(f"{url}/collections", json={"name": NAME}, timeout=30).raise_for_status()
            for r in range(1, rounds + 1):
                t0, plan = time.perf_counter(), _plan(rng, set(present), writes, texts, r)
                kill_at = rng.uniform(0, statistics.mean(took) if took else SECONDS_PER_WRITE * writes)
                took.append(_load(url, plan, kill_at, server.kill))
                server.wait()
                spooled = _spooled(index_dir)
                last = {w.doc_id: w for w in plan if w.outcome == "acked"}
                server, url = start(r)
                with httpx.Client(base_url=url, timeout=60) as http:
                    states = _settle(http, {w.doc_id for w in plan if w.kind.endswith("big")} | set(spooled))
                    issues = _check(http, texts, present, history, plan, states)
                issues += [{"kind": "refused", "doc_id": w.doc_id, "write": w.kind, "answer": w.answer}
                           for w in plan if w.outcome == "refused"]
                row = {"round": r, "kill_at_s": round(kill_at, 1),
                       **{k: sum(w.outcome == k for w in plan) for k in ("acked", "unacked", "refused", "unsent")},
                       "big_acked": sum(w.outcome == "acked" and w.kind.endswith("big") for w in plan),
                       "resumed": sum(d in last and last[d].text == t and last[d].kind.endswith("big")
                                      for d, t in spooled.items()),
                       "spooled_at_kill": len(spooled),
                       "back_to_back_202s": sum(a.doc_id == b.doc_id and a.kind.endswith("big") and b.kind == "put-big"
                                                and a.outcome == b.outcome == "acked" for a, b in pairwise(plan)),
                       **{k: sum(i["kind"] == k for i in issues) for k in ("lost", "twice", "partial")},
                       "documents": len(present), "reference_mismatches": _mismatched_references(plan, texts),
                       "seconds": round(time.perf_counter() - t0, 1)}
                out["rounds"].append(row)
                out["issues"] += [{"round": r, **i} for i in issues]
                log(f"round {r}/{rounds}: {row['acked']} acknowledged, {row['unacked']} cut off, {row['resumed']} "
                    f"resumed; lost {row['lost']}, twice {row['twice']}, partial {row['partial']} ({row['seconds']} s)")
        finally:
            server.kill()
            server.wait()
        out["server_tracebacks"] = sum(f.read_text(errors="replace").count("Traceback")
                                       for f in Path(tmp).glob("server-*.log"))
    out["totals"] = {k: sum(row[k] for row in out["rounds"]) for k in ("acked", "unacked", "refused", "unsent",
                     "big_acked", "resumed", "back_to_back_202s", "lost", "twice", "partial")}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def run_collections(settings: Settings, n: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """N collections created, listed, queried (every 20th, with a document) and deleted on a
    fresh server: its descriptors and RSS after WARM_COLLECTIONS of the same, and at the end."""
    def measure(pid: int) -> dict[str, float]:
        return {"fds": len(list(Path(f"/proc/{pid}/fd").iterdir())), "rss_mb": round(rss_mb(pid)["VmRSS"], 1)}

    def cycle(http: httpx.Client, names: list[str]) -> None:
        for name in names:
            http.post("/collections", json={"name": name}).raise_for_status()
        listed = http.get("/collections").json()
        assert len(listed) == len(names) + 1, f"{len(listed)} collections listed"  # opens every one
        for name in names[::20]:
            http.post(f"/collections/{name}/documents", json={"doc_id": "d", "text": NOTE}).raise_for_status()
            found = http.post("/query", json={"question": "krill", "collection": name})
            assert found.status_code == 200 and found.json()["passages"], found.text
        for name in names:
            http.delete(f"/collections/{name}").raise_for_status()

    with tempfile.TemporaryDirectory(prefix="rag-crash-") as tmp:
        index_dir = Path(tmp) / "index"
        shutil.copytree(settings.index_dir, index_dir, ignore=shutil.ignore_patterns(".lock"))
        server, url = start_server(index_dir, reload_poll_seconds=0)
        try:
            wait_ready(url, server, time.perf_counter())
            with httpx.Client(base_url=url, timeout=60) as http:
                cycle(http, [f"warm{i}" for i in range(WARM_COLLECTIONS)])  # lazy imports, pools, arenas
                start, t0 = measure(server.pid), time.perf_counter()
                log(f"{n} collections: created, listed, queried, deleted")
                cycle(http, [f"c{i:05d}" for i in range(n)])
                end = measure(server.pid)
        finally:
            server.kill()
            server.wait()
    return {"collections": n, "start": start, "end": end, "seconds": round(time.perf_counter() - t0, 1),
            "fds_ratio": round(end["fds"] / start["fds"], 3), "rss_ratio": round(end["rss_mb"] / start["rss_mb"], 3),
            "targets": {"fds_ratio": "<= 1.05", "rss_ratio": "<= 1.05"}}


NOTE = "Krill swarms feed the whales of the Southern Ocean; their counts follow the sea ice."


def crash_table(r: dict[str, Any]) -> str:
    def met(good: bool) -> str:
        return "met" if good else "MISSED"

    lines = [f"crash: {len(r['rounds'])} rounds of {r['writes']} writes from {r['clients']} clients, SIGKILL at a "
             f"random moment (seed {r['seed']}); over {r['sync_chars']} characters: 202",
             "round  acked  cut off  refused  unsent  202s acked  resumed  lost  twice  partial  documents  seconds"]
    for row in r["rounds"] + [{"round": "total", **r["totals"], "documents": "", "seconds": r["seconds"]}]:
        lines.append(f"{row['round']:>5}  {row['acked']:>5}  {row['unacked']:>7}  {row['refused']:>7}  "
                     f"{row['unsent']:>6}  {row['big_acked']:>10}  {row['resumed']:>7}  {row['lost']:>4}  "
                     f"{row['twice']:>5}  {row['partial']:>7}  {row['documents']:>9}  {row['seconds']:>7}")
    t = r["totals"]
    lines.append(f"lost {t['lost']}, applied twice {t['twice']}, partial {t['partial']} (targets 0: "
                 f"{met(t['lost'] + t['twice'] + t['partial'] == 0)})")
    mismatches = [m for row in r["rounds"] for m in row["reference_mismatches"]]
    if mismatches:
        lines.append(f"chunk reference disagrees with the service ({len(mismatches)}): {mismatches[:3]}")
    lines += [f"  round {i['round']} {i['kind']}: {i.get('doc_id', '')} {i.get('why') or i.get('answer')}"
              for i in r["issues"][:20]]
    if "collections" in r:
        c = r["collections"]
        lines.append(f"{c['collections']} collections ({c['seconds']} s): descriptors {c['start']['fds']} -> "
                     f"{c['end']['fds']} ({c['fds_ratio']}x), RSS {c['start']['rss_mb']} -> {c['end']['rss_mb']} "
                     f"MB ({c['rss_ratio']}x); targets <= 1.05x: {met(c['fds_ratio'] <= 1.05)}, "
                     f"{met(c['rss_ratio'] <= 1.05)}")
    return "\n".join(lines)
