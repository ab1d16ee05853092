"""Collections and their documents over HTTP: a live knowledge base (rag.collections).

Writes run on the engine's writer thread (they embed), never on the event loop, and need
the API key when one is set; `RAG_READ_ONLY=1` turns them all off (403). A write returns
after it is durable and visible to the next query.

Documents come as JSON or as a multipart file (.txt, .md, .html, .pdf: rag.ingest.uploads); a
body over RAG_MAX_UPLOAD_BYTES is refused (413) before more is read.

The same collections, in whichever store the service uses (local or Milvus), are OpenAI
vector stores in api/routes/vector_stores.py.

Left out: renaming a collection.
"""

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import ERRORS, AdminDep, EngineDep, ManageName, PrincipalDep, ReadName, WriteName, form_file
from api.engine import spool
from api.engine.spool import Spooled
from api.engine.writes import finish_anyway, writes_allowed
from api.schemas import DocumentDetail, ErrorBody, summary
from rag.access.gate import Principal
from rag.collections import DEFAULT, Collections, Written, check_name, text_document
from rag.errors import BadQueryError, ConflictError, NotFoundError
from rag.ingest.corpus import SourceDocument
from rag.ingest.sandbox import ParseLimits, parse_limits
from rag.ingest.uploads import uploaded_document

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
    doc_id: str | None = Field(None, description="the path's doc_id, if sent (as in POST's body); another is a 422")
    title: str | None = None
    metadata: dict[str, Any] | None = None


class WriteResult(BaseModel):
    doc_id: str
    status: str = Field(description="created, replaced or unchanged")
    chunks: int
    embedded: int = Field(description="chunks embedded by this write; 0 when the content was already there")
    job: str | None = Field(None, description="a big write (202): its job, GET /jobs/{id}")


class DocumentStatus(BaseModel):
    doc_id: str
    status: str = Field(description="completed, in_progress or failed")
    chunks: int
    error: str | None = Field(None, description="why a write failed")


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
def list_collections(engine: EngineDep, principal: PrincipalDep) -> list[CollectionInfo]:
    """Every collection the key can read, `default` (the built corpus) first."""
    return [_info(engine, name) for name in engine.live_collections().names() if principal.reads(name)]


@router.post("/collections", status_code=201, responses=ERRORS)
async def create_collection(body: NewCollection, engine: EngineDep, admin: AdminDep) -> CollectionInfo:
    check_name(body.name)
    await engine.write(lambda c: c.create(body.name))
    return _info(engine, body.name)


@router.get("/collections/{name}", responses=ERRORS)
def get_collection(name: ReadName, engine: EngineDep) -> CollectionInfo:
    return _info(engine, check_name(name))


@router.delete("/collections/{name}", status_code=204, responses=ERRORS)
async def delete_collection(name: ManageName, engine: EngineDep) -> Response:
    await engine.write(lambda c: c.delete(check_name(name)))
    return Response(status_code=204)


@router.get("/collections/{name}/documents", responses=ERRORS)
def list_documents(name: ReadName, engine: EngineDep) -> list[DocumentInfo]:
    store = engine.retriever_of(check_name(name)).store
    return [DocumentInfo(doc_id=d.doc_id, title=str(d.metadata.get("title", "")), chunks=store.chunk_count(d.doc_id))
            for d in store.documents.values()]


UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": NewDocument.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": ".txt, .md, .html or .pdf"},
        "doc_id": {"type": "string"}}}}}}}


@router.post("/collections/{name}/documents", openapi_extra=UPLOAD_BODY,
             responses={**ERRORS, 201: {"model": WriteResult}, 202: {"model": WriteResult},
                        413: {"model": ErrorBody}, 415: {"model": ErrorBody}})
async def add_document(name: WriteName, request: Request, engine: EngineDep, response: Response,
                       principal: PrincipalDep) -> WriteResult:
    """Add a document: JSON `{text, doc_id?, title?, metadata?}`, or a file as multipart
    (`file`: .txt, .md, .html, .pdf; `doc_id` optional). The same content again is a no-op
    (`unchanged`, nothing embedded); other content under an existing doc_id is a 409 (PUT
    replaces). PDF passages cite their pages."""
    clean = True
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        doc, is_pdf = await _upload(request, parse_limits(engine.settings))
        clean = not is_pdf
    else:
        try:
            body = NewDocument.model_validate_json(await request.body())
        except ValidationError as exc:  # the body is read by hand (JSON or a file): say what is wrong, as FastAPI would
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "body"
            raise BadQueryError(f"{where}: {first.get('msg', 'invalid')}") from None
        doc = text_document(body.text, body.doc_id, body.title, body.metadata)
    return await _write(engine, name, doc, response, principal, replace=False, clean=clean)


