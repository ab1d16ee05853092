"""Build (or refresh) the index: ingest -> clean -> chunk -> embed -> store, atomically.

`build_index` does no work when nothing changed: the corpus hash (raw text + metadata of
every document, plus the cleaning rules and the package version) and the model and
chunker settings are compared with the live manifest first, before the model is even
loaded. When something changed, every document is re-cleaned and re-chunked (cheap), and
only chunks whose embedding input is new are embedded; the others reuse their vectors
from the live build, looked up by hash. So editing one article re-embeds that article's
changed chunks.

The build streams: documents go through in batches of `BATCH_DOCUMENTS`, each batch
cleaned, chunked, embedded and handed to the store's writer (`rag.stores.factory.open_writer`),
which commits the new build atomically at the end; a progress bar shows documents, rate
and time left. Memory holds one batch, not the corpus's chunks or vectors.

Left out: reading the corpus folder in a stream (`load_corpus` reads every file's text
first, to hash the corpus before deciding whether to build).
"""

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag import __version__
from rag.encoders.base import VECTOR_FAMILY, Embedder
from rag.encoders.load import embedder_from
from rag.errors import CorpusError, RagError
from rag.ingest.chunk import Chunk, ChunkParams, chunk_document, embed_input, split_sentences
from rag.ingest.clean import CleanDocument, CleanRules, Section, clean
from rag.ingest.corpus import SourceDocument, load_corpus
from rag.ingest.sandbox import parse_limits
from rag.records import ChunkRecord, DocumentRecord, SentenceRecord
from rag.settings import Settings
from rag.stores.base import ChunkStore, DocumentSink, VectorSource
from rag.stores.factory import open_store, open_writer
from rag.stores.manifest import IndexSpec, new_manifest, size_on_disk
from rag.text import TIKTOKEN_ENCODING

BATCH_DOCUMENTS = 64  # documents per writer batch: bounded memory, batches big enough to embed well


@dataclass(frozen=True)
class BuildReport:
    skipped: bool  # True: the live index was already up to date
    build_id: str
    location: str  # the build's folder (local) or collection (milvus)
    documents: int
    chunks: int
    embedded: int  # chunks embedded in this run
    reused: int  # chunks whose vector came from the previous build
    seconds: float
    bytes_on_disk: int | None  # None where the store does not say (milvus)
    token_counts: list[int]  # cl100k tokens per chunk


def spec_of(settings: Settings) -> IndexSpec:
    return IndexSpec(settings.model, settings.chunk_tokens, settings.chunk_overlap_tokens,
                     VECTOR_FAMILY[settings.embed_backend])


def as_is(text: str) -> CleanDocument:
    """An already clean text as one untitled section."""
    text = text.strip()
    return CleanDocument(text, [Section(None, 0, len(text))] if text else [])


