"""The MCP server (stub: to be built)."""

from fastapi import FastAPI


def mount_mcp(app: FastAPI) -> None:
    """Mount the MCP server at /mcp (streamable HTTP)."""
