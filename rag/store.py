"""The index on disk: plain files, a JSON manifest, atomic replacement.

    index/
      CURRENT                    one line: the name of the live build
      HISTORY                    the builds kept, oldest first, one name a line (the live one last)
      builds/<build_id>/
        manifest.json            versions, parameters, corpus hash, file checksums
        documents.jsonl          metadata + canonical (cleaned) text + sections
        chunks.jsonl             chunk text, citation offsets, token counts
        vectors.faiss            FAISS IndexFlatIP of the normalised chunk vectors
        bm25/                    bm25s arrays (.npy) and vocabulary (.json)
        sentences.jsonl          sentence spans, and sentence_vectors.npy their vectors (highlights)

A build is written into `builds/.tmp-<id>/`, every file and folder fsynced, renamed to
`builds/<id>/`, and only then made live by atomically replacing `CURRENT` (os.replace,
then fsync of the folder). A crash at any point leaves the previous CURRENT, and so the
previous index, untouched; its debris (`.tmp-*` folders, `.*.tmp` files) is removed by the
next build or by `clean_orphans`. Readers hold a fully loaded copy in memory, so a later
swap never disturbs a query in flight. The build that was live before the current one is
kept (by HISTORY, not by folder dates) for readers that are half-way through loading it.

Loading reads CURRENT once and takes every file, manifest included, from the folder it
names; it verifies each file against its checksum and refuses an index built with another
format, model or chunker than the settings ask for. A load that fails after CURRENT moved
on raises IndexBusyError (retry); an OSError while writing or reading raises StorageError.
Nothing is pickled.

Left out: memory-mapped or compressed vectors (IndexFlatIP is exact and fits easily at
this corpus size); concurrent builders (a lock file makes the second one fail fast);
a reader lock (a reader that loses the race against two newer builds gets IndexBusyError).
"""

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag import __version__
from rag.chunk import ChunkSpan
from rag.errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    RagError,
    StorageError,
)
from rag.files import fsync_path, sha256_file
from rag.lexical import LexicalIndex

FORMAT = "rag-index"
FORMAT_VERSION = 1
KEEP_BUILDS = 2  # the live build and the one before it
BUILD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # what CURRENT may name: never a path


