"""Answer sentences: the sentence that answers the question comes first.

Candidates are every sentence of the top ANSWER_PASSAGES passages (the store's sentences,
embedded at build time). Each is scored against the question, a weighted sum of FEATURES:

    cosine      cosine(question, sentence)
    rank        the passage's rank - 1
    terms       share of the question's distinctive BM25 terms the sentence holds
    specific    share of the question's numbers, years and quoted terms it holds
    other_year  1 if it names a year and none of the question's ("in 2025" for "in 2024")
    names       share of the question's distinctive names (capitalised words past the
                first) it holds
    kind        1 if it carries the kind of thing asked for: a number for "how much / how
                many / what share", a year or date for "when / what year", a name for
                "who / where / which countries"

The best sentence leads, then the sentence after it in its passage (FOLLOW: the topical
sentence often states the subject and the next one the answer, e.g. a "why"), then the
best of the others up to MORE_SENTENCES more, not already said. Each sentence keeps its
passage, so the chat answer puts one [n] after each.

Distinctive: a term or name held by more than COMMON (a third) of the candidates is left
out, as it tells none of them apart. In a corpus about China and Russia the two names are
in most sentences, and "reaching an all-time high of $245 billion in 2024", which says
"the countries", lost to "China is currently Russia's number-one trading partner" on them.
A third lies inside the plateau of a sweep on the seed set (measured figures:
docs/benchmarks.md#answer-sentences-ragsearchanswerpy).

The weights (WEIGHTS) are a logistic regression's over the seed set's candidate sentences,
labelled by whether they cover half of a gold quote (rag.evaluation.fit_answer, `rag eval
--fit-answer`), rounded. They were checked on questions they were not fitted on (two
folds by question order). What the fit says: the question's terms and the top passage
count for much more than the hand-set weights gave them. The selection, not retrieval, is
what is left (measured figures: docs/benchmarks.md#answer-sentences-ragsearchanswerpy).

Tried and left out: weighing question terms by how few candidates hold them (a smooth
IDF, names untouched), scoring long sentences by their best clause (embedded apart), the
share of the question's word pairs a sentence holds ("trade between"), and leaving question
words out of the terms: none did better (docs/benchmarks.md#answer-sentences-ragsearchanswerpy).

Left out: abstractive answers (an upstream model does those) and sentence fusion.
"""

import re
from dataclasses import dataclass

import numpy as np

from rag.lexical import term_set, tokenize

ANSWER_PASSAGES = 3
MORE_SENTENCES = 2
FOLLOW = True
# a question term held by more than this share of the candidates distinguishes none of them;
# swept on the seed set: docs/benchmarks.md#answer-sentences-ragsearchanswerpy
COMMON = 1 / 3
MIN_CANDIDATES = 4  # with fewer, "held by more than a third" tells nothing apart: every term is kept
FEATURES = ("cosine", "rank", "terms", "specific", "other_year", "names", "kind")
# logistic regression on the seed set's candidate sentences (`rag eval --fit-answer`), divided by
# the cosine's weight and rounded; see the module docstring for how it was checked
WEIGHTS = {"cosine": 1.0, "rank": -0.6, "terms": 1.9, "specific": 0.3, "other_year": -0.3, "names": 0.3,
           "kind": 0.2}

_ASKS_NUMBER = re.compile(r"\b(how (much|many|large|big|long|far|often|fast)|what (percentage|share|proportion|"
                          r"amount|number|value|volume|size|cost|price)|(value|volume|size|amount|number) of)\b", re.I)
_ASKS_DATE = re.compile(r"\b(when|what year|which year|since when|how long ago)\b", re.I)
_ASKS_NAME = re.compile(r"^\s*(who|whom|where)\b|\bwhich (leaders?|presidents?|officials?|persons?|people|"
                        r"ministers?|countries|country|states|nations|members|cities|regions)\b", re.I)
YEAR = r"(?:1[5-9]|20)\d\d"  # a year as this module reads one: 1500 to 2099
# a quantity: money, a share, a count; a bare year is a date, not an answer to "how much"
_NUMBER = re.compile(rf"[$€£¥]\s?\d|\b(?!{YEAR}\b)\d[\d,.]*|\b(million|billion|trillion|percent|half|"
                     r"third|quarter|dozen)\b", re.I)
_DATE = re.compile(rf"\b{YEAR}s?\b|\b(January|February|March|April|May|June|July|August|September|"
                   r"October|November|December)\b")
_YEAR = re.compile(rf"\b{YEAR}\b")
_NAME = re.compile(r"(?<!^)(?<![.!?]\s)\b(?:[A-Z][a-z]+|[A-Z]{2,})(?:\s+[A-Z][a-z]+)*")
# a number standing alone (not the 20 of "G20"; "1990s" gives 1990), or a quoted term
_SPECIFIC = re.compile(r"(?<![\w.,])\d(?:[\d,.]*\d)?(?=s?\b)(?![\w]{2})|\"[^\"]+\"|“[^”]+”")


@dataclass(frozen=True)
class Candidate:
    rank: int  # the passage's, 1-based
    doc_id: str
    char_start: int  # document offsets
    char_end: int
    text: str
    vector: np.ndarray


