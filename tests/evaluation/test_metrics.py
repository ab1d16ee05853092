"""Metrics on hand-made rankings whose values were worked out by hand, and agreement with
ir-measures (pytrec_eval, i.e. trec_eval) on random rankings."""

import math
import random

import ir_measures
import pytest
from ir_measures import RR, R, nDCG

from rag.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k

F, T = False, True


def test_mrr_by_hand():
    assert mrr_at_k([F, T, F, T]) == 0.5
    assert mrr_at_k([T]) == 1.0
    assert mrr_at_k([F, F, T], k=2) == 0.0  # the hit is below the cut-off
    assert mrr_at_k([]) == 0.0


def test_ndcg_by_hand():
    # hits at ranks 2 and 4 of 3 relevant: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    # ideal: ranks 1..3 = 1 + 0.63093 + 0.5 = 2.13093;  1.06161 / 2.13093 = 0.49819
    assert ndcg_at_k([F, T, F, T], 3) == pytest.approx(0.49819, abs=1e-5)
    assert ndcg_at_k([T, T], 2) == 1.0
    assert ndcg_at_k([F, T], 1) == pytest.approx(1 / math.log2(3))  # 0.63093
    assert ndcg_at_k([F] * 10 + [T], 1) == 0.0  # rank 11 is beyond @10
    assert ndcg_at_k([T], 0) == 0.0


def test_recall_by_hand():
    covered = [set(), {"a"}, set(), {"b", "a"}]
    assert recall_at_k(covered, 3, 1) == 0.0
    assert recall_at_k(covered, 3, 2) == pytest.approx(1 / 3)
    assert recall_at_k(covered, 3, 4) == pytest.approx(2 / 3)  # "a" counted once
    assert recall_at_k(covered, 2, 10) == 1.0


def test_percentile_by_hand():
    from rag.evaluation.metrics import latency_summary, percentile

    assert percentile([5, 1, 4, 2, 3], 0.95) == 5 and percentile([5, 1, 4, 2, 3], 0.5) == 3
    # 20 values: p95 is the value at index round(0.95 * 19) = 18 of the sorted list
    assert latency_summary([10.0] * 19 + [100.0]) == {"p50": 10.0, "p95": 10.0}
    assert latency_summary([10.0] * 18 + [100.0, 100.0]) == {"p50": 10.0, "p95": 100.0}
    assert latency_summary([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5  # the median of an even count


def test_agrees_with_ir_measures_on_random_rankings():
    rng = random.Random(7)
    qrels, run, ours = [], [], {"ndcg": [], "rr": [], "r10": [], "r3": []}
    for q in range(40):
        docs = [f"d{i}" for i in range(30)]
        relevant = set(rng.sample(docs, rng.randint(1, 5)))
        ranked = rng.sample(docs, 20)
        qrels += [ir_measures.Qrel(f"q{q}", d, 1) for d in relevant]
        run += [ir_measures.ScoredDoc(f"q{q}", d, 100.0 - i) for i, d in enumerate(ranked)]
        flags = [d in relevant for d in ranked]
        covered = [{d} & relevant for d in ranked]
        ours["ndcg"].append(ndcg_at_k(flags, len(relevant), 10))
        ours["rr"].append(mrr_at_k(flags, 10))
        ours["r10"].append(recall_at_k(covered, len(relevant), 10))
        ours["r3"].append(recall_at_k(covered, len(relevant), 3))
    theirs = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 10, R @ 3], qrels, run)
    mean = {k: sum(v) / len(v) for k, v in ours.items()}
    assert mean["ndcg"] == pytest.approx(theirs[nDCG @ 10], abs=1e-9)
    assert mean["rr"] == pytest.approx(theirs[RR @ 10], abs=1e-9)
    assert mean["r10"] == pytest.approx(theirs[R @ 10], abs=1e-9)
    assert mean["r3"] == pytest.approx(theirs[R @ 3], abs=1e-9)
