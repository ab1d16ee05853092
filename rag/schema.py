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


class Passage(BaseModel):
    rank: int = Field(ge=1, description="1-based")
    chunk_id: str = Field(examples=["cfr-china-russia-backgrounder-3f1c0a9b2d4e"])
    text: str
    score: float = Field(description="cosine similarity (dense) or BM25 score (lexical)")
    citation: Citation


class QueryResponse(BaseModel):
    question: str
    passages: list[Passage]
    took_ms: float = Field(description="time spent answering, in milliseconds")
