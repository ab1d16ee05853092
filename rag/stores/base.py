"""The store interface: everything retrieval, evaluation and the service read from an
index, and everything a build writes into one, whatever holds it (local files, Milvus).

Keys: every chunk has a row, an int from 0 to count() - 1 given at build time in chunk
order; every backend uses the same rows, so rankings, fusion and hits are backend-neutral.

Reading (`ChunkStore`):
- searches return rankings, never score arrays: each side's top `depth` rows with their
  scores (`rag.stores.base.Ranking`), filters applied inside the search (pushed down), so an
  ANN index or a remote engine serves it as well as an exact scan;
- chunk text, documents and sentences are fetched by key, only for the hits a response
  returns (`chunks`, `documents`, `sentences`); nothing requires the whole corpus in memory.

Writing (`StoreWriter`): a build streams documents, chunks with their vectors, and
sentences with theirs into a writer, then commits; the new build goes live atomically at
commit, and a writer closed without commit (an exception, a kill) leaves the live build
serving and removes what it wrote.

Live collections (`LiveStore`: rag.stores.local.live in SQLite, rag.stores.milvus.live in Milvus) are
the other way in: read like a build, written one document at a time (`writing`, `delete`).

Left out: in-place updates of a build (a build writes a whole new one).
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.types import Filters

FILTER_FIELDS = ("doc_ids", "sources", "sections")


def top_rows(scores: np.ndarray, depth: int) -> np.ndarray:
    """Rows of the `depth` highest finite scores, best first (ties: lower row first)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > depth:  # keep every row tied with the depth-th, so ties go to the lower row
        kth = scores[finite[np.argpartition(-scores[finite], depth - 1)[depth - 1]]]
        finite = finite[scores[finite] >= kth]
    return finite[np.lexsort((finite, -scores[finite]))][:depth]


Ranking = tuple[np.ndarray, np.ndarray]  # rows and their scores, best first


def ranking(scores: np.ndarray, depth: int) -> Ranking:
    """The top `depth` of a full score array as a ranking; -inf means not retrieved."""
    rows = top_rows(scores, depth)
    return rows, scores[rows]


class ChunkStore(Protocol):
    manifest: dict[str, Any]  # versions, parameters, counts and the build id of what is loaded

    @property
    def build_id(self) -> str: ...

    @property
    def chunks(self) -> Sequence[ChunkRecord]:
        """Chunks by row, read on demand (len, [row], iteration)."""
        ...

    @property
    def documents(self) -> Mapping[str, DocumentRecord]:
        """Documents by id, read on demand (len, .get, iteration)."""
        ...

    def count(self) -> int:
        """Chunks in the store."""
        ...

    def row_of(self, chunk_id: str) -> int | None: ...

    def unknown(self, field: str, values: Sequence[str]) -> list[str]:
        """Those of `values` that a filter on `field` (doc_ids, sources, sections) can never match."""
        ...

    def dense(self, vector: np.ndarray, depth: int, filters: Filters) -> Ranking:
        """The `depth` chunks closest to `vector` (inner product of normalised vectors, best
        first) among those the filters allow."""
        ...

    def lexical(self, text: str, depth: int, filters: Filters) -> Ranking:
        """The `depth` best BM25 matches of `text`; chunks with no query term are not retrieved."""
        ...

    def sentences(self, row: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        """The sentences of chunk `row` (document offsets clipped to the chunk) and their
        vectors, one row each; empty when the build has no sentences."""
        ...

    def chunk_count(self, doc_id: str) -> int:
        """Chunks of one document."""
        ...

    def rows_of(self, doc_id: str) -> list[int]:
        """Rows of one document's chunks, in document order."""
        ...

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]:
        """Stored vectors of chunks (or sentences) by the hash of the text they embed: a
        rebuild reuses them instead of embedding again. Hashes the store lacks are left out."""
        ...

    def snapshot(self) -> AbstractContextManager["Snapshot"]:
        """Everything the store holds, as it is when the block starts (rag.portable's export
        and backup read it while writes go on); see `Snapshot`."""
        ...

    def close(self) -> None: ...


