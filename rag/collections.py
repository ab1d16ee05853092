"""Named collections of live documents (rag.stores.local.live), under `<index_dir>/collections/<name>/`.

`default` is the built corpus (`rag build` of the corpus folder into the index): it is
listed and searched like the others but written only by `rag build`. Every other
collection is a KnowledgeBase, created empty, written one document at a time
(`upsert`, `delete`). Each records the model and chunker it was made with in
`manifest.json`: it refuses to open under another chunker, and embeds with its own model
(rag.encoders.pool: a collection made before RAG_MODEL changed keeps its own, until
`rag reembed` moves it, rag.portable.reembed). Writes hold the collection's write lock
(`writing`) and, while a re-embed runs, land in its target too.

Upsert by content: a document whose doc_id exists with the same content hash is left as
it is (nothing embedded); changed content re-embeds only the chunks and sentences whose
text changed (the collection's own vectors are reused by hash).

A collection lives in the store the service is configured with (`RAG_VECTOR_STORE`):
a KnowledgeBase (SQLite) for `local`, a MilvusCollection (rag.stores.milvus.live) for
`milvus`. Either way its manifest.json is here, and records where the documents are; a
collection made in the other store is refused with a 409 naming it.

A collection's folder and manifest are made and removed whole (rag.files.publish_folder,
remove_durably: written under a `.tmp-` name, fsynced, renamed, the parent fsynced; removed
by a rename to a `.del-` name first), so a crash leaves a name complete or absent; the
debris is removed at start-up (rag.stores.local.builds.clean_orphans).

At most `max_open_collections` collections are open (an LRU): the least recently
used one beyond it is released (a local one's SQLite connection and in-memory indexes, a
Milvus one's client and cached rows; it reopens on next use), and `dropped(name)` tells the
owner (the service's retriever cache) on eviction, on delete, and when one turns out
deleted elsewhere.

Replicas share the registry through the index folder: a collection another process (or
Collections object) deletes, or deletes and makes again, is seen within RECHECK_S (0.5 s):
`get` re-reads the manifest of one it holds at most that often and, if it is gone or its
build id or Milvus tag changed, releases it and raises NotFoundError or opens the new one.

Left out: renaming; a registry in Milvus itself; a delete racing another replica's delete
and re-create of its name between its check and its rename (ms: it removes the new one).

Why ~425 lines: the registry (create, delete, the LRU, replicas' changes) and the writes
(upsert, remove, sync, quotas, the Milvus sweep, a re-embed's second store) share one lock
and the open stores; the parts that stand alone are already apart (rag.stores.manifest,
rag.stores.quota, rag.encoders.pool, rag.files, rag.portable.reembed).
"""

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rag.encoders.base import Embedder
from rag.encoders.pool import ModelPool
from rag.errors import (
    BadQueryError,
    ConflictError,
    CorpusError,
    IndexMismatchError,
    NotFoundError,
    RagError,
    StorageError,
)
from rag.files import file_lock, publish_folder, remove_durably
from rag.ingest.build import Batches, build_manifest, spec_of
from rag.ingest.clean import CleanRules
from rag.ingest.corpus import SourceDocument
from rag.ingest.metadata import normalise_metadata
from rag.ingest.uploads import checked_doc_id
from rag.jobs import Job
from rag.settings import Settings
from rag.stores.base import LiveStore
from rag.stores.factory import milvus_token
from rag.stores.local.live import KnowledgeBase
from rag.stores.manifest import IndexSpec, Sightings, manifest_at
from rag.stores.quota import Quotas
from rag.text import is_unicode_text

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
WRITE_LOCK = ".write.lock"  # in a collection's folder: every write of every process holds it (`writing`)
DEFAULT = "default"


@dataclass(frozen=True)
class Written:
    doc_id: str
    status: str  # created, replaced, unchanged
    chunks: int
    embedded: int  # chunks embedded by this write (0: unchanged, or every chunk's text reused)

    def __str__(self) -> str:
        return f"{self.status:<9} {self.doc_id}: {self.chunks} chunks ({self.embedded} embedded)"


