"""One vector store searched as OpenAI's API reports it: passages of the collection, best
first, each with its file (file_id = doc_id, filename, attributes), a `score` in [0, 1],
filtered on attributes and cut at `score_threshold`. `POST /v1/vector_stores/{id}/search`
and the Responses API's file_search tool both read it.

Left out: searching several stores as one ranking (api.responses.search merges them).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from api.engine.lifecycle import Engine
from api.openai.filters import matches
from rag.records import DocumentRecord
from rag.schema import Passage, QueryResponse
from rag.types import Filters


@dataclass(frozen=True)
class Hit:
    passage: Passage
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]

    def result(self) -> dict[str, Any]:
        """OpenAI's `file_search_call.results[]` entry."""
        return {"file_id": self.file_id, "filename": self.filename, "score": self.score,
                "text": self.passage.text, "attributes": self.attributes}


async def store_hits(engine: Engine, name: str, question: str, k: int, filters: dict[str, Any] | None,
                     threshold: float | None, history: Sequence[str] = ()) -> tuple[list[Hit], QueryResponse]:
    """The best `k` hits of collection `name` (at most its max_k), and the response they came from."""
    retriever = engine.retriever_of(name)
    wanted = min(k, retriever.max_k)
    depth = retriever.max_k if filters is not None else wanted  # filtered after: search deeper
    response = await engine.query(question, depth, Filters(), None, history=history, collection=name)
    documents: dict[str, DocumentRecord | None] = {}
    hits: list[Hit] = []
    for passage in response.passages:
        if len(hits) == wanted:
            break
        score = similarity(passage.score, passage.scores)
        if threshold is not None and score < threshold:
            continue
        doc_id = passage.citation.doc_id
        if doc_id not in documents:
            documents[doc_id] = retriever.store.documents.get(doc_id)
        doc = documents[doc_id]
        metadata = doc.metadata if doc is not None else {}
        attributes = metadata.get("attributes") or {}
        if filters is not None and (doc is None or not matches(filters, attributes)):
            continue
        filename = (metadata.get("openai_file") or {}).get("filename") or passage.citation.source or doc_id
        hits.append(Hit(passage, doc_id, filename, score, attributes))
    return hits, response


def similarity(ranked_by: float, scores: Mapping[str, float]) -> float:
    """OpenAI's `score` is a similarity in [0, 1]: the passage's cosine where the mode
    computed one (dense, hybrid), else what the ranking used (BM25 in lexical mode)."""
    dense = scores.get("dense")
    return min(1.0, max(0.0, dense)) if dense is not None else ranked_by
