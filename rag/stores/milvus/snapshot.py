"""Snapshots of the Milvus stores (`rag.stores.base.Snapshot`): everything a build or a live
collection holds, read by key in batches as it was when the snapshot's block started.

- a build (`BuildSnapshot`, from rag.stores.milvus.store) never changes: its rows are
  read by key (rows and ordinals run from 0), in row order, which is the build's document
  order for documents, chunks and sentences alike. A build is dropped once two newer ones
  went live: a snapshot still reading it then fails with IndexBusyError (read it again);
- a live collection (`LiveSnapshot`, from rag.stores.milvus.live) reads the versions its
  documents' pointers named when the block started (copied under the collection's lock);
  the collection keeps those versions until the last snapshot closes (its writes defer
  removing a replaced version). Documents come in the order they were last written
  (`Pointer.order`, then doc_id); chunks and sentences grouped by document in that order,
  each document's in its version's order (by key: the document's order).

The limit, on a shared cluster: only this process's writes wait for its snapshots; another
replica's write (or its recovery, for an intent older than 10 minutes) may remove a version
mid-snapshot. A document whose version lost rows is then read again at its current version,
whole (its record, chunks and sentences from that one version, resolved once per document
and kept), or left out if it was deleted; an iterator that had already read the document
from the removed version keeps what it read, so across iterators that document may mix.

Left out: a snapshot that outlives its block, and resuming one after a failed read.
"""

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from rag.errors import IndexCorruptError
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.milvus.client import BATCH, CHUNK_COLUMNS, in_batches, quote
from rag.stores.milvus.versions import Pointer

Read = Callable[[str, list[Any], list[str]], list[dict[str, Any]]]  # kind, keys, fields -> the rows found
Query = Callable[[str, str, list[str]], list[dict[str, Any]]]  # kind, expression, fields -> rows
PARTS_A_READ = 64  # a part holds up to 64 KB: ~4 MB a message, under Milvus's 64 MB
DOCUMENTS_A_QUERY = 256
SENTENCE_FIELDS = ["doc_id", "char_start", "char_end", "text_hash"]
KEY = {"chunks": "row", "sentences": "row", "parts": "id"}


class BuildSnapshot:
    """A Milvus build (see the module docstring); `counts`: its documents, chunks and sentences."""

    def __init__(self, manifest: dict[str, Any], read: Read, query: Query, dimension: int,
                 counts: tuple[int, int, int]):
        self.manifest, self._read, self._query, self._dimension = manifest, read, query, dimension
        self._documents, self._chunks, self._sentences = counts

    def documents(self) -> Iterator[tuple[DocumentRecord, str]]:
        first = 0  # the writer gives parts consecutive ids in document order: a document's are read by key
        for start in range(0, self._documents, DOCUMENTS_A_QUERY):
            found = sorted(self._query("documents", f"ordinal >= {start} and ordinal < {start + DOCUMENTS_A_QUERY}",
                                       ["doc_id", "ordinal", "parts", "content_hash"]), key=lambda d: d["ordinal"])
            keys = list(range(first, first + sum(d["parts"] for d in found)))
            pieces = {r["id"]: r for batch in in_batches(keys, PARTS_A_READ)
                      for r in self._read("parts", batch, ["id", "doc_id", "part", "text"])}
            for d in found:
                mine: Sequence[dict[str, Any] | None] = [pieces.get(first + i) for i in range(d["parts"])]
                if any(p is None or (p["doc_id"], p["part"]) != (d["doc_id"], i) for i, p in enumerate(mine)):
                    by_filter = self._query("parts", f"doc_id == {quote(d['doc_id'])}", ["part", "text"])
                    by_filter.sort(key=lambda p: p["part"])  # a build not laid out as this writer does
                    mine = by_filter
                yield _document(d["doc_id"], mine, d["parts"], d["content_hash"]), "build"
                first += d["parts"]

    def chunks(self, batch: int) -> Iterator[tuple[list[ChunkRecord], np.ndarray]]:
        for rows in in_batches(range(self._chunks), _checked(batch)):
            found = self._by_row("chunks", rows, ["row", *CHUNK_COLUMNS, "vector"])
            yield [_chunk(r) for r in found], _vectors(found, self._dimension)

    def sentences(self, batch: int) -> Iterator[tuple[list[SentenceRecord], np.ndarray]]:
        for rows in in_batches(range(self._sentences), _checked(batch)):
            found = self._by_row("sentences", rows, ["row", *SENTENCE_FIELDS, "vector"])
            yield [_sentence(r) for r in found], _vectors(found, self._dimension)

    def _by_row(self, kind: str, rows: list[int], fields: list[str]) -> list[dict[str, Any]]:
        found = {r["row"]: r for r in self._read(kind, rows, fields)}
        if missing := set(rows) - found.keys():
            raise IndexCorruptError(f"the build lacks {kind} rows {sorted(missing)[:5]}")
        return [found[r] for r in rows]


