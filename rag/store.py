"""The index on disk: plain files, a JSON manifest, atomic replacement.

    index/
      CURRENT                    one line: the name of the live build
      builds/<build_id>/
        manifest.json            versions, parameters, corpus hash, file checksums
        documents.jsonl          metadata + canonical (cleaned) text + sections
        chunks.jsonl             chunk text, citation offsets, token counts
        vectors.faiss            FAISS IndexFlatIP of the normalised chunk vectors
        bm25/                    bm25s arrays (.npy) and vocabulary (.json)
        sentences.jsonl          sentence spans, and sentence_vectors.npy their vectors (highlights)

A build is written into `builds/.tmp-<id>/`, fsynced, renamed to `builds/<id>/`, and
only then made live by atomically replacing `CURRENT` (os.replace). A crash at any
point leaves the previous CURRENT, and so the previous index, untouched. Readers hold a
fully loaded copy in memory, so a later swap never disturbs a query in flight. The
build before the live one is kept for readers that are half-way through loading it.

Loading verifies every file against its checksum and refuses an index built with another
format, model or chunker than the settings ask for. Nothing is pickled.

Left out: memory-mapped or compressed vectors (IndexFlatIP is exact and fits easily at
this corpus size); concurrent builders (a lock file makes the second one fail fast).
"""

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag import __version__
from rag.chunk import ChunkSpan
from rag.errors import IndexCorruptError, IndexMismatchError, IndexMissingError, RagError
from rag.lexical import LexicalIndex

# Exhaustive search over a few thousand vectors needs no threads, and FAISS's idle
# OpenMP threads fight torch for the 2 cores (measured: ~9 ms added per query).
faiss.omp_set_num_threads(1)

FORMAT = "rag-index"
FORMAT_VERSION = 1
KEEP_BUILDS = 2  # the live build and the one before it


@dataclass(frozen=True)
class IndexSpec:
    """What an index must agree with to be used under the current settings."""

    model: str
    chunk_tokens: int
    chunk_overlap_tokens: int

    def differences(self, manifest: dict[str, Any]) -> list[str]:
        built = {"model": manifest["model"]["name"], **manifest["chunker"]}
        return [
            f"{key}: index has {built.get(key)!r}, settings ask for {value!r}"
            for key, value in asdict(self).items() if built.get(key) != value
        ]


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    metadata: dict[str, Any]
    text: str  # canonical cleaned text: citation offsets point here
    sections: list[dict[str, Any]]  # {"title", "char_start", "char_end"}
    content_hash: str


@dataclass(frozen=True)
class ChunkRecord(ChunkSpan):
    """A chunk as stored in chunks.jsonl."""

    embed_hash: str  # sha256 of the embedding input: equal hash, reusable vector


@dataclass
class Index:
    manifest: dict[str, Any]
    documents: dict[str, DocumentRecord]
    chunks: list[ChunkRecord]
    vectors: faiss.Index
    lexical: LexicalIndex
    # sentences of every document (doc_id, char_start, char_end) and their vectors, for highlights
    sentences: list[tuple[str, int, int]] = field(default_factory=list)
    sentence_vectors: np.ndarray | None = None
    path: Path | None = None
    _by_id: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {c.chunk_id: i for i, c in enumerate(self.chunks)}

    def row_of(self, chunk_id: str) -> int | None:
        return self._by_id.get(chunk_id)

    def vector_matrix(self) -> np.ndarray:
        return self.vectors.reconstruct_n(0, self.vectors.ntotal)

    @property
    def build_id(self) -> str:
        return str(self.manifest["build_id"])


def new_manifest(**fields: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "faiss_version": faiss.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_id": datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
        **fields,
    }


# ------------------------------------------------------------------ writing


@contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """One builder at a time per index folder; a second one fails at once."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RagError(f"another build is writing {index_dir}; try again when it ends") from exc
        yield


def write_index(index_dir: Path, index: Index) -> Path:
    """Write `index` as a new build and make it live atomically. Call under build_lock."""
    builds = index_dir / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    for stale in builds.glob(".tmp-*"):  # left by a crashed build; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    build_id = index.build_id
    tmp = builds / f".tmp-{build_id}"
    tmp.mkdir()
    _write_files(tmp, index)
    final = builds / build_id
    os.rename(tmp, final)
    _fsync_dir(builds)
    _replace_text(index_dir / "CURRENT", build_id + "\n")
    _prune(builds, keep=build_id)
    return final


def _write_files(folder: Path, index: Index) -> None:
    _write_jsonl(folder / "documents.jsonl", (asdict(d) for d in index.documents.values()))
    _write_jsonl(folder / "chunks.jsonl", (asdict(c) for c in index.chunks))
    faiss.write_index(index.vectors, str(folder / "vectors.faiss"))
    if index.sentence_vectors is not None:
        _write_jsonl(folder / "sentences.jsonl", ({"doc_id": d, "char_start": a, "char_end": b}
                                                  for d, a, b in index.sentences))
        np.save(folder / "sentence_vectors.npy", index.sentence_vectors, allow_pickle=False)
    index.lexical.save(folder / "bm25")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    manifest = {**index.manifest, "files": {str(p.relative_to(folder)): _sha256(p) for p in files}}
    for path in files:
        _fsync_file(path)
    _replace_text(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    index.manifest = manifest


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _prune(builds: Path, keep: str) -> None:
    finished = sorted((p for p in builds.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime)
    older = [p for p in finished if p.name != keep]
    for old in older[: max(0, len(older) - (KEEP_BUILDS - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ reading


def current_build(index_dir: Path) -> Path:
    pointer = index_dir / "CURRENT"
    if not pointer.exists():
        raise IndexMissingError(f"no index at {index_dir}: run `rag build` first")
    build_id = pointer.read_text().strip()
    folder = index_dir / "builds" / build_id
    if not build_id or not folder.is_dir():
        raise IndexCorruptError(f"{pointer} names build '{build_id}', which does not exist")
    return folder


def read_manifest(index_dir: Path) -> dict[str, Any]:
    path = current_build(index_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path} is format {manifest.get('format')!r} v{manifest.get('format_version')}; "
            f"this version reads {FORMAT!r} v{FORMAT_VERSION}: run `rag build --force`"
        )
    return manifest


def load_index(index_dir: Path, spec: IndexSpec | None = None) -> Index:
    """Load the live build; refuse it if corrupt or built with other settings than `spec`."""
    folder = current_build(index_dir)
    manifest = read_manifest(index_dir)
    if spec is not None and (diffs := spec.differences(manifest)):
        raise IndexMismatchError(
            f"index at {index_dir} was built with other settings ({'; '.join(diffs)}): "
            "run `rag build` to rebuild it"
        )
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or _sha256(path) != expected:
            raise IndexCorruptError(f"index file {path} is missing or damaged: run `rag build --force`")
    try:
        documents = [DocumentRecord(**row) for row in _read_jsonl(folder / "documents.jsonl")]
        chunks = [ChunkRecord(**row) for row in _read_jsonl(folder / "chunks.jsonl")]
        vectors = faiss.read_index(str(folder / "vectors.faiss"))
        lexical = LexicalIndex.load(folder / "bm25", size=len(chunks))
        sentences: list[tuple[str, int, int]] = []
        sentence_vectors = None
        if (folder / "sentence_vectors.npy").exists():
            sentences = [(r["doc_id"], r["char_start"], r["char_end"]) for r in _read_jsonl(folder / "sentences.jsonl")]
            sentence_vectors = np.load(folder / "sentence_vectors.npy", allow_pickle=False)
    except (OSError, TypeError, ValueError, RuntimeError) as exc:
        raise IndexCorruptError(f"cannot load index at {folder}: {exc}") from exc
    if vectors.ntotal != len(chunks) or vectors.d != manifest["model"]["dimension"]:
        raise IndexCorruptError(
            f"index at {folder} holds {vectors.ntotal} vectors of dimension {vectors.d} for "
            f"{len(chunks)} chunks of a {manifest['model']['dimension']}-dimension model"
        )
    if sentence_vectors is not None and len(sentence_vectors) != len(sentences):
        raise IndexCorruptError(
            f"index at {folder} holds {len(sentence_vectors)} sentence vectors for {len(sentences)} sentences")
    return Index(manifest, {d.doc_id: d for d in documents}, chunks, vectors, lexical,
                 sentences, sentence_vectors, folder)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
