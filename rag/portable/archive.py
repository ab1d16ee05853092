"""The archive a knowledge base travels in: one uncompressed tar of plain members.

    documents.jsonl       a document a line: doc_id, origin, metadata, text, sections, content_hash
    chunks.jsonl          a chunk a line, in row order: chunk_id, doc_id, section, char_start,
                          char_end, text, n_tokens, n_model_tokens, embed_hash
    chunk_vectors.npy     float32 (chunks, dimension); row i belongs to chunks.jsonl's line i
    sentences.jsonl       a sentence a line: doc_id, char_start, char_end, text_hash
    sentence_vectors.npy  float32 (sentences, dimension)
    files/<name>          the collection's other files, as they are (a vector store's vector_store.json)
    manifest.json         last: the format and its version, the collection, the model, the chunker,
                          counts, and every member's size and sha256

Why these formats: JSON lines and NumPy's .npy are documented, readable with the standard
library and NumPy alone (`tar -xf`, `json.loads`, `np.load(..., mmap_mode="r")`), and hold no
code (no pickle: `allow_pickle` stays off). Arrow or Parquet would add a ~100 MB dependency for
columns we read once, in order. BM25 is not shipped: an import rebuilds it from the chunks.

Writing streams every member straight into the tar: a member's header is written after its
data (the size is known then), and the .npy header after its rows (the count is known then);
the file is written under a temporary name and renamed, fsynced, when whole.

Reading checks every member's size and sha256 against the manifest first (`verify`), then
parses them (`Archive` is a rag.stores.base.Snapshot, as a store's is). Anything wrong is an
ArchiveError naming the member: a tar of other members, a damaged or truncated member, a
newer format.

Left out: compression (vectors barely compress; gzip costs more than the disk it saves),
appending to an archive, reading one from a pipe.

Why ~340 lines: the writer and the reader are the format's two sides (member names, the
.npy header, the manifest's fields); apart, a change to one would not show in the other.
"""

import hashlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from rag import __version__
from rag.errors import ArchiveError
from rag.files import fsync_path
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord

FORMAT, FORMAT_VERSION = "rag-archive", 1
MANIFEST = "manifest.json"
RECORDS = ("documents.jsonl", "chunks.jsonl", "chunk_vectors.npy", "sentences.jsonl", "sentence_vectors.npy")
FILE_NAME = re.compile(r"^files/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_FILE_BYTES = 16 << 20  # a collection's own small files (vector_store.json); anything bigger is not one
MAX_LINE_BYTES = 64 << 20  # a document line: up to RAG_MAX_DOCUMENT_CHARS of text, 4 bytes each, and metadata
MAX_MANIFEST_BYTES = 1 << 20
BLOCK = 512  # tar's block, bytes
NPY_HEADER = 128  # bytes of our .npy header: magic, version, length, dict padded (NumPy aligns to 64)


class ArchiveWriter:
    """Writes an archive to `path` whole or not at all: use as a context manager, write
    members, then `finish(manifest)`; leaving the block without it removes the partial file."""

    def __init__(self, path: Path):
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._out: IO[bytes] = open(self._tmp, "w+b")  # noqa: SIM115 (closed in finish or __exit__)
        self.members: dict[str, dict[str, Any]] = {}
        self._mtime = int(time.time())

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._out.closed:
            self._out.close()
            with suppress(OSError):
                self._tmp.unlink()

    @contextmanager
    def member(self, name: str) -> Iterator[IO[bytes]]:
        """A file to write one member's bytes to (seek only within what you wrote)."""
        start = self._out.tell()
        self._out.write(bytes(BLOCK))  # its header, once the size is known
        yield self._out
        self._out.seek(0, io.SEEK_END)
        size = self._out.tell() - start - BLOCK
        self._out.write(bytes(-size % BLOCK))
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self._mtime, 0o644
        header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        assert len(header) == BLOCK, name  # short names only: one header block
        self._out.seek(start)
        self._out.write(header)
        self.members[name] = {"bytes": size, "sha256": self._digest(start + BLOCK, size)}
        self._out.seek(0, io.SEEK_END)

    def _digest(self, offset: int, size: int) -> str:
        """The member's sha256, read back (a .npy header is rewritten after its rows)."""
        self._out.flush()
        digest = hashlib.sha256()
        with open(self._tmp, "rb") as back:
            back.seek(offset)
            while size > 0:
                block = back.read(min(size, 1 << 20))
                digest.update(block)
                size -= len(block)
        return digest.hexdigest()

    def lines(self, name: str, records: Iterator[dict[str, Any]]) -> int:
        """A JSON lines member; the number of lines."""
        count = 0
        with self.member(name) as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
                count += 1
        return count

    @contextmanager
    def vectors(self, name: str, dimension: int) -> Iterator["VectorSink"]:
        with self.member(name) as out:
            sink = VectorSink(out, dimension)
            yield sink
            sink.close()

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (with every member's size and digest) and make the archive whole; the manifest."""
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **manifest,
                    "members": dict(self.members)}
        with self.member(MANIFEST) as out:
            out.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        self._out.write(bytes(2 * BLOCK))  # the end-of-archive marker
        self._out.write(bytes(-self._out.tell() % tarfile.RECORDSIZE))
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self._tmp, self.path)
        fsync_path(self.path.parent)
        return manifest


