"""The local store: one build folder of plain files, read on demand.

    builds/<build_id>/
      manifest.json     versions, parameters (ANN type, nprobe, BM25), counts, file checksums
      chunks.sqlite     documents, chunks and sentences (rag.stores.local.tables)
      vectors.f32       chunk vectors, float32, row-major (rows x dimension)
      sentence_vectors.f32
      filters.i32       per chunk: source code, section code (int32, row-major); names in filters.json
      filters.json      the source and section names those codes stand for
      bm25/             BM25 postings (rag.stores.local.bm25)
      ann.faiss         the ANN index (IVF-PQ), above rag.stores.local.ann.EXACT_LIMIT chunks

What stays in memory: the vectors of an exact-size collection, the ANN index (IVF-PQ: 96
bytes a 384-d chunk in its lists; an IVF-Flat build made before holds the vectors: 1.5 GB at
a million), the filter codes (8 bytes a chunk) and the BM25 vocabulary. Chunk text,
documents, sentences, BM25 postings and (above the exact size) the plain vectors, which
IVF-PQ's re-ranking reads, are memory-mapped and read as a response needs them.

Filters are pushed down: one boolean row mask per request (documents from SQLite's
doc_id index, sources and sections from the codes) goes into the dense search as a FAISS
ID selector or an exact scan of the allowed rows, and into BM25 as a mask on its candidate
rows (rag.stores.local.bm25_top).

Left out: updating a live build in place (each build is written whole, then swapped).
"""

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import IndexBusyError, IndexCorruptError
from rag.records import ChunkRecord, SentenceRecord
from rag.stores.base import Ranking
from rag.stores.local import ann
from rag.stores.local.bm25 import Bm25Index
from rag.stores.local.builds import open_build
from rag.stores.local.snapshot import BuildSnapshot
from rag.stores.local.tables import CACHE_ROWS, ChunkTable, DocumentTable, Tables
from rag.stores.local.tables import FILE as TABLES
from rag.stores.manifest import IndexSpec
from rag.types import Filters

VECTORS, SENTENCE_VECTORS, FILTER_CODES, FILTER_NAMES = "vectors.f32", "sentence_vectors.f32", "filters.i32", \
    "filters.json"
CODED = ("sources", "sections")  # filter fields kept as per-row codes; doc_ids come from SQLite


def open_local(index_dir: Path, spec: IndexSpec | None = None) -> "LocalStore":
    """The live local build, checked (see rag.stores.local.builds.open_build)."""
    return open_build(index_dir, spec, LocalStore)


def read_vectors(path: Path, dimension: int, in_memory: bool) -> np.ndarray:
    rows = path.stat().st_size // (4 * dimension) if dimension else 0
    if rows * 4 * dimension != path.stat().st_size:
        raise IndexCorruptError(f"{path} is not a whole number of {dimension}-d float32 vectors")
    if in_memory or rows == 0:
        return np.fromfile(path, dtype=np.float32).reshape(rows, dimension)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dimension))


