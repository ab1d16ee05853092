"""The FastAPI application: `create_app(settings)` wires the engine, middleware, error
translation and routes. `rag serve` runs it with uvicorn.

Errors: domain errors (`rag.errors`) become JSON `{"detail": "..."}` with a 4xx or 503
status here and only here; request validation errors are rewritten into one readable
sentence; nothing answers with a traceback.
"""

import asyncio
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from api.audit import Audit
from api.auth import Authenticate
from api.engine.handlers import register_handlers
from api.engine.lifecycle import Engine
from api.errors import error_bytes, retry_after, status_of
from api.guards import CrossSiteGuard, HostGuard, RequestGuard
from api.idempotency import Idempotency
from api.mcp.server import mount_mcp
from api.metrics import Metrics
from api.middleware import AccessLog, Deadline, InFlight, JsonCors
from api.openai.files import stored_files
from api.protocols import protocol_class
from api.routes.admin import router as admin_router
from api.routes.chat import router as chat_router
from api.routes.collections import router as collection_router
from api.routes.documents import router as documents_router
from api.routes.embeddings import router as embeddings_router
from api.routes.files import router as openai_files_router
from api.routes.jobs import router as jobs_router
from api.routes.page import router as page_router
from api.routes.portable import router as portable_router
from api.routes.query import router as query_router
from api.routes.responses import router as responses_router
from api.routes.service import router as service_router
from api.routes.vector_store_files import router as openai_store_files_router
from api.routes.vector_stores import router as openai_stores_router
from rag import __version__
from rag.access.audit import AuditLog
from rag.access.gate import Gate
from rag.access.keys import KeyStore
from rag.encoders.base import Embedder
from rag.errors import RagError, SettingsError
from rag.settings import Settings

if TYPE_CHECKING:
    import uvicorn

OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})  # the chat page (it asks for the key) and its icon
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"]
log = logging.getLogger("rag.api")


def json_error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_bytes(request.url.path, status, message), status_code=status,
                    media_type="application/json", headers=headers)


