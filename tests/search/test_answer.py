"""Answer sentences (rag.search.answer): what a question asks for wins over topicality alone, the
sentence after the best one follows it, and no sentence is said twice."""

import numpy as np

from rag.search.answer import Candidate, asked_kind, choose, missing_share, specifics
from tests.helpers import FakeEmbedder

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
    assert specifics("What was agreed at the 2016 G20 summit?")[0] == {"2016"}  # G20's 20 is no number asked for


def test_missing_share_counts_numbers_years_and_quotes_not_names():
    passages = ["Trade between China and Russia reached $245 billion in 2024."]
    assert missing_share("What was the trade volume between China and Russia in 1995?", passages) == 1.0
    assert missing_share("How much trade was there in 2024?", passages) == 0.0
    assert missing_share("What did the Sudanese leader say?", passages) == 0.0  # names: no evidence either way
    assert missing_share('Was "no limits" said in 2024?', passages) == 0.5


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


# ------------------------------------------------------------------ conversations

from rag.search.conversation import is_follow_up, resolve, trim_history  # noqa: E402


def test_follow_ups_are_told_from_new_topics():
    assert is_follow_up("Which countries have joined it recently?", "What is the BRICS group?")
    assert is_follow_up("And in 2023?", "How much oil did China buy in 2022?")
    assert is_follow_up("Why?", "Did China and Russia veto the resolution?")
    assert not is_follow_up("What is the Polar Silk Road in the Arctic?", "What is the BRICS group?")
    assert not is_follow_up("Which countries joined it?", None)  # nothing to lean on
    # function words are no topic: "still" and "them" do not make a new subject of this one
    assert is_follow_up("Does China still depend on them?", "Where has China bought its weapons?")
    assert is_follow_up("Which one was the first after the war in Ukraine began?", "Do they make a difference?")
    assert not is_follow_up("What demographic problem do China and Russia have in common?", "Did it work?")


def test_a_follow_up_is_searched_with_the_previous_turn_and_a_new_topic_alone():
    encoded: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        encoded.append(texts)
        return np.stack([FAKE.vector(t) for t in texts])

    history = ["What is the BRICS group?"]
    follow = resolve("Which countries joined it?", FAKE.vector("Which countries joined it?"), history, encode)
    assert "BRICS" in follow.text and float(follow.vector @ FAKE.vector("BRICS group")) > 0
    alone = resolve("What is the Polar Silk Road in the Arctic?", FAKE.vector("polar"), history, encode)
    assert alone.text == "What is the Polar Silk Road in the Arctic?" and len(encoded) == 1  # no encode for it


def test_history_is_trimmed_to_the_newest_turns_that_fit():
    assert trim_history(["a" * 10, "b" * 10, "c" * 10], max_turns=2, max_chars=100) == ["b" * 10, "c" * 10]
    assert trim_history(["a" * 10, "b" * 10, "c" * 10], max_turns=5, max_chars=25) == ["b" * 10, "c" * 10]
    assert trim_history(["a"], max_turns=0, max_chars=100) == []


def test_bad_conversation_files_are_refused(built, tmp_path):
    import pytest

    from rag.errors import RagError
    from rag.evaluation.conversations import load_conversations
    from rag.stores.local.store import open_local

    store = open_local(built.index_dir)
    for line, message in (('{"id": "c"}', "not a valid conversation"),
                          ('{"id": "c", "turns": [{"question": "q", "kind": "x", "gold_quotes": []}]}', "kind must be"),
                          ("{", "not valid JSON"),
                          ('{"id": "c", "turns": [{"question": 5, "gold_quotes": []}]}',
                           "not a valid conversation: turns.0.question: Input should be a valid string")):
        path = tmp_path / "c.jsonl"
        path.write_text(line + "\n")
        with pytest.raises(RagError, match=message):
            load_conversations(path, store)


def test_a_sentence_dated_to_another_year_does_not_lead():
    question = "How much was trade worth in 2024?"
    found = choose(question, FAKE.vector(question), candidates(
        "In 2025, trade was worth $100 billion.",
        "Trade was worth $245 billion at its peak.",
    ))
    assert found[0].text == "Trade was worth $245 billion at its peak."


def test_answer_weights_are_fitted_from_which_sentences_hold_the_gold_quote():
    """A feature that picks out the gold sentences gets the weight (rag.evaluation.fit_answer)."""
    from rag.evaluation.fit_answer import answer_metric, fit_weights
    from rag.evaluation.retrieval import GoldQuote, Question

    examples = []
    for year in range(2000, 2020):
        question = f"How much did exports grow in {year}?"
        texts = [f"Exports were discussed in {year - 1} at length.", f"Exports rose 5 percent in {year}.",
                 "Imports and exports were a topic of debate."]
        found = candidates(*texts)
        gold = GoldQuote("d", texts[1], found[1].char_start, found[1].char_end)
        examples.append((Question(str(year), question, "fact", True, ["d"], [gold]), FAKE.vector(question), found))
    weights = fit_weights(examples)
    assert weights["specific"] > 0 and weights["other_year"] < 0
    assert answer_metric(examples, weights) == 1.0


def test_names_and_terms_every_candidate_holds_do_not_decide():
    """A corpus about China and Russia names both nearly everywhere: the sentence that says
    "the countries" and holds the amount asked for must not lose to one that names them."""
    question = "What was the value of trade between China and Russia in 2024?"
    found = choose(question, FAKE.vector(question), candidates(
        "China is Russia's number-one trading partner, and Russia is China's seventh as of 2024.",
        "China and Russia held talks on energy.",
        "China and Russia signed a treaty.",
        "Trade between the countries reached an all-time high of $245 billion in 2024.",
    ))
    assert found[0].text.startswith("Trade between the countries")
