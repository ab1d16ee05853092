"""The MCP server's tools, written once for both transports (`build_server`): `search` and
`fetch` in the shapes ChatGPT connectors and deep research read, `search_collection` with
full citations as structured output, and `list_collections`. Each tool asks the
`Knowledge` of the call (api.mcp.knowledge) for what it reads: over HTTP, the service's
engine and the caller's key; over stdio, the local index.

Errors are tool errors (`isError` with one readable sentence), never a broken session: a
domain error (rag.errors) says what to change, scrubbed of paths as the HTTP boundary
scrubs them; arguments that fail the input schema are refused by the SDK the same way;
anything else is the SDK's "Error executing tool ..." with the traceback in the log.

Left out: resources and prompts (the tools cover what clients use), and writes (the
HTTP API and `rag add` write; an MCP client only reads).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from api.errors import scrub_paths
from api.mcp import knowledge
from api.mcp.knowledge import Knowledge
from api.mcp.shapes import CollectionList, CollectionResults, Fetched, SearchFilters, SearchResults
from rag import __version__
from rag.collections import DEFAULT
from rag.errors import RagError

T = TypeVar("T")
KnowledgeOf = Callable[[Context], Knowledge]  # the call's context -> what it may read
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
INSTRUCTIONS = ("Search a knowledge base of articles for passages with exact citations. Use search, then fetch "
                "on an id it returned to read the passage's whole section; search_collection searches one "
                "collection (list_collections names them) with filters and returns full citations.")


def build_server(knowledge_of: KnowledgeOf) -> MCPServer[Any]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer[Any] = MCPServer("rag", instructions=INSTRUCTIONS, version=__version__)
    root.handlers[:], root.level = handlers, level  # it configures the root logger (rich, INFO): undone

    async def answered(ctx: Context, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`work` over the call's Knowledge, or a tool error saying what to change."""
        try:
            return await work(knowledge_of(ctx), *args)
        except RagError as exc:
            raise ToolError(scrub_paths(str(exc))) from None

    @server.tool(annotations=READ_ONLY)
    async def search(query: Annotated[str, Field(description="what to look for, in words")],
                     ctx: Context) -> SearchResults:
        """Search every collection you can read for passages answering the query, best first.
        Each result's `id` can be passed to fetch for the passage's whole section."""
        return await answered(ctx, knowledge.search_readable, query)

    @server.tool(annotations=READ_ONLY)
    async def fetch(id: Annotated[str, Field(description="a result id from search: <collection>:<chunk_id>")],
                    ctx: Context) -> Fetched:
        """The passage with its surrounding section, and its citation (document, section,
        character span, pages) in `metadata`."""
        return await answered(ctx, knowledge.fetch, id)

    @server.tool(annotations=READ_ONLY)
    async def search_collection(
        query: Annotated[str, Field(description="what to look for, in words")],
        ctx: Context,
        collection: Annotated[str, Field(description="list_collections names them")] = DEFAULT,
        k: Annotated[int, Field(ge=1, le=50, description="passages to return")] = 5,
        filters: SearchFilters | None = None,
    ) -> CollectionResults:
        """Search one collection: ranked passages with full citations (doc_id, section,
        character offsets into the document's text, pages for PDFs), and whether the
        collection seems to hold an answer."""
        return await answered(ctx, knowledge.search_one, collection, query, k, filters)

    @server.tool(annotations=READ_ONLY)
    async def list_collections(ctx: Context) -> CollectionList:
        """The collections you can read: `default` (the built corpus) and live ones, with
        their document and chunk counts."""
        return await answered(ctx, knowledge.listed)

    return server
