"""A live collection in Milvus: documents added, replaced and deleted while it serves,
with the promises of rag.stores.local.live, kept without transactions (Milvus has none across rows).

The layout (five Milvus collections, keys, pointers, intents) is in rag.stores.milvus.versions.

A write: claim a gen (its intent recorded in pending, naming it, then read back:
rag.stores.milvus.claims), insert the new version's rows, upsert the document's pointer
row (one row: atomic), delete the old version's rows by key, drop the intent. A delete:
intent, delete the pointer row, delete the rows, drop the intent. While a snapshot is
open (rag.stores.milvus.snapshot), the old rows and the intent stay until it closes.
- never half a document: readers keep only hits whose gen is their document's live gen,
  so rows of a version not yet pointed to, or no longer, are never shown; a crash leaves
  such rows behind, and the next open removes them (named by the intents left in
  pending: recovery costs what the interrupted writes cost, not the collection);
- replicas cannot corrupt each other: no two versions with rows stored share a gen (the
  claim), so a version's keys are its own, and removing one never removes another's;
- acknowledged means durable: each call returns after Milvus logged it (a cluster's
  message log; Milvus Lite's write-ahead file, handed to the OS at every call and fsynced
  when it rolls over: a killed process loses nothing, tested; a power cut may);
- read your writes, no stale passages: this process's queries and writes share the
  collection's lock, and the pointers a query checks are updated before a write returns;
  a cluster collection written by another process is noticed by the stamp (one key read
  per query; 63 random bits, so two writers' stamps differ) and its pointers reloaded;
- writes cost what the document costs: keyed inserts, a one-row upsert, keyed deletes;
  a replaced document's unchanged chunks and sentences reuse its old version's vectors.

Left out: two processes writing one document at once (the last pointer wins, whole; the
other version's rows may stay behind, hidden: space, not correctness), and a registry of
collections in Milvus itself (names and manifests are files under the index folder, as
for the local store: rag.collections). Milvus Lite serves one process, so the tests of
several writers use two clients in one process and processes that take turns; what only
a server with several processes at once would show is in rag.stores.milvus.claims.

Why one module of ~490 lines: the write protocol (intent, insert, pointer, delete, recover)
is one transaction spread over steps that share the collection's private state, and the
row views and `OldVersion` read that state too; split, each piece would reach into the
others' privates. Its layout (names, keys, pointers) is already apart, in `versions`.
"""

import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from functools import lru_cache
from typing import Any

import numpy as np

from rag.errors import BadQueryError, NotFoundError
from rag.lexical import tokenize
from rag.records import ChunkRecord, DocumentRecord
from rag.stores.base import LiveWrites, Ranking, Write
from rag.stores.milvus.claims import IN_FLIGHT, claim, intent, leftovers, new_id
from rag.stores.milvus.client import (
    BATCH,
    CACHE_ROWS,
    CHUNK_COLUMNS,
    NO_VECTOR,
    PART_CHARS,
    TOP_K,
    Searches,
    clipped,
    connect,
    filter_expression,
    in_batches,
    is_lite,
    milvus_errors,
    public_uri,
    quote,
    scored_ranking,
    sorted_ranking,
)
from rag.stores.milvus.snapshot import LiveSnapshot
from rag.stores.milvus.versions import KEY_BITS, POINTER_FIELDS, STAMP, Pointer, keys, names, sentence_ranges
from rag.types import Filters

FLUSH_ROWS = 4_096  # Milvus Lite: unflushed rows are filtered by a scan (~12 us a row), flushed ones by index
RECOVER_AFTER_S = 600  # on a cluster, an intent this old belongs to a writer that died


