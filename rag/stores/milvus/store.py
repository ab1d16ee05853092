"""The Milvus store: a build's documents, chunks and sentences in Milvus collections,
searched there (dense inner product, BM25, filters pushed down as expressions).

A build is the collections `<prefix>_<tag>_<kind>`, the tag made by its writer (the
build id comes with the manifest, at commit, as a local build's folder gets its name):
- chunks: row (INT64 key = the store's row), the ChunkRecord fields (section "" for none),
  source (the document's metadata["source"], copied so a filter needs no join), vector
  (IP), lexical (our own BM25 tokens, space-separated, so Milvus scores the same terms as
  the local store) and sparse (Milvus's BM25 function of lexical, k1 and b the local
  store's; its scores, divided by k1 + 1 as Lucene 8+ does, equal the local store's);
- documents: doc_id (key), ordinal (add order), content hash; parts: each document's
  metadata, sections and text as one JSON text in PART_CHARS pieces (a VARCHAR holds
  65,535 bytes, a JSON field 65,536: a long text or many sections need more);
- sentences: spans, text hashes, vectors.
`<prefix>_meta` holds one row, "current": the live build's id and tag, and the tags kept; the
manifest (hundreds of KB for a big corpus: it lists every document's hash) is stored in the
build's parts collection like a document, under the doc_id "" that no document can have.
Commit flushes the build, then upserts that row (one row: atomic), then drops all builds
but the live one and the one before it. Collections read with Strong consistency; Milvus
wants a vector in every collection, hence the 2-dimension `_` placeholders.

Milvus Lite (a URI ending in .db) differs (rag.stores.milvus.client handles it). Its BM25
statistics are per segment: exact for a build of one segment (up to ~128 MB), drifting beyond.

Left out: concurrent builders (the last commit wins), removing builds of a writer killed
before `__exit__`, and collection tuning (shards, partitions, mmap).
"""

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import numpy as np

from rag.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
)
from rag.lexical import tokenize
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.base import Ranking
from rag.stores.manifest import IndexSpec
from rag.stores.milvus.client import (
    BATCH,
    CACHE_ROWS,
    CHUNK_COLUMNS,
    FILTER_COLUMNS,
    NO_VECTOR,
    PART_CHARS,
    PLACEHOLDER_INDEX,
    TOP_K,
    Searches,
    build_layouts,
    clipped,
    connect,
    create_indexed,
    drop,
    filter_expression,
    in_batches,
    index_choice,
    is_lite,
    milvus_errors,
    public_uri,
    quote,
    scored_ranking,
    sorted_ranking,
)
from rag.types import Filters

KEEP_BUILDS = 2  # the live build and the one before it, for a reader half-way through opening it
MANIFEST = ""  # the doc_id of the manifest's pieces: no document has an empty id


def open_milvus(uri: str, spec: IndexSpec | None, prefix: str = "rag", *, token: str | None = None,
                dimension: int | None = None, timeout: float = 10.0) -> "MilvusStore":
    """The live build at `uri`, refused if built with other settings than `spec` or for
    vectors of another `dimension`. Only reads: a failed open writes nothing."""
    where = public_uri(uri)
    if is_lite(uri) and not Path(uri).exists():  # connecting would create it
        raise IndexMissingError(f"no index in Milvus at {where}: run `rag build` first")
    client = connect(uri, prefix, token, timeout)
    try:
        with milvus_errors("read", where):
            current = _current(client, prefix)
        if current is None:
            raise IndexMissingError(f"no index in Milvus at {where}: run `rag build` first")
        try:
            with milvus_errors("read", where):
                manifest = _read_manifest(client, _names(prefix, current["tag"])["parts"])
            diffs = spec.differences(manifest) if spec is not None else []
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"the manifest in Milvus at {where} is unreadable: {exc!r}") from exc
        if diffs:
            raise IndexMismatchError(f"index in Milvus at {where} was built with other settings "
                                     f"({'; '.join(diffs)}): run `rag build` to rebuild it")
        store = MilvusStore(client, where, prefix, current, manifest)
        if dimension not in (None, store.dimension):
            raise IndexMismatchError(f"index in Milvus at {where} holds vectors of dimension {store.dimension}, "
                                     f"the model makes {dimension}: run `rag build` to rebuild it")
        if (model := manifest.get("model", {}).get("dimension", store.dimension)) != store.dimension:
            raise IndexCorruptError(f"index in Milvus at {where} holds vectors of dimension {store.dimension} "
                                    f"for a {model}-dimension model")
        return store
    except BaseException:
        client.close()
        raise


