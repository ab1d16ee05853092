"""Where chunks are searched: the `ChunkStore` interface (`base`) and its backends
(`local`: an exact scan and BM25 over an index loaded in memory)."""
