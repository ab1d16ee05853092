"""Calibrating "is there an answer in the corpus?" on the seed questions.

The model is logistic over three features, confidence = sigmoid(slope * cosine +
missing_weight * missing + answer_weight * (answer - answer_center) + offset), fitted by
Newton's method on a calibration split of the answerable and unanswerable questions, and
checked on the held-back rest (a fixed third, chosen by a hash of the question id, never
by looking at scores). `answerable` is confidence >= 0.5.
- cosine: the best dense cosine similarity between the question and any chunk;
- missing: evidence the bi-encoder cannot give, the share of the question's years,
  numbers and quoted terms that the top passages never mention
  (rag.search.answer.missing_share): "trade in 1995" retrieves the 2024 figures, close in
  meaning, but never says 1995;
- answer: the score of the answer's lead sentence (rag.search.answer.choose: cosine, the
  question's terms, the kind of thing asked for, ...): whether some sentence answers it,
  not only whether a passage is on its subject. Centred on its mean over the calibration
  split, so a response without sentences (an index built without them) counts as neither.

Example: slope 20, offset -10 (other weights 0) puts the boundary at cosine 0.5, and
cosine 0.6 gives confidence sigmoid(2) = 0.88.

Left out: reading-comprehension models (none ships offline).
"""

import hashlib
from typing import Any

import numpy as np

from rag.evaluation.retrieval import Question
from rag.search.answer import missing_share
from rag.search.retriever import Retriever
from rag.types import Abstention

Features = tuple[float, float, float | None]  # best cosine, missing share, lead-sentence score (None: no sentences)


def held_back(question_id: str) -> bool:
    return int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % 3 == 0


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weights (one per column of x, then the offset) maximising the likelihood of labels y
    (0/1), with a small ridge penalty so separable data still converges (Newton's method)."""
    design = np.column_stack([x.reshape(len(y), -1), np.ones(len(y))])
    w = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(design @ w, -700, 700)))
        gradient = design.T @ (p - y) + l2 * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, gradient)
    return w


def rates(abstention: Abstention, features: list[Features], questions: list[Question]) -> dict[str, Any]:
    """Shares flagged (confidence < 0.5): of the answerable, of the near-topic and of the
    off-topic unanswerable questions."""
    flagged = [abstention.confidence(*f) < 0.5 for f in features]
    groups = {"answerable": [q.answerable for q in questions],
              "unanswerable": [not q.answerable for q in questions],
              "near_topic": [not q.answerable and q.topic == "near" for q in questions],
              "off_topic": [not q.answerable and q.topic != "near" for q in questions]}
    out: dict[str, Any] = {}
    for name, members in groups.items():
        n = sum(members)
        out[f"{name}_flagged"] = round(sum(f for f, m in zip(flagged, members) if m) / n, 3) if n else None
        out[name] = n
    return out


def calibrate(retriever: Retriever, questions: list[Question], k: int = 5) -> dict[str, Any]:
    """Fit the confidence on three features, the best dense cosine, the share of the
    question's specifics missing from the top k passages and the answer's lead-sentence
    score (centred on its mean over the calibration split), on the calibration split;
    report both splits."""
    features: list[Features] = []
    for q in questions:
        response = retriever.query(q.question, k)
        vector = retriever.embedder.encode([q.question])[0]
        features.append((retriever.best_cosine(vector), missing_share(q.question, [p.text for p in response.passages]),
                         response.answer[0].score if response.answer else None))
    fit_rows = [i for i, q in enumerate(questions) if not held_back(q.id)]
    back_rows = [i for i, q in enumerate(questions) if held_back(q.id)]
    leads = [lead for i in fit_rows if (lead := features[i][2]) is not None]
    center = round(float(np.mean(leads)), 3) if leads else 0.0
    design = np.array([(c, m, (a - center) if a is not None else 0.0) for c, m, a in (features[i] for i in fit_rows)])
    slope, missing_weight, answer_weight, offset = fit_logistic(
        design, np.array([float(questions[i].answerable) for i in fit_rows]))
    fitted = Abstention(float(slope), float(offset), float(missing_weight), float(answer_weight), center)

    def stats(abstention: Abstention, rows: list[int]) -> dict[str, Any]:
        return rates(abstention, [features[i] for i in rows], [questions[i] for i in rows])

    configured = retriever.abstention
    return {
        "features": ["best dense cosine", f"share of the question's specifics missing from the top {k} passages",
                     "the answer's lead-sentence score, centred"],
        "fitted": {"slope": round(slope, 3), "missing_weight": round(missing_weight, 3),
                   "answer_weight": round(answer_weight, 3), "answer_center": center, "offset": round(offset, 3)},
        "configured": {"slope": configured.slope, "missing_weight": configured.missing_weight,
                       "answer_weight": configured.answer_weight, "answer_center": configured.answer_center,
                       "offset": configured.offset},
        "calibration_split": stats(fitted, fit_rows),
        "held_back": {"fitted": stats(fitted, back_rows), "configured": stats(configured, back_rows)},
    }
