"""What chat frontends get besides search: extractive answers with [n] citations
(`answers`), OpenAI's streamed frames (`stream`), the upstream model (`upstream`) and Open
WebUI's background tasks (`webui`)."""
