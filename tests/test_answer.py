"""Answer sentences (rag.answer): what a question asks for wins over topicality alone, the
sentence after the best one follows it, and no sentence is said twice."""

import numpy as np
from conftest import FakeEmbedder

from rag.answer import Candidate, asked_kind, choose, specifics

FAKE = FakeEmbedder()


def candidates(*texts: str, rank: int = 1, doc_id: str = "d") -> list[Candidate]:
    out, at = [], 0
    for text in texts:
        out.append(Candidate(rank, doc_id, at, at + len(text), text, FAKE.vector(text)))
        at += len(text) + 1
    return out


def test_the_kind_asked_for_and_the_year_asked_about_win():
    question = "How much was trade between the two countries worth in 2024?"
    # cosine 0.69 for the topical sentence, 0.49 for the answer: the year and the amount decide
    found = choose(question, FAKE.vector(question), candidates(
        "Trade between the two countries grew in 2023.",
        "Unrelated text about wheat.",
        "In 2024 trade between them reached $245 billion.",
    ))
    assert found[0].text == "In 2024 trade between them reached $245 billion."


def test_kinds_and_specifics():
    assert asked_kind("When did they first meet?") is not None and asked_kind("Why?") is None
    assert asked_kind("How much oil?").search("rose 49 percent") and not asked_kind("How much oil?").search("in 2024")
    assert asked_kind("Which countries joined BRICS?").search("Egypt and Iran")
    assert specifics('What did "no limits" mean for Xi and Putin in 2022?') == ({"no limits", "2022"}, {"xi", "putin"})


def test_the_next_sentence_follows_and_nothing_is_said_twice():
    question = "Why did China and Russia veto the resolution?"
    first = candidates("China and Russia vetoed the resolution on Venezuela.",
                       "They saw it as a precursor to intervention.", "Unrelated text about wheat.")
    again = [Candidate(2, "d", c.char_start, c.char_end, c.text, c.vector) for c in first[:1]]  # an overlapping passage
    found = choose(question, FAKE.vector(question), first + again)
    assert [c.text for c in found][:2] == ["China and Russia vetoed the resolution on Venezuela.",
                                           "They saw it as a precursor to intervention."]
    assert len({(c.doc_id, c.char_start) for c in found}) == len(found)
    assert choose(question, np.zeros(64, dtype=np.float32), []) == []
