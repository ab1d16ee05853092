"""Where chunks are searched: the `ChunkStore` interface (`base`) and its backends
(`local`: FAISS and BM25 over a loaded index)."""