def methods_of(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path, sorted (asked of the router
    method by method: included routers keep their routes to themselves)."""
    return [method for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
            if any(isinstance(route, BaseRoute) and route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in app.router.routes)]


def allowed_hosts(settings: Settings) -> list[str]:
    """RAG_ALLOWED_HOSTS, else the loopback names when bound to loopback, else any host."""
    if settings.allowed_hosts:
        return settings.allowed_hosts
    return LOOPBACK_NAMES if on_loopback(settings) else ["*"]


def on_loopback(settings: Settings) -> bool:
    try:
        return settings.host == "localhost" or ipaddress.ip_address(settings.host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Safe by default: a service others can reach needs a key, unless RAG_ALLOW_OPEN says
    that an open one is meant (behind a proxy that authenticates, say)."""
    if not on_loopback(settings) and settings.api_key is None and not settings.allow_open:
        raise SettingsError(f"RAG_HOST={settings.host} serves other machines, and no RAG_API_KEY is set: set one, "
                            "or RAG_ALLOW_OPEN=1 if an open service is meant")


def create_app(settings: Settings | None = None,
               embedder_factory: Callable[[str], Embedder] | None = None) -> FastAPI:
    settings = settings or Settings()
    register_handlers()  # the job kinds this service runs and resumes (api.engine.jobs)
    engine = Engine(settings, embedder_factory)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # what crashed uploads and deletes of stored files left; the engine cleans the index's own
        await asyncio.get_running_loop().run_in_executor(None, stored_files(settings).clean_orphans)
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(
        title="rag", version=__version__, lifespan=lifespan,
        description="Ranked passages with exact citations over a folder of articles.",
    )
    app.state.settings, app.state.engine, app.state.metrics = settings, engine, metrics
    app.state.keys = KeyStore(settings.index_dir)  # the one the gate checks requests with, and admins write
    engine.batcher.on_batch = metrics.observe_batch
    for router in (query_router, documents_router, service_router):
        app.include_router(router)
    app.include_router(chat_router)
    app.include_router(page_router)
    app.include_router(collection_router)
    app.include_router(jobs_router)
    app.include_router(admin_router)
    app.include_router(portable_router)
    app.include_router(responses_router)
    app.include_router(embeddings_router)
    mount_mcp(app)
    app.include_router(openai_files_router)
    app.include_router(openai_stores_router)
    app.include_router(openai_store_files_router)

    @app.exception_handler(RagError)
    async def domain_error(request: Request, exc: RagError) -> Response:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)  # whole, with paths
        return json_error(request, status, str(exc), retry_after(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """No such route (404) or method (405): JSON, in OpenAI's shape under /v1, as every error."""
        message = str(exc.detail)  # a message never quotes the path: paths are scrubbed from messages
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route: the OpenAPI schema (openapi.json) lists them"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette's Allow names the first matching route's methods only
            allowed = ", ".join(methods_of(app, request))
            message = f"method {request.method} is not allowed here; use {allowed}"
            headers = {"Allow": allowed}
        return json_error(request, exc.status_code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return json_error(request, 400, "request body is not valid JSON")
        if any(e["loc"] == ("body",) and e["type"] in ("model_attributes_type", "dict_type") for e in errors):
            return json_error(request, 422, "request body must be a JSON object")
        problems = []
        for e in errors:
            where = ".".join(str(p) for p in e["loc"][1:]) or e["loc"][0]
            problems.append(f"{where}: {e['msg']}" if e["type"] != "missing" else f"{where}: field required")
        return json_error(request, 422, "; ".join(problems))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:  # logged whole, answered in one line
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_error(request, 500, "internal error; the server log has the details")

    # the last added runs first: log -> requests in flight -> CORS (so that every error below
    # it, 401 and 413 included, is readable by an allowed page; it answers preflights, which
    # carry no key) -> Host allow-list -> no cross-site writes, JSON bodies only where JSON is due
    # (api.guards.CrossSiteGuard) -> the caller's key and its rate (before any body is read) -> URL, header
    # and body limits -> the audit of writes -> Idempotency-Key -> deadline -> routes
    key = settings.api_key.get_secret_value() if settings.api_key else None
    # a non-streamed answer from an upstream model may take as long as a whole stream
    app.add_middleware(Deadline, seconds=settings.request_timeout_seconds,
                       slow_paths={"/v1/chat/completions": max(settings.request_timeout_seconds,
                                                               settings.llm_total_seconds),
                                   "/v1/responses": max(settings.request_timeout_seconds, settings.llm_total_seconds),
                                   "/admin/reload": max(settings.request_timeout_seconds, 600.0)})
    if not settings.read_only:  # outside the deadline: its 503 frees the key
        app.add_middleware(Idempotency, index_dir=settings.index_dir)
    app.add_middleware(Audit, log_file=AuditLog(settings.index_dir))  # read-only too: keys change there
    app.add_middleware(RequestGuard, max_bytes=settings.max_body_bytes, body_seconds=settings.body_timeout_seconds,
                       max_url_bytes=settings.max_url_bytes, max_header_bytes=settings.max_header_bytes,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(Authenticate, gate=Gate(key, app.state.keys, settings.key_rate_per_second),
                       open_paths=OPEN_PATHS, limited=lambda name: metrics.rate_limited.labels(key=name).inc())
    app.add_middleware(CrossSiteGuard, allow_origins=settings.cors_origins, public_url=settings.public_url)
    app.add_middleware(HostGuard, allowed=allowed_hosts(settings))
    app.add_middleware(JsonCors, allow_origins=settings.cors_origins,  # collections and stores PUT and DELETE too
                       allow_methods=["GET", "POST", "PUT", "DELETE"],
                       allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Mcp-Protocol-Version"])
    app.add_middleware(InFlight, limit=settings.limit_concurrency)
    app.add_middleware(AccessLog, requests=metrics.requests, latency=metrics.latency)
    return app


def server_config(settings: Settings, app: Any = None) -> "uvicorn.Config":
    """uvicorn's configuration of the service: the connection's limits (headers in time and
    size, connections held) are api.protocols', requests in flight InFlight's, and the
    request limits (URL, headers, body size and time) RequestGuard's, so they hold with any
    server."""
    import uvicorn

    header_bytes = settings.max_header_bytes + settings.max_url_bytes
    return uvicorn.Config(app or create_app(settings), host=settings.host, port=settings.port, access_log=False,
                          log_level="info", limit_concurrency=None,
                          http=protocol_class(settings.header_timeout_seconds, header_bytes, settings.max_connections),
                          timeout_keep_alive=int(max(1, settings.keep_alive_seconds)),
                          timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
                          h11_max_incomplete_event_size=header_bytes)


def serve(settings: Settings, app: FastAPI | None = None) -> None:
    """Serve until SIGINT or SIGTERM: then no new request is taken, those in flight get
    RAG_SHUTDOWN_GRACE_SECONDS, and the write running as long again (Engine.stop). A write
    still running after that is left: the process exits without waiting for it (what it
    was acknowledged for is in its spool, resumed at the next start)."""
    import uvicorn

    check_exposure(settings)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = app or create_app(settings)
    try:
        uvicorn.Server(server_config(settings, app)).run()  # then uvicorn raises the signal again: SIGTERM exits
    finally:
        if app.state.engine.writer.busy:  # SIGINT: its thread would hold the exit until the write ends
            logging.shutdown()
            os._exit(1)
