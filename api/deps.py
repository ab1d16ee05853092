"""What routes take from the request, as `Annotated` dependencies: the engine, the
settings and the live retriever; the caller (`PrincipalDep`) and what it may do; the
question checks the request models cannot make, a multipart form's file, and the error
responses routes declare.

One rule decides, for every route: each declares its action and collection, through a
dependency here (`ReadName`, `WriteName`, `ManageName` for a `{name}` path, the same for
a `{store_id}`, `AdminDep` for the service's own operations) or, where the collection is
in the body (a query, a chat model), by calling `readable` itself. A collection the key
cannot read is a 404, as a missing one (names do not leak); one it reads but may not
write, a 403. The caller was resolved before any body was read (api.auth.Authenticate).
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import FormData, UploadFile  # what request.form() gives (FastAPI's is a subclass)

from api.auth import scope_principal
from api.engine.lifecycle import Engine
from api.openai.files import stored_files
from api.openai.objects import FileObject
from api.openai.state import collection_of
from api.schemas import ErrorBody
from rag.access.gate import LOCAL, Principal
from rag.collections import DEFAULT
from rag.errors import BadQueryError, ForbiddenError, NotFoundError
from rag.search.retriever import Retriever
from rag.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 408, 413, 414, 422, 429, 431, 503)}


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def principal_of(request: Request) -> Principal:
    # an open path (no key asked) is the only way here without one: it reads nothing private
    return scope_principal(request.scope) or LOCAL


# The dependencies that only read the request's state are `async def`: FastAPI runs a plain
# `def` dependency on a worker thread, and /query's three (engine, settings, principal) were
# three thread hand-offs a request (docs/benchmarks.md#where-a-query-goes-from-its-own-requests).
async def get_engine(request: Request) -> Engine:
    return engine_of(request)


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_principal(request: Request) -> Principal:
    return principal_of(request)


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def readable(principal: Principal, collection: str) -> str:
    """The collection, if the caller may read it; else the 404 of a missing one."""
    if not principal.reads(collection):
        raise NotFoundError(f"no collection named '{collection}'")
    return collection


def writable(principal: Principal, collection: str) -> str:
    readable(principal, collection)
    if not principal.writes(collection):
        raise ForbiddenError(f"key '{principal.name}' ({principal.role}) may read collection '{collection}' "
                             "but not write it")
    return collection


def manageable(principal: Principal, collection: str) -> str:
    """May delete it (or change a vector store's name): an admin's."""
    readable(principal, collection)
    if not principal.manages(collection):
        raise ForbiddenError(f"key '{principal.name}' ({principal.role}) may not create or delete collections")
    return collection


async def read_name(name: str, principal: PrincipalDep) -> str:
    return readable(principal, name)


async def write_name(name: str, principal: PrincipalDep) -> str:
    return writable(principal, name)


async def manage_name(name: str, principal: PrincipalDep) -> str:
    return manageable(principal, name)


def _store(store_id: str, principal: Principal, engine: Engine, allowed: Callable[[Principal, str], object]) -> str:
    """The collection behind an OpenAI vector store id, if the key can read it (else the
    404 of a missing one) and `allowed` passes."""
    name = store_id[3:] if store_id.startswith("vs_") else ""
    if not principal.reads(name):
        raise NotFoundError(f"no vector store with id '{store_id}'")
    allowed(principal, name)
    return collection_of(engine, store_id)


def read_store(store_id: str, principal: PrincipalDep, engine: EngineDep) -> str:
    return _store(store_id, principal, engine, readable)


def write_store(store_id: str, principal: PrincipalDep, engine: EngineDep) -> str:
    return _store(store_id, principal, engine, writable)


def manage_store(store_id: str, principal: PrincipalDep, engine: EngineDep) -> str:
    return _store(store_id, principal, engine, manageable)


def sees_file(principal: Principal, info: FileObject) -> bool:
    """An uploaded file is its uploader's (and every admin's)."""
    return principal.admin or info.owner == principal.id


def readable_file(principal: Principal, settings: Settings, file_id: str) -> FileObject:
    info = stored_files(settings).info(file_id)
    if not sees_file(principal, info):
        raise NotFoundError(f"no file with id '{file_id}'")
    return info


def uploader(principal: Principal) -> None:
    """Uploading and deleting files: a writer's or an admin's."""
    if principal.role not in ("writer", "admin"):
        raise ForbiddenError(f"key '{principal.name}' ({principal.role}) may not upload or delete files")


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.admin:
        raise ForbiddenError(f"key '{principal.name}' ({principal.role}) may not do this: it needs an admin "
                             "key for every collection")
    return principal


def get_retriever(engine: Annotated[Engine, Depends(get_engine)], principal: PrincipalDep) -> Retriever:
    """The built corpus (`default`), for the routes without a collection: its reader's."""
    readable(principal, DEFAULT)
    return engine.live()


ReadStore = Annotated[str, Depends(read_store)]  # the collection's name
WriteStore = Annotated[str, Depends(write_store)]
ManageStore = Annotated[str, Depends(manage_store)]
ReadName = Annotated[str, Depends(read_name)]
WriteName = Annotated[str, Depends(write_name)]
ManageName = Annotated[str, Depends(manage_name)]
AdminDep = Annotated[Principal, Depends(require_admin)]
RetrieverDep = Annotated[Retriever, Depends(get_retriever)]


def check_question(question: str, settings: Settings) -> None:
    """What the request models cannot say: not blank, and within the configured length."""
    if not question.strip():
        raise BadQueryError("question must not be empty")
    if len(question) > settings.max_question_chars:
        raise BadQueryError(f"question is {len(question)} characters; the limit is {settings.max_question_chars}")


WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}}


async def form_file(request: Request, max_fields: int) -> tuple[UploadFile, FormData]:
    """The multipart form's `file` and the whole form; a 422 naming what is wrong."""
    try:
        form = await request.form(max_files=1, max_fields=max_fields)
    except Exception as exc:  # a malformed multipart body (python-multipart raises its own types)
        raise BadQueryError(f"cannot read the multipart form: {exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadQueryError("send the file in a multipart field named 'file'")
    return upload, form
