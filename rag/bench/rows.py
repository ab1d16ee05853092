"""The rows of a synthetic collection: where `rag bench scale` (and `portable`, `writes`) get
N vectors and N texts. Three sources, one interface (`blocks`, `records`, `describe`):

- `gaussian` (scale's default): distinct rows drawn from a Gaussian with the mean and
  covariance of the real chunk vectors (SciFact's, embedded by the configured model),
  normalised. No two rows are near copies, so an ANN index gets no help from duplicates:
  the hard case (real embeddings have more cluster structure than one Gaussian).
- `file`: the user's vectors (`--vectors FILE.npy`, N x d, memory-mapped, normalised block
  by block) and optionally texts (`--texts FILE.jsonl`, one JSON string or {"text": ...}
  per row). With real embeddings the figures are the real ones.
- `near-copies`: row i is source chunk i % M plus up to MIX of another chunk and noise (the
  generator before issue 26: ~N/M near copies of each real chunk, which flatters IVF).

Texts, unless a file gives them, are sampled so that BM25 sees realistic and distinct term
statistics: each row draws its length from the real chunks' word counts and its words,
TOPIC_SHARE of them from one real chunk (words that go together) and the rest from all
the corpus's words (the corpus's unigram frequencies). Two rows form one document.

Left out: texts that match their vectors (a synthetic row's words say nothing about its
vector, so fused rankings are timed, not judged), sentences, and vectors other than
float16/32/64.
"""

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.errors import CorpusError
from rag.ingest.chunk import embed_input
from rag.records import ChunkRecord, DocumentRecord
from rag.stores.local.store import LocalStore
from rag.stores.manifest import read_manifest

BLOCK = 8192  # rows generated, written and scanned at a time
MIX = 0.35  # near copies: at most this share of another chunk's vector is mixed in
NOISE = 0.25  # near copies: norm of the Gaussian noise added to a unit vector
TOPIC_SHARE = 0.7  # sampled texts: share of a row's words drawn from one real chunk
ROWS_PER_DOCUMENT = 2  # sampled texts: SciFact has 2.4 chunks a document; 2 divides BLOCK
KINDS = ("gaussian", "file", "near-copies")


@dataclass(frozen=True)
class RowsSpec:
    """What a child process needs to make the same rows: plain strings, picklable."""

    kind: str
    source_folder: str  # SciFact's cached local index (the fit, the words, the near copies)
    vectors: str | None = None
    texts: str | None = None
    seed: int = 0


class Rows(Protocol):
    dimension: int

    def blocks(self, n: int) -> Iterator[tuple[range, np.ndarray]]:
        """Rows and their normalised float32 vectors, BLOCK at a time, the same on every call."""
        ...

    def records(self, rows: range) -> tuple[list[DocumentRecord], list[ChunkRecord], list[str]]:
        """The documents that start in `rows`, the chunks of `rows` and their BM25 texts."""
        ...

    def describe(self, n: int) -> str: ...


def open_rows(spec: RowsSpec) -> Rows:
    folder = Path(spec.source_folder)
    source = LocalStore(folder, read_manifest(folder))
    if spec.kind == "near-copies":
        return NearCopies(source, spec.seed)
    if spec.kind == "gaussian":
        return GaussianRows(source, spec.seed)
    if spec.kind == "file":
        if spec.vectors is None:
            raise CorpusError("rows from a file need --vectors FILE.npy")
        return FileRows(Path(spec.vectors), None if spec.texts is None else Path(spec.texts), source, spec.seed)
    raise CorpusError(f"unknown rows {spec.kind!r}: one of {', '.join(KINDS)}")


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class NearCopies:
    """Row i is copy i // M of source chunk i % M, mixed and noised (cosine ~0.9 to the source)."""

    def __init__(self, store: LocalStore, seed: int = 0):
        self.vectors, self.seed = store.matrix(), seed
        self.dimension = self.vectors.shape[1]
        self.chunks = list(store.chunks)
        self.documents = {doc_id: store.documents[doc_id] for doc_id in store.documents}
        firsts: dict[str, int] = {}
        for row, chunk in enumerate(self.chunks):
            firsts.setdefault(chunk.doc_id, row)
        self.first_of_document = set(firsts.values())

    def blocks(self, n: int) -> Iterator[tuple[range, np.ndarray]]:
        m, dimension = self.vectors.shape
        for start in range(0, n, BLOCK):
            rows = range(start, min(n, start + BLOCK))
            rng = np.random.default_rng([self.seed, start])
            source = np.arange(rows.start, rows.stop) % m
            other = rng.integers(0, m, size=len(rows))
            mixed = self.vectors[source] + rng.uniform(0, MIX, size=(len(rows), 1)) * self.vectors[other]
            mixed += rng.normal(size=mixed.shape) * (NOISE / math.sqrt(dimension))
            yield rows, normalised(mixed)

    def records(self, rows: range) -> tuple[list[DocumentRecord], list[ChunkRecord], list[str]]:
        m = len(self.chunks)
        documents, chunks, texts = [], [], []
        for row in rows:
            copy, source = divmod(row, m)
            c = self.chunks[source]
            doc = self.documents[c.doc_id]
            if source in self.first_of_document:
                documents.append(DocumentRecord(f"{doc.doc_id}.{copy}", doc.metadata, doc.text, doc.sections,
                                                f"{doc.content_hash[:16]}.{copy}"))
            chunks.append(ChunkRecord(f"{c.chunk_id}.{copy}", f"{c.doc_id}.{copy}", c.section, c.char_start,
                                      c.char_end, c.text, c.n_tokens, c.n_model_tokens, c.embed_hash))
            texts.append(embed_input(str(doc.metadata["title"]), c.section, c.text))
        return documents, chunks, texts

    def describe(self, n: int) -> str:
        return (f"near copies: {len(self.chunks)} real chunks, each ~{n / len(self.chunks):.0f} times, mixed "
                f"(0-{MIX}) and noised")


