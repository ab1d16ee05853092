"""An archive's records read back as documents, for an import (rag.portable.importing) and
a re-embed (rag.portable.reembed): each document with its chunks and sentences and their
vectors, in runs of one origin (`groups`), each checked as an upload would be (document
ids, metadata bounds, offsets against the text, the embedding input against its hash); and
a stored document as a build's input again (`as_source`), keeping its content hash.

Left out: repairing a record (one that fails a check fails the import, naming it).
"""

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ArchiveError, BadQueryError, CorpusError, RagError
from rag.ingest.chunk import embed_input
from rag.ingest.clean import CleanDocument, Section
from rag.ingest.corpus import SourceDocument
from rag.ingest.metadata import normalise_metadata
from rag.ingest.uploads import checked_doc_id
from rag.portable.archive import Archive
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord

BATCH_CHUNKS = 2_000  # chunks a write holds: one SQLite transaction, or one round of Milvus inserts


Records = tuple[list[Any], np.ndarray]


def groups(archive: Archive, reembed: bool) -> Iterator[tuple[str, list[tuple[DocumentRecord, Records, Records]]]]:
    """Documents with their chunks and sentences, checked, in runs of one origin of at most
    BATCH_CHUNKS chunks (a document's are never split)."""
    dimension = archive.dimension
    empty = (list[Any](), np.zeros((0, dimension), dtype=np.float32))
    chunk_rows = _rows(archive.chunks(BATCH_CHUNKS)) if not reembed else iter(())
    sentence_rows = _rows(archive.sentences(BATCH_CHUNKS)) if not reembed else iter(())
    group: list[tuple[DocumentRecord, Records, Records]] = []
    origin, size = "", 0
    for doc, doc_origin in archive.documents():
        doc = _checked_document(archive, doc)
        mine = empty if reembed else _take(chunk_rows, doc, "chunks", archive, _checked_chunk)
        said = empty if reembed else _take(sentence_rows, doc, "sentences", archive, _checked_sentence)
        if group and (doc_origin != origin or size + len(mine[0]) > BATCH_CHUNKS):
            yield origin, group
            group, size = [], 0
        group.append((doc, mine, said))
        origin, size = doc_origin, size + len(mine[0])
    if group:
        yield origin, group
    for leftover, kind in ((chunk_rows, "chunks"), (sentence_rows, "sentences")):
        row = next(leftover, None)
        if row is not None:
            raise ArchiveError(f"{archive.path}: {kind}.jsonl has a row of document {row[0].doc_id!r}, which is "
                               "not in documents.jsonl or not in its order")


class _Peekable:
    def __init__(self, rows: Iterator[tuple[Any, np.ndarray]]):
        self._rows, self.head = rows, next(rows, None)

    def __iter__(self) -> "_Peekable":
        return self

    def __next__(self) -> tuple[Any, np.ndarray]:
        if self.head is None:
            raise StopIteration
        head, self.head = self.head, next(self._rows, None)
        return head


def _rows(batches: Iterator[tuple[list[Any], np.ndarray]]) -> _Peekable:
    return _Peekable(chain.from_iterable(zip(records, matrix) for records, matrix in batches))


def _take(rows: Any, doc: DocumentRecord, kind: str, archive: Archive, check: Callable[..., None]) -> Records:
    """The run of rows of document `doc` at the head of `rows`."""
    records, vectors = [], []
    while rows.head is not None and rows.head[0].doc_id == doc.doc_id:
        record, vector = next(rows)
        try:
            check(doc, record)
        except (ValueError, RagError) as exc:
            raise ArchiveError(f"{archive.path}: member {kind}.jsonl: {exc}") from exc
        records.append(record)
        vectors.append(vector)
    return records, (np.stack(vectors) if vectors else np.zeros((0, archive.dimension), dtype=np.float32))


def _checked_document(archive: Archive, doc: DocumentRecord) -> DocumentRecord:
    try:
        checked_doc_id(doc.doc_id)
        metadata = normalise_metadata(doc.metadata, f"document '{doc.doc_id}'")
        for section in doc.sections:
            if not 0 <= int(section["char_start"]) <= int(section["char_end"]) <= len(doc.text):
                raise ValueError(f"a section of document '{doc.doc_id}' is outside its text")
    except (BadQueryError, CorpusError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{archive.path}: member documents.jsonl: {exc}") from exc
    return DocumentRecord(doc.doc_id, metadata, doc.text, doc.sections, doc.content_hash)


def _checked_chunk(doc: DocumentRecord, chunk: ChunkRecord) -> None:
    if not 0 <= chunk.char_start <= chunk.char_end <= len(doc.text) or \
            doc.text[chunk.char_start:chunk.char_end] != chunk.text:
        raise ValueError(f"chunk {chunk.chunk_id!r}: its text is not its document's text at "
                         f"{chunk.char_start}:{chunk.char_end}")
    if hashlib.sha256(input_of(doc, chunk).encode()).hexdigest() != chunk.embed_hash:
        raise ValueError(f"chunk {chunk.chunk_id!r}: its embedding input does not match its recorded hash")


def _checked_sentence(doc: DocumentRecord, sentence: SentenceRecord) -> None:
    if not 0 <= sentence.char_start <= sentence.char_end <= len(doc.text):
        raise ValueError(f"a sentence of document {doc.doc_id!r} at {sentence.char_start}:{sentence.char_end} is "
                         "outside its text")


def input_of(doc: DocumentRecord, chunk: ChunkRecord) -> str:
    """What the model saw of a chunk, and what BM25 indexes (rag.ingest.build's batches)."""
    return embed_input(str(doc.metadata["title"]), chunk.section, chunk.text)


@dataclass(frozen=True)
class StoredDocument(SourceDocument):
    """A stored document as a build's input: its content hash is the one it was stored with
    (of the text as sent), so that sending that text again is still `unchanged`."""

    stored_hash: str = ""

    @property
    def content_hash(self) -> str:
        return self.stored_hash


def as_source(doc: DocumentRecord) -> SourceDocument:
    """A stored document as a build's input: its cleaned text and sections as they are."""
    sections = [Section(s.get("title"), int(s["char_start"]), int(s["char_end"])) for s in doc.sections]
    return StoredDocument(doc.doc_id, Path(f"{doc.doc_id}.txt"), doc.text, doc.metadata,
                          cleaned=CleanDocument(doc.text, sections), stored_hash=doc.content_hash)
