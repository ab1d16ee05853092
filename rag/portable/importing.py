"""`rag import`: an archive (rag.portable.archive) back into a store, local or Milvus, as a
live collection, or as the built corpus (`--as default`).

Nothing is half-imported: every member's digest is checked before anything is written; a
live collection is filled under a hidden name (`.tmp-` folder, and for Milvus its own new
collections) and renamed into place when whole, so a crash or an error leaves the name
absent (start-up removes the debris; Milvus's sweep drops unregistered collections); the
built corpus is a new build that goes live at commit, as `rag build`'s does.

What is imported is checked as an upload would be: document ids, metadata, every chunk's
offsets and text against its document's text, every sentence's offsets, the embedding input
against its recorded hash, and vectors (finite, of the model's dimension). BM25 is rebuilt
from the chunks (a live collection indexes as it is written, a build at commit).

An archive made with another model, vector family or chunker is refused, naming the
difference, unless `reembed`: then its documents (their cleaned text, sections and metadata)
are chunked and embedded again with this service's settings, and its vectors are not read.

Left out: merging into an existing collection; quotas (an import is an admin's act).
"""

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.collections import DEFAULT, Collections, check_name
from rag.encoders.base import Embedder
from rag.errors import ArchiveError, ConflictError, RagError
from rag.files import fsync_path, replace_text
from rag.ingest.build import Batches, build_manifest, spec_of
from rag.ingest.clean import CleanRules
from rag.portable.archive import Archive
from rag.portable.records import as_source, groups, input_of
from rag.settings import Settings
from rag.stores.base import DocumentSink, LiveStore
from rag.stores.factory import milvus_token, open_store, open_writer

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Imported:
    name: str
    documents: int
    chunks: int
    sentences: int
    reembedded: bool
    seconds: float

    def __str__(self) -> str:
        how = "embedded again" if self.reembedded else "vectors kept"
        return (f"imported '{self.name}': {self.documents} documents, {self.chunks} chunks, {self.sentences} "
                f"sentences ({how}) in {self.seconds:.1f} s")


def import_archive(settings: Settings, path: Path, embedder: Embedder, name: str | None = None, *,
                   reembed: bool = False, replace: bool = False, progress: Progress | None = None,
                   collections: Collections | None = None) -> Imported:
    """Import the archive at `path` as collection `name` (default: the name it was exported
    under) of `settings.vector_store`. `replace` lets `--as default` replace a built corpus."""
    started, tick = time.perf_counter(), progress or (lambda what, done: None)
    with Archive(path) as archive:
        name = check_name(name or str(archive.manifest["collection"]["name"]))
        archive.verify(progress=_bytes_read(tick))
        if not reembed:
            _check_compatible(settings, archive, embedder)
        owned = collections is None
        registry = collections or Collections(settings, embedder)
        try:
            counts = _into_build(settings, archive, embedder, reembed, replace, tick) if name == DEFAULT else \
                _into_collection(registry, name, archive, embedder, reembed, tick)
        finally:
            if owned:
                registry.close()
    return Imported(name, *counts, reembed, time.perf_counter() - started)


def inbox(index_dir: Path) -> Path:
    """Where archives sent to a service wait for their import job (made if missing)."""
    folder = index_dir / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _bytes_read(tick: Progress) -> Callable[[int], None]:
    total = [0]

    def read(n: int) -> None:
        total[0] += n
        tick("bytes checked", total[0])
    return read


def _check_compatible(settings: Settings, archive: Archive, embedder: Embedder) -> None:
    diffs = spec_of(settings).differences(archive.manifest)
    if archive.dimension != embedder.dimension:
        diffs.append(f"dimension: archive has {archive.dimension}, the model gives {embedder.dimension}")
    if diffs:
        model = archive.manifest["model"]
        raise ArchiveError(f"{archive.path} was made with model {model.get('name')!r} (backend "
                           f"{model.get('backend')!r}) and other settings than this service's: {'; '.join(diffs)}. "
                           "Import it with --reembed to embed its documents again with this service's model")


def _into_build(settings: Settings, archive: Archive, embedder: Embedder, reembed: bool, replace: bool,
                tick: Progress) -> tuple[int, int, int]:
    if not replace and _has_build(settings):
        raise ConflictError("a built corpus exists: import with --replace to replace it, or --as another name")
    with open_writer(settings, embedder.dimension) as writer:
        counts = _copy(settings, archive, writer, None, embedder, reembed, tick)
        kept = {k: v for k, v in archive.manifest.items() if k in ("corpus", "highlights")}
        writer.commit(build_manifest(settings, embedder.dimension, embedder.max_tokens, **kept,
                                     counts={"documents": counts[0], "chunks": counts[1]},
                                     imported_from=_origin(archive)))
    return counts


