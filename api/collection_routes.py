"""Collections and their documents over HTTP: a live knowledge base (rag.collections).

Writes run on the engine's writer thread (they embed), never on the event loop, and need
the API key when one is set; `RAG_READ_ONLY=1` turns them all off (403). A write returns
after it is durable and visible to the next query.

Left out (for now): file uploads (multipart, PDFs), asynchronous writes of large files
(202 and a status to poll), and the OpenAI Vector Stores API.
"""

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api.routes import ERRORS, EngineDep
from rag.collections import DEFAULT, Collections, Written, check_name, text_document
from rag.errors import ConflictError

router = APIRouter(tags=["collections"])


class NewCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-63 lowercase letters, digits, '_' or '-'", examples=["my-notes"])


class CollectionInfo(BaseModel):
    name: str
    documents: int
    chunks: int
    writable: bool = Field(description="false for `default`, the built corpus (written by `rag build`)")


class NewDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the document's text (plain text or Markdown)")
    doc_id: str | None = Field(None, description="default: a hash of the text")
    title: str | None = None
    metadata: dict[str, Any] | None = Field(None, description="source, author, date, url, and any other keys")


class DocumentText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    title: str | None = None
    metadata: dict[str, Any] | None = None


class WriteResult(BaseModel):
    doc_id: str
    status: str = Field(description="created, replaced or unchanged")
    chunks: int
    embedded: int = Field(description="chunks embedded by this write; 0 when the content was already there")


class DocumentInfo(BaseModel):
    doc_id: str
    title: str
    chunks: int


def _info(engine: EngineDep, name: str) -> CollectionInfo:
    store = engine.retriever_of(name).store
    return CollectionInfo(name=name, documents=len(store.documents), chunks=store.count(), writable=name != DEFAULT)


def _result(written: Written) -> WriteResult:
    return WriteResult(doc_id=written.doc_id, status=written.status, chunks=written.chunks, embedded=written.embedded)


@router.get("/collections", responses=ERRORS)
def list_collections(engine: EngineDep) -> list[CollectionInfo]:
    """Every collection, `default` (the built corpus) first."""
    return [_info(engine, name) for name in engine.live_collections().names()]


@router.post("/collections", status_code=201, responses=ERRORS)
async def create_collection(body: NewCollection, engine: EngineDep) -> CollectionInfo:
    check_name(body.name)
    await engine.write(lambda c: c.create(body.name))
    return _info(engine, body.name)


@router.get("/collections/{name}", responses=ERRORS)
def get_collection(name: str, engine: EngineDep) -> CollectionInfo:
    return _info(engine, check_name(name))


@router.delete("/collections/{name}", status_code=204, responses=ERRORS)
async def delete_collection(name: str, engine: EngineDep) -> Response:
    await engine.write(lambda c: c.delete(check_name(name)))
    return Response(status_code=204)


@router.get("/collections/{name}/documents", responses=ERRORS)
def list_documents(name: str, engine: EngineDep) -> list[DocumentInfo]:
    store = engine.retriever_of(check_name(name)).store
    return [DocumentInfo(doc_id=d.doc_id, title=str(d.metadata.get("title", "")), chunks=store.chunk_count(d.doc_id))
            for d in store.documents.values()]


@router.post("/collections/{name}/documents", responses={**ERRORS, 201: {"model": WriteResult}})
async def add_document(name: str, body: NewDocument, engine: EngineDep, response: Response) -> WriteResult:
    """Add a document. The same content again is a no-op (`unchanged`, nothing embedded);
    other content under an existing doc_id is a 409 (PUT replaces)."""
    doc = text_document(body.text, body.doc_id, body.title, body.metadata)
    written = await engine.write(lambda c: c.upsert(_writable(name, c), doc, replace=False))
    response.status_code = 201 if written.status == "created" else 200
    return _result(written)


@router.put("/collections/{name}/documents/{doc_id}", responses={**ERRORS, 201: {"model": WriteResult}})
async def replace_document(name: str, doc_id: str, body: DocumentText, engine: EngineDep,
                           response: Response) -> WriteResult:
    """Add or replace a document; only the chunks whose text changed are embedded again."""
    doc = text_document(body.text, doc_id, body.title, body.metadata)
    written = await engine.write(lambda c: c.upsert(_writable(name, c), doc, replace=True))
    response.status_code = 201 if written.status == "created" else 200
    return _result(written)


@router.delete("/collections/{name}/documents/{doc_id}", status_code=204, responses=ERRORS)
async def delete_document(name: str, doc_id: str, engine: EngineDep) -> Response:
    """Once this returns, no response holds a passage of the document."""
    await engine.write(lambda c: c.remove(_writable(name, c), doc_id))
    return Response(status_code=204)


def _writable(name: str, collections: Collections) -> str:
    check_name(name)
    if name == DEFAULT:
        raise ConflictError("the default collection is the built corpus: change the corpus folder and run "
                            "`rag build`, or write to another collection")
    return name
