"""Follow-up questions: read a question with the conversation when it leans on it.

No language model is needed. A question is a follow-up when it refers back and brings
little topic of its own:
- it refers back: a pronoun or demonstrative (it, they, that, ...), or it opens like an
  ellipsis ("And ...", "What about ...", "Why?"); or it has at most FEW_TERMS topic terms
  (BM25 terms minus question words: "How long is it?" has none);
- a question with a pronoun but many topic terms of its own is still read alone when it
  shares none of them with the previous turn and has MANY_TERMS or more (a new topic).

A follow-up is searched with the previous turn, itself resolved the same way (so a chain of
follow-ups keeps its topic), the new turn weighted higher:
- dense: the vector normalise(v_question + PREVIOUS_WEIGHT x v_previous);
- lexical: the question's text plus the previous turn's.
A self-contained question after a conversation is searched alone: it is not dragged back
to the old topic. The weights were chosen on eval/conversations.jsonl (`rag eval` prints
follow-up Recall@5 with and without the conversation). Function words (pronouns, "still",
"before") do not count as topic terms, and "which one" always refers back: the misses
read showed follow-ups taken for new topics (not tuned per chat; measured figures:
docs/benchmarks.md#follow-ups-ragsearchconversationpy).

Left out: rewriting with a language model (with an upstream model configured, the chat
endpoint could condense the question; not done here), and coreference beyond one turn.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rag.lexical import tokenize

PREVIOUS_WEIGHT = 0.6  # the previous turn's share of the search vector (the question's: 1)
FEW_TERMS = 2  # a question with this many topic terms or fewer cannot stand alone
MANY_TERMS = 4  # ... and one with this many, none shared with the last turn, is a new topic
_REFERS_BACK = re.compile(r"\b(it|its|they|them|their|theirs|this|that|these|those|he|him|his|she|her|there|"
                          r"then|such|both|each|either|neither|same|other|others|former|latter)\b", re.I)
_ELLIPSIS = re.compile(r"^\s*(and|but|or|so|also|then|what about|how about|why|how come|and why|and how)\b"
                       r"|^\s*\w+\s*\?\s*$", re.I)
# question and function words: BM25's short stopword list keeps "them", "still" or "before", which
# say nothing about a topic (counted as topic terms, they made "Does China still depend on them?"
# look like a new subject)
QUESTION_WORDS = frozenset(tokenize(
    "what which who whom whose when where why how do does did done has have had would could should can may "
    "might will shall much many more most less about said say says mean means please tell know "
    "i me my we us our you your he him his she her it its they them their one ones each either neither both "
    "other others same up down out off over under between after before during since until again still already "
    "yet also just even only instead apart together like than very so too now ever get got make made"))
# "which one?", "what about the other?": a reference back whatever else the question says
_STRONG_REFERENCE = re.compile(r"^\s*(which|what) ones?\b|\b(the|that|this) (one|other|latter|former)\b", re.I)


def trim_history(history: Sequence[str], max_turns: int, max_chars: int) -> list[str]:
    """The most recent turns that fit both limits, oldest first (too long is trimmed, not refused)."""
    kept: list[str] = []
    used = 0
    for turn in reversed(history[-max_turns:] if max_turns else []):
        if used + len(turn) > max_chars:
            break
        kept.append(turn)
        used += len(turn)
    return kept[::-1]


@dataclass(frozen=True)
class Turn:
    text: str  # what lexical search reads
    vector: np.ndarray  # what dense search reads (normalised)


def topic_terms(text: str) -> set[str]:
    return set(tokenize(text)) - QUESTION_WORDS


def is_follow_up(question: str, previous: str | None) -> bool:
    """Whether `question` leans on the turn before it (`previous`, its text)."""
    if not previous:
        return False
    terms = topic_terms(question)
    if len(terms) <= FEW_TERMS or _STRONG_REFERENCE.search(question):
        return True
    if not (_REFERS_BACK.search(question) or _ELLIPSIS.search(question)):
        return False
    return not (len(terms) >= MANY_TERMS and not terms & topic_terms(previous))


def resolve(question: str, vector: np.ndarray, history: Sequence[str],
            encode: Callable[[list[str]], np.ndarray]) -> Turn:
    """What to search for `question` (its vector given) after the earlier user turns
    `history`, oldest first. `encode` embeds the history, only when it is needed."""
    alone = Turn(question, vector)
    if not history or not is_follow_up(question, history[-1]):
        return alone
    previous = _resolved(list(history), encode)
    combined = vector + PREVIOUS_WEIGHT * previous.vector
    norm = float(np.linalg.norm(combined))
    return Turn(f"{question} {previous.text}", combined / norm if norm else vector)


def _resolved(history: list[str], encode: Callable[[list[str]], np.ndarray]) -> Turn:
    """The last turn of `history`, resolved against the turns before it."""
    start = len(history) - 1  # back to the turn that opened this chain of follow-ups
    while start > 0 and is_follow_up(history[start], history[start - 1]):
        start -= 1
    chain = history[start:]
    vectors = encode(chain)
    vector = vectors[0]
    for later in vectors[1:]:
        combined = later + PREVIOUS_WEIGHT * vector
        vector = combined / (float(np.linalg.norm(combined)) or 1.0)
    # newest turn first, joined once: prefixing each turn to the text so far copied it
    # again per turn, quadratic in the length of the chain
    return Turn(" ".join(reversed(chain)), vector)
