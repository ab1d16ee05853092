"""Calibrating "is there an answer in the corpus?" on the seed questions.

The feature is the best dense cosine similarity between the question and any chunk; the
model is logistic, confidence = sigmoid(slope * cosine + offset), fitted by Newton's
method on a calibration split of the answerable and unanswerable questions, and checked
on the held-back rest (a fixed third, chosen by a hash of the question id, never by
looking at scores). `answerable` is confidence >= 0.5.

Example: slope 20, offset -10 puts the boundary at cosine 0.5, and cosine 0.6 gives
confidence sigmoid(2) = 0.88.

Left out: features beyond the cosine (none separated the near-topic questions better on
the seed set), and reading-comprehension models (none ships offline).
"""

import hashlib
import math
from typing import Any

import numpy as np

from rag.evaluate import Question
from rag.retrieve import Abstention, Retriever


def held_back(question_id: str) -> bool:
    return int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % 3 == 0


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50) -> tuple[float, float]:
    """Slope and offset maximising the likelihood of labels y (0/1) given x, with a small
    ridge penalty so separable data still converges."""
    design = np.column_stack([x, np.ones_like(x)])
    w = np.zeros(2)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ w))
        gradient = design.T @ (p - y) + l2 * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.eye(2)
        w -= np.linalg.solve(hessian, gradient)
    return float(w[0]), float(w[1])


def rates(abstention: Abstention, cosines: list[float], answerable: list[bool]) -> dict[str, Any]:
    flagged = [abstention.confidence(c) < 0.5 for c in cosines]
    n_yes, n_no = sum(answerable), len(answerable) - sum(answerable)
    return {
        "unanswerable_flagged": round(sum(f for f, a in zip(flagged, answerable) if not a) / max(n_no, 1), 3),
        "answerable_flagged": round(sum(f for f, a in zip(flagged, answerable) if a) / max(n_yes, 1), 3),
        "answerable": n_yes, "unanswerable": n_no,
    }


def calibrate(retriever: Retriever, questions: list[Question]) -> dict[str, Any]:
    vectors = retriever.embedder.encode([q.question for q in questions])
    cosines = [retriever.best_cosine(v) for v in vectors]
    fit_rows = [i for i, q in enumerate(questions) if not held_back(q.id)]
    back_rows = [i for i, q in enumerate(questions) if held_back(q.id)]
    slope, offset = fit_logistic(np.array([cosines[i] for i in fit_rows]),
                                 np.array([float(questions[i].answerable) for i in fit_rows]))
    fitted = Abstention(slope, offset)

    def stats(abstention: Abstention, rows: list[int]) -> dict[str, Any]:
        return rates(abstention, [cosines[i] for i in rows], [questions[i].answerable for i in rows])

    return {
        "feature": "best dense cosine",
        "fitted": {"slope": round(slope, 3), "offset": round(offset, 3),
                   "boundary_cosine": round(-offset / slope, 4) if slope else math.nan},
        "configured": {"slope": retriever.abstention.slope, "offset": retriever.abstention.offset},
        "calibration_split": stats(fitted, fit_rows),
        "held_back": {"fitted": stats(fitted, back_rows), "configured": stats(retriever.abstention, back_rows)},
    }
