"""The local store: a build's files under the index folder (`store` reads, `writer`
writes, `builds` publishes them atomically; `tables` in SQLite, `ann` for vectors, `bm25`
arrays), and live collections in SQLite (`live`, with `live_index` for their search)."""
