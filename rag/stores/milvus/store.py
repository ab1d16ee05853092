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

Reading is here (`open_milvus`, `MilvusStore`); writing a build is rag.stores.milvus.writer.

Left out: collection tuning (shards, partitions, mmap).
"""

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, overload

import numpy as np

from rag.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
)
from rag.records import ChunkRecord, DocumentRecord
from rag.stores.base import Ranking
from rag.stores.manifest import IndexSpec
from rag.stores.milvus.client import (
    BATCH,
    CACHE_ROWS,
    CHUNK_COLUMNS,
    FILTER_COLUMNS,
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
from rag.stores.milvus.snapshot import BuildSnapshot
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
            current = live_build(client, prefix)
        if current is None:
            raise IndexMissingError(f"no index in Milvus at {where}: run `rag build` first")
        try:
            with milvus_errors("read", where):
                manifest = read_manifest(client, build_names(prefix, current["tag"])["parts"])
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


class MilvusStore(Searches):
    """The `ChunkStore` of one build; safe to share between threads."""

    def __init__(self, client: Any, where: str, prefix: str, current: dict[str, Any], manifest: dict[str, Any]):
        self._client, self._where, self._prefix, self.build_id = client, where, prefix, current["build_id"]
        self.manifest, self._tag, self._names = manifest, current["tag"], build_names(prefix, current["tag"])
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
        else:  # one query for all; per value only for those a full page of matches may have hidden
            column = FILTER_COLUMNS[field]
            wanted = sorted({v for v in values if v})
            found = self._query("chunks", f"{column} in [{', '.join(map(quote, wanted))}]", [column], TOP_K) \
                if wanted else []
            known = {r[column] for r in found}
            if len(found) >= TOP_K:
                known |= {v for v in set(wanted) - known
                          if self._query("chunks", f"{column} == {quote(v)}", ["row"], 1)}
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

    @contextmanager
    def snapshot(self) -> Iterator[BuildSnapshot]:
        """The whole build, read by key (rag.stores.milvus.snapshot)."""
        yield BuildSnapshot(self.manifest, self._get, self._query, self.dimension,
                            (self._document_count, self._count, self._total("sentences")))

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
        return milvus_errors("read", self._where, lambda: (live_build(self._client, self._prefix) or {}).get("tag")
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


def live_build(client: Any, prefix: str) -> dict[str, Any] | None:
    """The meta row naming the live build; None before the first commit."""
    if not client.has_collection(f"{prefix}_meta"):
        return None
    client.load_collection(f"{prefix}_meta")  # released after a restart (Milvus Lite: every new process)
    found = client.get(f"{prefix}_meta", ids=["current"], output_fields=["build_id", "tag", "manifest", "history"])
    return dict(found[0]) if found else None


def read_manifest(client: Any, parts: str) -> dict[str, Any]:
    """A build's manifest, from its pieces in the parts collection."""
    client.load_collection(parts)
    found = sorted(client.query(parts, filter=f"doc_id == {quote(MANIFEST)}", output_fields=["part", "text"]),
                   key=lambda p: p["part"])
    manifest = json.loads("".join(p["text"] for p in found))
    if not isinstance(manifest, dict):
        raise ValueError("the manifest is not an object")
    return manifest


def build_names(prefix: str, tag: str) -> dict[str, str]:
    return {kind: f"{prefix}_{tag}_{kind}" for kind in ("chunks", "documents", "parts", "sentences")}