def milvus_writer(uri: str, dimension: int, prefix: str = "rag", *, token: str | None = None,
                  timeout: float = 10.0) -> "MilvusWriter":
    """A new build at `uri`: its collections are made now, live at commit."""
    client = connect(uri, prefix, token, timeout)
    try:
        return MilvusWriter(client, uri, dimension, prefix)
    except BaseException:
        client.close()
        raise


class MilvusStore(Searches):
    """The `ChunkStore` of one build; safe to share between threads."""

    def __init__(self, client: Any, where: str, prefix: str, current: dict[str, Any], manifest: dict[str, Any]):
        self._client, self._where, self._prefix, self.build_id = client, where, prefix, current["build_id"]
        self.manifest, self._tag, self._names = manifest, current["tag"], _names(prefix, current["tag"])
        with self._reading():
            for name in self._names.values():
                client.load_collection(name)  # a no-op when loaded, needed after a cluster restart
            fields = client.describe_collection(self._names["chunks"])["fields"]
            self.dimension = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
            self._count, self._document_count = self._total("chunks"), self._total("documents")
        self.chunks, self.documents = ChunkRows(self), DocumentTexts(self)

    def count(self) -> int:
        return self._count

    def row_of(self, chunk_id: str) -> int | None:
        found = self._query("chunks", f"chunk_id == {quote(chunk_id)}", ["row"], limit=1)
        return int(found[0]["row"]) if found else None

    def rows_of(self, doc_id: str) -> list[int]:
        return sorted(int(r["row"]) for r in self._query("chunks", f"doc_id == {quote(doc_id)}", ["row"]))

    def chunk_count(self, doc_id: str) -> int:
        return self._total("chunks", f"doc_id == {quote(doc_id)}")

    def unknown(self, field: str, values: Sequence[str]) -> list[str]:
        if field == "doc_ids":
            known = {r["doc_id"] for r in self._get("documents", list(set(values)), ["doc_id"])}
        else:  # one existence query per value: a filter names few
            column = FILTER_COLUMNS[field]
            known = {v for v in set(values) if v and self._query("chunks", f"{column} == {quote(v)}", ["row"], 1)}
        return sorted(set(values) - known)

    def sentences(self, row: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        chunk = self.chunks[row]
        found = sorted(self._query("sentences", f"doc_id == {quote(chunk.doc_id)} and char_start < {chunk.char_end}"
                                   f" and char_end > {chunk.char_start}", ["row", "char_start", "char_end", "vector"]),
                       key=lambda s: (s["char_start"], s["row"]))
        return clipped(chunk, found, self.dimension)

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]:
        kind, column = ("sentences", "text_hash") if sentences else ("chunks", "embed_hash")
        first: dict[str, tuple[int, Any]] = {}  # the lowest row of each hash, as the local store
        for batch in in_batches(dict.fromkeys(hashes), 500):
            for r in self._query(kind, f"{column} in [{', '.join(map(quote, batch))}]", [column, "row", "vector"]):
                if r[column] not in first or r["row"] < first[r[column]][0]:
                    first[r[column]] = (r["row"], r["vector"])
        return {digest: np.asarray(vector, dtype=np.float32) for digest, (_, vector) in first.items()}

    def close(self) -> None:
        self._client.close()

    def _search(self, field: str, query: Any, metric: str, depth: int, filters: Filters) -> Ranking:
        expression, limit = filter_expression(filters), min(depth, TOP_K, self._count)
        if expression is None or limit <= 0:
            return sorted_ranking([])
        with self._reading():
            hits = self._client.search(self._names["chunks"], data=[query], anns_field=field, limit=limit,
                                       filter=expression, output_fields=["row"],
                                       search_params={"metric_type": metric})[0]
        return scored_ranking(hits, metric)

    def _get(self, kind: str, keys: list[Any], fields: list[str]) -> list[dict[str, Any]]:
        with self._reading():
            return [r for batch in in_batches(keys, BATCH)
                    for r in self._client.get(self._names[kind], ids=batch, output_fields=fields)]

    def _query(self, kind: str, expression: str, fields: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        with self._reading():
            return list(self._client.query(self._names[kind], filter=expression, output_fields=fields,
                                           **({"limit": limit} if limit else {})))

    def _total(self, kind: str, expression: str = "") -> int:
        return int(self._query(kind, expression, ["count(*)"])[0]["count(*)"])

    def _reading(self) -> Any:
        return milvus_errors("read", self._where, lambda: (_current(self._client, self._prefix) or {}).get("tag")
                       == self._tag)


class ChunkRows(Sequence[ChunkRecord]):
    """Chunks by row, fetched on demand; the last CACHE_ROWS read are kept."""

    def __init__(self, store: MilvusStore):
        self._store = store
        self._one = lru_cache(maxsize=CACHE_ROWS)(lambda row: self._fetch([row])[0])  # lru_cache is thread-safe

    def __len__(self) -> int:
        return self._store.count()

    @overload
    def __getitem__(self, row: int) -> ChunkRecord: ...
    @overload
    def __getitem__(self, row: slice) -> list[ChunkRecord]: ...

    def __getitem__(self, row: int | slice) -> ChunkRecord | list[ChunkRecord]:
        if isinstance(row, slice):
            return self._fetch(list(range(*row.indices(len(self)))))
        if not -len(self) <= row < len(self):
            raise IndexError(f"no chunk row {row}")
        return self._one(row % len(self))

    def __iter__(self) -> Iterator[ChunkRecord]:
        for batch in in_batches(range(len(self)), BATCH):  # rows are 0 .. count - 1: batches of keys, in order
            yield from self._fetch(batch)

    def _fetch(self, rows: list[int]) -> list[ChunkRecord]:
        found = {r["row"]: r for r in self._store._get("chunks", rows, CHUNK_COLUMNS)}
        if missing := set(rows) - found.keys():
            raise IndexCorruptError(f"build {self._store.build_id} lacks chunk rows {sorted(missing)[:5]}")
        return [ChunkRecord(**{**{c: found[r][c] for c in CHUNK_COLUMNS}, "section": found[r]["section"] or None})
                for r in rows]


class DocumentTexts(Mapping[str, DocumentRecord]):
    """Documents by id, fetched on demand; iterated in the order they were added."""

    def __init__(self, store: MilvusStore):
        self._store = store

    def __len__(self) -> int:
        return self._store._document_count

    def __getitem__(self, doc_id: str) -> DocumentRecord:
        found = self._store._get("documents", [doc_id], ["content_hash", "parts"])
        if not found:
            raise KeyError(doc_id)
        parts = sorted(self._store._query("parts", f"doc_id == {quote(doc_id)}", ["part", "text"]),
                       key=lambda p: p["part"])
        if [p["part"] for p in parts] != list(range(found[0]["parts"])):
            raise IndexCorruptError(f"build {self._store.build_id} lacks parts of document {doc_id!r}")
        record = json.loads("".join(p["text"] for p in parts))
        return DocumentRecord(doc_id, record["metadata"], record["text"], record["sections"], found[0]["content_hash"])

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), BATCH):
            found = self._store._query("documents", f"ordinal >= {start} and ordinal < {start + BATCH}",
                                       ["doc_id", "ordinal"])
            yield from (d["doc_id"] for d in sorted(found, key=lambda d: d["ordinal"]))


