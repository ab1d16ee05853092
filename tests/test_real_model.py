"""The bundled all-MiniLM-L6-v2 on the bundled corpus: the acceptance checks of the
foundation, end to end. Slower (loads torch and the model): marked `model`."""

from pathlib import Path

import pytest

from rag.encoders.load import load_embedder
from rag.ingest.build import build_index, spec_of
from rag.ingest.chunk import embed_input
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.stores.local.store import open_local
from tests.helpers import CORPUS

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Retriever:  # type: ignore[no-untyped-def]
    settings = Settings(corpus_dir=CORPUS, index_dir=tmp_path_factory.mktemp("real") / "index")
    embedder = load_embedder(settings.model)
    build_index(settings, embedder)
    return Retriever(open_local(settings.index_dir, spec_of(settings)), embedder)


def test_trade_question_finds_245_billion_in_top_3_and_leads_with_it(real: Retriever):
    response = real.query("What was the value of trade between China and Russia in 2024?", k=3)
    assert any("$245 billion" in p.text for p in response.passages)
    assert "$245 billion" in response.answer[0].text  # the fact asked for, in the answer's first sentence


def test_citation_invariant_over_the_whole_index(real: Retriever):
    for chunk in real.store.chunks:
        assert real.store.documents[chunk.doc_id].text[chunk.char_start:chunk.char_end] == chunk.text


def test_no_chunk_exceeds_the_model_max_sequence_length(real: Retriever):
    limit = real.embedder.max_tokens
    assert limit == 256
    counts = [
        real.embedder.count_tokens(
            embed_input(real.store.documents[c.doc_id].metadata["title"], c.section, c.text))
        for c in real.store.chunks
    ]
    assert max(counts) <= limit
    assert counts == [c.n_model_tokens for c in real.store.chunks]


def test_no_chunk_carries_promo_text(real: Retriever):
    for phrase in ("More From Our Experts", "Join the Conversation", "Related Publications",
                   "Subscribe now"):
        assert not [c.chunk_id for c in real.store.chunks if phrase.casefold() in c.text.casefold()]


def test_bad_model_path_is_a_clear_error(tmp_path: Path):
    from rag.errors import ModelError

    with pytest.raises(ModelError, match="model folder not found"):
        load_embedder(str(tmp_path / "no-model"))
    with pytest.raises(ModelError, match="cannot load embedding model 'no-such/model-anywhere' offline"):
        load_embedder("no-such/model-anywhere")


def test_the_real_tokenizer_rejects_a_lone_surrogate_and_only_that_question_fails(real: Retriever):
    """The fake model takes any str; the real tokenizer does not. A batch holding one such
    question still answers the others (the engine re-encodes one by one)."""
    from api.engine.encoding import encode_each
    from rag.errors import BadQueryError

    with pytest.raises(Exception):  # noqa: B017 - whatever the tokenizer raises, it raises
        real.embedder.encode(["trade \ud800", "oil"])
    good, bad, other = encode_each(real.embedder, ["How much oil?", "trade \ud800", "Arctic shipping"])
    assert isinstance(bad, BadQueryError)
    assert good.shape == other.shape == (real.embedder.dimension,)
    with pytest.raises(BadQueryError, match="lone surrogate"):
        real.query("trade \ud800 in 2024")


def test_hostile_text_through_the_real_model(real: Retriever):
    """Control characters, NUL, bidi overrides, huge words, emoji: answered, not crashed."""
    for question in ("\x00\x01\x7f trade", "\u202eatropsnart\u202c", "x" * 900, "🇨🇳🇷🇺 trade? 🤝", "\ufeff\u200b"):
        response = real.query(question, k=2)
        assert len(response.passages) <= 2
