"""Documents, chunks and sentences of a local build in one SQLite file (`chunks.sqlite`).

SQLite because it reads one row in microseconds without loading the rest, is in the
standard library, and writes in a stream: a million chunks never sit in Python memory.
A build's file is written once and never changed, so readers open it `immutable=1`
(no locking, no journal). Chunk and sentence rows are the store's rows.

Readers get a read-only `Sequence` of chunks and `Mapping` of documents that fetch on
demand and keep the last `CACHE_ROWS` chunks they read.

Left out: writes to a live build (the local store writes a whole new build).
"""

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any, overload

from rag.records import ChunkRecord, DocumentRecord, SentenceRecord

FILE = "chunks.sqlite"
CACHE_ROWS = 4096  # chunks a reader keeps: every chunk of a small corpus, the hot ones of a big one
SCHEMA = """
CREATE TABLE documents (doc_id TEXT PRIMARY KEY, metadata TEXT NOT NULL, text TEXT NOT NULL,
                        sections TEXT NOT NULL, content_hash TEXT NOT NULL);
CREATE TABLE chunks (row INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL, section TEXT,
                     char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, text TEXT NOT NULL,
                     n_tokens INTEGER NOT NULL, n_model_tokens INTEGER NOT NULL, embed_hash TEXT NOT NULL);
CREATE TABLE sentences (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, char_start INTEGER NOT NULL,
                        char_end INTEGER NOT NULL, text_hash TEXT NOT NULL);
"""
# made after the bulk insert: cheaper than keeping them up to date row by row
INDEXES = """
CREATE UNIQUE INDEX chunks_by_id ON chunks (chunk_id);
CREATE INDEX chunks_by_doc ON chunks (doc_id);
CREATE INDEX chunks_by_hash ON chunks (embed_hash);
CREATE INDEX sentences_by_doc ON sentences (doc_id, char_start);
CREATE INDEX sentences_by_hash ON sentences (text_hash);
"""
CHUNK_COLUMNS = "chunk_id, doc_id, section, char_start, char_end, text, n_tokens, n_model_tokens, embed_hash"


class TableWriter:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(path)
        # the build folder is fsynced as a whole at commit and thrown away on a crash
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        self.chunks = self.sentences = 0

    def add_documents(self, documents: Iterable[DocumentRecord]) -> None:
        self._db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", (
            (d.doc_id, json.dumps(d.metadata, ensure_ascii=False), d.text,
             json.dumps(d.sections, ensure_ascii=False), d.content_hash) for d in documents))

    def add_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        self._db.executemany(f"INSERT INTO chunks (row, {CHUNK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             ((self.chunks + i, *astuple(c)) for i, c in enumerate(chunks)))
        self.chunks += len(chunks)

    def add_sentences(self, sentences: Sequence[SentenceRecord]) -> None:
        self._db.executemany("INSERT INTO sentences VALUES (?, ?, ?, ?, ?)",
                             ((self.sentences + i, *astuple(s)) for i, s in enumerate(sentences)))
        self.sentences += len(sentences)

    def finish(self) -> None:
        self._db.executescript(INDEXES)
        self._db.commit()
        self._db.close()

    def abort(self) -> None:
        self._db.close()


class Tables:
    """Read access to one build's file; safe to share between threads."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self._lock = threading.Lock()  # one connection, many threads: one statement at a time
        self.chunk_total = self.one("SELECT count(*) FROM chunks")[0]
        self.document_total = self.one("SELECT count(*) FROM documents")[0]

    def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def one(self, sql: str, *args: Any) -> tuple[Any, ...]:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def close(self) -> None:
        self._db.close()


class ChunkTable(Sequence[ChunkRecord]):
    def __init__(self, tables: Tables):
        self._tables = tables
        self._cache: OrderedDict[int, ChunkRecord] = OrderedDict()

    def __len__(self) -> int:
        return self._tables.chunk_total

    @overload
    def __getitem__(self, row: int) -> ChunkRecord: ...
    @overload
    def __getitem__(self, row: slice) -> list[ChunkRecord]: ...

    def __getitem__(self, row: int | slice) -> ChunkRecord | list[ChunkRecord]:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        row = int(row)  # a numpy integer would bind as a blob and match nothing
        if row < 0:
            row += len(self)
        cached = self._cache.get(row)
        if cached is not None:
            self._cache.move_to_end(row)
            return cached
        found = self._tables.one(f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE row = ?", row)
        if found is None:
            raise IndexError(f"no chunk row {row}")
        record = ChunkRecord(*found)
        self._cache[row] = record
        if len(self._cache) > CACHE_ROWS:
            self._cache.popitem(last=False)
        return record

    def __iter__(self) -> Iterator[ChunkRecord]:
        step = 10_000  # rows per query: a full scan without holding every chunk
        for start in range(0, len(self), step):
            yield from (ChunkRecord(*r) for r in self._tables.all(
                f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE row >= ? AND row < ? ORDER BY row", start, start + step))


class DocumentTable(Mapping[str, DocumentRecord]):
    def __init__(self, tables: Tables):
        self._tables = tables

    def __len__(self) -> int:
        return self._tables.document_total

    def __getitem__(self, doc_id: str) -> DocumentRecord:
        found = self._tables.one("SELECT * FROM documents WHERE doc_id = ?", doc_id)
        if found is None:
            raise KeyError(doc_id)
        doc_id, metadata, text, sections, content_hash = found
        return DocumentRecord(doc_id, json.loads(metadata), text, json.loads(sections), content_hash)

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._tables.all("SELECT doc_id FROM documents ORDER BY rowid")])
