"""A live collection: documents added, replaced and deleted while it serves.

SQLite in WAL mode is the source of truth for a collection's documents, chunks and
sentences, vectors included (float32 blobs), in `<index_dir>/collections/<name>/kb.sqlite` (or
the file its manifest names: `database_of`).
The search indexes (rag.stores.local.live_index: vectors and BM25 postings in memory) are derived from
it: rebuilt from it on open, and updated after each write.

The promises, and how they are kept:
- acknowledged means durable: a write is one SQLite transaction with synchronous=FULL;
  it returns after the commit, which is on disk (WAL fsynced), so `kill -9` the instant
  after loses nothing;
- never half a document: the old version's rows are deleted and the new version's rows
  inserted in that one transaction; a crash before the commit leaves the old version;
- read your writes, no stale passages: the in-memory indexes are updated (the old rows
  marked dead, the new ones added) under the collection's lock before the write returns;
  a query holds the same lock while it searches, so it sees the state before a write or
  after it, never between;
- writes cost what the document costs: no rebuild and no rewrite of other rows; rows are
  never reused, so a row means one chunk version for ever (caches by row stay valid).

A write goes through the same cleaning, chunking and embedding as `rag build`
(rag.ingest.build's batches, this object standing in for a store writer), and reuses the vectors
of chunks and sentences whose text is unchanged, so uploading identical content again
embeds nothing and re-uploading an edited document embeds only its changed chunks.

Another process may write the same collection (`rag add` beside a running service): SQLite
serialises the writes, and a reader that sees SQLite's data_version move rebuilds its
indexes from the rows before it searches (once per foreign write: O(collection)).

Left out: an ANN index (search is exact over the live rows: a collection past ~100k chunks
belongs in a built index or in Milvus).

Why one module of ~340 lines: the row views (`_Chunks`, `_Documents`) read the collection's
connection and lock, which are private to `KnowledgeBase`; moving them out would bring
back access to private state across modules.
"""

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import NotFoundError, StorageError
from rag.records import ChunkRecord, DocumentRecord
from rag.stores.base import LiveWrites, Ranking, Write
from rag.stores.local.live_index import LiveIndex
from rag.stores.local.snapshot import LiveSnapshot, open_live
from rag.stores.local.tables import CHUNK_COLUMNS
from rag.types import Filters

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, metadata TEXT NOT NULL, text TEXT NOT NULL,
    sections TEXT NOT NULL, content_hash TEXT NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (row INTEGER PRIMARY KEY AUTOINCREMENT, chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL,
    section TEXT, char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, text TEXT NOT NULL,
    n_tokens INTEGER NOT NULL, n_model_tokens INTEGER NOT NULL, embed_hash TEXT NOT NULL,
    lexical TEXT NOT NULL, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sentences (row INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL,
    char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, text_hash TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id);
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (chunk_id);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks (embed_hash);
CREATE INDEX IF NOT EXISTS sentences_by_doc ON sentences (doc_id, char_start);
CREATE INDEX IF NOT EXISTS sentences_by_hash ON sentences (text_hash);
"""
# a new row is past every row ever used, deleted ones included (AUTOINCREMENT keeps the
# highest in sqlite_sequence even when those rows are gone)
NEXT_ROW = ("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), -1), "
            "coalesce((SELECT max(row) FROM {table}), -1)) + 1")


def database_of(manifest: dict[str, Any]) -> str:
    """The collection's SQLite file in its folder: `kb.sqlite`, or the one a re-embed made
    (rag.portable.reembed), named by the manifest."""
    return str(manifest.get("store", {}).get("database", "kb.sqlite"))


class KnowledgeBase(LiveWrites):
    """One collection: the ChunkStore the retriever searches, and the writer of its documents."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder, self.manifest = folder, manifest
        self.path = folder / database_of(manifest)
        self.dimension = int(manifest["model"]["dimension"])
        self.version = 0  # bumped by every write: caches keyed on it never serve a stale document
        self.lock = threading.RLock()
        self.closed = False
        self._released = False  # connection and indexes given back (release): the next use reopens them
        self._db = self._connect()
        self._index = LiveIndex(self.dimension)
        self._seen = -1  # SQLite's data_version when the indexes were last built
        self._reload()

    # views made on each use, not kept: a view kept here would hold this object in a reference
    # cycle, freed only by the cyclic GC (rare full collections), with its indexes and connection
    @property
    def chunks(self) -> "_Chunks":
        return _Chunks(self)

    @property
    def documents(self) -> "_Documents":
        return _Documents(self)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # busy_timeout: another process (`rag add` beside a running service) may be writing
            db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;"
                             + SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open collection at {self.folder}: {exc}") from exc
        return db

    @property
    def build_id(self) -> str:
        return f"live-{self.version}"

    def _reload(self) -> None:
        """The in-memory indexes from the rows (on open, when dead slots pile up, and when
        another process wrote the collection)."""
        self._seen = self._db.execute("PRAGMA data_version").fetchone()[0]
        index = LiveIndex(self.dimension)
        rows, vectors, texts = [], [], []
        for row, lexical, blob in self._db.execute("SELECT row, lexical, vector FROM chunks ORDER BY row"):
            rows.append(row)
            texts.append(lexical)
            vectors.append(np.frombuffer(blob, dtype=np.float32))
            if len(rows) == 8192:
                index.add(rows, np.stack(vectors), texts)
                rows, vectors, texts = [], [], []
        if rows:
            index.add(rows, np.stack(vectors), texts)
        self._index = index

    # ------------------------------------------------------------------ reading (ChunkStore)

    def count(self) -> int:
        with self.lock:
            self._fresh()
            return len(self._index)

    def row_of(self, chunk_id: str) -> int | None:
        found = self._one("SELECT row FROM chunks WHERE chunk_id = ?", chunk_id)
        return None if found is None else int(found[0])

    def rows_of(self, doc_id: str) -> list[int]:
        return [r[0] for r in self._all("SELECT row FROM chunks WHERE doc_id = ? ORDER BY row", doc_id)]

    def chunk_count(self, doc_id: str) -> int:
        return int(self._one("SELECT count(*) FROM chunks WHERE doc_id = ?", doc_id)[0])

    def unknown(self, field: str, values: Sequence[str]) -> list[str]:
        column = {"doc_ids": "doc_id", "sources": "json_extract(metadata, '$.source')",
                  "sections": "section"}[field]
        table = "documents" if field != "sections" else "chunks"
        marks = ",".join("?" * len(values))
        known = {r[0] for r in self._all(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN ({marks})",
                                         *values)}
        return sorted(set(values) - known)

    def dense(self, vector: np.ndarray, depth: int, filters: Filters) -> Ranking:
        with self.lock:
            self._fresh()
            return self._index.dense(vector, depth, self._allowed(filters))

    def lexical(self, text: str, depth: int, filters: Filters) -> Ranking:
        with self.lock:
            self._fresh()
            return self._index.lexical(text, depth, self._allowed(filters))

    def _fresh(self) -> None:
        """Rebuild the indexes if another process committed since (SQLite's data_version moves
        only for other connections' commits: ~2 us to ask)."""
        self._open()
        if self._db.execute("PRAGMA data_version").fetchone()[0] != self._seen:
            self._reload()

    def sentences(self, row: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        chunk = self.chunks[row]
        found = self._all("SELECT char_start, char_end, vector FROM sentences WHERE doc_id = ? AND char_start < ? "
                          "AND char_end > ? ORDER BY char_start", chunk.doc_id, chunk.char_end, chunk.char_start)
        spans = [(max(a, chunk.char_start), min(b, chunk.char_end)) for a, b, _ in found]
        vectors = np.stack([np.frombuffer(v, dtype=np.float32) for _, _, v in found]) if found else \
            np.zeros((0, self.dimension), dtype=np.float32)
        return spans, vectors

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]:
        table, column = ("sentences", "text_hash") if sentences else ("chunks", "embed_hash")
        wanted, out = list(dict.fromkeys(hashes)), {}
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            for digest, blob in self._all(f"SELECT {column}, vector FROM {table} WHERE {column} IN "
                                          f"({','.join('?' * len(part))}) GROUP BY {column}", *part):
                out[digest] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def reusable(self, doc_id: str) -> "KnowledgeBase":
        """What a write of `doc_id` takes vectors from: any chunk or sentence of the
        collection with the same text (SQLite finds them by hash index)."""
        return self

    @contextmanager
    def snapshot(self) -> Iterator[LiveSnapshot]:
        """The collection as of now, on a connection of its own (rag.stores.local.snapshot):
        writes go on meanwhile, unseen by it."""
        with self.lock:  # this process's writes before it or after it; a released collection opened again
            self._open()
            opened = open_live(self.path, self.manifest, self.dimension)
        with closing(opened):
            yield opened

    def close(self) -> None:
        self.closed = True
        self._db.close()

    def release(self) -> None:
        """Give back the connection (its descriptors) and the in-memory indexes, as an LRU of
        open collections does with the least used; under the lock, so never mid-read or
        mid-write. The next use reopens both: a request that holds this object still works."""
        with self.lock:
            if not self._released and not self.closed:
                self._db.close()
                self._index, self._seen, self._released = LiveIndex(self.dimension), -1, True

    def _allowed(self, filters: Filters) -> np.ndarray | None:
        if filters.doc_ids is None and filters.sources is None and filters.sections is None:
            return None
        clauses, args = [], []
        for column, values in (("c.doc_id", filters.doc_ids), ("json_extract(d.metadata, '$.source')",
                                                               filters.sources), ("c.section", filters.sections)):
            if values is not None:
                clauses.append(f"{column} IN ({','.join('?' * len(values))})")
                args += list(values)
        rows = [r[0] for r in self._all("SELECT c.row FROM chunks c JOIN documents d ON c.doc_id = d.doc_id "
                                        f"WHERE {' AND '.join(clauses)}", *args)]
        return self._index.mask(rows)

    def _one(self, sql: str, *args: Any) -> Any:
        with self.lock:
            self._open()
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[Any]:
        with self.lock:
            self._open()
            return self._db.execute(sql, args).fetchall()

    def _open(self) -> None:
        """A query that waited on the lock while the collection was deleted: a 404, not a crash."""
        if self.closed:
            raise NotFoundError(f"the collection at {self.folder.name} was deleted")
        if self._released:
            if not (self.folder / "manifest.json").is_file():  # deleted while released
                raise NotFoundError(f"the collection at {self.folder.name} was deleted")
            self._db, self._released = self._connect(), False
            self._reload()

    # ------------------------------------------------------------------ writing

    def _apply(self, write: "Write") -> None:
        with self.lock:
            # another process's writes first (their rows may be among the old ones); one that
            # commits between this and our commit moves data_version, so the next read rebuilds
            self._fresh()
            doc_ids = [d.doc_id for d in write.documents]
            old = self._all(f"SELECT row, lexical FROM chunks WHERE doc_id IN ({','.join('?' * len(doc_ids))})",
                            *doc_ids)
            chunk_row = self._one(NEXT_ROW.format(table="chunks"))[0]
            sentence_row = self._one(NEXT_ROW.format(table="sentences"))[0]
            rows = list(range(chunk_row, chunk_row + len(write.chunks)))
            with self._transaction():
                for doc_id in doc_ids:
                    for table in ("documents", "chunks", "sentences"):
                        self._db.execute(f"DELETE FROM {table} WHERE doc_id = ?", (doc_id,))
                self._db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", [
                    (d.doc_id, json.dumps(d.metadata, ensure_ascii=False), d.text,
                     json.dumps(d.sections, ensure_ascii=False), d.content_hash, write.origin)
                    for d in write.documents])
                self._db.executemany(
                    f"INSERT INTO chunks (row, {CHUNK_COLUMNS}, lexical, vector) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(row, c.chunk_id, c.doc_id, c.section, c.char_start, c.char_end, c.text, c.n_tokens,
                      c.n_model_tokens, c.embed_hash, text, np.asarray(v, dtype=np.float32).tobytes())
                     for row, c, text, v in zip(rows, write.chunks, write.lexical, write.vectors)])
                self._db.executemany("INSERT INTO sentences VALUES (?, ?, ?, ?, ?, ?)", [
                    (sentence_row + i, s.doc_id, s.char_start, s.char_end, s.text_hash,
                     np.asarray(v, dtype=np.float32).tobytes())
                    for i, (s, v) in enumerate(zip(write.sentences, write.sentence_vectors))])
            self._index.remove([r for r, _ in old], [t for _, t in old])
            if write.chunks:
                self._index.add(rows, np.stack(write.vectors), write.lexical)
            self.version += 1
            if self._index.dead > max(1024, len(self._index)):
                self._reload()

    def delete(self, doc_id: str) -> bool:
        """Remove a document; False if there was none."""
        with self.lock:
            self._fresh()
            old = self._all("SELECT row, lexical FROM chunks WHERE doc_id = ?", doc_id)
            with self._transaction():
                gone = self._db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,)).rowcount
                for table in ("chunks", "sentences"):
                    self._db.execute(f"DELETE FROM {table} WHERE doc_id = ?", (doc_id,))
            self._index.remove([r for r, _ in old], [t for _, t in old])
            self.version += 1
            return bool(gone)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction: committed (durably: synchronous=FULL) when the block ends,
        rolled back if it raises; a disk or database failure is a StorageError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise StorageError(f"cannot write collection at {self.folder}: {exc}") from exc
            raise

    def origin(self, doc_id: str) -> str | None:
        found = self._one("SELECT origin FROM documents WHERE doc_id = ?", doc_id)
        return None if found is None else str(found[0])