class Snapshot(Protocol):
    """A consistent read of a whole store, taken when `ChunkStore.snapshot()`'s block starts:
    every write acknowledged before it is in it, none made later is half in it (a later
    write of a document is in it whole or not at all). Each iterator may be called once, in
    any order; vectors are float32 rows, one per record, in the records' order.

    - documents: each document with how it came in (`origin`: sync, upload, ...; "build"
      for a built corpus), in the order they were written;
    - chunks: in row order (a live collection: a document's chunks together, in document order);
    - sentences: grouped by document, in the order of `chunks`' documents.
    """

    manifest: dict[str, Any]

    def documents(self) -> Iterator[tuple[DocumentRecord, str]]: ...

    def chunks(self, batch: int) -> Iterator[tuple[list[ChunkRecord], np.ndarray]]: ...

    def sentences(self, batch: int) -> Iterator[tuple[list[SentenceRecord], np.ndarray]]: ...


class VectorSource(Protocol):
    """Where a build or a write takes the vectors of unchanged text from: a store, or part of one."""

    manifest: dict[str, Any]

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]: ...


class DocumentSink(Protocol):
    """What a build hands its documents to: a store writer, or one write of a live collection
    (rag.stores.local.live)."""

    def add_documents(self, documents: Iterable[DocumentRecord]) -> None: ...

    def add_chunks(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray,
                   lexical_texts: Sequence[str] | None = None) -> None: ...

    def add_sentences(self, sentences: Sequence[SentenceRecord], vectors: np.ndarray) -> None: ...


class StoreWriter(Protocol):
    """Streams one build into a store; use as a context manager and call `commit`."""

    def add_documents(self, documents: Iterable[DocumentRecord]) -> None: ...

    def add_chunks(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray,
                   lexical_texts: Sequence[str] | None = None) -> None:
        """Append chunks (after their documents; rows continue from those added before) with
        their vectors; `lexical_texts` is what BM25 indexes for each (default: the chunk text)."""
        ...

    def add_sentences(self, sentences: Sequence[SentenceRecord], vectors: np.ndarray) -> None: ...

    def commit(self, manifest: dict[str, Any]) -> str:
        """Finish the indexes, record `manifest` (plus what the store adds) and make the build
        live atomically; returns where it lives (a folder or a collection name)."""
        ...

    def __enter__(self) -> "StoreWriter": ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        """Without a commit: remove what was written; the live build stays."""
        ...



class LiveStore(ChunkStore, Protocol):
    """A collection written one document at a time while it serves (rag.stores.local.live's in SQLite,
    rag.stores.milvus.live's in Milvus); queries hold `lock` while they read."""

    lock: Any
    version: int  # bumped by every write
    closed: bool

    def writing(self, origin: str) -> AbstractContextManager[DocumentSink]:
        """One write: what is added to the sink goes live atomically when the block ends."""
        ...

    def delete(self, doc_id: str) -> bool: ...

    def release(self) -> None:
        """Give back what an idle collection holds (descriptors, caches): its next use takes
        them again (an LRU of open collections calls it)."""
        ...

    def origin(self, doc_id: str) -> str | None:
        """How a document came in (sync, upload, ...); None if there is none."""
        ...

    def reusable(self, doc_id: str) -> VectorSource | None:
        """Where a write of `doc_id` takes the vectors of its unchanged text from."""
        ...


class LiveWrites:
    """What a live collection (this module's, or rag.stores.milvus.live's) does with a write."""

    @contextmanager
    def writing(self, origin: str) -> Iterator["Write"]:
        """One document's write: what `rag.ingest.build`'s batches hand a store writer, applied
        atomically at the end of the block (nothing is applied if the block raises)."""
        write = Write(origin)
        yield write
        self._apply(write)

    def _apply(self, write: "Write") -> None:
        raise NotImplementedError


class Write:
    """What one write holds until it is applied: documents, chunks with vectors and BM25
    texts, sentences with vectors (the StoreWriter calls rag.ingest.build makes)."""

    def __init__(self, origin: str):
        self.origin = origin
        self.documents: list[DocumentRecord] = []
        self.chunks: list[ChunkRecord] = []
        self.vectors: list[np.ndarray] = []
        self.lexical: list[str] = []
        self.sentences: list[SentenceRecord] = []
        self.sentence_vectors: list[np.ndarray] = []

    def add_documents(self, documents: Iterable[DocumentRecord]) -> None:
        self.documents += list(documents)

    def add_chunks(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray,
                   lexical_texts: Sequence[str] | None = None) -> None:
        self.chunks += list(chunks)
        self.vectors += list(vectors)
        self.lexical += list(lexical_texts) if lexical_texts is not None else [c.text for c in chunks]

    def add_sentences(self, sentences: Sequence[SentenceRecord], vectors: np.ndarray) -> None:
        self.sentences += list(sentences)
        self.sentence_vectors += list(vectors)