class MilvusWriter:
    """Writes one build (the module docstring has the layout); a context manager."""

    def __init__(self, client: Any, uri: str, dimension: int, prefix: str):
        self._client, self._where, self._prefix, self.dimension = client, public_uri(uri), prefix, dimension
        self.tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S_") + uuid.uuid4().hex[:8]
        self._names, self._committed = _names(prefix, self.tag), False
        self._rows = {kind: 0 for kind in self._names}  # next key of each collection
        self._sources: dict[str, str] = {}  # doc_id -> source, copied onto its chunks
        self._index = index_choice(uri)
        try:
            with milvus_errors("create a build in", self._where):
                for kind, (fields, indexes, functions) in build_layouts(dimension, self._index["dense"],
                                                                   self._index["analyzer"]).items():
                    create_indexed(client, self._names[kind], fields, indexes, functions)
        except BaseException:
            self._drop(self._names.values())
            raise

    def __enter__(self) -> "MilvusWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if not self._committed:
                current = None
                with suppress(Exception):  # a commit that failed after its upsert may have made this build live
                    current = _current(self._client, self._prefix)
                if current is None or current["tag"] != self.tag:
                    self._drop(self._names.values())
        finally:
            self._client.close()

    def add_documents(self, documents: Iterable[DocumentRecord]) -> None:
        for batch in in_batches(documents, BATCH):
            rows, parts = [], []
            for d in batch:
                blob = json.dumps({"metadata": d.metadata, "sections": d.sections, "text": d.text}, ensure_ascii=False)
                pieces = [blob[i:i + PART_CHARS] for i in range(0, len(blob), PART_CHARS)]
                rows.append({"doc_id": d.doc_id, "ordinal": self._next("documents", 1), "parts": len(pieces),
                             "content_hash": d.content_hash, "_": NO_VECTOR})
                first = self._next("parts", len(pieces))
                parts += [{"id": first + k, "doc_id": d.doc_id, "part": k, "text": p, "_": NO_VECTOR}
                          for k, p in enumerate(pieces)]
                self._sources[d.doc_id] = str(d.metadata.get("source", ""))
            self._insert("documents", rows)
            self._insert("parts", parts, per=64)  # ~4 MB a message

    def add_chunks(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray,
                   lexical_texts: Sequence[str] | None = None) -> None:
        """Chunks (after their documents) with their vectors; `lexical_texts` (default: the
        chunk texts) are what BM25 indexes, tokenised here as the local store does."""
        texts = [c.text for c in chunks] if lexical_texts is None else lexical_texts
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dimension) or len(texts) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks need {len(chunks)} vectors of dimension {self.dimension} "
                             f"(got {vectors.shape}) and as many lexical texts (got {len(texts)})")
        if missing := {c.doc_id for c in chunks} - self._sources.keys():
            raise ValueError(f"chunks of documents not added first: {sorted(missing)[:5]}")
        first = self._next("chunks", len(chunks))
        self._insert("chunks", [{"row": first + i, **{c: getattr(chunk, c) for c in CHUNK_COLUMNS},
                                 "section": chunk.section or "", "source": self._sources[chunk.doc_id],
                                 "lexical": " ".join(tokenize(text)), "vector": vector.tolist()}
                                for i, (chunk, vector, text) in enumerate(zip(chunks, vectors, texts))])

    def add_sentences(self, sentences: Sequence[SentenceRecord], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(sentences), self.dimension):
            raise ValueError(f"{len(sentences)} sentences need as many vectors of dimension {self.dimension}")
        first = self._next("sentences", len(sentences))
        self._insert("sentences", [{"row": first + i, "doc_id": s.doc_id, "char_start": s.char_start,
                                    "char_end": s.char_end, "text_hash": s.text_hash, "vector": v.tolist()}
                                   for i, (s, v) in enumerate(zip(sentences, vectors))])

    def commit(self, manifest: dict[str, Any]) -> str:
        """Make the build live; returns its chunks collection."""
        meta = f"{self._prefix}_meta"
        build_id = str(manifest.get("build_id") or self.tag)
        manifest = {**manifest, "build_id": build_id,
                    "store": {"backend": "milvus", "uri": self._where, "index": self._index},
                    "counts": {**manifest.get("counts", {}), "chunks": self._rows["chunks"],
                               "sentences": self._rows["sentences"]}}
        with milvus_errors("commit a build to", self._where):
            for name in self._names.values():  # sealed and persisted before any reader is sent to it
                self._client.flush(name)
            if not self._client.has_collection(meta):
                create_indexed(self._client, meta, {"key": ("VARCHAR", {"is_primary": True, "max_length": 64}),
                                             **{f: ("VARCHAR", {"max_length": 65_535})
                                                for f in ("build_id", "tag", "manifest", "history")},
                                             "_": ("FLOAT_VECTOR", {"dim": 2})}, PLACEHOLDER_INDEX)
            blob = json.dumps(manifest, ensure_ascii=False)
            pieces = [blob[i:i + PART_CHARS] for i in range(0, len(blob), PART_CHARS)]
            first = self._next("parts", len(pieces))
            self._insert("parts", [{"id": first + k, "doc_id": MANIFEST, "part": k, "text": p, "_": NO_VECTOR}
                                   for k, p in enumerate(pieces)], per=64)
            self._client.flush(self._names["parts"])
            current = _current(self._client, self._prefix)
            history = json.loads(current["history"]) if current else []
            kept = [*history, self.tag][-KEEP_BUILDS:]
            self._client.upsert(meta, [{"key": "current", "build_id": build_id, "tag": self.tag,
                                        "manifest": json.dumps({"parts": len(pieces)}),
                                        "history": json.dumps(kept), "_": NO_VECTOR}])
            self._committed = True
            self._client.flush(meta)
        self.manifest = manifest
        self._drop(n for old in history if old not in kept for n in _names(self._prefix, old).values())
        return self._names["chunks"]

    def _next(self, kind: str, count: int) -> int:
        first, self._rows[kind] = self._rows[kind], self._rows[kind] + count
        return first

    def _insert(self, kind: str, rows: list[dict[str, Any]], per: int = BATCH) -> None:
        with milvus_errors("write to", self._where):
            for batch in in_batches(rows, per):
                self._client.insert(self._names[kind], batch)

    def _drop(self, names: Iterable[str]) -> None:
        drop(self._client, names)


def _current(client: Any, prefix: str) -> dict[str, Any] | None:
    """The meta row naming the live build; None before the first commit."""
    if not client.has_collection(f"{prefix}_meta"):
        return None
    client.load_collection(f"{prefix}_meta")  # released after a restart (Milvus Lite: every new process)
    found = client.get(f"{prefix}_meta", ids=["current"], output_fields=["build_id", "tag", "manifest", "history"])
    return dict(found[0]) if found else None


def _read_manifest(client: Any, parts: str) -> dict[str, Any]:
    """A build's manifest, from its pieces in the parts collection."""
    client.load_collection(parts)
    found = sorted(client.query(parts, filter=f"doc_id == {quote(MANIFEST)}", output_fields=["part", "text"]),
                   key=lambda p: p["part"])
    manifest = json.loads("".join(p["text"] for p in found))
    if not isinstance(manifest, dict):
        raise ValueError("the manifest is not an object")
    return manifest


def _names(prefix: str, tag: str) -> dict[str, str]:
    return {kind: f"{prefix}_{tag}_{kind}" for kind in ("chunks", "documents", "parts", "sentences")}


