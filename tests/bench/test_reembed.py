"""`rag bench reembed`'s pieces without the real model: the backend it moves to, the build
timed in pieces, the manifest watcher that times a re-embed from its start to its cutover,
the argument checks, a phase that runs one child (and asks the collection it is given),
and the table's verdicts."""

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app as cli_app
from rag.bench import reembed as bench
from rag.bench.portable import query_phase
from rag.errors import BadQueryError
from rag.settings import Settings
from tests.helpers import FakeEmbedder, running_server


def tiny_beir(folder: Path, documents: int = 3) -> Path:
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": f"Study {i}", "text": f"Sea ice study {i} finds krill declining. " * 30})
        + "\n" for i in range(documents)))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "What happens to krill?"}) + "\n")
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    return folder


def test_the_switch_is_onnx_to_int8_or_back():
    assert bench.target_backend("onnx") == "onnx-int8" and bench.target_backend("torch") == "onnx-int8"
    assert bench.target_backend("onnx-int8") == "onnx"


@pytest.mark.parametrize("n", [0, 4])
def test_more_documents_than_the_dataset_has_is_refused_before_any_work(settings: Settings, tmp_path: Path, n: int):
    scifact = tiny_beir(tmp_path / "scifact")
    with pytest.raises(BadQueryError, match="has 3"):
        bench.run_reembed(settings.model_copy(update={"cache_dir": tmp_path / "cache"}), n, scifact, print)
    assert not (tmp_path / "cache" / "reembed").exists()


def test_the_command_checks_its_arguments():
    result = CliRunner().invoke(cli_app, ["bench", "reembed", "--documents", "0"])
    assert result.exit_code != 0 and "--documents" in result.output


def test_the_build_is_timed_whole_and_its_encode_calls_apart(settings: Settings, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    import rag.encoders.load

    fake = FakeEmbedder()
    monkeypatch.setattr(rag.encoders.load, "embedder_from", lambda s: fake)
    built = bench.timed_build(settings.model_copy(update={"highlights": False}), tiny_beir(tmp_path / "s"), 2)
    assert built["documents"] == 2 and built["chunks"] >= 2 and len(fake.encoded) == built["chunks"]
    assert built["chunks_s"] > 0 and built["embed_chunks_s"] >= built["chunks_s"]


def test_a_reembed_is_timed_from_its_start_to_its_cutover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bench, "POLL_S", 0.005)
    manifest = tmp_path / "manifest.json"
    old = {"model": {"name": "m", "backend": "onnx"}}
    manifest.write_text(json.dumps(old))
    with bench.Cutover(tmp_path, "onnx-int8") as watched:
        asyncio.run(asyncio.sleep(0.05))
        assert watched.began is None
        manifest.write_text(json.dumps({**old, "reembed": {"manifest": {}}}))
        asyncio.run(asyncio.sleep(0.2))
        manifest.write_text(json.dumps({"model": {"name": "m", "backend": "onnx-int8"}}))
        asyncio.run(asyncio.sleep(0.05))
    assert watched.began is not None and watched.cut is not None and 0.15 < watched.cut - watched.began < 0.5
    rate = watched.rate({"chunks": 100, "chunks_s": 400.0, "embed_chunks_s": 500.0})
    assert rate["over_build"] == pytest.approx(rate["chunks_s"] / 400, abs=1e-3) and rate["met"] == (
        rate["over_build"] >= bench.RATIO)
    unseen = bench.Cutover(tmp_path, "torch")
    with pytest.raises(RuntimeError, match="not seen"):
        unseen.rate({"chunks": 1, "chunks_s": 1.0, "embed_chunks_s": 1.0})


