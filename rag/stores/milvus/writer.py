"""Writing a build into Milvus (the layout is rag.stores.milvus.store's docstring): the
build's collections are made at start, filled in batches, and made live at commit by one
upsert of the `current` row; a writer closed without commit drops what it made.

Left out: concurrent builders (the last commit wins), and removing builds of a writer
killed before `__exit__`.
"""

import json
import uuid
from collections.abc import Iterable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import numpy as np

from rag.lexical import tokenize
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.milvus.client import (
    BATCH,
    CHUNK_COLUMNS,
    NO_VECTOR,
    PART_CHARS,
    PLACEHOLDER_INDEX,
    build_layouts,
    connect,
    create_indexed,
    drop,
    in_batches,
    index_choice,
    milvus_errors,
    public_uri,
)
from rag.stores.milvus.store import KEEP_BUILDS, MANIFEST, build_names, live_build


def milvus_writer(uri: str, dimension: int, prefix: str = "rag", *, token: str | None = None,
                  timeout: float = 10.0) -> "MilvusWriter":
    """A new build at `uri`: its collections are made now, live at commit."""
    client = connect(uri, prefix, token, timeout)
    try:
        return MilvusWriter(client, uri, dimension, prefix)
    except BaseException:
        client.close()
        raise


class MilvusWriter:
    """Writes one build (the module docstring has the layout); a context manager."""

    def __init__(self, client: Any, uri: str, dimension: int, prefix: str):
        self._client, self._where, self._prefix, self.dimension = client, public_uri(uri), prefix, dimension
        self.tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S_") + uuid.uuid4().hex[:8]
        self._names, self._committed = build_names(prefix, self.tag), False
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
                    current = live_build(self._client, self._prefix)
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
            current = live_build(self._client, self._prefix)
            history = json.loads(current["history"]) if current else []
            kept = [*history, self.tag][-KEEP_BUILDS:]
            self._client.upsert(meta, [{"key": "current", "build_id": build_id, "tag": self.tag,
                                        "manifest": json.dumps({"parts": len(pieces)}),
                                        "history": json.dumps(kept), "_": NO_VECTOR}])
            self._committed = True
            self._client.flush(meta)
        self.manifest = manifest
        self._drop(n for old in history if old not in kept for n in build_names(self._prefix, old).values())
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
