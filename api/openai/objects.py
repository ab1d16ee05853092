"""The objects of OpenAI's Files and Vector Stores APIs, as openai-python's types define
them (`types/vector_store.py`, `types/vector_stores/vector_store_file.py`,
`types/vector_store_search_response.py`, `types/file_object.py`, ...), the request
bodies the routes in api/routes/files.py, api/routes/vector_stores.py and
api/routes/vector_store_files.py take, and OpenAI's cursor paging of lists (`page`).

Left out: the fields of objects we never return (file batches, expiry policies).
"""

from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from rag.schema import Citation

T = TypeVar("T")
Attributes = dict[str, str | bool | int | float]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None
    owner: str | None = Field(None, exclude=True, description="the id of the key that uploaded it (never sent)")


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class FileCounts(BaseModel):
    in_progress: int
    completed: int
    failed: int
    cancelled: int = 0
    total: int


class VectorStore(BaseModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"] = "completed"
    last_active_at: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    expires_after: None = None
    expires_at: None = None


class LastError(BaseModel):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class VectorStoreFile(BaseModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    created_at: int
    usage_bytes: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    last_error: LastError | None = None
    attributes: Attributes = Field(default_factory=dict)
    chunking_strategy: None = None


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class SearchResult(BaseModel):
    file_id: str
    filename: str
    score: float
    attributes: Attributes
    content: list[TextContent]
    citation: Citation = Field(description="our addition: the passage's exact citation (offsets, section, pages)")


class SearchPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool = False
    next_page: str | None = None


class ContentPage(BaseModel):
    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[TextContent]
    has_more: bool = False
    next_page: str | None = None


# ------------------------------------------------------------------ requests

class NewStore(BaseModel):
    model_config = ConfigDict(extra="ignore")  # chunking_strategy, expires_after, description: accepted, ignored
    name: str | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: dict[str, str] | None = None


class StoreUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    metadata: dict[str, str] | None = None


class NewStoreFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file_id: str
    attributes: Attributes | None = None


class StoreFileUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    attributes: Attributes | None = None


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ranker: str | None = None
    score_threshold: float | None = Field(None, ge=0, le=1)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: str | list[str]
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False


def page(items: list[T], limit: int, order: str, after: str | None, before: str | None) -> Page[T]:
    """OpenAI's cursor list: by created_at (then id), `after`/`before` an id of the list."""
    key: Callable[[Any], tuple[int, str]] = lambda item: (item.created_at, item.id)  # noqa: E731
    ordered = sorted(items, key=key, reverse=order == "desc")
    ids = [getattr(item, "id", None) for item in ordered]
    start, end = 0, len(ordered)
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ordered)
    if before is not None:
        end = ids.index(before) if before in ids else 0
        start = max(start, end - limit)
    data = ordered[start:end][:limit]
    has_more = (start + len(data) < end) if before is None else start > 0
    return Page[T](data=data, first_id=getattr(data[0], "id", None) if data else None,
                   last_id=getattr(data[-1], "id", None) if data else None, has_more=has_more)
