"""The response format shared by `rag query --json` and `POST /query`.

Invariant: for every passage, the document's canonical text sliced
`[citation.char_start:citation.char_end]` equals `passage.text`.
Later versions may add fields; none is removed or renamed.
"""

from pydantic import BaseModel, Field


class Citation(BaseModel):
    doc_id: str = Field(examples=["cfr-china-russia-backgrounder"])
    title: str = Field(examples=["China and Russia: Exploring Ties Between Two Authoritarian Powers"])
    source: str = Field(examples=["Council on Foreign Relations (CFR)"])
    url: str | None = None
    section: str | None = Field(examples=["What are their economic ties?"])
    char_start: int = Field(ge=0, description="offset into the document's cleaned text")
    char_end: int = Field(ge=0, description="end offset (exclusive)")
    page_start: int | None = Field(None, ge=1, description="PDFs: the first page the passage is on (1-based)")
    page_end: int | None = Field(None, ge=1, description="PDFs: the last page the passage is on")


class Span(BaseModel):
    char_start: int = Field(ge=0, description="offset into the document's cleaned text")
    char_end: int = Field(ge=0)
    score: float | None = Field(None, description="how well the sentence matches the question")


class Passage(BaseModel):
    rank: int = Field(ge=1, description="1-based")
    chunk_id: str = Field(examples=["cfr-china-russia-backgrounder-3f1c0a9b2d4e"])
    text: str
    score: float = Field(description="what the ranking used: cosine (dense), BM25 (lexical), fused (hybrid)")
    citation: Citation
    scores: dict[str, float] = Field(
        default_factory=dict, examples=[{"dense": 0.74, "lexical": 12.9, "fused": 0.91}],
        description="the component scores the mode computed: dense, lexical, fused, rerank")
    highlights: list[Span] = Field(
        default_factory=list, description="the sentence(s) of the passage closest to the question; "
        "document offsets inside the passage's citation span, best first")
    chunk_ids: list[str] = Field(
        default_factory=list, description="the chunks this passage is made of, best first: overlapping chunks "
        "of a document are merged into one passage, so that no sentence is returned twice")


class AnswerSentence(BaseModel):
    text: str = Field(description="a sentence of a returned passage: document text [char_start:char_end]")
    passage: int = Field(ge=1, description="the rank of the passage it comes from")
    doc_id: str
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0)
    score: float = Field(description="how well it answers the question (rag.search.answer)")


class QueryResponse(BaseModel):
    question: str
    passages: list[Passage]
    took_ms: float = Field(description="time spent answering, in milliseconds")
    mode: str = Field("dense", description="the retrieval mode that answered")
    answerable: bool = Field(True, description="false when the corpus seems to hold no answer")
    confidence: float = Field(1.0, ge=0, le=1, description="calibrated probability that an answer is in the passages")
    answer: list[AnswerSentence] = Field(
        default_factory=list, description="the sentences of the top passages that answer the question, best "
        "first: what an extractive answer says")
