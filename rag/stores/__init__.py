"""Where chunks live: the store interface (`base`), the manifest every index keeps
(`manifest`), and the backends chosen by `RAG_VECTOR_STORE` (`factory`): `local` (files
under the index folder) or `milvus` (a Milvus server, cluster or Milvus Lite file)."""
