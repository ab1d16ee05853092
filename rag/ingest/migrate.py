"""`rag migrate --to milvus`: copy the live local index into Milvus without embedding again.

Documents, chunks (with their vectors and the BM25 text the build indexed: title,
section and chunk text), and sentences (with theirs) are streamed from the local build
into a new Milvus build in batches, in row order, so rows, chunk ids, offsets and
citations are the same on both sides; the Milvus build goes live at commit, as a
`rag build` would. The local index is only read.

Left out: the other direction (rebuild with `RAG_VECTOR_STORE=local rag build`; it
reuses nothing from Milvus, so it embeds again).
"""

from collections.abc import Callable
from itertools import islice

from tqdm import tqdm

from rag.ingest.build import spec_of
from rag.ingest.chunk import embed_input
from rag.settings import Settings
from rag.stores.factory import open_writer
from rag.stores.local.store import LocalStore, open_local
from rag.stores.manifest import new_manifest

BATCH = 1000  # rows per write


def migrate_to_milvus(settings: Settings, log: Callable[[str], None], progress: bool = False) -> str:
    """Copy the live build under `settings.index_dir` into `settings.milvus_uri`; returns the new build."""
    source = open_local(settings.index_dir, spec_of(settings))
    try:
        return _copy(source, settings.model_copy(update={"vector_store": "milvus"}), log, progress)
    finally:
        source.close()


def _copy(source: LocalStore, target: Settings, log: Callable[[str], None], progress: bool) -> str:
    dimension = source.manifest["model"]["dimension"]
    chunks, sentences = source.matrix(), source.matrix(sentences=True)
    log(f"copying build {source.build_id}: {len(source.documents)} documents, {len(chunks)} chunks, "
        f"{len(sentences)} sentences")
    titles: dict[str, str] = {}
    with open_writer(target, dimension, log) as writer:
        ids = iter(source.documents)
        while batch := [source.documents[doc_id] for doc_id in islice(ids, BATCH)]:
            writer.add_documents(batch)
            titles.update((d.doc_id, str(d.metadata.get("title", ""))) for d in batch)
        rows = iter(source.chunks)
        with tqdm(total=len(chunks), unit="chunk", desc="chunks", disable=not progress) as bar:
            start = 0
            while records := list(islice(rows, BATCH)):
                writer.add_chunks(records, chunks[start:start + len(records)],
                                  lexical_texts=[embed_input(titles[c.doc_id], c.section, c.text) for c in records])
                start += len(records)
                bar.update(len(records))
        spans = source.sentence_records()
        start = 0
        while part := list(islice(spans, BATCH)):
            writer.add_sentences(part, sentences[start:start + len(part)])
            start += len(part)
        kept = {k: v for k, v in source.manifest.items()
                if k not in ("format", "format_version", "package_version", "created_at", "build_id", "files",
                             "store")}
        return writer.commit(new_manifest(**kept, migrated_from={"store": "local", "build_id": source.build_id}))