def corpus_hash(documents: list[SourceDocument], rules: CleanRules | None, highlights: bool) -> str:
    """What a build depends on beyond the model and chunker (which the manifest checks)."""
    payload = json.dumps(
        {"docs": [(d.doc_id, d.content_hash) for d in documents],
         "rules": asdict(rules) if rules else None, "highlights": highlights, "version": __version__},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def build_index(
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    force: bool = False,
    rules: CleanRules | None = CleanRules(),
    documents: list[SourceDocument] | None = None,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = False,
) -> BuildReport:
    """Index `documents` (default: the corpus folder). `rules=None` skips cleaning, for
    text that is already clean (benchmark abstracts): each document is one section.
    `progress` shows a progress bar on stderr."""
    started = time.perf_counter()
    documents = load_corpus(settings.corpus_dir, parse_limits(settings)) if documents is None else documents
    spec = spec_of(settings)
    digest = corpus_hash(documents, rules, settings.highlights)
    previous = _previous(settings, spec)
    try:
        if previous is not None and not force and previous.manifest["corpus"]["hash"] == digest:
            return _report(previous, skipped=True, embedded=0, started=started)
        if embedder is None:
            log(f"loading model {settings.model} ({settings.embed_backend})")
            embedder = embedder_from(settings)
        with open_writer(settings, embedder.dimension, log) as writer:
            batches = Batches(settings, embedder, rules, previous)
            bar = tqdm(total=len(documents), unit="doc", desc="indexing", disable=not progress, file=sys.stderr)
            for start in range(0, len(documents), BATCH_DOCUMENTS):
                batches.write(documents[start:start + BATCH_DOCUMENTS], writer)
                bar.update(min(BATCH_DOCUMENTS, len(documents) - start))
            bar.close()
            log(f"{len(documents)} documents -> {batches.chunks} chunks "
                f"(embedded {batches.embedded}, reused {batches.chunks - batches.embedded})")
            manifest = build_manifest(
                settings, embedder.dimension, embedder.max_tokens,
                corpus={"hash": digest, "documents": {d.doc_id: d.content_hash for d in documents}},
                counts={"documents": len(documents), "chunks": batches.chunks},
            )
            location = writer.commit(manifest)
    finally:
        if previous is not None:
            previous.close()
    seconds = time.perf_counter() - started
    path = Path(str(location))
    return BuildReport(skipped=False, build_id=manifest["build_id"], location=str(location),
                       documents=len(documents), chunks=batches.chunks, embedded=batches.embedded,
                       reused=batches.chunks - batches.embedded, seconds=seconds,
                       bytes_on_disk=size_on_disk(path) if path.is_dir() else None,
                       token_counts=batches.token_counts)


def build_manifest(settings: Settings, dimension: int, max_tokens: int, **fields: Any) -> dict[str, Any]:
    """The manifest of a build with these settings and model (`open_store` checks it), plus `fields`."""
    return new_manifest(
        model={"name": settings.model, "dimension": dimension,
               "max_tokens": max_tokens, "backend": settings.embed_backend,
               "vectors": VECTOR_FAMILY[settings.embed_backend]},
        chunker={"chunk_tokens": settings.chunk_tokens,
                 "chunk_overlap_tokens": settings.chunk_overlap_tokens,
                 "encoding": TIKTOKEN_ENCODING,
                 "embed_input": embed_input("<title>", "<section>", "<text>")},
        lexical={"tokenizer": "lowercase \\w+, English stopwords, Snowball stemmer",
                 "indexes": "title, section and chunk text (what the model sees)"},
        **fields,
    )


class Batches:
    """Cleans, chunks and embeds one batch of documents at a time into a writer."""

    def __init__(self, settings: Settings, embedder: Embedder, rules: CleanRules | None,
                 previous: VectorSource | None):
        self.settings, self.embedder, self.rules, self.previous = settings, embedder, rules, previous
        self.params = ChunkParams(settings.chunk_tokens, settings.chunk_overlap_tokens, embedder.max_tokens)
        same_model = previous is not None and previous.manifest["model"]["dimension"] == embedder.dimension
        self.reusable = previous if same_model else None
        self.chunks = self.embedded = 0
        self.token_counts: list[int] = []

    def write(self, documents: list[SourceDocument], writer: DocumentSink) -> None:
        records, chunks, sentences = [], [], []
        for doc in documents:
            title = str(doc.metadata["title"])
            if not self.rules:
                cleaned = as_is(doc.text)
            elif doc.cleaned is not None and self.rules == CleanRules():  # cleaned where it was parsed
                cleaned = doc.cleaned
            else:
                cleaned = clean(doc.text, title=title, rules=self.rules)
            if not cleaned.text:
                raise CorpusError(f"{doc.path.name}: nothing is left after cleaning")
            records.append(DocumentRecord(
                doc.doc_id, doc.metadata, cleaned.text,
                [{"title": s.title, "char_start": s.char_start, "char_end": s.char_end}
                 for s in cleaned.sections],
                doc.content_hash,
            ))
            chunks += chunk_document(doc.doc_id, title, cleaned, self.params, self.embedder.count_tokens)
            if self.settings.highlights:
                sentences += [SentenceRecord(doc.doc_id, a, b, _hash(cleaned.text[a:b]))
                              for section in cleaned.sections
                              for a, b in split_sentences(cleaned.text, section.char_start, section.char_end)]
        writer.add_documents(records)
        inputs = [c.embed_input for c in chunks]
        vectors, reused = self._embed(inputs, sentences=False)
        # BM25 sees what the model sees: title, section and text (BEIR: title + text)
        writer.add_chunks([_record(c) for c in chunks], vectors, lexical_texts=inputs)
        self.chunks += len(chunks)
        self.embedded += len(chunks) - reused
        self.token_counts += [c.n_tokens for c in chunks]
        if sentences:
            texts = {d.doc_id: d.text for d in records}
            sentence_vectors, _ = self._embed([texts[s.doc_id][s.char_start:s.char_end] for s in sentences],
                                              sentences=True)
            writer.add_sentences(sentences, sentence_vectors)

    def _embed(self, texts: list[str], sentences: bool) -> tuple[np.ndarray, int]:
        return embed_reusing(texts, self.embedder, self.settings.embed_batch_size, self.reusable, sentences)


def embed_reusing(texts: list[str], embedder: Embedder, batch_size: int, reusable: VectorSource | None,
                  sentences: bool = False) -> tuple[np.ndarray, int]:
    """Vectors for `texts`, taken from `reusable` (the previous build, a live collection)
    where the text is unchanged; returns them and how many were reused."""
    hashes = [_hash(t) for t in texts]
    known = reusable.vectors_by_hash(hashes, sentences) if reusable is not None else {}
    vectors = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    todo = []
    for i, digest in enumerate(hashes):
        old = known.get(digest)
        if old is not None:
            vectors[i] = old
        else:
            todo.append(i)
    if todo:
        vectors[todo] = embedder.encode([texts[i] for i in todo], batch_size=batch_size)
    return vectors, len(texts) - len(todo)


def _previous(settings: Settings, spec: IndexSpec) -> ChunkStore | None:
    """The live build if it was built with these settings and opens cleanly, else None."""
    try:
        return open_store(settings, spec)
    except RagError:
        return None


def embed_texts(texts: list[str], embedder: Embedder, batch_size: int) -> np.ndarray:
    """What a build does to embed new texts (none reused), for `rag bench serve`."""
    return embed_reusing(texts, embedder, batch_size, None)[0]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _record(chunk: Chunk) -> ChunkRecord:
    return ChunkRecord(
        chunk.chunk_id, chunk.doc_id, chunk.section, chunk.char_start, chunk.char_end,
        chunk.text, chunk.n_tokens, chunk.n_model_tokens, _hash(chunk.embed_input),
    )


def _report(store: ChunkStore, *, skipped: bool, embedded: int, started: float) -> BuildReport:
    folder = getattr(store, "folder", None)
    return BuildReport(
        skipped=skipped, build_id=store.build_id, location=str(folder or store.build_id),
        documents=len(store.documents), chunks=store.count(), embedded=embedded,
        reused=store.count() - embedded, seconds=time.perf_counter() - started,
        bytes_on_disk=size_on_disk(folder) if folder is not None else None,
        token_counts=[c.n_tokens for c in store.chunks],
    )