async def _write(engine: EngineDep, name: str, doc: SourceDocument, response: Response, principal: Principal,
                 replace: bool, clean: bool = True) -> WriteResult:
    """Small documents: written before the response (201 or 200). Big ones: 202 at once, the
    write queued; GET …/documents/{doc_id} says when it completed or why it failed."""
    _writable(name, engine.live_collections())
    kb = engine.live_collections().get(name)  # an unknown collection is a 404 now, not a failed write later
    if len(doc.text) > engine.settings.sync_write_chars:
        existing = kb.documents.get(doc.doc_id)
        if not replace and existing is not None and existing.content_hash != doc.content_hash:
            raise ConflictError(f"document '{doc.doc_id}' exists with other content: PUT replaces it")
        queued = engine.pending.get((name, doc.doc_id))
        if (not replace and queued is not None and queued["status"] == "in_progress"
                and queued.get("content_hash") != doc.content_hash):
            raise ConflictError(f"document '{doc.doc_id}' is being written with other content: PUT replaces it")
        # on disk (fsynced) before it is acknowledged: a restart resumes it; once saved, it is
        # acknowledged even if this request's deadline passed meanwhile (it will land)
        job = await finish_anyway(asyncio.get_running_loop().run_in_executor(
            None, lambda: engine.write_spooled(Spooled(name, doc, replace=replace, clean=clean),
                                               owner=(principal.name, principal.id))))
        response.status_code = 202
        return WriteResult(doc_id=doc.doc_id, status="in_progress", chunks=0, embedded=0, job=job.id)
    written = await engine.write(lambda c: c.upsert(name, doc, replace=replace, clean=clean))
    engine.pending.forget((name, doc.doc_id))  # an earlier big write's "failed" no longer speaks for it
    response.status_code = 201 if written.status == "created" else 200
    return _result(written)


@router.get("/collections/{name}/documents/{doc_id}", responses=ERRORS)
def document_status(name: ReadName, doc_id: str, engine: EngineDep) -> DocumentStatus:
    """A document's state: completed (with its chunks), or in_progress / failed (with the
    reason) for a big write answered with 202."""
    store = engine.retriever_of(check_name(name)).store
    # this process's record, else the spool's (another process's write, or one from before a restart)
    pending = engine.pending.get((name, doc_id)) or spool.state(engine.live_collections().root / name, doc_id)
    if pending is not None and pending["status"] != "completed":
        return DocumentStatus(doc_id=doc_id, status=str(pending["status"]), chunks=0, error=pending["error"])
    if doc_id not in store.documents:
        raise NotFoundError(f"no document '{doc_id}' in collection '{name}'")
    return DocumentStatus(doc_id=doc_id, status="completed", chunks=store.chunk_count(doc_id), error=None)


@router.get("/collections/{name}/documents/{doc_id}/text", responses=ERRORS)
def document_text(name: ReadName, doc_id: str, engine: EngineDep) -> DocumentDetail:
    """Metadata plus the text that the collection's citation offsets point into."""
    store = engine.retriever_of(check_name(name)).store
    doc = store.documents.get(doc_id)
    if doc is None:
        raise NotFoundError(f"no document '{doc_id}' in collection '{name}'")
    return DocumentDetail.model_validate({**summary(engine.retriever_of(name), doc), "metadata": doc.metadata,
                                          "sections": doc.sections, "text": doc.text})


async def _upload(request: Request, limits: ParseLimits) -> tuple[SourceDocument, bool]:
    upload, form = await form_file(request, max_fields=4)
    doc_id = form.get("doc_id")
    if doc_id is not None and not isinstance(doc_id, str):
        raise BadQueryError("doc_id must be a text field")
    data = await upload.read()
    # parsing runs in a worker process (rag.ingest.sandbox); waiting for it is not the event loop's
    return await asyncio.get_running_loop().run_in_executor(
        None, uploaded_document, upload.filename or "upload", data, doc_id or None, limits)


@router.put("/collections/{name}/documents/{doc_id}", responses={**ERRORS, 201: {"model": WriteResult}})
async def replace_document(name: WriteName, doc_id: str, body: DocumentText, engine: EngineDep,
                           response: Response, principal: PrincipalDep) -> WriteResult:
    """Add or replace a document; only the chunks whose text changed are embedded again. The
    body may repeat the path's doc_id (a POST body sent again); another doc_id is a 422."""
    if body.doc_id is not None and body.doc_id != doc_id:
        raise BadQueryError(f"doc_id: the body's {body.doc_id!r} is not the path's {doc_id!r} "
                            "(leave it out, or send the same)")
    doc = text_document(body.text, doc_id, body.title, body.metadata)
    return await _write(engine, name, doc, response, principal, replace=True)


@router.delete("/collections/{name}/documents/{doc_id}", status_code=204, responses=ERRORS)
async def delete_document(name: WriteName, doc_id: str, engine: EngineDep) -> Response:
    """Once this returns, no response holds a passage of the document (a big write of it
    still queued is finished first: writes run one after the other)."""
    writes_allowed(engine.settings)  # read-only: 403 before anything else is asked
    folder = engine.live_collections().root / check_name(name)
    failed_on_disk = spool.state(folder, doc_id) is not None
    try:
        await engine.write(lambda c: c.remove(_writable(name, c), doc_id))
    except NotFoundError:
        # a big write that failed leaves only its status
        if engine.pending.forget((name, doc_id)) is None and not failed_on_disk:
            raise
    else:
        engine.pending.forget((name, doc_id))  # its status goes with it
    spool.forget(folder, doc_id)
    return Response(status_code=204)


def _writable(name: str, collections: Collections) -> str:
    check_name(name)
    if name == DEFAULT:
        raise ConflictError("the default collection is the built corpus: change the corpus folder and run "
                            "`rag build`, or write to another collection")
    return name
