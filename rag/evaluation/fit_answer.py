"""`rag eval --fit-answer`: the answer-sentence weights (rag.search.answer.WEIGHTS) fitted on a
question set, and checked on questions they were not fitted on.

Every candidate sentence of every answerable question (the sentences of its top
ANSWER_PASSAGES passages) is a row of rag.search.answer.features, labelled 1 when it covers half
of a gold quote or more (the answer metric's test). A logistic regression (rag.evaluation.calibrate's
Newton fit, ridge `L2`) gives one weight per feature; divided by the cosine's, they are
on the scale `choose` adds them on. The check is two-fold by question order (fitted on
the odd-numbered, scored on the even-numbered, and the other way round), with the answer
metric itself, so what is reported was never fitted on.

Example: on the seed set the fit gives terms 1.9 and rank -0.6 for cosine 1 (the
rounded weights are rag.search.answer.WEIGHTS); what the folds score:
docs/benchmarks.md#answer-weights-example-ragevaluationfit_answerpy.

Left out: fitting the selection rules (the next sentence, how many more) and pairwise or
listwise losses.
"""

from typing import Any

import numpy as np

from rag.evaluation.calibrate import fit_logistic
from rag.evaluation.retrieval import Question, covers_quote
from rag.search.answer import FEATURES, WEIGHTS, Candidate, choose, features
from rag.search.retriever import Retriever

L2 = 1.0  # ridge: a few hundred rows, a handful of positives per question

Example = tuple[Question, np.ndarray, list[Candidate]]


def fit_weights(examples: list[Example]) -> dict[str, float]:
    rows, labels = [], []
    for question, vector, candidates in examples:
        if candidates:
            rows.append(features(question.question, vector, candidates))
            labels += [float(covers_quote([(c.doc_id, c.char_start, c.char_end)], question.gold)) for c in candidates]
    w = fit_logistic(np.vstack(rows), np.array(labels), l2=L2)
    scale = abs(w[0]) or 1.0  # on the cosine's scale, keeping every sign (a set may weigh the cosine down)
    return {name: round(float(w[i] / scale), 3) for i, name in enumerate(FEATURES)}


def answer_metric(examples: list[Example], weights: dict[str, float]) -> float:
    """The share of questions whose chosen sentences cover half of a gold quote or more."""
    hits = 0
    for question, vector, candidates in examples:
        chosen = choose(question.question, vector, candidates, weights)
        hits += covers_quote([(c.doc_id, c.char_start, c.char_end) for c in chosen], question.gold)
    return round(hits / len(examples), 4) if examples else 0.0


def fit_answer(retriever: Retriever, questions: list[Question]) -> dict[str, Any]:
    examples = [(q, *retriever.answer_candidates(q.question)) for q in questions if q.answerable]
    odd, even = examples[1::2], examples[0::2]
    return {
        "fitted": fit_weights(examples),
        "configured": dict(WEIGHTS),
        "folds": {"fitted on odd, scored on even": answer_metric(even, fit_weights(odd)),
                  "fitted on even, scored on odd": answer_metric(odd, fit_weights(even)),
                  "configured, on even": answer_metric(even, WEIGHTS),
                  "configured, on odd": answer_metric(odd, WEIGHTS)},
    }
