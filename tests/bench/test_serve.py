"""`rag bench serve`'s distinct questions and model ceiling, without the real model: the
question pool (SciFact's, shuffled, no repeats), the ceiling's rate from an encoder's
`model_only`, and the table's ceiling row."""

import json
from pathlib import Path
from typing import Any

import pytest

from rag.bench import serve


def test_the_pool_is_scifacts_questions_shuffled_once_each(tmp_path: Path):
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": str(i), "text": f"question {i % 40}?"}) + "\n"
                                                    for i in range(50)))
    pool = serve.distinct_questions(tmp_path)
    assert sorted(pool) == sorted({f"question {i}?" for i in range(40)})  # repeats dropped
    assert pool != sorted(pool) and pool == serve.distinct_questions(tmp_path)  # shuffled, the same each run
    assert serve.distinct_questions(tmp_path / "missing") == [] and serve.distinct_questions(None) == []


class TimedModel:
    """An encoder whose model takes 1 ms a batch of up to 32."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def model_only(self, texts: list[str], batch_size: int) -> Any:
        import time

        def run() -> None:
            for start in range(0, len(texts), batch_size):
                self.batches.append(len(texts[start:start + batch_size]))
                time.sleep(0.001)
        return run


def test_the_ceiling_is_the_models_own_rate_at_batch_32():
    model = TimedModel()
    rate = serve.model_rate(model, [f"q{i}" for i in range(320)])  # type: ignore[arg-type]
    assert model.batches == [32] * 20  # warmed once, then timed: 10 batches each
    assert 320 / 0.01 >= rate > 320 / 0.2  # 10 batches of at least 1 ms each
    assert serve.model_rate(model, []) == 0.0  # type: ignore[arg-type]
    assert serve.model_rate(object(), ["q"]) == 0.0  # type: ignore[arg-type]  # no model_only: no ceiling


def test_the_table_says_the_share_of_the_ceiling():
    result = {"backend": "onnx", "torch_encode_ms_p50": 11.0, "backend_encode_ms_p50": 3.0, "query_ms_p50": 5.0,
              "query_ms_p95": 7.0, "p50_over_torch_encode": 0.45, "qps": {"1": 190.0, "8": 300.0, "32": 340.0},
              "qps_32_over_1": 1.79, "model_ceiling_qps": 400.0, "qps_32_over_ceiling": 0.85,
              "mean_batch_size_32_clients": 14.0, "server_rss_mb": 300.0, "server_peak_rss_mb": 310.0,
              "torch_loaded_in_server": False, "ready_seconds": 1.5, "steps_ms_p50": {"encode": 3.0},
              "embed_rates": {"onnx": {"passages": 384, "raw_best_per_s": 50.0, "raw_best_batch": 16,
                                       "build_per_s": 49.0, "build_over_raw_best": 0.98}},
              "embed_passages": "SciFact chunks"}
    rows = {line.split("  ")[0]: line for line in serve.table(result).splitlines()}
    assert "400.0 q/s" in rows["model ceiling (raw model, batch 32)"]
    assert rows["throughput 32 / model ceiling"].rstrip().endswith("met") and "0.85x" in rows[
        "throughput 32 / model ceiling"]
    assert "model ceiling" not in serve.table({**result, "model_ceiling_qps": None})


def test_the_torch_reference_runs_without_what_import_rag_set(monkeypatch):
    import rag
    from rag.bench import reference

    monkeypatch.setattr(rag, "SET_HERE", ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "HF_HUB_OFFLINE"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own: kept
    env = reference.plain_environment()
    assert "OMP_WAIT_POLICY" not in env and "OPENBLAS_NUM_THREADS" not in env
    assert env["OMP_NUM_THREADS"] == "3" and env["HF_HUB_OFFLINE"] == "1"  # nothing may download


@pytest.mark.model
def test_the_torch_reference_times_each_question_in_its_own_process():
    from rag.bench.reference import TorchReference
    from rag.encoders.load import resolve_model_path

    with TorchReference(resolve_model_path("all-MiniLM-L6-v2")) as torch_reference:
        times = torch_reference.times_ms(["What causes sea ice loss?", "Who met in Moscow?"])
        threads = torch_reference.times_ms(["again"])
    assert len(times) == 2 and all(ms > 0 for ms in times) and len(threads) == 1


def test_a_reference_that_cannot_load_says_so(tmp_path: Path):
    from rag.bench.reference import TorchReference

    with pytest.raises(RuntimeError, match="could not load"):
        TorchReference(str(tmp_path / "no-model"))


def test_steps_come_from_each_requests_server_timing():
    from rag.bench.serve import OUTSIDE, server_timing, steps_p50

    assert server_timing("encode;dur=3.100, dense-search;dur=0.200") == {"encode": 3.1, "dense search": 0.2}
    assert server_timing("") == {}
    steps = [server_timing("encode;dur=3, fusion;dur=1"), server_timing("encode;dur=5, fusion;dur=1"),
             server_timing("encode;dur=4, fusion;dur=2")]
    p50 = steps_p50([5.0, 7.0, 9.0], steps)
    assert list(p50) == ["encode", "fusion", OUTSIDE]
    assert p50["encode"] == 4 and p50["fusion"] == 1 and p50[OUTSIDE] == 1  # 5-4, 7-6, 9-6