def _has_build(settings: Settings) -> bool:
    try:
        open_store(settings, None).close()
        return True
    except RagError:
        return False


def _into_collection(registry: Collections, name: str, archive: Archive, embedder: Embedder, reembed: bool,
                     tick: Progress) -> tuple[int, int, int]:
    manifest = build_manifest(registry.settings, embedder.dimension, embedder.max_tokens, collection=name,
                              imported_from=_origin(archive))
    with _staged(registry, name, manifest, archive.files()) as store:
        return _copy(registry.settings, archive, None, store, embedder, reembed, tick)


def _origin(archive: Archive) -> dict[str, Any]:
    return {"archive": archive.path.name, "collection": archive.manifest["collection"],
            "created_at": archive.manifest.get("created_at"), "model": archive.manifest["model"]}


@contextmanager
def _staged(registry: Collections, name: str, manifest: dict[str, Any], files: dict[str, bytes]
            ) -> Iterator[LiveStore]:
    """A new collection under a hidden name, renamed to `name` when the block ends well."""
    settings = registry.settings
    if name in registry.names(every_store=True):
        raise ConflictError(f"a collection named '{name}' exists: delete it, or import --as another name")
    registry.root.mkdir(parents=True, exist_ok=True)
    if settings.vector_store == "milvus":
        from rag.stores.milvus.versions import create_collection, drop_collection, new_tag

        manifest["store"] = create_collection(settings.milvus_uri, settings.milvus_collection, new_tag(),
                                              manifest["model"]["dimension"], milvus_token(settings))
    folder = registry.root / f".tmp-{name}-{secrets.token_hex(4)}"  # start-up removes it if we die
    store: LiveStore | None = None
    try:
        folder.mkdir()
        for file_name, data in files.items():
            replace_text(folder / file_name, data.decode("utf-8"))
        replace_text(folder / "manifest.json", json.dumps(manifest, indent=2))
        store = registry.open_at(folder, manifest)
        yield store
        store.close()
        fsync_path(folder)
        try:
            os.rename(folder, registry.root / name)
        except OSError as exc:
            raise ConflictError(f"a collection named '{name}' was made while importing") from exc
        fsync_path(registry.root)
    except BaseException:
        if store is not None:
            store.close()
        shutil.rmtree(folder, ignore_errors=True)
        if settings.vector_store == "milvus":
            with suppress(Exception):  # best effort: the sweep drops what is left
                drop_collection(settings.milvus_uri, manifest["store"]["prefix"], manifest["store"]["tag"],
                                milvus_token(settings))
        raise


def _copy(settings: Settings, archive: Archive, writer: DocumentSink | None, store: LiveStore | None,
          embedder: Embedder, reembed: bool, tick: Progress) -> tuple[int, int, int]:
    """Every document of the archive into the writer (a build) or the store (a live
    collection, one write per group of documents of one origin); the counts."""
    documents = chunks = sentences = 0
    batches = Batches(settings, embedder, CleanRules(), None) if reembed else None
    for origin, group in groups(archive, reembed):
        with _sink(writer, store, origin) as sink:
            if batches is not None:
                batches.write([as_source(doc) for doc, _, _ in group], sink)
            else:
                docs = [doc for doc, _, _ in group]
                parts = [c for _, c, _ in group]
                found = [s for _, _, s in group]
                sink.add_documents(docs)
                if any(parts):
                    records = [r for part in parts for r in part[0]]
                    by_id = {doc.doc_id: doc for doc in docs}
                    sink.add_chunks(records, np.concatenate([part[1] for part in parts if part[0]]),
                                    lexical_texts=[input_of(by_id[r.doc_id], r) for r in records])
                if any(s[0] for s in found):
                    sink.add_sentences([r for s in found for r in s[0]],
                                       np.concatenate([s[1] for s in found if s[0]]))
        documents += len(group)
        chunks += sum(len(c[0]) for _, c, _ in group) if batches is None else 0
        sentences += sum(len(s[0]) for _, _, s in group) if batches is None else 0
        tick("documents", documents)
    if batches is not None:
        chunks = batches.chunks
    return documents, chunks, sentences


@contextmanager
def _sink(writer: DocumentSink | None, store: LiveStore | None, origin: str) -> Iterator[DocumentSink]:
    if writer is not None:
        yield writer
    else:
        assert store is not None
        with store.writing(origin) as write:
            yield write
