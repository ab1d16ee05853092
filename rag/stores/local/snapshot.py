"""Snapshots of the local stores (`rag.stores.base.Snapshot`): everything a build or a live
collection holds, read in batches as it was when the snapshot's block started.

- a build (`BuildSnapshot`) never changes, so it is consistent as it stands; the snapshot
  holds a connection of its own to the build's tables and the build's vector arrays, so
  it reads on if the store is closed, or a newer `rag build` goes live and prunes this one
  (an open file stays readable after it is removed);
- a live collection (`LiveSnapshot`, from rag.stores.local.live) gets a read-only
  connection of its own to kb.sqlite that holds one read transaction for the whole block:
  WAL mode gives it the database as of its first read, while the collection's connection
  (and other processes) go on writing, neither blocked nor seen.

Orders: a build's documents, chunks and sentences are each in row order, which is the
build's document order (it writes each document's chunks and sentences in the order of
its documents). A live collection's chunks are in row order: a write gives a document's
chunks consecutive rows past every row ever used, so a document's chunks are together and
documents come in the order of their last write; its documents are in the order of their
first chunk's row (the same order), documents without chunks after them by doc_id; its
sentences are grouped by document in that order, each document's by row.

Left out: a snapshot that outlives its block (the connection closes with it), and the WAL
checkpoints a long snapshot of a live collection holds back: the -wal file grows with the
writes made meanwhile, and shrinks at the first checkpoint after the block.
"""

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import StorageError
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.local.tables import CHUNK_COLUMNS, Tables

DOCUMENTS_A_QUERY = 100  # documents read at once: their texts are the biggest rows
SENTENCE_COLUMNS = "doc_id, char_start, char_end, text_hash"


class BuildSnapshot:
    """A local build, read through its own connection (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any], vectors: np.ndarray, sentence_vectors: np.ndarray):
        self.manifest = manifest
        self._tables = Tables(path)  # opened now, while the build is certainly there
        self._vectors, self._sentence_vectors = vectors, sentence_vectors

    def documents(self) -> Iterator[tuple[DocumentRecord, str]]:
        last = 0
        while found := self._tables.all("SELECT rowid, doc_id, metadata, text, sections, content_hash FROM documents "
                                        "WHERE rowid > ? ORDER BY rowid LIMIT ?", last, DOCUMENTS_A_QUERY):
            for _, doc_id, metadata, text, sections, content_hash in found:
                yield DocumentRecord(doc_id, json.loads(metadata), text, json.loads(sections), content_hash), "build"
            last = found[-1][0]

    def chunks(self, batch: int) -> Iterator[tuple[list[ChunkRecord], np.ndarray]]:
        for start in range(0, len(self._vectors), _checked(batch)):
            found = self._tables.all(f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE row >= ? AND row < ? ORDER BY row",
                                     start, start + batch)
            yield [ChunkRecord(*r) for r in found], _rows(self._vectors, start, len(found))

    def sentences(self, batch: int) -> Iterator[tuple[list[SentenceRecord], np.ndarray]]:
        for start in range(0, len(self._sentence_vectors), _checked(batch)):
            found = self._tables.all(f"SELECT {SENTENCE_COLUMNS} FROM sentences WHERE row >= ? AND row < ? "
                                     "ORDER BY row", start, start + batch)
            yield [SentenceRecord(*r) for r in found], _rows(self._sentence_vectors, start, len(found))

    def close(self) -> None:
        self._tables.close()


class LiveSnapshot:
    """A live collection as of `open_live`'s first read (see the module docstring); its
    iterators may run in other threads than the one that opened it, one statement at a time."""

    def __init__(self, db: sqlite3.Connection, manifest: dict[str, Any], dimension: int):
        self.manifest, self._db, self._dimension = manifest, db, dimension
        self._lock = threading.Lock()  # one connection, maybe several threads: one call at a time
        self._order: list[str] | None = None

    def documents(self) -> Iterator[tuple[DocumentRecord, str]]:
        order = self._document_order()
        for start in range(0, len(order), DOCUMENTS_A_QUERY):
            part = order[start:start + DOCUMENTS_A_QUERY]
            found = {r[0]: r for batch in self._stream(
                "SELECT doc_id, metadata, text, sections, content_hash, origin FROM documents "
                f"WHERE doc_id IN ({','.join('?' * len(part))})", part, len(part)) for r in batch}
            for doc_id in part:
                _, metadata, text, sections, content_hash, origin = found[doc_id]
                yield DocumentRecord(doc_id, json.loads(metadata), text, json.loads(sections), content_hash), origin

    def chunks(self, batch: int) -> Iterator[tuple[list[ChunkRecord], np.ndarray]]:
        for found in self._stream(f"SELECT {CHUNK_COLUMNS}, vector FROM chunks ORDER BY row", (), _checked(batch)):
            yield [ChunkRecord(*r[:-1]) for r in found], self._stacked([r[-1] for r in found])

    def sentences(self, batch: int) -> Iterator[tuple[list[SentenceRecord], np.ndarray]]:
        rows = (r for doc_id in self._document_order() for found in self._stream(
            f"SELECT {SENTENCE_COLUMNS}, vector FROM sentences WHERE doc_id = ? ORDER BY row", (doc_id,),
            _checked(batch)) for r in found)
        while found := list(islice(rows, batch)):  # batches across documents: a document may have a few sentences
            yield [SentenceRecord(*r[:-1]) for r in found], self._stacked([r[-1] for r in found])

    def close(self) -> None:
        with self._lock:
            self._db.close()  # ends the read transaction

    def _document_order(self) -> list[str]:
        """Every doc_id, in the order of its first chunk's row (chunks' document order); read
        once, as the iterators need it (a few MB at 100k documents)."""
        if self._order is None:
            self._order = [r[0] for found in self._stream(
                "SELECT doc_id, (SELECT min(row) FROM chunks c WHERE c.doc_id = d.doc_id) AS first FROM documents d "
                "ORDER BY first IS NULL, first, doc_id", (), 10_000) for r in found]
        return self._order

    def _stream(self, sql: str, args: Sequence[Any], batch: int) -> Iterator[list[Any]]:
        """The rows of one query, `batch` at a time: a whole collection never sits in memory."""
        try:
            with self._lock:
                cursor = self._db.execute(sql, tuple(args))
            while True:
                with self._lock:
                    found = cursor.fetchmany(batch)
                if not found:
                    return
                yield found
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read a collection's snapshot: {exc}") from exc

    def _stacked(self, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs])


def open_live(path: Path, manifest: dict[str, Any], dimension: int) -> LiveSnapshot:
    """A snapshot of the live collection in `path` (kb.sqlite), taken now: its read
    transaction starts here. The caller closes it."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read collection at {path.parent}: {exc}") from exc
    try:
        # busy_timeout: a reader waits out the moment another connection resets the WAL
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("BEGIN")
        db.execute("SELECT 1 FROM documents LIMIT 1").fetchall()  # the first read fixes what the snapshot sees
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.Error):
            raise StorageError(f"cannot read collection at {path.parent}: {exc}") from exc
        raise
    return LiveSnapshot(db, manifest, dimension)


def _checked(batch: int) -> int:
    if batch < 1:
        raise ValueError(f"a batch holds at least one row, not {batch}")
    return batch


def _rows(vectors: np.ndarray, start: int, count: int) -> np.ndarray:
    """Rows [start, start + count) of a build's vectors, copied out of the memory map."""
    return np.array(vectors[start:start + count], dtype=np.float32)
