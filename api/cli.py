"""`rag serve` and `rag mcp`, added to the library's `rag` command here, so that rag never imports api;
the `rag` script (pyproject.toml) runs this module's `main`.

Left out: process managers (one uvicorn process; run it under systemd or a container).
"""

from typing import Annotated

import typer

from rag.cli import app, main
from rag.cli.base import IndexOpt, load_settings, user_errors

__all__ = ["app", "main"]


@app.command()
@user_errors
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind [RAG_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [RAG_PORT]")] = None,
    index: IndexOpt = None,
) -> None:
    """Serve the index over HTTP (OpenAPI docs at /docs); reloads when `rag build` writes a new one."""
    from api.app import serve as run_server

    run_server(load_settings(index=index, host=host, port=port))


@app.command()
@user_errors
def mcp(index: IndexOpt = None) -> None:
    """Serve the index to an MCP client over stdio (Claude Desktop, Cursor): search, fetch,
    search_collection, list_collections; reads the index folder itself, no service needed."""
    from api.mcp.stdio import run_stdio

    run_stdio(load_settings(index=index))


if __name__ == "__main__":
    main()
