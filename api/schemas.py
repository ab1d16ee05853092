"""Request and response models of the HTTP API (the query response itself is
`rag.schema.QueryResponse`, shared with `rag query --json`)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rag.records import DocumentRecord
from rag.schema import Citation
from rag.search.retriever import Retriever
from rag.types import Mode

EXAMPLE_QUESTION = "What was the value of trade between China and Russia in 2024?"


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"question": EXAMPLE_QUESTION, "k": 5, "doc_ids": None}]})

    question: str = Field(description="the question; at most RAG_MAX_QUESTION_CHARS characters")
    k: int = Field(5, ge=1, le=50, description="passages to return")
    doc_ids: list[str] | None = Field(None, description="only search these documents")
    sources: list[str] | None = Field(None, description="only documents with these `source` values")
    sections: list[str] | None = Field(None, description="only chunks of these sections")
    mode: Mode | None = Field(None, description="dense (embeddings), lexical (BM25) or hybrid (both, fused); "
                              "default RAG_DEFAULT_MODE")
    max_per_doc: int | None = Field(None, ge=1, description="at most this many passages per document")
    collection: str = Field("default", description="the collection to search: `default` (the built corpus) or "
                            "one made with POST /collections")
    history: list[str] | None = Field(None, description="earlier user turns of the conversation, oldest first: a "
                                      "follow-up ('And in 2023?') is searched with them; beyond "
                                      "RAG_MAX_HISTORY_TURNS / RAG_MAX_HISTORY_CHARS the oldest are dropped")


class DocumentSummary(BaseModel):
    doc_id: str
    title: str
    source: str
    author: str | None
    date: str | None
    url: str | None
    n_chunks: int
    n_chars: int = Field(description="length of the cleaned text")


class DocumentList(BaseModel):
    documents: list[DocumentSummary]


class SectionSpan(BaseModel):
    title: str | None
    char_start: int
    char_end: int


class DocumentDetail(DocumentSummary):
    metadata: dict[str, Any] = Field(description="every metadata field, as ingested")
    sections: list[SectionSpan]
    text: str = Field(description="the cleaned text that citation offsets point into")


class ChunkDetail(BaseModel):
    chunk_id: str
    text: str
    n_tokens: int = Field(description="cl100k tokens")
    citation: Citation


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ModelInUse(BaseModel):
    model: str
    backend: str
    loaded_mb: float | None = Field(None, description="what the process grew by when it was loaded (MB); null for "
                                    "the configured model, loaded at start")


class Reembedding(BaseModel):
    collection: str
    model: str = Field(description="the model it moves to")
    backend: str
    state: str
    done: int = Field(description="documents done")
    total: int | None
    rate: float | None = Field(None, description="documents a second")
    seconds_left: float | None = None


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    build_id: str
    model: str
    documents: int
    chunks: int
    reload_error: str | None = Field(None, description="why the newest build was not loaded, if it was not")
    models: list[ModelInUse] = Field(default_factory=list, description="the embedding models held: more than one "
                                     "while a collection uses another (a re-embed under way, or not yet run)")
    rss_mb: float | None = Field(None, description="the process's resident memory, MB")
    reembeds: list[Reembedding] = Field(default_factory=list, description="re-embeds under way (`rag reembed`), "
                                        "of collections the key can read")


class Reloaded(BaseModel):
    reloaded: bool = Field(description="false when the live build was already being served")
    build_id: str


class ErrorBody(BaseModel):
    detail: str = Field(examples=["question must not be empty"])


def summary(retriever: Retriever, doc: DocumentRecord) -> dict[str, object]:
    meta = doc.metadata
    return {"doc_id": doc.doc_id, "title": meta["title"], "source": meta["source"],
            "author": meta.get("author"), "date": meta.get("date"), "url": meta.get("url"),
            "n_chunks": retriever.chunk_count(doc.doc_id), "n_chars": len(doc.text)}
