"""Answer sentences: the sentence that answers the question comes first.

Candidates are every sentence of the top ANSWER_PASSAGES passages (the store's sentences,
embedded at build time). Each is scored against the question:

    cosine(question, sentence)
  + TERMS    x share of the question's BM25 terms the sentence holds
  + SPECIFIC x share of the question's numbers, years and quoted terms it holds
  + NAMES    x share of the question's names (capitalised words past the first) it holds
  + KIND     x 1 if it carries the kind of thing asked for: a number for "how much / how many /
               what share", a year or date for "when / what year", a name for "who / where /
               which countries"
  - SPECIFIC x 1 if it names a year and none of the question's years ("in 2025" for "in 2024")
  - RANK     x (the passage's rank - 1)

The best sentence leads, then the sentence after it in its passage (FOLLOW: the topical
sentence often states the subject and the next one the answer, e.g. a "why"), then up to
MORE_SENTENCES in all of the others, best first, if they score at least NEAR of the best
and are not already said. Each sentence keeps its passage, so the chat answer puts one [n]
after each.

The weights are round numbers chosen on the seed set's answer metric (`rag eval`: the share
of answerable questions whose answer covers half of a gold quote), not tuned per question:
0.757 with the best sentence alone or with one more, 0.786 adding the next sentence, 0.843
with the next and one more, 0.871 with numbers and years weighed apart from names (which
most sentences of this corpus share), 0.857 once a bare year no longer counts as the
quantity a "how much" asks for (kept: it is what the question means); the same for every
SPECIFIC in {0.2, 0.4} and NAMES in {0, 0.1} (2026-11-24); 0.857 (from 0.843 at the
time) with the other-year penalty; weighing question terms by how few candidates hold them
(IDF over the candidates) changed nothing at TERMS 0.2 to 0.6, so it was left out
(2026-11-25). A single sentence of the top 3 passages covers the
gold quote for 0.986 of the questions: the selection, not retrieval, is what is left.

Example: for "What was the value of trade between China and Russia in 2024?" the sentence
holding "$245 billion in 2024" wins on the kind (a number), the specific (2024) and terms.

Left out: abstractive answers (an upstream model does those) and sentence fusion.
"""

import re
from dataclasses import dataclass

import numpy as np

from rag.lexical import term_set, tokenize

ANSWER_PASSAGES = 3
MORE_SENTENCES = 2
NEAR = 0.9
TERMS, SPECIFIC, NAMES, KIND, RANK = 0.3, 0.2, 0.1, 0.15, 0.05
FOLLOW = True

_ASKS_NUMBER = re.compile(r"\b(how (much|many|large|big|long|far|often|fast)|what (percentage|share|proportion|"
                          r"amount|number|value|volume|size|cost|price)|(value|volume|size|amount|number) of)\b", re.I)
_ASKS_DATE = re.compile(r"\b(when|what year|which year|since when|how long ago)\b", re.I)
_ASKS_NAME = re.compile(r"^\s*(who|whom|where)\b|\bwhich (leaders?|presidents?|officials?|persons?|people|"
                        r"ministers?|countries|country|states|nations|members|cities|regions)\b", re.I)
# a quantity: money, a share, a count; a bare year is a date, not an answer to "how much"
_NUMBER = re.compile(r"[$€£¥]\s?\d|\b(?!(?:1[5-9]|20)\d\d\b)\d[\d,.]*|\b(million|billion|trillion|percent|half|"
                     r"third|quarter|dozen)\b", re.I)
_DATE = re.compile(r"\b(1[5-9]\d\d|20\d\d)s?\b|\b(January|February|March|April|May|June|July|August|September|"
                   r"October|November|December)\b")
_YEAR = re.compile(r"\b(?:1[5-9]|20)\d\d\b")
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
    exact = {m.group(0).strip("\"“”").lower() for m in _SPECIFIC.finditer(question)}
    names = {m.group(0).lower() for m in _NAME.finditer(question)}
    return {f for f in exact if f}, names - exact


def missing_share(question: str, texts: list[str]) -> float:
    """The share of the question's numbers, years and quoted terms that none of `texts`
    holds: "trade in 1995" over passages that never say 1995 is all missing. 0 when the
    question has none. Evidence for abstention a bi-encoder cannot give. Names are left
    out: passages name things in other ways ("Sudanese" for Sudan, the article for "the
    Foreign Policy analysis"), and on the seed set a missing name was no evidence (its
    fitted weight came out positive, 2026-11-25)."""
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


def choose(question: str, vector: np.ndarray, candidates: list[Candidate]) -> list[Chosen]:
    """The answer's sentences, best first (empty when there is no candidate)."""
    if not candidates:
        return []
    terms = set(tokenize(question))
    exact, names = specifics(question)
    years = set(_YEAR.findall(question))
    kind = asked_kind(question)
    scores = np.stack([c.vector for c in candidates]) @ vector
    scored = []
    for candidate, cosine in zip(candidates, scores.tolist()):
        lowered = candidate.text.lower()
        score = cosine - RANK * (candidate.rank - 1)
        if terms:
            score += TERMS * len(terms & term_set(candidate.text)) / len(terms)
        if exact:  # a year or number asked about must be there: "in 2024" is not "in 2025"
            score += SPECIFIC * sum(w in lowered for w in exact) / len(exact)
        if years and (said := set(_YEAR.findall(candidate.text))) and not said & years:
            score -= SPECIFIC  # it dates itself, to another year than the one asked about
        if names:
            score += NAMES * sum(w in lowered for w in names) / len(names)
        if kind is not None and kind.search(candidate.text):
            score += KIND
        scored.append((score, candidate))
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
        if len(chosen) > MORE_SENTENCES or (chosen and score < NEAR * best):
            break
        if any(c.text == k.text or (c.doc_id == k.doc_id and c.char_start < k.char_end and k.char_start < c.char_end)
               for k in chosen):
            continue  # the same sentence, seen through an overlapping passage
        chosen.append(Chosen(c.rank, c.doc_id, c.char_start, c.char_end, c.text, round(float(score), 4)))
    return chosen