class LiveSnapshot:
    """A live collection's documents at the versions `pointers` name (see the module
    docstring); `current(doc_id)` reads a document's pointer as it is now."""

    def __init__(self, manifest: dict[str, Any], pointers: dict[str, Pointer], read: Read,
                 current: Callable[[str], Pointer | None], dimension: int):
        self.manifest, self._read, self._current, self._dimension = manifest, read, current, dimension
        self._order = [d for d, _ in sorted(pointers.items(), key=lambda item: (item[1].order, item[0]))]
        self._versions: dict[str, Pointer | None] = dict(pointers)  # the version read of each; None: left out
        self._lock = threading.Lock()  # the iterators may run in several threads

    def documents(self) -> Iterator[tuple[DocumentRecord, str]]:
        for doc_id, pointer, parts in self._rows("parts", ["id", "part", "text"], PARTS_A_READ):
            yield _document(doc_id, parts, pointer.parts, pointer.content_hash), pointer.origin

    def chunks(self, batch: int) -> Iterator[tuple[list[ChunkRecord], np.ndarray]]:
        rows = (r for _, _, found in self._rows("chunks", ["row", *CHUNK_COLUMNS, "vector"], BATCH) for r in found)
        for found in in_batches(rows, _checked(batch)):  # batches across documents
            yield [_chunk(r) for r in found], _vectors(found, self._dimension)

    def sentences(self, batch: int) -> Iterator[tuple[list[SentenceRecord], np.ndarray]]:
        rows = (r for _, _, found in self._rows("sentences", ["row", *SENTENCE_FIELDS, "vector"], BATCH)
                for r in found)
        for found in in_batches(rows, _checked(batch)):
            yield [_sentence(r) for r in found], _vectors(found, self._dimension)

    def _rows(self, kind: str, fields: list[str], per: int) -> Iterator[tuple[str, Pointer, list[dict[str, Any]]]]:
        """Each document left in the snapshot, in order, with its version's rows of `kind` in
        key order: the keys of several small documents read at once, a big one's `per` at a time."""
        group: list[str] = []
        size = 0
        for doc_id in self._order:
            group.append(doc_id)
            size += _count(self._versions[doc_id], kind)
            if size >= per:
                yield from self._group(group, kind, fields, per)
                group, size = [], 0
        yield from self._group(group, kind, fields, per)

    def _group(self, doc_ids: list[str], kind: str, fields: list[str], per: int
               ) -> Iterator[tuple[str, Pointer, list[dict[str, Any]]]]:
        versions = {d: self._versions[d] for d in doc_ids}
        found = self._keyed(kind, [k for p in versions.values() if p is not None for k in p.keys(kind)], fields, per)
        for doc_id, pointer in versions.items():
            rows = [found.get(k) for k in pointer.keys(kind)] if pointer is not None else []
            # rows missing: another replica's write removed the version meanwhile (module docstring); or
            # another iterator found that and resolved the document already
            while pointer is not None and (None in rows or self._versions[doc_id] is not pointer):
                pointer = self._resolve(doc_id, pointer, kind)
                if pointer is not None:
                    again = self._keyed(kind, pointer.keys(kind), fields, per)
                    rows = [again.get(k) for k in pointer.keys(kind)]
            if pointer is not None:
                yield doc_id, pointer, [r for r in rows if r is not None]

    def _keyed(self, kind: str, keys: list[int], fields: list[str], per: int) -> dict[int, dict[str, Any]]:
        return {r[KEY[kind]]: r for batch in in_batches(keys, per) for r in self._read(kind, batch, fields)}

    def _resolve(self, doc_id: str, failed: Pointer, kind: str) -> Pointer | None:
        """The version to read of a document once `failed` is found gone, or was resolved by
        another iterator: its current one, read once and kept for every iterator; None if deleted."""
        with self._lock:
            known = self._versions[doc_id]
            if known is not None and known.gen == failed.gen:
                now = self._current(doc_id)
                if now is not None and now.gen == failed.gen:
                    raise IndexCorruptError(f"the live version of document {doc_id!r} lacks {kind} rows")
                self._versions[doc_id] = known = now
            return known


def _document(doc_id: str, parts: Sequence[dict[str, Any] | None], count: int, content_hash: str) -> DocumentRecord:
    if [p["part"] if p is not None else None for p in parts] != list(range(count)):
        raise IndexCorruptError(f"document {doc_id!r} lacks parts of its text")
    record = json.loads("".join(p["text"] for p in parts if p is not None))
    return DocumentRecord(doc_id, record["metadata"], record["text"], record["sections"], content_hash)


def _chunk(row: dict[str, Any]) -> ChunkRecord:
    return ChunkRecord(**{**{c: row[c] for c in CHUNK_COLUMNS}, "section": row["section"] or None})


def _sentence(row: dict[str, Any]) -> SentenceRecord:
    return SentenceRecord(**{f: row[f] for f in SENTENCE_FIELDS})


def _vectors(rows: list[dict[str, Any]], dimension: int) -> np.ndarray:
    return np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), dimension)


def _count(pointer: Pointer | None, kind: str) -> int:
    return 0 if pointer is None else int(getattr(pointer, kind))


def _checked(batch: int) -> int:
    if batch < 1:
        raise ValueError(f"a batch holds at least one row, not {batch}")
    return batch
