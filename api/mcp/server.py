"""The MCP server over streamable HTTP at /mcp (`mount_mcp`), for agents and connectors
(ChatGPT, Claude, Cursor, Open WebUI); `rag mcp` serves the same tools over stdio
(api.mcp.stdio).

/mcp is a route of the service like any other, behind the same middleware: the Host
allow-list, the cross-site guard (the SDK's client POSTs JSON without an Origin), the key
and its rate (api.auth: no key, a 401 before any MCP message is read), the request limits
and the deadline. So the SDK's own DNS-rebinding check is off (HostGuard and
CrossSiteGuard are it, with the service's own allow-lists), and MCP calls are reads for
the audit log (api.audit).

Stateless, with JSON responses: every POST is answered on its own, with no session kept
between requests, so any replica can answer any request (no sticky sessions, nothing to
expire or to lose at a restart) and the request deadline bounds a whole tool call. The
tools are short reads: they need neither the server-to-client requests nor the SSE
streams a session would give. So /mcp takes POST only: a GET (the SSE stream the spec
lets a server decline) and a DELETE (no session to end) are a 405.

Each tool call's `Knowledge` (api.mcp.knowledge) is the service's engine, read as the
request's caller: the principal that api.auth put into the request's scope, through
api.deps as every route takes it.

Left out: the SDK's OAuth (the service's keys are bearer tokens already); resumable
streams.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.routing import Route

from api.chat.answers import Link
from api.deps import engine_of, principal_of, settings_of
from api.mcp.tools import build_server
from api.routes.chat import link_for
from rag.collections import DEFAULT
from rag.errors import NotReadyError
from rag.schema import QueryResponse
from rag.search.retriever import Retriever
from rag.types import Filters

PATH = "/mcp"


class ServiceKnowledge:
    """The running service's engine, read as one request's caller."""

    def __init__(self, request: Request):
        self.engine, self.settings = engine_of(request), settings_of(request)
        self.principal = principal_of(request)
        self._link: Link = link_for(request, self.settings)

    def names(self) -> list[str]:
        collections = self.engine.collections
        return collections.names() if collections is not None else [DEFAULT]

    async def retriever(self, collection: str) -> Retriever:
        return self.engine.retriever_of(collection)

    async def query(self, collection: str, question: str, k: int, filters: Filters) -> QueryResponse:
        return await self.engine.query(question, k, filters, None, collection=collection)

    def link(self, collection: str, doc_id: str, start: int, end: int) -> str | None:
        """The chat page's view of the passage (api.routes.chat.link_for): the built corpus's."""
        return self._link(doc_id, start, end) if collection == DEFAULT else None


def knowledge_of(ctx: Context) -> ServiceKnowledge:
    request = ctx.request_context.request
    if not isinstance(request, Request):  # the HTTP transport always attaches it
        raise NotReadyError("this MCP call came without its HTTP request")
    return ServiceKnowledge(request)


def mount_mcp(app: FastAPI) -> None:
    """Mount the MCP server at /mcp (and /mcp/, as some clients send it), started and
    stopped with the app: its session manager runs inside the app's own lifespan."""
    server = build_server(knowledge_of)
    server.streamable_http_app(  # bodies: RequestGuard's limit (RAG_MAX_BODY_BYTES) came first
        stateless_http=True, json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    manager = server.session_manager
    endpoint = StreamableHTTPASGIApp(manager)
    for path in (PATH, PATH + "/"):
        app.router.routes.append(Route(path, endpoint=endpoint, methods=["POST"], include_in_schema=False))
    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with app_lifespan(app) as state, manager.run():
            yield state

    app.router.lifespan_context = lifespan