class _Chunks(Sequence[ChunkRecord]):
    """Chunks by row (rows of deleted versions still read: a hit in flight keeps its text)."""

    def __init__(self, kb: KnowledgeBase):
        self._kb = kb

    def __len__(self) -> int:
        return self._kb.count()

    def __getitem__(self, row: Any) -> Any:
        found = self._kb._one(f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE row = ?", int(row))
        if found is None:
            raise IndexError(f"no chunk row {row}")
        return ChunkRecord(*found)

    def __iter__(self) -> Iterator[ChunkRecord]:
        return iter([ChunkRecord(*r) for r in self._kb._all(f"SELECT {CHUNK_COLUMNS} FROM chunks ORDER BY row")])


class _Documents(Mapping[str, DocumentRecord]):
    def __init__(self, kb: KnowledgeBase):
        self._kb = kb

    def __len__(self) -> int:
        return int(self._kb._one("SELECT count(*) FROM documents")[0])

    def __getitem__(self, doc_id: str) -> DocumentRecord:
        found = self._kb._one("SELECT doc_id, metadata, text, sections, content_hash FROM documents "
                              "WHERE doc_id = ?", doc_id)
        if found is None:
            raise KeyError(doc_id)
        return DocumentRecord(found[0], json.loads(found[1]), found[2], json.loads(found[3]), found[4])

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._kb._all("SELECT doc_id FROM documents ORDER BY rowid")])
