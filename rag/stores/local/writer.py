"""Writing a local build in a stream (the layout is in rag.stores.local.store).

Everything goes into `builds/.tmp-<random>/` as it arrives: rows into SQLite, vectors
appended to raw float32 files, BM25 postings spilled in batches, filter codes appended.
Memory holds one batch plus what grows with the number of documents and distinct
terms (source of each document, the BM25 vocabulary), never the chunks themselves.
`commit` builds the SQL indexes, the BM25 arrays and (above the exact limit) the IVF
index, fsyncs every file, writes the manifest with their checksums and hands the folder
to `rag.stores.local.builds.publish_build`, which makes it live atomically. The build lock is held from
the writer's start to its end, and leaving without a commit removes the folder.

Left out: resuming an interrupted build (it starts over).
"""

import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from rag.errors import StorageError
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.stores.local import ann
from rag.stores.local.bm25 import Bm25Writer
from rag.stores.local.builds import build_lock, publish_build, remove_orphans
from rag.stores.local.store import CODED, FILTER_CODES, FILTER_NAMES, SENTENCE_VECTORS, VECTORS, read_vectors
from rag.stores.local.tables import FILE as TABLES
from rag.stores.local.tables import TableWriter
from rag.stores.manifest import storage_error


class LocalWriter:
    def __init__(self, index_dir: Path, dimension: int, log: Any = None, exact_limit: int = ann.EXACT_LIMIT,
                 ann_kind: str = ann.KIND):
        self.index_dir, self.dimension, self.log, self.exact_limit = index_dir, dimension, log, exact_limit
        self.ann_kind = ann_kind
        self._stack = ExitStack()
        self.folder = index_dir / "builds" / f".tmp-{uuid.uuid4().hex[:12]}"
        self._committed = False

    def __enter__(self) -> "LocalWriter":
        self._stack.enter_context(build_lock(self.index_dir))
        try:
            remove_orphans(self.index_dir)  # left by a crashed build; we hold the lock
            self.folder.mkdir(parents=True)
            self._tables = TableWriter(self.folder / TABLES)
            self._vectors: BinaryIO = self._stack.enter_context(open(self.folder / VECTORS, "wb"))
            self._sentence_vectors: BinaryIO = self._stack.enter_context(open(self.folder / SENTENCE_VECTORS, "wb"))
            self._codes: BinaryIO = self._stack.enter_context(open(self.folder / FILTER_CODES, "wb"))
        except OSError as exc:
            self._discard()
            raise storage_error("write", self.index_dir, exc) from exc
        except BaseException:
            self._discard()
            raise
        self._bm25 = Bm25Writer(self.folder / "bm25")
        self._source_of: dict[str, str] = {}
        self._names: dict[str, dict[str, int]] = {field: {"": 0} for field in CODED}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if not self._committed:
            self._discard()
        self._stack.close()  # releases the build lock last

    def _discard(self) -> None:
        if hasattr(self, "_tables"):
            self._tables.abort()
        self._stack.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ streaming

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk or a refused write, in any file of the build, is one StorageError."""
        try:
            yield
        except (OSError, sqlite3.OperationalError) as exc:
            if isinstance(exc, OSError):
                raise storage_error("write", self.index_dir, exc) from exc
            raise StorageError(f"cannot write index at {self.index_dir}: {exc}") from exc

    def add_documents(self, documents: Iterable[DocumentRecord]) -> None:
        with self._writing():
            self._add_documents(list(documents))

    def add_chunks(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray,
                   lexical_texts: Sequence[str] | None = None) -> None:
        """Chunks (after their documents) with their vectors; `lexical_texts` is what BM25
        indexes for each (default: the chunk text)."""
        if len(vectors) != len(chunks) or (len(chunks) and vectors.shape[1] != self.dimension):
            raise ValueError(f"{len(chunks)} chunks need {len(chunks)} vectors of dimension {self.dimension}")
        with self._writing():
            self._add_chunks(chunks, vectors, lexical_texts)

    def add_sentences(self, sentences: Sequence[SentenceRecord], vectors: np.ndarray) -> None:
        if len(vectors) != len(sentences):
            raise ValueError(f"{len(sentences)} sentences need {len(sentences)} vectors")
        with self._writing():
            self._tables.add_sentences(sentences)
            self._sentence_vectors.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())

    def _add_documents(self, documents: list[DocumentRecord]) -> None:
        self._tables.add_documents(documents)
        self._source_of.update((d.doc_id, str(d.metadata.get("source", ""))) for d in documents)

    def _add_chunks(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray,
                    lexical_texts: Sequence[str] | None) -> None:
        self._tables.add_chunks(chunks)
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        codes = [(self._code("sources", self._source_of[c.doc_id]), self._code("sections", c.section or ""))
                 for c in chunks]
        self._codes.write(np.asarray(codes, dtype=np.int32).reshape(-1, len(CODED)).tobytes())
        self._bm25.add(lexical_texts if lexical_texts is not None else [c.text for c in chunks])

    def _code(self, field: str, name: str) -> int:
        names = self._names[field]
        return names.setdefault(name, len(names))

    # ------------------------------------------------------------------ commit

    def commit(self, manifest: dict[str, Any]) -> str:
        with self._writing():
            self._tables.finish()
            for handle in (self._vectors, self._sentence_vectors, self._codes):
                handle.close()
            lexical = self._bm25.finish()
            names = {field: sorted(codes, key=codes.__getitem__) for field, codes in self._names.items()}
            (self.folder / FILTER_NAMES).write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")
            dense = ann.build_ann(read_vectors(self.folder / VECTORS, self.dimension, in_memory=False),
                                  self.folder, self.log, self.exact_limit, kind=self.ann_kind)
        manifest = {**manifest, "lexical": {**manifest.get("lexical", {}), **lexical},
                    "store": {"backend": "local", "dense_index": dense, "faiss_version": ann.faiss_version()},
                    "counts": {**manifest.get("counts", {}), "chunks": self._tables.chunks,
                               "sentences": self._tables.sentences}}
        final = publish_build(self.index_dir, self.folder, manifest)
        self._committed = True
        return str(final)
