"""The documents and chunks that citations point into: GET /documents, /documents/{id},
/chunks/{id}."""

from fastapi import APIRouter

from api.deps import ERRORS, RetrieverDep
from api.schemas import (
    ChunkDetail,
    DocumentDetail,
    DocumentList,
    DocumentSummary,
    summary,
)
from rag.errors import NotFoundError

router = APIRouter()


@router.get("/documents", responses=ERRORS, tags=["documents"])
def documents(retriever: RetrieverDep) -> DocumentList:
    """Every document with its metadata and chunk count."""
    docs = retriever.store.documents.values()
    return DocumentList(documents=[DocumentSummary.model_validate(summary(retriever, d)) for d in docs])


@router.get("/documents/{doc_id}", responses=ERRORS, tags=["documents"])
def document(doc_id: str, retriever: RetrieverDep) -> DocumentDetail:
    """Metadata plus the cleaned text that citation offsets point into."""
    doc = retriever.store.documents.get(doc_id)
    if doc is None:
        raise NotFoundError(f"no document with doc_id '{doc_id}'")
    return DocumentDetail.model_validate(
        {**summary(retriever, doc), "metadata": doc.metadata, "sections": doc.sections, "text": doc.text})


@router.get("/chunks/{chunk_id}", responses=ERRORS, tags=["documents"])
def chunk(chunk_id: str, retriever: RetrieverDep) -> ChunkDetail:
    """One chunk with its citation."""
    row = retriever.store.row_of(chunk_id)
    if row is None:
        raise NotFoundError(f"no chunk with chunk_id '{chunk_id}'")
    record = retriever.store.chunks[row]
    return ChunkDetail(chunk_id=chunk_id, text=record.text, n_tokens=record.n_tokens,
                       citation=retriever.citation(row))
