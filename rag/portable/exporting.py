"""`rag export`: a collection, the built corpus (`default`) or a vector store's collection,
as one archive (rag.portable.archive), from a consistent snapshot taken while writes go on
(rag.stores.base.Snapshot: every write acknowledged before the export started is in it, none
made later is half in it).

The vectors stream straight into the archive; each .jsonl goes to a spill file beside it
first (a tar member's size comes before its bytes, and a snapshot yields a record with its
vector): text is the smaller part of a knowledge base, vectors the larger.

Left out: exporting part of a collection (a filter), and an incremental export.
"""

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from rag.collections import DEFAULT, Collections, check_name, own_model
from rag.errors import IndexMismatchError, StorageError
from rag.ingest.build import spec_of
from rag.portable.archive import ArchiveWriter
from rag.settings import Settings
from rag.stores.base import ChunkStore, Snapshot
from rag.stores.factory import open_store
from rag.stores.local.live import database_of
from rag.stores.local.snapshot import LiveSnapshot, open_live
from rag.stores.manifest import manifest_at

BATCH = 2_000  # records a read from the snapshot
STORE_FILES = ("manifest.json", "kb.sqlite", "kb.sqlite-wal", "kb.sqlite-shm")  # what a snapshot already holds
KEPT = ("model", "chunker", "lexical", "corpus", "highlights")  # what an archive keeps of the store's manifest
Progress = Callable[[str, int], None]  # (what, how many so far)


def export_collection(settings: Settings, name: str, path: Path, progress: Progress | None = None,
                      collections: Collections | None = None) -> dict[str, Any]:
    """Write collection `name` (DEFAULT: the built corpus) to the archive at `path`; its manifest.
    `collections`: the open registry of a running service (the CLI opens its own)."""
    check_name(name)
    with ExitStack() as stack:
        if name == DEFAULT:
            store: ChunkStore = open_store(settings, spec_of(settings))
            stack.callback(store.close)
            kind, files = "build", {}
            snapshot = stack.enter_context(store.snapshot())
        else:
            unopened = None
            if collections is None:  # the CLI: nothing is open here
                collections = stack.enter_context(Collections(settings, None))
                unopened = _unopened(collections, name)
            if unopened is not None:
                snapshot = unopened
                stack.callback(unopened.close)
            else:
                snapshot = stack.enter_context(collections.get(name).snapshot())
            kind, files = "live", collection_files(collections.root / name)
        return write_archive(snapshot, path, {"name": name, "kind": kind,
                                              "store": snapshot.manifest.get("store", {}).get("backend", "local")},
                             files, progress)


def _unopened(collections: Collections, name: str) -> LiveSnapshot | None:
    """A local collection's snapshot read straight from SQLite, without the in-memory
    indexes that opening it for queries builds (most of an export's time: `rag bench
    portable`). None for a Milvus one, or one that is missing (`get` says why)."""
    manifest = manifest_at(collections.root / name)
    if manifest is None or manifest.get("store", {}).get("backend", "local") != "local" \
            or collections.settings.vector_store != "local":
        return None
    if diffs := own_model(spec_of(collections.settings), manifest).differences(manifest):
        raise IndexMismatchError(f"collection '{name}' was made with other settings: {'; '.join(diffs)}")
    return open_live(collections.root / name / database_of(manifest), manifest, int(manifest["model"]["dimension"]))


def collection_files(folder: Path) -> dict[str, bytes]:
    """A collection folder's own small files beyond what its store holds (a vector store's sidecar)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in STORE_FILES and not p.name.startswith(".")}


def write_archive(snapshot: Snapshot, path: Path, collection: dict[str, Any], files: dict[str, bytes],
                  progress: Progress | None = None) -> dict[str, Any]:
    """The snapshot as an archive at `path` (written whole or not at all); its manifest."""
    tick = progress or (lambda what, done: None)
    dimension = int(snapshot.manifest["model"]["dimension"])
    counts = {"documents": 0, "chunks": 0, "sentences": 0}
    order: dict[str, int] = {}  # document -> its place: chunks and sentences must follow the documents' order
    try:
        with ArchiveWriter(path) as archive, _spill(path) as spill:
            def documents() -> Iterator[dict[str, Any]]:
                for doc, origin in snapshot.documents():
                    order[doc.doc_id] = len(order)
                    yield {"doc_id": doc.doc_id, "origin": origin, "metadata": doc.metadata, "text": doc.text,
                           "sections": doc.sections, "content_hash": doc.content_hash}
                    tick("documents", len(order))
            counts["documents"] = archive.lines("documents.jsonl", documents())
            for kind, read in (("chunks", snapshot.chunks), ("sentences", snapshot.sentences)):
                spill.seek(0)
                spill.truncate()
                place = -1
                with archive.vectors(f"{kind[:-1]}_vectors.npy", dimension) as vectors:
                    for records, matrix in read(BATCH):
                        for record in records:
                            here = order.get(record.doc_id, -1)
                            if here < place or here < 0:
                                raise StorageError(f"the snapshot's {kind} do not follow its documents' order "
                                                   f"(at document {record.doc_id!r}): export aborted")
                            place = here
                            spill.write(json.dumps(_fields(record), ensure_ascii=False).encode() + b"\n")
                        vectors.append(matrix)
                        tick(kind, vectors.rows)
                    counts[kind] = vectors.rows
                spill.seek(0)
                with archive.member(f"{kind}.jsonl") as out:
                    shutil.copyfileobj(spill, out, 1 << 20)
            for name, data in files.items():
                with archive.member(f"files/{name}") as out:
                    out.write(data)
            return archive.finish({
                "collection": {**collection, "files": sorted(files)},
                **{key: snapshot.manifest[key] for key in KEPT if key in snapshot.manifest},
                "source": {key: snapshot.manifest.get(key) for key in ("build_id", "created_at", "package_version")},
                "counts": counts,
            })
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _spill(path: Path) -> IO[bytes]:
    """A temporary file beside the archive (same disk), gone when closed."""
    return tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.spill-")


def _fields(record: Any) -> dict[str, Any]:
    """A record's fields, shallow (dataclasses.asdict deep-copies: half an export's time)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}