def own_model(spec: IndexSpec, manifest: dict[str, Any]) -> IndexSpec:
    """What a collection must agree with to open: the settings' chunker, and its own model
    (each collection embeds with the model its vectors came from: rag.encoders.pool)."""
    model = manifest["model"]
    return replace(spec, model=model["name"], vectors=model.get("vectors", "fp32"))


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadQueryError(f"collection name {name!r}: use 1-63 lowercase letters, digits, '_' or '-', "
                            "starting with a letter or digit")
    return name


class Collections:
    def __init__(self, settings: Settings, embedder: Embedder | None,
                 dropped: Callable[[str], None] = lambda name: None, models: ModelPool | None = None):
        """`embedder` may be None for reading, listing and removing: they embed nothing.
        `dropped(name)` is called when a collection is released (LRU) or deleted. `models`:
        where a collection made with another model gets it (default: loaded on first use)."""
        self.settings, self._embedder, self._dropped = settings, embedder, dropped
        self.models = models or ModelPool(settings, embedder)
        self.root = settings.index_dir / "collections"
        self._open: OrderedDict[str, LiveStore] = OrderedDict()  # least recently used first
        self._seen = Sightings(self.root)  # what each open collection was when opened: deleted or re-created since?
        self._lock = threading.Lock()
        self._quotas = Quotas(settings)
        self._shadows: dict[str, LiveStore] = {}  # the stores running re-embeds fill, by collection

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise RagError("this needs the embedding model, which was not loaded")
        return self._embedder

    def embedder_of(self, store: LiveStore) -> Embedder:
        """The model a collection embeds with: its own (rag.encoders.pool)."""
        return self.models.of(store.manifest)

    @contextmanager
    def writing(self, name: str, alone: bool = False) -> Iterator[tuple[LiveStore, LiveStore | None]]:
        """The collection, and the one a re-embed fills beside it (or None), re-read from its
        manifest now, under the collection's write lock: a file lock that writes of every
        process hold shared (they do not wait for each other) and a re-embed holds `alone`
        (exclusive) to start, to add what it embedded, and for its cutover, so that no write
        falls between it reading the manifest and the manifest changing."""
        if check_name(name) == DEFAULT:
            self.get(name)  # the ConflictError that says why
        held = ExitStack()
        try:
            held.enter_context(file_lock(self.root / name / WRITE_LOCK, shared=not alone))
        except FileNotFoundError:
            raise NotFoundError(f"no collection named '{name}'") from None
        with held:
            kb = self.get(name, recheck=True)
            yield kb, self._shadow(name, kb)

    def _shadow(self, name: str, kb: LiveStore) -> LiveStore | None:
        """The store a running re-embed fills (rag.portable.reembed), opened once per target."""
        target = kb.manifest.get("reembed", {}).get("manifest")
        if target is None:
            return None
        with self._lock:
            held = self._shadows.get(name)
            if held is None or held.manifest.get("build_id") != target.get("build_id"):
                if held is not None:
                    held.close()
                held = self._shadows[name] = self.open_at(self.root / name, target)
            return held

    def names(self, every_store: bool = False) -> list[str]:
        """`default`, then the collections this service serves: those made in its store
        (`every_store`: those made in the other one too, which it refuses to open)."""
        # NAME also leaves out the .tmp- folder of a create that crashed before its rename
        folders = self.root.iterdir() if self.root.is_dir() else iter(())
        found = sorted(p.name for p in folders if NAME.fullmatch(p.name) and (p / "manifest.json").is_file())
        served = [n for n in found if every_store or self.store_of(n) == self.settings.vector_store]
        return [DEFAULT, *(n for n in served if n != DEFAULT)]

    def store_of(self, name: str) -> str:
        """The store a collection was made in (local or milvus); "" if its manifest is unreadable."""
        try:
            manifest = json.loads((self.root / name / "manifest.json").read_text(encoding="utf-8"))
            return str(manifest.get("store", {}).get("backend", "local"))
        except (OSError, ValueError, AttributeError):
            return ""

    def get(self, name: str, recheck: bool = False) -> LiveStore:
        """The collection, opened if need be; one held open and since deleted or made again
        elsewhere is released (checked at most every RECHECK_S, or now if `recheck`)."""
        check_name(name)
        if name == DEFAULT:
            raise ConflictError("'default' is the built corpus, not a live collection: change the corpus folder "
                                "and run `rag build`, or use another collection")
        stale: list[LiveStore] = []
        try:
            with self._lock:
                if name in self._open and not self._seen.still_there(name, now=recheck):  # deleted elsewhere?
                    stale.append(self._open.pop(name))
                if name not in self._open:
                    folder = self.root / name
                    manifest = manifest_at(folder)
                    if manifest is None:
                        raise NotFoundError(f"no collection named '{name}'")
                    if diffs := own_model(spec_of(self.settings), manifest).differences(manifest):
                        raise IndexMismatchError(f"collection '{name}' was made with other settings: "
                                                 f"{'; '.join(diffs)}")
                    self._open[name] = self.open_at(folder, manifest)
                    self._seen.opened(name, manifest)
                self._open.move_to_end(name)
                kb = self._open[name]
                evicted = self._over_bound()
        finally:
            for gone in stale:  # outside the registry's lock, as below; a request holding it gets a 404
                with gone.lock:
                    gone.close()
                self._dropped(name)
        for old, store in evicted:  # outside the registry's lock: release waits for the collection's own
            store.release()
            self._dropped(old)
        return kb

    def _over_bound(self) -> list[tuple[str, LiveStore]]:
        """The least recently used collections past the bound, taken out of the LRU (under
        the registry's lock): a local one holds a SQLite connection, a Milvus one a client."""
        evicted = []
        while len(self._open) > self.settings.max_open_collections:
            name, store = self._open.popitem(last=False)
            self._seen.forget(name)
            evicted.append((name, store))
        return evicted

    def open_at(self, folder: Path, manifest: dict[str, Any]) -> LiveStore:
        """The collection whose manifest is `manifest`, in `folder` (a registered name's, or one
        being made: rag.portable's imports fill it before they rename it into place)."""
        backend = manifest.get("store", {}).get("backend", "local")
        if backend != self.settings.vector_store:
            raise ConflictError(f"collection '{folder.name}' lives in the {backend} store; this service uses "
                                f"{self.settings.vector_store} (RAG_VECTOR_STORE)")
        if backend == "milvus":
            from rag.stores.milvus.live import MilvusCollection

            return MilvusCollection(self.settings.milvus_uri, manifest, milvus_token(self.settings))
        return KnowledgeBase(folder, manifest)

    def ensure(self, name: str) -> tuple[LiveStore, bool]:
        """The collection, made first if missing; and whether it was made."""
        if name in self.names(every_store=True):
            return self.get(name), False
        return self.create(name), True

    def create(self, name: str) -> LiveStore:
        check_name(name)
        if name == DEFAULT or name in self.names(every_store=True):
            raise ConflictError(f"a collection named '{name}' exists")
        manifest = build_manifest(self.settings, self.embedder.dimension, self.embedder.max_tokens,
                                  collection=name)
        if self.settings.vector_store == "milvus":  # its Milvus collections first: the rename registers them
            from rag.stores.milvus.versions import create_collection, new_tag

            manifest["store"] = create_collection(self.settings.milvus_uri, self.settings.milvus_collection,
                                                  new_tag(), self.embedder.dimension, milvus_token(self.settings))
        try:  # a crash before the rename leaves only a .tmp- folder, never half a collection
            publish_folder(self.root / name, {"manifest.json": json.dumps(manifest, indent=2)})
        except FileExistsError:
            raise ConflictError(f"a collection named '{name}' exists") from None
        except OSError as exc:
            raise StorageError(f"cannot create collection '{name}': {exc}") from exc
        return self.get(name)

    def delete(self, name: str) -> None:
        check_name(name)
        if name == DEFAULT:
            raise ConflictError("the default collection is the built corpus: it cannot be deleted")
        kb = self.get(name, recheck=True)  # the one on disk, not one deleted and made again elsewhere
        with self._lock, kb.lock:
            self._open.pop(name, None)
            self._seen.forget(name)
            kb.close()
            try:  # gone at once, durably; what follows may fail without harm
                remove_durably(self.root / name)
            except FileNotFoundError:
                raise NotFoundError(f"no collection named '{name}'") from None
            except OSError as exc:
                raise StorageError(f"cannot delete collection '{name}': {exc}") from exc
            self._dropped(name)
            if (store := kb.manifest.get("store", {})).get("backend") == "milvus":
                from rag.stores.milvus.versions import drop_collection

                drop_collection(self.settings.milvus_uri, store["prefix"], store["tag"], milvus_token(self.settings))

    def upsert(self, name: str, doc: SourceDocument, replace: bool, origin: str = "upload",
               clean: bool = True) -> Written:
        """Add `doc` (replace=False: a different document under the same id is a conflict)
        or replace it (replace=True). `clean=False` keeps the text as it is (a PDF's, whose
        page spans point into it)."""
        with self.writing(name) as (kb, shadow):
            existing = kb.documents.get(doc.doc_id)
            if existing is not None and existing.content_hash == doc.content_hash:
                return Written(doc.doc_id, "unchanged", kb.chunk_count(doc.doc_id), 0)
            if existing is not None and not replace:
                raise ConflictError(f"document '{doc.doc_id}' exists with other content: PUT replaces it")
            self._quotas.check(name, kb, doc.doc_id, doc.text)  # the text as sent: cleaning only shortens it
            batches = self.write_into(kb, doc, origin, clean)
            if shadow is not None:  # a re-embed runs: its collection gets the write too, in its model
                self.write_into(shadow, doc, origin, clean)
            if self._quotas.counting(name, kb):
                self._quotas.wrote(name, kb, existing.text if existing else "", kb.documents[doc.doc_id].text)
        return Written(doc.doc_id, "replaced" if existing is not None else "created", batches.chunks,
                       batches.embedded)

    def write_into(self, store: LiveStore, doc: SourceDocument, origin: str, clean: bool = True) -> Batches:
        """One document cleaned, chunked and embedded (in the store's own model) into `store`."""
        batches = Batches(self.settings, self.embedder_of(store), CleanRules() if clean else None,
                          store.reusable(doc.doc_id))
        with store.writing(origin) as write:
            batches.write([doc], write)
        return batches

    def sync(self, name: str, documents: list[SourceDocument], log: Callable[[str], None] = lambda m: None,
             job: Job | None = None, remove_missing: bool = True) -> dict[str, int]:
        """Make the collection's synced documents those of a folder (`documents`, from
        rag.ingest.corpus.load_corpus): new and changed files are written (changed chunks only are
        embedded), documents whose files are gone are removed. Documents uploaded over HTTP
        or added with `rag add` are never removed by a sync. Counts by outcome.

        With a `job` (rag.jobs), a document that fails is listed there with its reason and
        the others go on (without one, the first failure stops the sync); a cancelled job
        stops between documents and removes nothing, and so does `remove_missing=False`
        (some files could not be read: their documents stay)."""
        kb, _ = self.ensure(name)
        counts = {"created": 0, "replaced": 0, "unchanged": 0, "removed": 0, "failed": 0}
        for i, doc in enumerate(documents):
            if job is not None and job.cancelled:
                log(f"cancelled after {i} of {len(documents)} documents: nothing removed")
                return counts
            try:
                origin = kb.origin(doc.doc_id)
                if origin is not None and origin != "sync":
                    raise ConflictError(f"{doc.path.name}: document '{doc.doc_id}' was added another way "
                                        f"({origin}); rename the file or remove that document first")
                written = self.upsert(name, doc, replace=True, origin="sync")
            except RagError as exc:
                if job is None:
                    raise
                job.item_failed(doc.path.name, str(exc))
                counts["failed"] += 1
                log(f"failed    {doc.doc_id}: {exc}")
            else:
                counts[written.status] += 1
                log(str(written))
            if job is not None:
                job.progress(i + 1)
        present = {d.doc_id for d in documents}
        kb = self.get(name)  # as it is now (a re-embed's cutover may have come meanwhile)
        for doc_id in [d for d in kb.documents if remove_missing and kb.origin(d) == "sync" and d not in present]:
            self.remove(name, doc_id)
            counts["removed"] += 1
            log(f"removed   {doc_id}: its file is gone")
        return counts

    def sweep_milvus(self, older_than_s: float = 600.0) -> list[str]:
        """Drop the Milvus collections a crash left unregistered (rag.stores.milvus.versions.
        sweep_unregistered); the tags dropped. Nothing to do for the local store."""
        if self.settings.vector_store != "milvus":
            return []
        from rag.stores.milvus.versions import sweep_unregistered

        registered = set()
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            if not NAME.fullmatch(folder.name):  # a .tmp- or .del- folder's collections are not registered
                continue
            try:
                manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
                registered.add(str(manifest.get("store", {}).get("tag", "")))
                shadow = manifest.get("reembed", {}).get("manifest", {})  # what a running re-embed fills
                registered.add(str(shadow.get("store", {}).get("tag", "")))
            except (OSError, ValueError, AttributeError):  # unsure what is registered: drop nothing
                return []
        return sweep_unregistered(self.settings.milvus_uri, self.settings.milvus_collection, registered,
                                  milvus_token(self.settings), older_than_s)

    def check_quota(self, name: str, doc: SourceDocument) -> None:
        """What upsert checks first, for a write to be acknowledged before it runs (a 202)."""
        self._quotas.check(name, self.get(name), doc.doc_id, doc.text)

    def remove(self, name: str, doc_id: str) -> None:
        with self.writing(name) as (kb, shadow):
            existing = kb.documents.get(doc_id) if self._quotas.counting(name, kb) else None
            if not kb.delete(doc_id):
                raise NotFoundError(f"no document '{doc_id}' in collection '{name}'")
            if shadow is not None:
                shadow.delete(doc_id)
            if existing is not None:
                self._quotas.wrote(name, kb, existing.text, "")

    def close(self) -> None:
        with self._lock:
            for kb in [*self._open.values(), *self._shadows.values()]:
                kb.close()
            self._open.clear()
            self._shadows.clear()
            self._seen.forget()

    def __enter__(self) -> "Collections":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def text_document(text: str, doc_id: str | None, title: str | None, metadata: dict[str, Any] | None
                  ) -> SourceDocument:
    """A document sent as JSON; its id defaults to a hash of its content."""
    if not text.strip():
        raise BadQueryError("text is empty")
    if not is_unicode_text(text):
        raise BadQueryError("text is not valid Unicode (it holds a lone surrogate)")
    doc_id = checked_doc_id(doc_id or "doc-" + hashlib.sha256(text.encode()).hexdigest()[:16])
    path = Path(f"{doc_id}.txt")
    try:
        meta = normalise_metadata({**(metadata or {}), **({"title": title} if title else {})},
                                  f"document '{doc_id}'")
    except CorpusError as exc:
        raise BadQueryError(str(exc)) from exc
    meta["title"] = meta["title"] or doc_id  # not the first line: cleaning drops lines that repeat the title
    meta["source"] = meta["source"] or "upload"
    return SourceDocument(doc_id, path, text, meta)
