"""Ranking metrics, binary relevance, as trec_eval defines them.

Each takes the ranked list as relevance flags (or, for recall, the targets each ranked
item covers) and looks at the top k. `tests/test_metrics.py` checks hand-worked values
and agreement with ir-measures (pytrec_eval) on random rankings.

Worked example: ranked flags [False, True, False, True], 3 relevant items in all.
    mrr_at_k(flags, 10)  == 1/2                                    (first hit at rank 2)
    ndcg_at_k(flags, 3, 10) == (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3) + 1/log2(4)) ≈ 0.4982
    recall_at_k([set(), {"a"}, set(), {"b"}], 3, 2) == 1/3         ("a" in the top 2)

Left out: graded relevance, and metrics that need judged non-relevant items (bpref).
"""

import math
import statistics
from collections.abc import Sequence


def mrr_at_k(flags: Sequence[bool], k: int = 10) -> float:
    """Reciprocal rank of the first relevant item in the top k; 0 if there is none."""
    return next((1.0 / rank for rank, hit in enumerate(flags[:k], start=1) if hit), 0.0)


def ndcg_at_k(flags: Sequence[bool], n_relevant: int, k: int = 10) -> float:
    """DCG of the top k over the DCG of an ideal ranking of `n_relevant` relevant items."""
    if n_relevant <= 0:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, hit in enumerate(flags[:k], start=1) if hit)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(n_relevant, k) + 1))
    return dcg / ideal


def recall_at_k(covered: Sequence[set[str]], n_targets: int, k: int) -> float:
    """Share of the `n_targets` targets (relevant documents, gold quotes) that at least one
    of the top k items covers."""
    if n_targets <= 0:
        return 0.0
    found: set[str] = set().union(*covered[:k]) if covered[:k] else set()
    return len(found) / n_targets


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]: percentile([1, 2, 3, 4, 5], 0.95) == 5."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(milliseconds: Sequence[float]) -> dict[str, float]:
    """Median and nearest-rank 95th percentile, rounded to 0.01 ms."""
    return {"p50": round(statistics.median(milliseconds), 2), "p95": round(percentile(milliseconds, 0.95), 2)}