@dataclass(frozen=True)
class Chosen:
    rank: int
    doc_id: str
    char_start: int
    char_end: int
    text: str
    score: float


def specifics(question: str) -> tuple[set[str], set[str]]:
    """The question's numbers, years and quoted terms; and its names (capitalised words past
    the first). Lowercased."""
    # “ past the last ” opens no quote: masked (same length, same class for the other
    # alternatives), else the regex scans from each such “ to the end, quadratic
    last_close = question.rfind("”") + 1
    masked = question[:last_close] + question[last_close:].replace("“", "\0")
    exact = {question[m.start():m.end()].strip("\"“”").lower() for m in _SPECIFIC.finditer(masked)}
    names = {m.group(0).lower() for m in _NAME.finditer(question)}
    return {f for f in exact if f}, names - exact


def missing_share(question: str, texts: list[str]) -> float:
    """The share of the question's numbers, years and quoted terms that none of `texts`
    holds: "trade in 1995" over passages that never say 1995 is all missing. 0 when the
    question has none. Evidence for abstention a bi-encoder cannot give. Names are left
    out: passages name things in other ways ("Sudanese" for Sudan, the article for "the
    Foreign Policy analysis"), and on the seed set a missing name was no evidence (its
    fitted weight came out positive)."""
    exact, _ = specifics(question)
    if not exact:
        return 0.0
    seen = " ".join(texts).lower()
    return sum(w not in seen for w in exact) / len(exact)


def asked_kind(question: str) -> re.Pattern[str] | None:
    """What a sentence must carry to answer the question, as a pattern, or None."""
    if _ASKS_DATE.search(question):
        return _DATE
    if _ASKS_NUMBER.search(question):
        return _NUMBER
    if _ASKS_NAME.search(question):
        return _NAME
    return None


def _distinctive(terms: set[str], names: set[str], held: list[frozenset[str]],
                  lowered: list[str]) -> tuple[set[str], set[str]]:
    """The question's terms and names less those held by more than COMMON of the
    candidates (`held`: each one's terms, `lowered`: its text): "China" and "Russia" in a
    corpus about the two say nothing about which sentence answers, and a sentence that says
    "the countries" would lose to one that names both for no other reason. Fewer than
    MIN_CANDIDATES candidates keep them all."""
    if len(held) < MIN_CANDIDATES:
        return terms, names
    limit = COMMON * len(held)
    return ({t for t in terms if sum(t in h for h in held) <= limit},
            {n for n in names if sum(n in text for text in lowered) <= limit})


def features(question: str, vector: np.ndarray, candidates: list[Candidate]) -> np.ndarray:
    """One row per candidate, the columns FEATURES: what a sentence is scored on."""
    terms = set(tokenize(question))
    exact, names = specifics(question)
    years = set(_YEAR.findall(question))
    kind = asked_kind(question)
    cosines = np.stack([c.vector for c in candidates]) @ vector
    held = [term_set(c.text) for c in candidates]
    texts = [c.text.lower() for c in candidates]
    terms, names = _distinctive(terms, names, held, texts)
    rows = []
    for candidate, cosine, its_terms, lowered in zip(candidates, cosines.tolist(), held, texts):
        said = set(_YEAR.findall(candidate.text))
        rows.append((
            cosine,
            candidate.rank - 1,
            len(terms & its_terms) / len(terms) if terms else 0.0,
            # a year or number asked about must be there: "in 2024" is not "in 2025"
            sum(w in lowered for w in exact) / len(exact) if exact else 0.0,
            float(bool(years and said and not said & years)),  # it dates itself, to another year
            sum(w in lowered for w in names) / len(names) if names else 0.0,
            float(kind is not None and kind.search(candidate.text) is not None),
        ))
    return np.array(rows, dtype=np.float64).reshape(len(candidates), len(FEATURES))


def choose(question: str, vector: np.ndarray, candidates: list[Candidate],
           weights: dict[str, float] = WEIGHTS) -> list[Chosen]:
    """The answer's sentences, best first (empty when there is no candidate)."""
    if not candidates:
        return []
    scores = features(question, vector, candidates) @ np.array([weights[f] for f in FEATURES])
    scored = list(zip(scores.tolist(), candidates))
    order = [c for _, c in scored]  # reading order: the next sentence of a candidate follows it in the list
    scored.sort(key=lambda pair: -pair[0])
    best = scored[0][0]
    chosen: list[Chosen] = []
    if FOLLOW:
        lead = scored[0][1]
        at = order.index(lead)
        after = order[at + 1] if at + 1 < len(order) and order[at + 1].rank == lead.rank else None
        if after is not None:  # the sentence after the best one often completes it ("why": the reason)
            scored = [scored[0], (best, after)] + [p for p in scored[1:] if p[1] is not after]
    for score, c in scored:
        if len(chosen) > MORE_SENTENCES:
            break
        if any(c.text == k.text or (c.doc_id == k.doc_id and c.char_start < k.char_end and k.char_start < c.char_end)
               for k in chosen):
            continue  # the same sentence, seen through an overlapping passage
        chosen.append(Chosen(c.rank, c.doc_id, c.char_start, c.char_end, c.text, round(float(score), 4)))
    return chosen
