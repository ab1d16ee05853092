"""Build (or refresh) the index: ingest -> clean -> chunk -> embed -> write atomically.

`build_index` does no work when nothing changed: the corpus hash (raw text + metadata of
every document, plus the cleaning rules and the package version) and the model and
chunker settings are compared with the live manifest first, before the model is even
loaded. When something changed, every document is re-cleaned and re-chunked (cheap), and
only chunks whose embedding input is new are embedded; the others reuse their vectors
from the live build. So editing one article re-embeds that article's changed chunks.

Left out: deleting vectors in place (the FAISS index is rewritten whole each build,
which takes milliseconds at this size).
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rag import __version__
from rag.chunk import TIKTOKEN_ENCODING, Chunk, ChunkParams, chunk_document, embed_input, split_sentences
from rag.clean import CleanDocument, CleanRules, Section, clean
from rag.embed import VECTOR_FAMILY, Embedder, embedder_from
from rag.errors import RagError
from rag.ingest import SourceDocument, load_corpus
from rag.lexical import DEFAULT_B, DEFAULT_K1, LexicalIndex
from rag.settings import Settings
from rag.store import (
    ChunkRecord,
    DocumentRecord,
    Index,
    IndexSpec,
    build_lock,
    exact_vector_index,
    load_index,
    new_manifest,
    size_on_disk,
    write_index,
)


@dataclass(frozen=True)
class BuildReport:
    skipped: bool  # True: the live index was already up to date
    build_path: Path
    documents: int
    chunks: int
    embedded: int  # chunks embedded in this run
    reused: int  # chunks whose vector came from the previous build
    seconds: float
    bytes_on_disk: int
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
) -> BuildReport:
    """Index `documents` (default: the corpus folder). `rules=None` skips cleaning, for
    text that is already clean (benchmark abstracts): each document is one section."""
    started = time.perf_counter()
    documents = load_corpus(settings.corpus_dir) if documents is None else documents
    spec = spec_of(settings)
    digest = corpus_hash(documents, rules, settings.highlights)
    with build_lock(settings.index_dir):
        previous = _previous(settings.index_dir, spec)
        if previous is not None and not force and previous.manifest["corpus"]["hash"] == digest:
            return _report(previous, skipped=True, embedded=0, reused=0, started=started)

        if embedder is None:
            log(f"loading model {settings.model} ({settings.embed_backend})")
            embedder = embedder_from(settings)
        params = ChunkParams(settings.chunk_tokens, settings.chunk_overlap_tokens, embedder.max_tokens)
        records, chunks, sentences = [], [], []
        for doc in documents:
            title = str(doc.metadata["title"])
            cleaned = clean(doc.text, title=title, rules=rules) if rules else as_is(doc.text)
            if not cleaned.text:
                raise RagError(f"{doc.path.name}: nothing is left after cleaning")
            records.append(DocumentRecord(
                doc.doc_id, doc.metadata, cleaned.text,
                [{"title": s.title, "char_start": s.char_start, "char_end": s.char_end}
                 for s in cleaned.sections],
                doc.content_hash,
            ))
            chunks += chunk_document(doc.doc_id, title, cleaned, params, embedder.count_tokens)
            if settings.highlights:
                sentences += [(doc.doc_id, a, b) for section in cleaned.sections
                              for a, b in split_sentences(cleaned.text, section.char_start, section.char_end)]
        log(f"{len(documents)} documents -> {len(chunks)} chunks")

        old_chunks = _old_vectors(previous, embedder, lambda ix: [c.embed_hash for c in ix.chunks],
                                  lambda ix: ix.vector_matrix())
        vectors, reused = _embed([c.embed_input for c in chunks], old_chunks, embedder,
                                 settings.embed_batch_size, "chunks", log)
        sentence_vectors = None
        if settings.highlights:
            texts = {d.doc_id: d.text for d in records}
            old_sentences = _old_vectors(previous, embedder, lambda ix: [
                _hash(ix.documents[d].text[a:b]) for d, a, b in ix.sentences], lambda ix: ix.sentence_vectors)
            sentence_vectors, _ = _embed([texts[d][a:b] for d, a, b in sentences], old_sentences, embedder,
                                         settings.embed_batch_size, "sentences", log)
        index = Index(
            manifest=new_manifest(
                model={"name": settings.model, "dimension": embedder.dimension,
                       "max_tokens": embedder.max_tokens, "backend": settings.embed_backend,
                       "vectors": VECTOR_FAMILY[settings.embed_backend]},
                chunker={"chunk_tokens": settings.chunk_tokens,
                         "chunk_overlap_tokens": settings.chunk_overlap_tokens,
                         "encoding": TIKTOKEN_ENCODING,
                         "embed_input": embed_input("<title>", "<section>", "<text>")},
                lexical={"library": "bm25s", "k1": DEFAULT_K1, "b": DEFAULT_B,
                         "tokenizer": "lowercase \\w+, English stopwords, Snowball stemmer"},
                corpus={"hash": digest, "documents": {d.doc_id: d.content_hash for d in documents}},
                counts={"documents": len(records), "chunks": len(chunks)},
            ),
            documents={r.doc_id: r for r in records},
            chunks=[_record(c) for c in chunks],
            vectors=exact_vector_index(vectors, embedder.dimension),
            sentences=sentences,
            sentence_vectors=sentence_vectors,
            # BM25 sees what the model sees: title, section and text (BEIR: title + text)
            lexical=LexicalIndex.build([c.embed_input for c in chunks]),
        )
        index.path = write_index(settings.index_dir, index)
        return _report(index, skipped=False, embedded=len(chunks) - reused, reused=reused,
                       started=started)


def _previous(index_dir: Path, spec: IndexSpec) -> Index | None:
    """The live index if it was built with these settings and loads cleanly, else None.
    (load_index compares the settings before it reads anything but the manifest.)"""
    try:
        return load_index(index_dir, spec)
    except RagError:
        return None


def _old_vectors(
    previous: Index | None, embedder: Embedder,
    hashes: Callable[[Index], list[str]], matrix: Callable[[Index], np.ndarray | None],
) -> dict[str, np.ndarray]:
    """Vectors of the live build by the hash of the text they embed (same model only)."""
    if previous is None or previous.manifest["model"]["dimension"] != embedder.dimension:
        return {}
    vectors = matrix(previous)
    if vectors is None:
        return {}
    return dict(zip(hashes(previous), vectors))


def _embed(
    texts: list[str], known: dict[str, np.ndarray], embedder: Embedder, batch_size: int, what: str,
    log: Callable[[str], None],
) -> tuple[np.ndarray, int]:
    """Vectors for `texts`, taken from `known` where the text is unchanged; returns them and
    how many were reused."""
    vectors = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    todo = []
    for i, text in enumerate(texts):
        old = known.get(_hash(text))
        if old is not None:
            vectors[i] = old
        else:
            todo.append(i)
    if todo:
        log(f"embedding {len(todo)} {what} ({len(texts) - len(todo)} reused)")
        vectors[todo] = embedder.encode([texts[i] for i in todo], batch_size=batch_size)
    return vectors, len(texts) - len(todo)


def embed_texts(texts: list[str], embedder: Embedder, batch_size: int) -> np.ndarray:
    """What a build does to embed new texts (none reused), for `rag bench`."""
    return _embed(texts, {}, embedder, batch_size, "passages", lambda message: None)[0]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _record(chunk: Chunk) -> ChunkRecord:
    return ChunkRecord(
        chunk.chunk_id, chunk.doc_id, chunk.section, chunk.char_start, chunk.char_end,
        chunk.text, chunk.n_tokens, chunk.n_model_tokens, _hash(chunk.embed_input),
    )


def _report(index: Index, *, skipped: bool, embedded: int, reused: int, started: float) -> BuildReport:
    assert index.path is not None
    return BuildReport(
        skipped=skipped, build_path=index.path, documents=len(index.documents),
        chunks=len(index.chunks), embedded=embedded, reused=reused,
        seconds=time.perf_counter() - started, bytes_on_disk=size_on_disk(index.path),
        token_counts=[c.n_tokens for c in index.chunks],
    )
