"""The FastAPI application: `create_app(settings)` wires the engine, middleware, error
translation and routes. `rag serve` runs it with uvicorn.

Errors: domain errors (`rag.errors`) become JSON `{"detail": "..."}` with a 4xx or 503
status here and only here; request validation errors are rewritten into one readable
sentence; nothing answers with a traceback.
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api.chat_routes import UpstreamError
from api.chat_routes import router as chat_router
from api.engine import Engine, NotReadyError
from api.middleware import AccessLog, ApiKey, BodyGuard
from api.routes import router
from rag import __version__
from rag.embed import Embedder, load_embedder
from rag.errors import (
    BadQueryError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    NotFoundError,
    RagError,
)
from rag.settings import Settings

STATUS_OF: list[tuple[type[RagError], int]] = [
    (BadQueryError, 422),
    (NotFoundError, 404),
    (NotReadyError, 503),
    (IndexMissingError, 503),
    (IndexCorruptError, 503),
    (IndexMismatchError, 503),
    (UpstreamError, 502),
]
OPEN_PATHS = frozenset({"/health", "/"})  # the chat page asks for the key itself


class Metrics:
    """A registry per app, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rag_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("rag_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.index_chunks = Gauge("rag_index_chunks", "chunks in the live index", registry=self.registry)
        self.index_documents = Gauge("rag_index_documents", "documents in the live index",
                                     registry=self.registry)
        self.batch_size = Gauge("rag_last_batch_size", "questions in the latest model batch",
                                registry=self.registry)


def create_app(settings: Settings | None = None,
               embedder_factory: Callable[[str], Embedder] = load_embedder) -> FastAPI:
    settings = settings or Settings()
    engine = Engine(settings, embedder_factory)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(
        title="rag", version=__version__, lifespan=lifespan,
        description="Ranked passages with exact citations over a folder of articles.",
    )
    app.state.settings, app.state.engine, app.state.metrics = settings, engine, metrics
    app.include_router(router)
    app.include_router(chat_router)

    @app.exception_handler(RagError)
    async def domain_error(request: Request, exc: RagError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
        body: dict[str, object] = {"detail": str(exc)}
        if request.url.path.startswith("/v1/"):  # OpenAI clients read error.message
            body["error"] = {"message": str(exc), "type": "invalid_request_error", "code": status}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
        if any(e["loc"] == ("body",) and e["type"] in ("model_attributes_type", "dict_type") for e in errors):
            return JSONResponse({"detail": "request body must be a JSON object"}, status_code=422)
        problems = []
        for e in errors:
            where = ".".join(str(p) for p in e["loc"][1:]) or e["loc"][0]
            problems.append(f"{where}: {e['msg']}" if e["type"] != "missing" else f"{where}: field required")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    # the last added runs first: log -> size limit -> CORS (answers preflights, which carry
    # no key, and labels 401s so browsers can read them) -> API key -> routes
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(ApiKey, key=key, open_paths=OPEN_PATHS)
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                       allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, requests=metrics.requests, latency=metrics.latency)
    return app


def serve(settings: Settings) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                access_log=False, log_level="info")