class VectorSink:
    """The rows of one .npy member, appended in batches; its header is written at `close`."""

    def __init__(self, out: IO[bytes], dimension: int):
        self._out, self.dimension, self.rows = out, dimension, 0
        self._start = out.tell()
        out.write(bytes(NPY_HEADER))

    def append(self, vectors: np.ndarray) -> None:
        block = np.ascontiguousarray(vectors, dtype="<f4")
        if block.ndim != 2 or block.shape[1] != self.dimension:
            raise ValueError(f"vectors of shape {block.shape}, expected (n, {self.dimension})")
        self._out.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.rows}, {self.dimension}), }}"
        body = text.encode("latin1").ljust(NPY_HEADER - 10 - 1) + b"\n"
        self._out.seek(self._start)
        self._out.write(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body)
        self._out.seek(0, io.SEEK_END)


class Archive:
    """An archive opened for reading: its manifest, then its records (a Snapshot)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close)
        except FileNotFoundError:
            raise ArchiveError(f"no archive at {path}") from None
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(f"{path} is not an archive this tool wrote (not a tar: {exc})") from exc
        try:
            self._entries = self._index()
            self.manifest = self._read_manifest()
        except BaseException:
            self._tar.close()
            raise
        self.dimension = int(self.manifest["model"]["dimension"])
        self.counts = {k: int(v) for k, v in self.manifest["counts"].items()}

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    def _index(self) -> dict[str, tarfile.TarInfo]:
        entries: dict[str, tarfile.TarInfo] = {}
        try:
            for info in self._tar:
                if not info.isfile() or (info.name not in (*RECORDS, MANIFEST) and not FILE_NAME.fullmatch(info.name)):
                    raise ArchiveError(f"{self.path}: member {info.name!r} is not part of this format")
                if info.name in entries:
                    raise ArchiveError(f"{self.path}: member {info.name!r} appears twice")
                entries[info.name] = info
        except (tarfile.TarError, OSError) as exc:
            last = next(reversed(entries), "the start")
            raise ArchiveError(f"{self.path} is damaged or truncated after member {last!r}: {exc}") from exc
        return entries

    def _read_manifest(self) -> dict[str, Any]:
        info = self._entries.get(MANIFEST)
        if info is None:
            last = next(reversed(self._entries), None)
            raise ArchiveError(f"{self.path} has no {MANIFEST}: it is truncated (it ends after member {last!r}) "
                               "or was not written by `rag export`")
        if info.size > MAX_MANIFEST_BYTES:
            raise ArchiveError(f"{self.path}: member {MANIFEST} is {info.size} bytes, more than a manifest")
        try:
            manifest = json.loads(self._open(MANIFEST).read())
            if manifest.get("format") != FORMAT:
                raise ArchiveError(f"{self.path} is format {manifest.get('format')!r}, not {FORMAT!r}")
            if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
                raise ArchiveError(f"{self.path} is {FORMAT} v{manifest.get('format_version')}, written by rag "
                                   f"{manifest.get('package_version')}; this version reads up to v{FORMAT_VERSION}: "
                                   "upgrade rag to import it")
            int(manifest["model"]["dimension"]), dict(manifest["counts"]), dict(manifest["members"])
            str(manifest["collection"]["name"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(f"{self.path}: member {MANIFEST} is damaged ({type(exc).__name__}: {exc})") from exc
        return dict(manifest)

    def _open(self, name: str) -> IO[bytes]:
        handle = self._tar.extractfile(self._entries[name])
        assert handle is not None  # a regular file (checked by _index)
        return handle

    def files(self) -> dict[str, bytes]:
        """The collection's other files, by name (without `files/`)."""
        out = {}
        for name in self.manifest["members"]:
            if name.startswith("files/"):
                if self._entries[name].size > MAX_FILE_BYTES:
                    raise ArchiveError(f"{self.path}: member {name} is over {MAX_FILE_BYTES} bytes")
                out[name.removeprefix("files/")] = self._open(name).read()
        return out

    def verify(self, progress: Any = None) -> None:
        """Every member the manifest lists is here, whole, with its recorded digest, and none
        else; `progress(bytes_read)` is called as it reads."""
        listed = self.manifest["members"]
        for name in self._entries:
            if name != MANIFEST and name not in listed:
                raise ArchiveError(f"{self.path}: member {name!r} is not in its manifest")
        for name, expected in listed.items():
            if not isinstance(expected, dict) or (name not in (*RECORDS,) and not FILE_NAME.fullmatch(name)):
                raise ArchiveError(f"{self.path}: its manifest lists {name!r}, which is not part of this format")
            if name not in self._entries:
                raise ArchiveError(f"{self.path}: member {name} is missing (truncated archive?)")
            if self._entries[name].size != expected.get("bytes"):
                raise ArchiveError(f"{self.path}: member {name} is {self._entries[name].size} bytes, its manifest "
                                   f"says {expected.get('bytes')}")
            digest, handle = hashlib.sha256(), self._open(name)
            try:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    if progress is not None:
                        progress(len(block))
            except (tarfile.TarError, OSError) as exc:
                raise ArchiveError(f"{self.path}: member {name} cannot be read: {exc}") from exc
            if digest.hexdigest() != expected.get("sha256"):
                raise ArchiveError(f"{self.path}: member {name} is damaged (its sha256 differs from the manifest's)")
        for name in RECORDS:
            if name not in listed:
                raise ArchiveError(f"{self.path}: member {name} is missing")

    # ------------------------------------------------------------------ records (a Snapshot)

    def _lines(self, name: str) -> Iterator[dict[str, Any]]:
        handle = self._open(name)
        for number, line in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(line) > MAX_LINE_BYTES:
                raise ArchiveError(f"{self.path}: member {name} line {number} is over {MAX_LINE_BYTES} bytes")
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"a line holds {type(record).__name__}, not an object")
            except (ValueError, TypeError) as exc:
                raise ArchiveError(f"{self.path}: member {name} line {number} is damaged: {exc}") from exc
            yield record

    def _records(self, name: str, make: Any) -> Iterator[Any]:
        for number, record in enumerate(self._lines(name), 1):
            try:
                yield make(record)
            except (KeyError, TypeError, ValueError) as exc:
                raise ArchiveError(f"{self.path}: member {name} line {number} is not a valid record: "
                                   f"{type(exc).__name__}: {exc}") from exc

    def documents(self) -> Iterator[tuple[DocumentRecord, str]]:
        return self._records("documents.jsonl", lambda r: (DocumentRecord(
            str(r["doc_id"]), dict(r["metadata"]), str(r["text"]), list(r["sections"]), str(r["content_hash"])),
            str(r["origin"])))

    def chunks(self, batch: int) -> Iterator[tuple[list[ChunkRecord], np.ndarray]]:
        records = self._records("chunks.jsonl", lambda r: ChunkRecord(
            str(r["chunk_id"]), str(r["doc_id"]), None if r["section"] is None else str(r["section"]),
            int(r["char_start"]), int(r["char_end"]), str(r["text"]), int(r["n_tokens"]), int(r["n_model_tokens"]),
            str(r["embed_hash"])))
        return self._paired("chunks", records, "chunk_vectors.npy", batch)

    def sentences(self, batch: int) -> Iterator[tuple[list[SentenceRecord], np.ndarray]]:
        records = self._records("sentences.jsonl", lambda r: SentenceRecord(
            str(r["doc_id"]), int(r["char_start"]), int(r["char_end"]), str(r["text_hash"])))
        return self._paired("sentences", records, "sentence_vectors.npy", batch)

    def _paired(self, kind: str, records: Iterator[Any], vectors: str, batch: int) -> Iterator[tuple[list[Any], Any]]:
        """Records with their vectors, `batch` at a time; counts checked against the manifest."""
        handle, expected = self._open(vectors), self.counts[kind]
        try:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}[version]
            shape, fortran, dtype = read_header(handle)  # a literal, parsed without eval or pickle
        except KeyError:
            raise ArchiveError(f"{self.path}: member {vectors} is a .npy of an unknown version") from None
        except (ValueError, OSError) as exc:
            raise ArchiveError(f"{self.path}: member {vectors} is not a .npy array: {exc}") from exc
        if dtype != np.dtype("<f4") or fortran or shape != (expected, self.dimension):
            raise ArchiveError(f"{self.path}: member {vectors} holds {dtype} {shape}; the manifest says float32 "
                               f"({expected}, {self.dimension})")
        seen = 0
        while part := [r for _, r in zip(range(batch), records)]:
            want = len(part) * self.dimension * 4
            block = handle.read(want)
            if len(block) != want:
                raise ArchiveError(f"{self.path}: member {vectors} has fewer rows than {kind} in its .jsonl")
            matrix = np.frombuffer(block, dtype="<f4").reshape(len(part), self.dimension)
            if not np.isfinite(matrix).all():
                raise ArchiveError(f"{self.path}: member {vectors} holds a value that is not a finite number")
            seen += len(part)
            yield part, matrix.astype(np.float32)
        if seen != expected:
            raise ArchiveError(f"{self.path}: {seen} {kind} in their .jsonl, the manifest says {expected}")