class MilvusCollection(LiveWrites, Searches):
    """One live collection in Milvus: the ChunkStore the retriever searches, and the
    writer of its documents (the interface of rag.stores.local.live.KnowledgeBase)."""

    def __init__(self, uri: str, manifest: dict[str, Any], token: str | None = None):
        store = manifest["store"]
        self.manifest, self.dimension = manifest, int(manifest["model"]["dimension"])
        self._where, self._names = public_uri(uri), names(store["prefix"], store["tag"])
        self._shared = not is_lite(uri)  # Milvus Lite is one process's: no other writer to notice
        self.version, self.lock, self.closed = 0, threading.RLock(), False
        self._connect = lambda: connect(uri, store["prefix"], token, 10.0)
        self._connection: Any = self._connect()
        self._pointers: dict[str, Pointer] = {}
        self._stamp: int | None = None
        self._last_gen = 0
        self._unflushed = 0  # rows this process inserted since its last flush (Milvus Lite)
        self._snapshots = 0  # open snapshots: while there are any, replaced versions stay (`_drop`)
        self._deferred: dict[int, Pointer] = {}  # a write's intent key -> the version it replaced
        try:
            with milvus_errors("open a collection in", self._where):
                for name in self._names.values():
                    self._client.load_collection(name)  # released in every new Milvus Lite process
                self._reload()
                self._recover()
        except BaseException:
            self._connection.close()
            raise
        self._chunk = lru_cache(maxsize=CACHE_ROWS)(self._fetch_chunk)  # keys are never reused: never stale
        self.chunks = _Chunks(self)
        self.documents = _Documents(self)

    @property
    def build_id(self) -> str:
        return f"live-{self.version}"

    # ------------------------------------------------------------------ reading (ChunkStore)

    def count(self) -> int:
        with self.lock:
            self._fresh()
            return sum(p.chunks for p in self._pointers.values())

    def row_of(self, chunk_id: str) -> int | None:
        found = self._query("chunks", f"chunk_id == {quote(chunk_id)}", ["row", "doc_id", "gen"])
        return next((r["row"] for r in found if self._is_live(r)), None)

    def rows_of(self, doc_id: str) -> list[int]:
        pointer = self.pointer(doc_id)
        return pointer.keys("chunks") if pointer is not None else []  # written in document order

    def chunk_count(self, doc_id: str) -> int:
        pointer = self.pointer(doc_id)
        return pointer.chunks if pointer is not None else 0

    def origin(self, doc_id: str) -> str | None:
        pointer = self.pointer(doc_id)
        return pointer.origin if pointer is not None else None

    def pointer(self, doc_id: str) -> Pointer | None:
        with self.lock:
            self._fresh()
            return self._pointers.get(doc_id)

    def unknown(self, field: str, values: Sequence[str]) -> list[str]:
        with self.lock:
            self._fresh()
            if field == "doc_ids":
                known = set(self._pointers)
            elif field == "sources":
                known = {p.source for p in self._pointers.values()}
            else:  # one query for all; per value only for those a full page of matches may have hidden
                wanted = sorted(set(values))
                found = self._query("chunks", f"section in [{', '.join(map(quote, wanted))}]",
                                    ["doc_id", "gen", "section"], TOP_K)
                known = {r["section"] for r in found if self._is_live(r)}
                if len(found) >= TOP_K:
                    known |= {v for v in set(wanted) - known if any(self._is_live(r) for r in self._query(
                        "chunks", f"section == {quote(v)}", ["doc_id", "gen"], 64))}
        return sorted(set(values) - known)

    def sentences(self, row: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        chunk = self.chunks[row]
        lo, hi = self._sentence_range(row)
        found = sorted(self._get("sentences", keys(row >> KEY_BITS, hi - lo, lo), ["char_start", "char_end", "vector"]),
                       key=lambda s: s["char_start"])
        overlapping = [s for s in found if s["char_start"] < chunk.char_end and s["char_end"] > chunk.char_start]
        return clipped(chunk, overlapping, self.dimension)

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]:
        """Any version's vectors (equal text, equal vector); a filter over every row, so a
        write reuses its document's old version instead (`reusable`)."""
        kind, column = ("sentences", "text_hash") if sentences else ("chunks", "embed_hash")
        out: dict[str, np.ndarray] = {}
        for batch in in_batches(dict.fromkeys(hashes), 500):
            for r in self._query(kind, f"{column} in [{', '.join(map(quote, batch))}]", [column, "vector"]):
                out.setdefault(r[column], np.asarray(r["vector"], dtype=np.float32))
        return out

    def reusable(self, doc_id: str) -> "OldVersion | None":
        """What a write of `doc_id` may take vectors from: its live version's, read by key."""
        pointer = self.pointer(doc_id)
        return OldVersion(self, pointer) if pointer is not None else None

    @property
    def _client(self) -> Any:
        """The Milvus client; made again after `release` (callers hold the lock)."""
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def release(self) -> None:
        """Give back the client (its channel's descriptors) and the cached rows, as an LRU of
        open collections does with the least used; under the lock, so never mid-read or
        mid-write. The next use connects again: a request that holds this object still works."""
        with self.lock:
            if self._connection is not None and not self.closed:
                self._connection.close()
                self._connection = None
                self._chunk.cache_clear()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _search(self, field: str, query: Any, metric: str, depth: int, filters: Filters) -> Ranking:
        expression = filter_expression(filters)
        with self.lock:
            self._fresh()
            if expression is None or not self._pointers or depth <= 0:
                return sorted_ranking([])
            with self._calling("read"):
                hits = self._client.search(self._names["chunks"], data=[query], anns_field=field,
                                           limit=min(depth, TOP_K), filter=expression, output_fields=["doc_id", "gen"],
                                           search_params={"metric_type": metric})[0]
            return scored_ranking([h for h in hits if self._is_live(h["entity"])], metric)

    def _is_live(self, row: dict[str, Any]) -> bool:
        pointer = self._pointers.get(row["doc_id"])
        return pointer is not None and pointer.gen == row["gen"]

    def _fetch_chunk(self, row: int) -> tuple[ChunkRecord, int, int]:
        found = self._get("chunks", [row], [*CHUNK_COLUMNS, "sentence_lo", "sentence_hi"])
        if not found:
            raise IndexError(f"no chunk row {row}")
        r = found[0]
        return (ChunkRecord(**{**{c: r[c] for c in CHUNK_COLUMNS}, "section": r["section"] or None}),
                r["sentence_lo"], r["sentence_hi"])

    def _sentence_range(self, row: int) -> tuple[int, int]:
        _, lo, hi = self._chunk(row)
        return lo, hi

    # ------------------------------------------------------------------ pointers

    def _reload(self) -> None:
        """Every document's pointer, and the stamp they were read under."""
        pointers, stamp = {}, None
        for r in self._scan("documents", ["doc_id", *POINTER_FIELDS]):
            if r["doc_id"] == STAMP:
                stamp = r["gen"]
            else:
                pointers[r["doc_id"]] = Pointer(**{f: r[f] for f in POINTER_FIELDS})
        self._pointers, self._stamp = pointers, stamp

    def _fresh(self) -> None:
        """Another process's write (a cluster's collection only) moved the stamp: reload."""
        if self.closed:  # a query that waited on the lock while the collection was deleted: a 404
            raise NotFoundError(f"the collection {self._names['chunks']} was deleted")
        if self._shared and self._read_stamp() != self._stamp:
            self._reload()

    def _read_stamp(self) -> int | None:
        found = self._get("documents", [STAMP], ["gen"])
        return found[0]["gen"] if found else None

    def _recover(self) -> None:
        """Remove the rows of writes that never finished: of every version a dead writer's
        intent names, those no document points to and no other intent names."""
        cutoff = time.time() - (RECOVER_AFTER_S if self._shared else -1)
        left = list(self._scan("pending", ["gen", "at", "versions"]))
        for key, removed in leftovers(left, self._pointers.values(), cutoff):  # the rule: rag.stores.milvus.claims
            for version in removed:
                self._delete_version(version)
            self._client.delete(self._names["pending"], ids=[key])

    # ------------------------------------------------------------------ writing

    def _apply(self, write: Write) -> None:
        """Each document of the write as its own version (one write holds one document,
        but for `rag bench writes`'s fills): its switch is atomic, the write as a whole is not."""
        by_doc: dict[str, tuple[list[int], list[int]]] = {d.doc_id: ([], []) for d in write.documents}
        for i, chunk in enumerate(write.chunks):
            by_doc[chunk.doc_id][0].append(i)
        for i, sentence in enumerate(write.sentences):
            by_doc[sentence.doc_id][1].append(i)
        with self.lock, self._calling("write to"):
            self._fresh()
            drafts = {doc.doc_id: self._draft(write, doc, *by_doc[doc.doc_id]) for doc in write.documents}
            intents, self._last_gen = claim(self._client, self._names, {  # each its own gen, its intent recorded
                d: (new, self._pointers.get(d)) for d, (new, _) in drafts.items()}, self._last_gen)
            versions = {d: new for d, (_, new) in intents.items()}
            rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ("parts", "chunks", "sentences")}
            try:
                for doc in write.documents:
                    self._rows(write, doc, versions[doc.doc_id], drafts[doc.doc_id][1], *by_doc[doc.doc_id], rows)
                for kind, batch in rows.items():
                    self._insert(kind, batch, per=64 if kind == "parts" else BATCH)  # parts: ~4 MB a message
                self._upsert_pointers({d: asdict(new) for d, new in versions.items()})  # the switch: one row a doc
                old = {d: self._pointers.get(d) for d in versions}
                self._pointers.update(versions)
                for doc_id, (key, _) in intents.items():
                    self._finish(key, old[doc_id])
            finally:  # a write cut off leaves its intents to the next open's recovery; a deferred one is in flight
                IN_FLIGHT.difference_update(key for key, _ in intents.values() if key not in self._deferred)
            self._unflushed += len(write.chunks) + len(write.sentences)
            if not self._shared and self._unflushed >= FLUSH_ROWS:  # a cluster flushes by itself
                for kind in ("chunks", "parts", "sentences"):
                    self._client.flush(self._names[kind])
                self._unflushed = 0

    def _draft(self, write: Write, doc: DocumentRecord, chunks: list[int], sentences: list[int]
               ) -> tuple[Pointer, list[str]]:
        """A new version of `doc`, its gen not yet claimed (0), and the pieces of its text."""
        blob = json.dumps({"metadata": doc.metadata, "sections": doc.sections, "text": doc.text}, ensure_ascii=False)
        pieces = [blob[i:i + PART_CHARS] for i in range(0, len(blob), PART_CHARS)]
        if max(len(chunks), len(sentences), len(pieces)) >> KEY_BITS:
            raise BadQueryError(f"document '{doc.doc_id}' is too big for one write: at most {1 << KEY_BITS} "
                                "chunks, sentences and 16,000-character pieces")
        return Pointer(0, len(chunks), len(sentences), len(pieces), write.origin, str(doc.metadata.get("source", "")),
                       time.time_ns(), doc.content_hash), pieces

    def _rows(self, write: Write, doc: DocumentRecord, new: Pointer, pieces: list[str], chunks: list[int],
              sentences: list[int], rows: dict[str, list[dict[str, Any]]]) -> None:
        """The rows of `doc`'s claimed version `new`, appended to `rows` by kind."""
        rows["parts"] += [{"id": key, "doc_id": doc.doc_id, "gen": new.gen, "part": k, "text": p, "_": NO_VECTOR}
                          for k, (key, p) in enumerate(zip(new.keys("parts"), pieces))]
        spans = sentence_ranges([write.chunks[i] for i in chunks], [write.sentences[j] for j in sentences])
        rows["chunks"] += [
            {"row": key, **{c: getattr(write.chunks[i], c) for c in CHUNK_COLUMNS},
             "section": write.chunks[i].section or "", "source": new.source, "gen": new.gen, "sentence_lo": lo,
             "sentence_hi": hi, "lexical": " ".join(tokenize(write.lexical[i])),
             "vector": np.asarray(write.vectors[i], dtype=np.float32).tolist()}
            for key, i, (lo, hi) in zip(new.keys("chunks"), chunks, spans)]
        rows["sentences"] += [
            {"row": key, "doc_id": doc.doc_id, "char_start": write.sentences[j].char_start,
             "char_end": write.sentences[j].char_end, "text_hash": write.sentences[j].text_hash, "gen": new.gen,
             "vector": np.asarray(write.sentence_vectors[j], dtype=np.float32).tolist()}
            for key, j in zip(new.keys("sentences"), sentences)]

    def delete(self, doc_id: str) -> bool:
        """Remove a document; False if there was none."""
        with self.lock, self._calling("write to"):
            self._fresh()
            old = self._pointers.get(doc_id)
            if old is None:
                return False
            key = new_id()  # a delete makes no rows: its intent needs a key, not a gen
            IN_FLIGHT.add(key)
            try:
                self._insert("pending", [intent(key, doc_id, [old])])
                self._client.delete(self._names["documents"], ids=[doc_id])  # the switch
                del self._pointers[doc_id]
                self._finish(key, old)
            finally:
                if key not in self._deferred:
                    IN_FLIGHT.discard(key)
            return True

    def _finish(self, key: int, old: Pointer | None) -> None:
        """After the switch: tell other processes, remove the old version, drop the intent."""
        self.version += 1
        if self._shared:
            self._stamp = new_id()  # random: two writers' stamps are equal with odds ~2**-63
            self._upsert_pointers({STAMP: {**dict.fromkeys(POINTER_FIELDS, 0), "gen": self._stamp, "origin": "",
                                           "source": "", "content_hash": ""}})
        self._drop(key, old)

    def _drop(self, key: int, old: Pointer | None) -> None:
        """Remove a replaced version, then its write's intent; while a snapshot is open, only once
        the last one closes (it may read that version): the intent stays, so if this process dies
        first, the next open's recovery removes the version."""
        if old is not None and self._snapshots:
            self._deferred[key] = old
            return
        if old is not None:
            self._delete_version(old)
        self._client.delete(self._names["pending"], ids=[key])

    @contextmanager
    def snapshot(self) -> Iterator[LiveSnapshot]:
        """The collection as of now: the pointers copied, their versions kept until the block
        ends (rag.stores.milvus.snapshot; another replica's writes are its limit)."""
        with self.lock:
            self._fresh()
            pointers, self._snapshots = dict(self._pointers), self._snapshots + 1
        try:
            yield LiveSnapshot(self.manifest, pointers, self._read, self.pointer, self.dimension)
        finally:
            with self.lock:
                self._snapshots -= 1
                if not self._snapshots:
                    deferred, self._deferred = self._deferred, {}
                    try:  # closed (deleted, or shut down): left, as by a write cut off, to the next open's recovery
                        with self._calling("write to"):
                            for key, old in deferred.items() if not self.closed else ():
                                self._drop(key, old)
                    finally:
                        IN_FLIGHT.difference_update(deferred)

    def _read(self, kind: str, ids: list[Any], fields: list[str]) -> list[dict[str, Any]]:
        with self.lock:  # as every call on the client: release() may close it meanwhile
            self._fresh()
            return self._get(kind, ids, fields)

    def _delete_version(self, version: Pointer) -> None:
        for kind in ("chunks", "parts", "sentences"):
            for batch in in_batches(version.keys(kind), BATCH):
                self._client.delete(self._names[kind], ids=batch)

    # ------------------------------------------------------------------ Milvus calls

    def _upsert_pointers(self, rows: dict[str, dict[str, Any]]) -> None:
        self._client.upsert(self._names["documents"], [{"doc_id": d, **r, "_": NO_VECTOR} for d, r in rows.items()])

    def _calling(self, doing: str) -> Any:
        return milvus_errors(doing, self._where)

    def _insert(self, kind: str, rows: list[dict[str, Any]], per: int = BATCH) -> None:
        for batch in in_batches(rows, per):
            self._client.insert(self._names[kind], batch)

    def _get(self, kind: str, ids: list[Any], fields: list[str]) -> list[dict[str, Any]]:
        with self._calling("read"):
            return [r for batch in in_batches(ids, BATCH)
                    for r in self._client.get(self._names[kind], ids=batch, output_fields=fields)]

    def _query(self, kind: str, expression: str, fields: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        with self._calling("read"):
            return list(self._client.query(self._names[kind], filter=expression, output_fields=fields,
                                           **({"limit": limit} if limit else {})))

    def _scan(self, kind: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        """Every row, in batches (a query's result is capped at 16,384 rows)."""
        iterator = self._client.query_iterator(self._names[kind], batch_size=BATCH, filter="", output_fields=fields)
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()


class OldVersion:
    """A document's live version as a source of vectors for its next write (rag.ingest.build's
    `previous`): its chunks and sentences read by key, kept where the hash matches."""

    def __init__(self, collection: MilvusCollection, pointer: Pointer):
        self.manifest, self._collection, self._pointer = collection.manifest, collection, pointer

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]:
        kind, column = ("sentences", "text_hash") if sentences else ("chunks", "embed_hash")
        wanted = set(hashes)
        return {r[column]: np.asarray(r["vector"], dtype=np.float32)
                for r in self._collection._get(kind, self._pointer.keys(kind), [column, "vector"])
                if r[column] in wanted}


class _Chunks(Sequence[ChunkRecord]):
    """Chunks by row (rows of replaced versions still read while they exist: a hit in flight keeps its text)."""

    def __init__(self, collection: MilvusCollection):
        self._collection = collection

    def __len__(self) -> int:
        return self._collection.count()

    def __getitem__(self, row: Any) -> Any:
        return self._collection._chunk(int(row))[0]

    def __iter__(self) -> Iterator[ChunkRecord]:
        for doc_id in self._collection.documents:
            yield from (self[r] for r in self._collection.rows_of(doc_id))


class _Documents(Mapping[str, DocumentRecord]):
    """Documents by id, in the order they were last written."""

    def __init__(self, collection: MilvusCollection):
        self._collection = collection

    def __len__(self) -> int:
        with self._collection.lock:
            self._collection._fresh()
            return len(self._collection._pointers)

    def __getitem__(self, doc_id: str) -> DocumentRecord:
        with self._collection.lock:  # the pointer and its version's text, with no write of this process between
            pointer = self._collection.pointer(doc_id)
            if pointer is None:
                raise KeyError(doc_id)
            parts = sorted(self._collection._get("parts", pointer.keys("parts"), ["part", "text"]),
                           key=lambda p: p["part"])
        if [p["part"] for p in parts] != list(range(pointer.parts)):
            raise KeyError(doc_id)  # replaced or deleted by another process since the pointer was read
        record = json.loads("".join(p["text"] for p in parts))
        return DocumentRecord(doc_id, record["metadata"], record["text"], record["sections"], pointer.content_hash)

    def __iter__(self) -> Iterator[str]:
        with self._collection.lock:
            self._collection._fresh()
            pointers = list(self._collection._pointers.items())
        return iter([d for d, _ in sorted(pointers, key=lambda item: item[1].order)])