def test_a_phase_of_no_seconds_runs_one_child_and_asks_the_collection_given(built: Settings):
    from api.app import create_app

    fake = FakeEmbedder()
    launched: list[int] = []

    def launch(i: int) -> subprocess.Popen[bytes]:
        launched.append(i)
        return subprocess.Popen(["sleep", "0.3"])

    with running_server(create_app(built, embedder_factory=lambda name: fake)) as url:
        one = asyncio.run(query_phase(url, ["What about sea ice?"], 0.0, launch, warmup=0))
        elsewhere = asyncio.run(query_phase(url, ["What about sea ice?"], 0.2, None, warmup=0, collection="nope"))
    assert launched == [0] and len(one["child_runs_s"]) == 1 and one["requests"] > 0 and one["failed"] == 0
    assert elsewhere["requests"] > 0 and elsewhere["failed"] == elsewhere["requests"]  # no such collection: 404s


def test_a_paced_phase_sends_no_faster_than_its_rate(built: Settings):
    from api.app import create_app

    fake = FakeEmbedder()
    with running_server(create_app(built, embedder_factory=lambda name: fake)) as url:
        paced = asyncio.run(query_phase(url, ["What about sea ice?"], 0.5, None, warmup=0, qps=10.0))
        loop = asyncio.run(query_phase(url, ["What about sea ice?"], 0.5, None, warmup=0))
    assert 4 <= paced["requests"] <= 6 and paced["failed"] == 0  # at 0, 0.1, ... 0.4 s (and maybe 0.5)
    assert loop["requests"] > 2 * paced["requests"]


def test_the_table_says_each_rate_against_the_build_and_whether_queries_failed():
    phase = {"requests": 900, "failed": 0, "distinct_questions": 300, "p50_ms": 10.0, "p99_ms": 20.0,
             "seconds": 15.0, "child_runs_s": []}
    result = {"documents": 1000, "chunks": 2400, "date": "2026-12-02", "model": "all-MiniLM-L6-v2",
              "from_backend": "onnx", "to_backend": "onnx-int8", "cores": 2, "serve_ready_s": 3.0,
              "questions": "300 test questions",
              "build": {"seconds": 60.0, "chunks_s": 40.0, "embed_seconds": 55.0, "embed_chunks_s": 43.6,
                        "model_load_s": 0.3},
              "served_build": {"seconds": 80.0, "chunks_s": 30.0},
              "reembed_alone": {"seconds": 58.0, "chunks_s": 41.4, "over_build": 1.035, "over_embedding": 0.95,
                                "met": True},
              "reembed_serving": {"seconds": 240.0, "chunks_s": 10.0, "over_build": 0.25, "over_embedding": 0.229,
                                  "met": False, "failed": 2},
              "latency": {"idle": phase, "reembed": {**phase, "failed": 2, "p99_ms": 44.0, "p99_over_idle": 2.2}}}
    lines = bench.reembed_table(result).splitlines()
    assert "2,400 chunks" in lines[0] and "onnx -> onnx-int8" in lines[0]
    rows = {line.strip().split("  ")[0]: line for line in lines}
    assert rows["rag reembed, alone"].endswith(" met") and "1.035" in rows["rag reembed, alone"]
    assert rows["rag reembed, /query closed loop"].endswith("NOT met")  # no qps recorded: closed loop
    paced = bench.reembed_table({**result, "qps": 5.0})
    assert "rag reembed, /query paced at 5 questions/s" in paced
    assert "met" not in rows["rag build (onnx-int8)"] and "43.6" in rows["its encode calls alone"]
    assert "2.20" in rows["reembed"] and lines[-1].endswith("2 failed: NOT met")


def _add(a: int, b: int) -> int:
    return a + b


def _refuse() -> None:
    raise ValueError("no such corpus")


def _die() -> None:
    import os

    os._exit(3)  # no word to the parent, as a kill or the OOM killer leaves it


def test_a_child_returns_its_result_its_error_or_how_it_died():
    from rag.bench.child import in_child

    assert in_child(_add, 2, 3) == 5
    with pytest.raises(RuntimeError, match="_refuse failed: ValueError: no such corpus"):
        in_child(_refuse)
    with pytest.raises(RuntimeError, match=r"_die's process died \(exit status 3\)"):
        in_child(_die)
