"""What routes take from the request, as `Annotated` dependencies: the engine, the
settings and the live retriever; the question checks the request models cannot make, a
multipart form's file, and the error responses routes declare.

Left out: the caller's identity and rights (one optional API key, checked by
`api.middleware.ApiKey` before any route runs).
"""

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import FormData, UploadFile  # what request.form() gives (FastAPI's is a subclass)

from api.engine.lifecycle import Engine
from api.schemas import ErrorBody
from rag.errors import BadQueryError
from rag.search.retriever import Retriever
from rag.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 408, 413, 414, 422, 431, 503)}


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_retriever(engine: Annotated[Engine, Depends(get_engine)]) -> Retriever:
    return engine.live()


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
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
