"""What a store holds for each document, chunk and sentence, whatever the backend.

A chunk's span (`ChunkSpan`) and a span's PDF pages (`page_span`) live here too, so that
stores and search need not import the chunker or the PDF reader.

These are plain frozen dataclasses: the local store keeps them in SQLite, Milvus in its
collections; both hand them back unchanged, so citations and offsets are the same.

Left out: anything a backend needs only for itself (row codes, sparse vectors).
"""

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChunkSpan:
    """What every chunk is, in memory or stored: a cited span of a document."""

    chunk_id: str
    doc_id: str
    section: str | None
    char_start: int
    char_end: int
    text: str  # == the document's canonical text[char_start:char_end]
    n_tokens: int  # cl100k tokens of `text`
    n_model_tokens: int  # model tokens of the embedding input, special tokens included


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



def page_span(pages: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int]:
    """1-based (first, last) page that text[char_start:char_end] touches. A span that touches
    no page (inside a separator, or empty) gives the page before it, twice."""
    if not pages or char_start < 0 or char_end < char_start:
        raise ValueError(f"bad span {char_start}:{char_end} over {len(pages)} pages")
    first = bisect_right([end for _, end in pages], char_start)  # pages ending at or before start
    last = bisect_left([start for start, _ in pages], char_end)  # pages starting before end
    first, last = min(first + 1, len(pages)), max(last, 1)
    return (first, last) if first <= last else (last, last)
