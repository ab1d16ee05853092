"""Chunking: sentence splitting, sizes, overlap, model limit, stable ids, offsets."""

from itertools import pairwise

import pytest

from rag.errors import SettingsError
from rag.ingest.chunk import ChunkParams, chunk_document, embed_input, split_sentences
from rag.ingest.clean import clean
from rag.text import count_tokens
from tests.helpers import FakeEmbedder

SENTENCES = [f"Sentence number {i} talks about trade and oil in some detail." for i in range(40)]
TEXT = "Heading One\n\n" + " ".join(SENTENCES[:20]) + "\n\n" + " ".join(SENTENCES[20:])


def chunks_of(text, target=60, overlap=15, max_model=256, title="T"):  # type: ignore[no-untyped-def]
    doc = clean(text)
    fake = FakeEmbedder(max_tokens=max_model)
    return doc, chunk_document("d", title, doc, ChunkParams(target, overlap, max_model), fake.count_tokens)


def test_split_sentences_keeps_abbreviations_together():
    text = "The U.S. House met. Robert D. Blackwill wrote it. Trade hit $245 billion in 2024. Done."
    assert [text[a:b] for a, b in split_sentences(text, 0, len(text))] == [
        "The U.S. House met.", "Robert D. Blackwill wrote it.", "Trade hit $245 billion in 2024.", "Done."]


def test_split_sentences_breaks_at_paragraphs_and_bullets():
    text = "A title line\n\nFirst one\n• bullet one.\n• bullet two."
    assert [text[a:b] for a, b in split_sentences(text, 0, len(text))] == [
        "A title line", "First one", "• bullet one.", "• bullet two."]


def test_count_tokens_uses_cl100k():
    assert count_tokens("China and Russia") == 3


def test_chunks_are_whole_sentences_within_target_and_overlap():
    doc, chunks = chunks_of(TEXT)
    assert len(chunks) > 3
    for c in chunks:
        assert doc.text[c.char_start:c.char_end] == c.text
        assert c.n_tokens <= 60 + 2  # joined sentences may gain a token at the seams
        assert c.text.startswith("Sentence number") and c.text.endswith("detail.")
        assert c.section == "Heading One"
    for a, b in pairwise(chunks):
        shared = doc.text[b.char_start:a.char_end] if b.char_start < a.char_end else ""
        assert 0 < count_tokens(shared) <= 15


def test_no_overlap_when_asked():
    _, chunks = chunks_of(TEXT, overlap=0)
    assert all(a.char_end <= b.char_start for a, b in pairwise(chunks))


def test_chunks_never_cross_sections():
    text = "First Part\n\n" + " ".join(SENTENCES[:5]) + "\n\nSecond Part\n\n" + " ".join(SENTENCES[5:10])
    doc, chunks = chunks_of(text)
    assert {c.section for c in chunks} == {"First Part", "Second Part"}
    for c in chunks:
        section = next(s for s in doc.sections if s.title == c.section)
        assert section.char_start <= c.char_start and c.char_end <= section.char_end


def test_model_limit_wins_over_target():
    # fake model: 13 tokens per sentence (11 words + 2), header "T — Heading One" adds 3
    _, chunks = chunks_of(TEXT, target=400, overlap=0, max_model=60)
    fake = FakeEmbedder()
    assert all(fake.count_tokens(c.embed_input) <= 60 for c in chunks)
    assert all(c.embed_input == embed_input("T", "Heading One", c.text) for c in chunks)


def test_a_sentence_longer_than_the_model_limit_is_cut_at_words():
    # 11-word sentences; the header "T — Heading One" is 3 fake tokens, plus 2 special ones
    doc, chunks = chunks_of(TEXT, target=400, overlap=0, max_model=12)
    fake = FakeEmbedder()
    assert all(fake.count_tokens(c.embed_input) <= 12 for c in chunks)
    assert " ".join(c.text for c in chunks) == doc.text[doc.sections[0].char_start:doc.sections[0].char_end].replace("\n\n", " ")


def test_text_that_cannot_fit_even_one_word_is_refused():
    with pytest.raises(SettingsError, match="does not fit the model's 5 tokens, even cut at words"):
        chunks_of(TEXT, target=400, max_model=5)


def test_an_overlong_sentence_is_cut_at_word_boundaries():
    long_sentence = " ".join(["word"] * 300) + "."
    _, chunks = chunks_of(f"{long_sentence}", target=50, overlap=0)
    assert len(chunks) >= 6
    assert all(c.n_tokens <= 50 for c in chunks)
    assert " ".join(c.text for c in chunks) == long_sentence


def test_ids_are_stable_when_earlier_text_changes():
    _, before = chunks_of(TEXT)
    _, after = chunks_of("A new opening paragraph, added later, moves every offset.\n\n" + TEXT)
    assert {c.chunk_id for c in before} <= {c.chunk_id for c in after}
    assert before[0].char_start != next(c for c in after if c.chunk_id == before[0].chunk_id).char_start


def test_same_text_twice_gets_distinct_ids():
    doc = clean("Part A\n\nSame words here.\n\nPart B\n\nSame words here.", rules=__import__(
        "rag.ingest.clean", fromlist=["CleanRules"]).CleanRules(repeated_min_chars=1000))
    chunks = chunk_document("d", "T", doc, ChunkParams(50, 0, 256), FakeEmbedder().count_tokens)
    assert len(chunks) == 2 and chunks[0].chunk_id != chunks[1].chunk_id
