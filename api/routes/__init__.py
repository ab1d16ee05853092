"""The HTTP routes, one module per resource, each a few lines over the engine: query,
documents, service (health, ready, reload, metrics), collections, chat, page, and
OpenAI's files, vector stores and their files. Errors are raised as domain errors and
translated in `api.app`."""