class SampledTexts:
    """Distinct texts with the corpus's word statistics (see the module docstring)."""

    def __init__(self, store: LocalStore, seed: int):
        self.seed = seed
        words = [chunk.text.split() for chunk in store.chunks]
        vocabulary, ids = np.unique(np.concatenate([np.asarray(w, dtype=object) for w in words if w]),
                                    return_inverse=True)
        self.vocabulary = vocabulary.astype(str)
        self.all_words = ids.astype(np.int32)  # every word of the corpus, in order: unigram frequencies
        lengths = np.array([len(w) for w in words if w], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # a chunk's words in all_words
        self.lengths = lengths

    def texts(self, rows: range) -> list[str]:
        rng = np.random.default_rng([self.seed, 1, rows.start])
        topics = rng.integers(0, len(self.lengths), size=len(rows))
        lengths = self.lengths[rng.integers(0, len(self.lengths), size=len(rows))]
        out = []
        for topic, length in zip(topics, lengths):
            from_topic = rng.random(length) < TOPIC_SHARE
            picks = np.where(from_topic, self.starts[topic] + rng.integers(0, self.lengths[topic], size=length),
                             rng.integers(0, len(self.all_words), size=length))
            out.append(" ".join(self.vocabulary[self.all_words[picks]].tolist()))
        return out


def grouped_records(rows: range, texts: list[str]) -> tuple[
        list[DocumentRecord], list[ChunkRecord], list[str]]:
    """ROWS_PER_DOCUMENT rows a document (rows.start is a multiple of it): document g{i}."""
    if rows.start % ROWS_PER_DOCUMENT:
        raise ValueError(f"a block of rows starts at {rows.start}, inside a document")
    documents, chunks, lexical = [], [], []
    for first in range(rows.start, rows.stop, ROWS_PER_DOCUMENT):
        doc_id, members = f"g{first // ROWS_PER_DOCUMENT}", range(first, min(rows.stop, first + ROWS_PER_DOCUMENT))
        title = f"Synthetic document {first // ROWS_PER_DOCUMENT}"
        parts = [texts[row - rows.start] for row in members]
        text = "\n\n".join(parts)
        documents.append(DocumentRecord(doc_id, {"title": title, "source": "synthetic"}, text,
                                        [{"title": None, "char_start": 0, "char_end": len(text)}],
                                        hashlib.sha256(text.encode()).hexdigest()))
        start = 0
        for row, part in zip(members, parts):
            body = embed_input(title, None, part)
            chunks.append(ChunkRecord(f"{doc_id}-{row - first}", doc_id, None, start, start + len(part), part,
                                      len(part.split()), len(part.split()), hashlib.sha256(body.encode()).hexdigest()))
            lexical.append(body)
            start += len(part) + 2
    return documents, chunks, lexical


class GaussianRows:
    """Distinct rows from a Gaussian fitted to the real chunk vectors, normalised."""

    def __init__(self, store: LocalStore, seed: int = 0):
        real = np.asarray(store.matrix(), dtype=np.float64)
        self.dimension, self.seed, self.fitted_on = real.shape[1], seed, len(real)
        self.mean = real.mean(axis=0)
        covariance = np.cov(real, rowvar=False)
        # a tiny ridge: the covariance of unit vectors is singular along the mean direction
        self.factor = np.linalg.cholesky(covariance + 1e-9 * np.trace(covariance) * np.eye(self.dimension))
        self.words = SampledTexts(store, seed)

    def blocks(self, n: int) -> Iterator[tuple[range, np.ndarray]]:
        for start in range(0, n, BLOCK):
            rows = range(start, min(n, start + BLOCK))
            rng = np.random.default_rng([self.seed, 0, start])
            yield rows, normalised(self.mean + rng.standard_normal((len(rows), self.dimension)) @ self.factor.T)

    def records(self, rows: range) -> tuple[list[DocumentRecord], list[ChunkRecord], list[str]]:
        return grouped_records(rows, self.words.texts(rows))

    def describe(self, n: int) -> str:
        return (f"gaussian: {n} distinct rows from a Gaussian fitted to {self.fitted_on} real chunk vectors "
                f"(mean and covariance), normalised; texts sampled from the real chunks' words")


class FileRows:
    """The user's vectors (and texts): `--vectors FILE.npy [--texts FILE.jsonl]`."""

    def __init__(self, vectors: Path, texts: Path | None, store: LocalStore, seed: int = 0):
        try:
            self.vectors = np.load(vectors, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CorpusError(f"--vectors {vectors}: not a readable .npy array ({exc})") from None
        if self.vectors.ndim != 2 or self.vectors.dtype.kind != "f" or self.vectors.itemsize not in (2, 4, 8):
            raise CorpusError(f"--vectors {vectors}: {self.vectors.dtype} {self.vectors.shape}, "
                              "not a 2-d float16/32/64 array (rows x dimension)")
        self.path, self.rows, self.dimension = vectors, len(self.vectors), int(self.vectors.shape[1])
        self.text_path = texts
        self.offsets = None if texts is None else line_offsets(texts)
        self.words = SampledTexts(store, seed) if texts is None else None

    def check(self, n: int) -> None:
        if n > self.rows:
            raise CorpusError(f"--vectors {self.path} holds {self.rows} rows, fewer than the {n} asked for")
        if self.offsets is not None and len(self.offsets) < n:
            raise CorpusError(f"--texts {self.text_path} holds {len(self.offsets)} lines, fewer than the {n} rows")

    def blocks(self, n: int) -> Iterator[tuple[range, np.ndarray]]:
        self.check(n)
        for start in range(0, n, BLOCK):
            rows = range(start, min(n, start + BLOCK))
            block = np.asarray(self.vectors[rows.start:rows.stop], dtype=np.float32)
            if not np.isfinite(block).all():
                raise CorpusError(f"--vectors {self.path}: a row in {rows.start}-{rows.stop - 1} is not finite")
            yield rows, normalised(block)

    def records(self, rows: range) -> tuple[list[DocumentRecord], list[ChunkRecord], list[str]]:
        if self.words is not None:
            return grouped_records(rows, self.words.texts(rows))
        assert self.text_path is not None and self.offsets is not None
        texts = []
        with open(self.text_path, "rb") as file:
            file.seek(int(self.offsets[rows.start]))
            for row in rows:
                texts.append(text_of(file.readline(), self.text_path, row))
        return grouped_records(rows, texts)

    def describe(self, n: int) -> str:
        texts = f"texts from {self.text_path.name}" if self.text_path else "texts sampled from the real chunks' words"
        return (f"file: the first {n} of {self.rows} rows of {self.path.name} ({self.vectors.dtype}), "
                f"normalised; {texts}")


def line_offsets(path: Path) -> np.ndarray:
    """Byte offset of each line of a JSON-lines file, read in one pass (8 bytes a line)."""
    offsets, position = [], 0
    try:
        with open(path, "rb") as file:
            for line in file:
                offsets.append(position)
                position += len(line)
    except OSError as exc:
        raise CorpusError(f"--texts {path}: {exc}") from None
    return np.asarray(offsets, dtype=np.int64)


def text_of(line: bytes, path: Path, row: int) -> str:
    try:
        value: Any = json.loads(line)
    except ValueError:
        raise CorpusError(f"--texts {path}: line {row + 1} is not JSON") from None
    text = value.get("text") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text.strip():
        raise CorpusError(f'--texts {path}: line {row + 1} is neither a non-empty string nor {{"text": ...}}')
    return text
