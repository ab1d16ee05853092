"""What the MCP tools read, written once for both transports: a `Knowledge` gives the
caller, the collections, a retriever per collection and a way to ask it; the functions
here (`search_readable`, `search_one`, `fetch`, `listed`) are the tools' whole logic.

`Knowledge` is implemented twice: over the HTTP service's engine (api.mcp.server: queries
batched with every other request's, the caller from its key) and over the index folder
read directly (api.mcp.stdio: `rag mcp`, the local user). Access is decided here, with the
rule every route uses (api.deps.readable): a collection the caller cannot read is "not
found", and is neither listed nor searched.

`search` covers every collection the caller can read, `default` (the built corpus) first,
at most MAX_SEARCHED of them: each is asked for its best SEARCH_K passages, and the lists
are merged into SEARCH_K: each collection's own order is kept, and between collections
the passage more similar to the query goes first (its cosine similarity, as vector store
search reports it: comparable across collections, which share the model, where a fused
hybrid score is min-max normalised within each one, so every collection's best passage
would score ~1). A collection that cannot answer (no index built yet) is skipped, unless
none can.

Left out: a collection's own ranking mode or max_per_doc per call; searching more than
MAX_SEARCHED collections at once (search_collection reaches any of them).
"""

import asyncio
import logging
from contextlib import nullcontext
from typing import Protocol

from api.deps import check_question, readable
from api.mcp.shapes import (
    CollectionInfo,
    CollectionList,
    CollectionResults,
    Fetched,
    Found,
    Result,
    SearchFilters,
    SearchResults,
    parse_id,
    passage_id,
    title_of,
)
from api.openai.search import similarity
from rag.access.gate import Principal
from rag.collections import DEFAULT
from rag.errors import NotFoundError, RagError
from rag.records import ChunkRecord, DocumentRecord
from rag.schema import Passage, QueryResponse
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.stores.base import ChunkStore
from rag.types import Filters

log = logging.getLogger("rag.mcp")
SEARCH_K = 8  # passages `search` returns
MAX_SEARCHED = 8  # collections one `search` covers
FETCH_CHARS = 12_000  # the most of a section `fetch` returns, around the passage


class Knowledge(Protocol):
    principal: Principal
    settings: Settings

    def names(self) -> list[str]:
        """Every collection, `default` first, whoever may read it."""
        ...

    async def retriever(self, collection: str) -> Retriever: ...

    async def query(self, collection: str, question: str, k: int, filters: Filters) -> QueryResponse: ...

    def link(self, collection: str, doc_id: str, start: int, end: int) -> str | None:
        """The passage on this service, where there is one to open."""
        ...


def _url(kb: Knowledge, collection: str, passage: Passage) -> str | None:
    c = passage.citation
    return c.url or kb.link(collection, c.doc_id, c.char_start, c.char_end)


def readable_names(kb: Knowledge) -> list[str]:
    return [name for name in kb.names() if kb.principal.reads(name)]


async def search_readable(kb: Knowledge, query: str) -> SearchResults:
    check_question(query, kb.settings)
    names = readable_names(kb)[:MAX_SEARCHED]
    if not names:
        raise NotFoundError("this key can read no collection")
    answers = await asyncio.gather(*(kb.query(n, query, SEARCH_K, Filters()) for n in names),
                                   return_exceptions=True)
    ranked: list[tuple[str, list[Passage]]] = []
    failed: list[RagError] = []
    for name, answer in zip(names, answers):
        if isinstance(answer, RagError):
            log.info("search skipped collection %s: %s", name, answer)
            failed.append(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            ranked.append((name, list(answer.passages)))
    if failed and len(failed) == len(names):
        raise failed[0]
    return SearchResults(results=[Result(id=passage_id(name, p.chunk_id), title=title_of(p.citation),
                                         url=_url(kb, name, p), text=p.text)
                                  for name, p in merged(ranked, SEARCH_K)])


def merged(ranked: list[tuple[str, list[Passage]]], k: int) -> list[tuple[str, Passage]]:
    """The first k of the collections' rankings merged: each one's order kept, the more
    similar head first (a tie: the collection listed first)."""
    heads = [(name, list(passages)) for name, passages in ranked]
    out: list[tuple[str, Passage]] = []
    while len(out) < k and (waiting := [h for h in heads if h[1]]):
        name, passages = max(waiting, key=lambda h: similarity(h[1][0].score, h[1][0].scores))
        out.append((name, passages.pop(0)))
    return out


async def search_one(kb: Knowledge, collection: str, query: str, k: int,
                     filters: SearchFilters | None) -> CollectionResults:
    readable(kb.principal, collection)
    check_question(query, kb.settings)
    given = filters or SearchFilters()
    response = await kb.query(collection, query, k, Filters(doc_ids=given.doc_ids, sources=given.sources,
                                                            sections=given.sections))
    return CollectionResults(
        collection=collection, query=query, answerable=response.answerable, confidence=response.confidence,
        passages=[Found(id=passage_id(collection, p.chunk_id), rank=p.rank, score=p.score, text=p.text,
                        url=_url(kb, collection, p), citation=p.citation) for p in response.passages])


async def fetch(kb: Knowledge, passage: str) -> Fetched:
    collection, chunk_id = parse_id(passage)
    readable(kb.principal, collection)
    retriever = await kb.retriever(collection)
    store = retriever.store

    def read() -> Fetched:
        with getattr(store, "lock", nullcontext()):  # a live collection: not halfway through a write
            row = store.row_of(chunk_id)
            chunk = store.chunks[row] if row is not None else None
            doc = store.documents.get(chunk.doc_id) if chunk is not None else None
            if row is None or chunk is None or doc is None:
                raise NotFoundError(f"no passage with id '{passage[:200]}' (a document changed since the search "
                                    "gave it? search again)")
            citation = retriever.citation(row)
        start, end = around(doc, chunk)
        url = citation.url or kb.link(collection, chunk.doc_id, chunk.char_start, chunk.char_end)
        return Fetched(id=passage, title=title_of(citation), text=doc.text[start:end], url=url, metadata={
            "collection": collection, "chunk_id": chunk_id, "citation": citation.model_dump(),
            "text_start": start, "text_end": end})

    return await asyncio.to_thread(read)


def around(doc: DocumentRecord, chunk: ChunkRecord, limit: int = FETCH_CHARS) -> tuple[int, int]:
    """The span of the chunk's section (chunks never cross one), cut to `limit` characters
    centred on the chunk when longer; never less than the chunk."""
    start, end = chunk.char_start, chunk.char_end
    for section in doc.sections:
        if section["char_start"] <= start and end <= section["char_end"]:
            start, end = section["char_start"], section["char_end"]
            break
    if end - start > limit:
        spare = max(0, limit - (chunk.char_end - chunk.char_start))
        start = max(start, min(chunk.char_start - spare // 2, end - limit))
        end = max(chunk.char_end, min(end, start + limit))
    return start, end


async def listed(kb: Knowledge) -> CollectionList:
    infos = []
    for name in readable_names(kb):
        documents = chunks = None
        try:
            documents, chunks = await asyncio.to_thread(_counts, (await kb.retriever(name)).store)
        except RagError as exc:
            log.info("collection %s not counted: %s", name, exc)
        infos.append(CollectionInfo(name=name, documents=documents, chunks=chunks, description=(
            "the built corpus (rag build)" if name == DEFAULT else "a live collection")))
    return CollectionList(collections=infos)


def _counts(store: ChunkStore) -> tuple[int, int]:
    return len(store.documents), store.count()