@dataclass(frozen=True)
class IndexSpec:
    """What an index must agree with to be used under the current settings."""

    model: str
    chunk_tokens: int
    chunk_overlap_tokens: int
    vectors: str = "fp32"  # the embedding backend's vector family (rag.embed.VECTOR_FAMILY)

    def differences(self, manifest: dict[str, Any]) -> list[str]:
        built = {"model": manifest["model"]["name"], "vectors": manifest["model"].get("vectors", "fp32"),
                 **manifest["chunker"]}
        return [
            f"{key}: index has {built.get(key)!r}, settings ask for {value!r}"
            + (f" (the index was embedded with backend {manifest['model'].get('backend', 'torch')!r}, whose "
               "vectors differ beyond tolerance from RAG_EMBED_BACKEND's)" if key == "vectors" else "")
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


def exact_vector_index(vectors: np.ndarray, dimension: int) -> faiss.Index:
    """The FAISS index of a build: exact inner product over the normalised vectors."""
    flat = faiss.IndexFlatIP(dimension)
    if len(vectors):
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat


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
    with _try_lock(index_dir) as held:
        if not held:
            raise RagError(f"another build is writing {index_dir}; try again when it ends")
        yield


@contextmanager
def _try_lock(index_dir: Path) -> Iterator[bool]:
    """The build lock without waiting: yields whether it was taken."""
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(index_dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _storage_error("write", index_dir, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock


def clean_orphans(index_dir: Path) -> list[Path]:
    """Remove what crashed builds left behind: `builds/.tmp-*` folders and `.*.tmp` files in
    the index folder and in build folders. Returns what was removed.

    Safe at any time (a service calls it on start): it only cleans when it can take the
    build lock without waiting; while a build runs, those temp files are in use and it
    removes nothing. Best effort: it never raises for I/O problems (a read-only index
    folder, say), and does nothing for a folder that does not exist.
    """
    if not index_dir.is_dir():
        return []
    try:
        with _try_lock(index_dir) as held:
            return _remove_orphans(index_dir) if held else []
    except (StorageError, OSError):
        return []


def _remove_orphans(index_dir: Path) -> list[Path]:
    """Temp files and folders of crashed builds. Only under the build lock."""
    builds = index_dir / "builds"
    removed = []
    for stale in sorted(builds.glob(".tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    folders = [index_dir, *(p for p in builds.glob("*") if p.is_dir() and not p.name.startswith("."))]
    for path in (p for folder in folders for p in sorted(folder.glob(".*.tmp"))):
        with suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def write_index(index_dir: Path, index: Index) -> Path:
    """Write `index` as a new build, make it live atomically and prune builds no longer kept.
    Call under build_lock. An OSError (disk full, no permission, read-only) becomes a
    StorageError, with the previous build still live and no temp folder left behind."""
    builds = index_dir / "builds"
    build_id = index.build_id
    tmp, final = builds / f".tmp-{build_id}", builds / build_id
    previous = _read_pointer(index_dir)
    try:
        _remove_orphans(index_dir)  # left by a crashed build; we hold the lock
        if not builds.is_dir():
            builds.mkdir(parents=True)
            fsync_path(index_dir)
        tmp.mkdir()
        _write_files(tmp, index)
        os.rename(tmp, final)
        fsync_path(builds)
        _replace_text(index_dir / "CURRENT", build_id + "\n")
    except BaseException as exc:  # KeyboardInterrupt too: leave no half-written build behind
        shutil.rmtree(tmp, ignore_errors=True)
        if _read_pointer(index_dir) != build_id:  # never live, so no reader can be loading it
            shutil.rmtree(final, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _storage_error("write", index_dir, exc) from exc
        raise
    # the build is live: failing to record or prune is not a failed build, and the next
    # build redoes both (it reads the previous live build from CURRENT, not only HISTORY)
    kept = _kept_builds(index_dir, previous, build_id)
    with suppress(OSError):
        _replace_text(index_dir / "HISTORY", "".join(f"{b}\n" for b in kept))
    with suppress(OSError):
        _prune(builds, kept)
    return final


def _write_files(folder: Path, index: Index) -> None:
    _write_jsonl(folder / "documents.jsonl", (asdict(d) for d in index.documents.values()))
    _write_jsonl(folder / "chunks.jsonl", (asdict(c) for c in index.chunks))
    # serialised in memory and written by Python: a full disk is an OSError, not a FAISS RuntimeError
    (folder / "vectors.faiss").write_bytes(faiss.serialize_index(index.vectors).tobytes())
    if index.sentence_vectors is not None:
        _write_jsonl(folder / "sentences.jsonl", ({"doc_id": d, "char_start": a, "char_end": b}
                                                  for d, a, b in index.sentences))
        np.save(folder / "sentence_vectors.npy", index.sentence_vectors, allow_pickle=False)
    index.lexical.save(folder / "bm25")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    manifest = {**index.manifest, "files": {str(p.relative_to(folder)): sha256_file(p) for p in files}}
    for path in files:
        fsync_path(path)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):  # bm25/: its entries
        fsync_path(sub)
    _replace_text(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))  # fsyncs folder
    index.manifest = manifest


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _replace_text(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, durably (file and folder fsynced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def _kept_builds(index_dir: Path, previous: str | None, build_id: str) -> list[str]:
    """The last KEEP_BUILDS builds that went live, oldest first. Ids alone cannot order
    them (two in one second sort by random suffix), nor can folder mtimes (copies, clock
    changes), so the order is the one recorded in HISTORY, and the build that was live
    before this one counts even if a crash kept it out of HISTORY."""
    try:
        history = (index_dir / "HISTORY").read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        history = []  # first build, or an index from before HISTORY existed
    went_live = [*history, *([previous] if previous else []), build_id]
    latest_first = list(dict.fromkeys(reversed(went_live)))  # each build once, at its last time live
    return latest_first[:KEEP_BUILDS][::-1]


def _prune(builds: Path, kept: list[str]) -> None:
    for folder in builds.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in kept:
            shutil.rmtree(folder, ignore_errors=True)


def _storage_error(doing: str, where: Path, exc: OSError) -> StorageError:
    """One line, e.g. `cannot write index at /srv/index: No space left on device`."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        reason += f" ({exc.filename})"
    return StorageError(f"cannot {doing} index at {where}: {reason}")


# ------------------------------------------------------------------ reading


def current_build(index_dir: Path) -> Path:
    """The folder of the live build, from one read of CURRENT."""
    pointer = index_dir / "CURRENT"
    try:
        build_id = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise IndexMissingError(f"no index at {index_dir}: run `rag build` first") from None
    except UnicodeDecodeError as exc:
        raise IndexCorruptError(f"{pointer} does not name a build: {exc}") from exc
    except OSError as exc:
        raise _storage_error("read", index_dir, exc) from exc
    folder = index_dir / "builds" / build_id
    if not BUILD_NAME.fullmatch(build_id) or not folder.is_dir():
        if _read_pointer(index_dir) != build_id:  # replaced, and that build pruned, since we read it
            raise IndexBusyError(f"index at {index_dir} changed while it was being read: retry")
        raise IndexCorruptError(f"{pointer} names build '{build_id}', which does not exist")
    return folder


def _read_pointer(index_dir: Path) -> str | None:
    """What CURRENT names now, or None if it cannot be read."""
    try:
        return (index_dir / "CURRENT").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of one build folder (take the folder from current_build, once)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"cannot read {path}: it is missing") from exc
    except OSError as exc:
        raise _storage_error("read", folder, exc) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"cannot read {path}: it holds {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path} is format {manifest.get('format')!r} v{manifest.get('format_version')}; "
            f"this version reads {FORMAT!r} v{FORMAT_VERSION}: run `rag build --force`"
        )
    return manifest


def load_index(index_dir: Path, spec: IndexSpec | None = None) -> Index:
    """Load the live build; refuse it if corrupt or built with other settings than `spec`.

    Raises IndexMissingError (no build yet), IndexCorruptError (damaged or inconsistent
    files), IndexMismatchError (other format or settings), StorageError (an OSError
    reading it) and IndexBusyError when CURRENT moved on while the build was being read
    (a newer build went live, and this one may have been pruned mid-read): retry.
    The loaded build is `index.path`, and `index.build_id` equals its folder name.
    """
    folder = current_build(index_dir)  # CURRENT is read once: every file comes from this folder
    try:
        return _load_build(folder, spec)
    except RagError as exc:
        if _read_pointer(index_dir) != folder.name:
            raise IndexBusyError(
                f"index at {index_dir} changed while build {folder.name} was being read ({exc}): retry"
            ) from exc
        raise


def _load_build(folder: Path, spec: IndexSpec | None) -> Index:
    manifest = read_manifest(folder)
    if manifest.get("build_id") != folder.name:
        raise IndexCorruptError(
            f"{folder / 'manifest.json'} is the manifest of build {manifest.get('build_id')!r}, not of {folder.name!r}")
    try:
        if spec is not None and (diffs := spec.differences(manifest)):
            raise IndexMismatchError(
                f"index at {folder.parent.parent} was built with other settings ({'; '.join(diffs)}): "
                "run `rag build` to rebuild it"
            )
        for name, expected in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file() or sha256_file(path) != expected:
                raise IndexCorruptError(f"index file {path} is missing or damaged: run `rag build --force`")
        documents = [DocumentRecord(**row) for row in _read_jsonl(folder / "documents.jsonl")]
        chunks = [ChunkRecord(**row) for row in _read_jsonl(folder / "chunks.jsonl")]
        vectors = faiss.deserialize_index(np.fromfile(folder / "vectors.faiss", dtype=np.uint8))
        lexical = LexicalIndex.load(folder / "bm25", size=len(chunks))
        sentences: list[tuple[str, int, int]] = []
        sentence_vectors = None
        if (folder / "sentence_vectors.npy").exists():
            sentences = [(r["doc_id"], r["char_start"], r["char_end"]) for r in _read_jsonl(folder / "sentences.jsonl")]
            sentence_vectors = np.load(folder / "sentence_vectors.npy", allow_pickle=False)
        dimension = manifest["model"]["dimension"]
    except OSError as exc:
        raise _storage_error("read", folder, exc) from exc
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise IndexCorruptError(f"cannot load index at {folder}: {exc!r}") from exc
    if vectors.ntotal != len(chunks) or vectors.d != dimension:
        raise IndexCorruptError(
            f"index at {folder} holds {vectors.ntotal} vectors of dimension {vectors.d} for "
            f"{len(chunks)} chunks of a {dimension}-dimension model"
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
