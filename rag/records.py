"""What a store holds for each document, chunk and sentence, whatever the backend.

These are plain frozen dataclasses: the local store keeps them in SQLite, Milvus in its
collections; both hand them back unchanged, so citations and offsets are the same.

Left out: anything a backend needs only for itself (row codes, sparse vectors).
"""

from dataclasses import dataclass
from typing import Any

from rag.chunk import ChunkSpan


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    metadata: dict[str, Any]
    text: str  # canonical cleaned text: citation offsets point here
    sections: list[dict[str, Any]]  # {"title", "char_start", "char_end"}
    content_hash: str


@dataclass(frozen=True)
class ChunkRecord(ChunkSpan):
    """A stored chunk."""

    embed_hash: str  # sha256 of the embedding input: equal hash, reusable vector


@dataclass(frozen=True)
class SentenceRecord:
    """A sentence of a document, for highlights; its vector is stored beside it."""

    doc_id: str
    char_start: int
    char_end: int
    text_hash: str  # sha256 of the sentence text: equal hash, reusable vector
