"""The store interface: what retrieval needs from wherever the chunks live.

A store answers rankings, never score arrays: each search returns its top `depth` chunk
keys with their scores (`rag.fusion.Ranking`), filters applied inside the search (pushed
down, not after it), so that an ANN index or a remote engine can serve it as well as an
exact local scan. Keys are the rows of the loaded index (`Index.chunks`), which the
retriever still reads chunk text from; a remote store will need its own keys and a fetch.

Left out, for the stores to come (an on-disk local store at a million chunks, Milvus):
adding and deleting chunks, and fetching chunk text and metadata by key; the retriever
still reads those from the loaded index.
"""

from typing import Protocol

import numpy as np

from rag.fusion import Ranking
from rag.types import Filters


class ChunkStore(Protocol):
    def count(self) -> int:
        """Chunks in the store."""
        ...

    def known(self, field: str) -> set[str]:
        """The values a filter on `field` (doc_ids, sources, sections) can match."""
        ...

    def dense(self, vector: np.ndarray, depth: int, filters: Filters) -> Ranking:
        """The `depth` chunks closest to `vector` (cosine, best first) among those the filters allow."""
        ...

    def lexical(self, text: str, depth: int, filters: Filters) -> Ranking:
        """The `depth` best BM25 matches of `text`; chunks with no query term are not retrieved."""
        ...

    def chunk_count(self, doc_id: str) -> int:
        """Chunks of one document."""
        ...
