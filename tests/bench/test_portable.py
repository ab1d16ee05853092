"""`rag bench portable`'s pieces at a tiny size, with the fake model: the disk's speed leaves no
file behind, a `rag` child is timed with its archive's size, the closed-loop client asks each
question once per phase (cycling only past the last) while a child runs, and the table says
which target is met."""

import asyncio
import os
import subprocess
from pathlib import Path

from rag.bench.portable import _rag, disk_write_mb_s, portable_table, query_phase
from rag.settings import Settings
from tests.helpers import FakeEmbedder, running_server


def test_the_disk_speed_is_a_rate_and_its_file_is_removed(tmp_path: Path):
    assert disk_write_mb_s(tmp_path, total=4 << 20, block=1 << 20) > 0
    assert list(tmp_path.iterdir()) == []


def test_an_export_is_timed_in_a_child_process_with_its_archive(built: Settings):
    env = {**os.environ, "RAG_INDEX_DIR": str(built.index_dir), "RAG_MODEL": "fake", "RAG_HIGHLIGHTS": "true"}
    archive = built.index_dir.parent / "kb.tar"
    moved = _rag(["export", "default", "-o", str(archive)], env, archive)
    assert moved["archive_mb"] == round(archive.stat().st_size / 1e6, 1) and moved["seconds"] > 0
    assert moved["said"].startswith("exported 'default'")


def test_each_question_is_asked_once_per_phase_while_the_child_runs(built: Settings):
    from api.app import create_app

    fake = FakeEmbedder()
    questions = [f"What does study {i} find about sea ice?" for i in range(5)]
    launched: list[int] = []

    def launch(i: int) -> subprocess.Popen[bytes]:
        launched.append(i)
        return subprocess.Popen(["sleep", "0.3"])

    with running_server(create_app(built, embedder_factory=lambda name: fake)) as url:
        phase = asyncio.run(query_phase(url, questions, 0.5, launch, warmup=0))
    assert phase["failed"] == 0 and phase["requests"] > len(questions)  # it cycled
    assert launched == [0, 1] and len(phase["child_runs_s"]) == 2  # started again until 0.5 s had passed
    asked = [q for q in fake.encoded if q in questions]
    assert asked[:len(questions)] == questions and len(asked) == phase["requests"]
    assert phase["distinct_questions"] == len(questions) and phase["p99_ms"] >= phase["p50_ms"] > 0


def test_the_table_names_each_target_met_or_not():
    move = {"seconds": 12.0, "archive_mb": 300.0, "mb_s": 25.0, "share_of_disk": 0.02, "said": ""}
    result = {"chunks": 100_000, "date": "2026-12-03", "source": "scifact", "disk_write_mb_s": 1200.0,
              "build_s": 50.0, "serve_ready_s": 4.0, "questions": "300 test questions",
              "export": {**move, "met": True}, "import": {**move, "seconds": 75.0, "met": False},
              "export_copy": {**move, "met": True},
              "latency": {"idle": {"requests": 400, "failed": 0, "p50_ms": 20.0, "p99_ms": 40.0, "child_runs_s": []},
                          "export": {"requests": 300, "failed": 0, "p50_ms": 30.0, "p99_ms": 70.0,
                                     "child_runs_s": [15.2], "p99_over_idle": 1.75, "met": True},
                          "backup": {"requests": 500, "failed": 0, "p50_ms": 35.0, "p99_ms": 90.0,
                                     "child_runs_s": [30.1], "p99_over_idle": 2.25, "met": False}}}
    lines = portable_table(result).splitlines()
    assert "1200.0 MB/s" in lines[1]
    verdicts = {label: line.rsplit("   ", 1)[-1].strip() for line in lines
                for label in ("rag export default", "rag import --as copy", "rag export copy") if label in line}
    assert verdicts == {"rag export default": "met", "rag import --as copy": "NOT met", "rag export copy": "met"}
    phases = {line.split()[0]: line for line in lines if line.split()[0] in ("idle", "export", "backup")}
    assert "1.75" in phases["export"] and phases["export"].endswith(" met")
    assert "2.25" in phases["backup"] and phases["backup"].endswith("NOT met")
    assert "-" in phases["idle"].split() and "met" not in phases["idle"]
