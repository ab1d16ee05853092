"""What the MCP tools take and give (api.mcp.tools), as pydantic models: the SDK derives
each tool's input and output JSON schemas from them, and sends a result both as
`structuredContent` and as its JSON text.

`search` and `fetch` give the shapes ChatGPT connectors and deep research read:
`{"results": [{"id", "title", "url", "text"}]}` and `{"id", "title", "text", "url",
"metadata"}`. A passage's `id` is `<collection>:<chunk_id>`: a chunk id hashes its
document's id and text (rag.ingest.chunk), so it survives restarts and rebuilds of
unchanged text, and an edited passage's old id is a clear "not found" rather than other
text.

Left out: highlights and answer sentences (POST /query has them).
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rag.collections import check_name
from rag.errors import BadQueryError
from rag.schema import Citation


def passage_id(collection: str, chunk_id: str) -> str:
    return f"{collection}:{chunk_id}"


def parse_id(passage: str) -> tuple[str, str]:
    """(collection, chunk_id) of an id that `search` gave; BadQueryError for any other."""
    collection, sep, chunk_id = passage.partition(":")
    if not sep or not chunk_id:
        raise BadQueryError(f"'{passage[:200]}' is not a passage id: use an id that search returned "
                            "(<collection>:<chunk_id>)")
    return check_name(collection), chunk_id


def title_of(citation: Citation) -> str:
    """The document's title and the passage's section: passages of one document differ."""
    return f"{citation.title} — {citation.section}" if citation.section else citation.title


class Result(BaseModel):
    id: str = Field(description="the passage's id, for fetch: <collection>:<chunk_id>")
    title: str = Field(description="the document's title — the passage's section")
    url: str | None = Field(description="the document's own URL, else the passage on this service")
    text: str = Field(description="the passage")


class SearchResults(BaseModel):
    results: list[Result]


class Fetched(BaseModel):
    id: str
    title: str
    text: str = Field(description="the passage's section (at most ~12,000 characters around the passage)")
    url: str | None
    metadata: dict[str, Any] = Field(description="collection, chunk_id, citation (doc_id, title, source, url, "
                                     "section, char_start, char_end, page_start, page_end), text_start, text_end")


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_ids: list[str] | None = Field(None, description="only these documents")
    sources: list[str] | None = Field(None, description="only documents of these sources")
    sections: list[str] | None = Field(None, description="only passages of these sections")


class Found(BaseModel):
    id: str = Field(description="for fetch: <collection>:<chunk_id>")
    rank: int
    score: float = Field(description="what the ranking used: cosine (dense), BM25 (lexical), fused (hybrid)")
    text: str
    url: str | None
    citation: Citation = Field(description="the passage's exact place: doc_id, section, char_start, char_end "
                               "(offsets into the document's text), pages for PDFs")


class CollectionResults(BaseModel):
    collection: str
    query: str
    answerable: bool = Field(description="false when the collection seems to hold no answer")
    confidence: float
    passages: list[Found]


class CollectionInfo(BaseModel):
    name: str
    description: str
    documents: int | None = Field(description="null when it cannot be opened now (no index built yet, say)")
    chunks: int | None


class CollectionList(BaseModel):
    collections: list[CollectionInfo]
