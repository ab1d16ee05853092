"""The MCP server: the knowledge base's search and fetch tools for agents (api.mcp.server)."""
