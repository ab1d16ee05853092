"""The file_search tool: the question searched in each vector store (a collection), as
`POST /v1/vector_stores/{id}/search` searches one (file_id = doc_id, filename, attributes,
score, `filters`, `score_threshold`: api.openai.search, same results in the same
order). Several stores' results are merged: each store's ranking order is kept (in
hybrid mode it is not the order of `score`), the next result taken from the store whose
next one scores highest.

A follow-up is searched with the conversation's earlier user turns, as chat follow-ups
are (rag.search.conversation). The answer is read off one store's response: the store
whose best kept passage scores highest (its answer sentences, rag.search.answer, whose
passages survived the filter and the cut); `Found.answer` is that response rebuilt over
the merged passages, so that api.chat.answers can write the extractive answer from it.

Left out: searching the stores as one ranking (scores of different stores are each
store's cosine, comparable as the model is shared, but their BM25 parts are not), and
`ranking_options.hybrid_search` weights (refused in api.responses.request).
"""

import asyncio
import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.engine.lifecycle import Engine
from api.openai.search import Hit, store_hits
from rag.schema import QueryResponse


@dataclass
class Found:
    hits: list[Hit] = field(default_factory=list)  # in ranking order
    answer: QueryResponse | None = None  # over the hits' passages, in their order

    def files(self) -> dict[str, str]:
        return {hit.file_id: hit.filename for hit in self.hits}


async def search(engine: Engine, collections: Sequence[str], question: str, history: Sequence[str], k: int,
                 filters: dict[str, Any] | None = None, threshold: float | None = None) -> Found:
    """At most `k` passages from the `collections`, merged."""
    per_store = await asyncio.gather(*(store_hits(engine, name, question, k, filters, threshold, history)
                                       for name in collections))
    # each store's own ranking order kept (hybrid: not by score), interleaved by score
    hits = list(itertools.islice(heapq.merge(*(hits for hits, _ in per_store), key=lambda h: -h.score), k))
    if not hits:
        return Found()
    _, lead = max(per_store, key=lambda pair: max((hit.score for hit in pair[0]), default=-1.0))
    return Found(hits, _rebuilt(lead, hits))


def _rebuilt(lead: QueryResponse, hits: list[Hit]) -> QueryResponse:
    """`lead` over the merged hits: passages renumbered, its answer sentences kept where
    their passage was kept (none kept: api.chat.answers falls back to the highlights)."""
    position = {hit.passage.chunk_id: n for n, hit in enumerate(hits, start=1)}
    answer = []
    for sentence in lead.answer:
        chunk_id = lead.passages[sentence.passage - 1].chunk_id
        if chunk_id in position:
            answer.append(sentence.model_copy(update={"passage": position[chunk_id]}))
    passages = [hit.passage.model_copy(update={"rank": n}) for n, hit in enumerate(hits, start=1)]
    return lead.model_copy(update={"passages": passages, "answer": answer})