class LocalStore:
    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder, self.manifest = folder, manifest
        dimension = manifest["model"]["dimension"]
        entry = manifest["store"]["dense_index"]
        self._tables = Tables(folder / TABLES)
        try:  # an OSError is a StorageError, anything else a damaged build (rag.stores.local.builds.open_build)
            self._open(folder, dimension, entry)
        except BaseException:
            self._tables.close()
            raise

    def _open(self, folder: Path, dimension: int, entry: dict[str, Any]) -> None:
        self.chunks: Sequence[ChunkRecord] = ChunkTable(self._tables)
        self.documents = DocumentTable(self._tables)
        n = self._tables.chunk_total
        vectors = read_vectors(folder / VECTORS, dimension, in_memory=entry["type"] == "exact")
        self._dense = ann.DenseIndex(vectors, folder, entry)
        small = n <= ann.EXACT_LIMIT  # a small collection is read into memory: no page faults on the first queries
        self._lexical = Bm25Index(folder / "bm25", n, in_memory=small)
        self._sentence_vectors = read_vectors(folder / SENTENCE_VECTORS, dimension, in_memory=small)
        self._sentences: dict[int, tuple[list[tuple[int, int]], np.ndarray]] = {}
        self._codes = np.fromfile(folder / FILTER_CODES, dtype=np.int32).reshape(-1, len(CODED))
        names = json.loads((folder / FILTER_NAMES).read_text(encoding="utf-8"))
        self._names = {field: {name: code for code, name in enumerate(names[field])} for field in CODED}
        if len(vectors) != n or len(self._codes) != n or len(self._sentence_vectors) != self._tables.one(
                "SELECT count(*) FROM sentences")[0]:
            raise IndexCorruptError(f"index at {folder}: {len(vectors)} vectors and {len(self._codes)} filter rows "
                                    f"for {n} chunks, or sentence vectors and sentences disagree")

    @property
    def build_id(self) -> str:
        return str(self.manifest["build_id"])

    def count(self) -> int:
        return len(self.chunks)

    def row_of(self, chunk_id: str) -> int | None:
        found = self._tables.one("SELECT row FROM chunks WHERE chunk_id = ?", chunk_id)
        return None if found is None else int(found[0])

    def unknown(self, field: str, values: Sequence[str]) -> list[str]:
        if field == "doc_ids":
            known = {r[0] for r in self._tables.all(
                f"SELECT doc_id FROM documents WHERE doc_id IN ({','.join('?' * len(values))})", *values)}
        else:
            known = set(self._names[field]) - {""}
        return sorted(set(values) - known)

    def dense(self, vector: np.ndarray, depth: int, filters: Filters) -> Ranking:
        return self._dense.search(vector, depth, self._allowed(filters))

    def lexical(self, text: str, depth: int, filters: Filters) -> Ranking:
        return self._lexical.top(text, depth, self._allowed(filters))  # MaxScore: not every posting scored

    def sentences(self, row: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        found = self._sentences.get(row)
        if found is None:
            if len(self._sentences) >= CACHE_ROWS:  # a bound, not an LRU: cheap, and hot rows come back
                self._sentences.clear()
            found = self._sentences[row] = self._read_sentences(row)
        return found

    def _read_sentences(self, row: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        chunk = self.chunks[row]
        found = self._tables.all(
            "SELECT row, char_start, char_end FROM sentences WHERE doc_id = ? AND char_start < ? AND char_end > ? "
            "ORDER BY char_start", chunk.doc_id, chunk.char_end, chunk.char_start)
        spans = [(max(a, chunk.char_start), min(b, chunk.char_end)) for _, a, b in found]
        return spans, np.asarray(self._sentence_vectors[[r for r, _, _ in found]])

    def chunk_count(self, doc_id: str) -> int:
        return int(self._tables.one("SELECT count(*) FROM chunks WHERE doc_id = ?", doc_id)[0])

    def rows_of(self, doc_id: str) -> list[int]:
        return [r[0] for r in self._tables.all("SELECT row FROM chunks WHERE doc_id = ? ORDER BY row", doc_id)]

    def vectors_by_hash(self, hashes: Iterable[str], sentences: bool = False) -> dict[str, np.ndarray]:
        table, column, vectors = ("sentences", "text_hash", self._sentence_vectors) if sentences else \
            ("chunks", "embed_hash", self._dense.vectors)
        wanted, out = list(dict.fromkeys(hashes)), {}
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters is 999 (old builds)
            part = wanted[start:start + 500]
            for row, digest in self._tables.all(
                    f"SELECT min(row), {column} FROM {table} WHERE {column} IN ({','.join('?' * len(part))}) "
                    f"GROUP BY {column}", *part):
                out[digest] = np.asarray(vectors[row])
        return out

    def sentence_records(self) -> Iterator[SentenceRecord]:
        """Every sentence in row order (`rag migrate`)."""
        for start in range(0, len(self._sentence_vectors), 10_000):
            yield from (SentenceRecord(*r) for r in self._tables.all(
                "SELECT doc_id, char_start, char_end, text_hash FROM sentences WHERE row >= ? AND row < ? "
                "ORDER BY row", start, start + 10_000))

    def matrix(self, sentences: bool = False) -> np.ndarray:
        """Every chunk's (or sentence's) vector, one row each (for comparisons, not for serving)."""
        return np.asarray(self._sentence_vectors if sentences else self._dense.vectors)

    @contextmanager
    def snapshot(self) -> Iterator[BuildSnapshot]:
        """The whole build (rag.stores.local.snapshot): it reads on if a newer build goes live meanwhile."""
        try:
            opened = BuildSnapshot(self.folder / TABLES, self.manifest, self._dense.vectors, self._sentence_vectors)
        except sqlite3.Error as exc:  # its folder pruned since this store opened it (two newer builds)
            raise IndexBusyError(f"build {self.build_id} is no longer there ({exc}): open the index again") from exc
        with closing(opened):
            yield opened

    def close(self) -> None:
        self._tables.close()

    def _allowed(self, filters: Filters) -> np.ndarray | None:
        """Rows the filters allow, or None for all."""
        mask = None
        if filters.doc_ids is not None:
            mask = np.zeros(self.count(), dtype=bool)
            ids = list(filters.doc_ids)
            mask[[r[0] for r in self._tables.all(
                f"SELECT row FROM chunks WHERE doc_id IN ({','.join('?' * len(ids))})", *ids)]] = True
        for column, (field, values) in enumerate((("sources", filters.sources), ("sections", filters.sections))):
            if values is not None:
                codes = [self._names[field][v] for v in values if v in self._names[field]]
                this = np.isin(self._codes[:, column], codes)
                mask = this if mask is None else mask & this
        return mask
