"""`rag eval --beir DIR`: retrieval on a public BEIR test collection, to compare with
published figures.

DIR holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
`qrels/test.tsv` (`query-id`, `corpus-id`, `score`, with a header line). The corpus is
indexed with the normal pipeline minus web-page cleaning: each document becomes one or
more chunks, embedded as title + text (the published convention); a document's score is
its best chunk's. Scored per mode: nDCG@10, Recall@10, Recall@100, MRR@10, binary
relevance (score > 0), over the queries that have judgements.

The index is cached under `RAG_CACHE_DIR` (default ~/.cache/rag), keyed by the dataset's
files, the model and the chunker, so a re-run reuses its embeddings and takes seconds.

`whole_docs=True` reproduces the published setting instead: one vector per document for
`title + " " + text`, which the model truncates at its max sequence length (256 tokens
for MiniLM), and BM25 over the same string; modes "dense" and "lexical" only. Its
vectors are cached beside the index.

Left out: graded relevance, and BEIR's other splits (train/dev).
"""

import hashlib
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rag.encoders.base import Embedder
from rag.encoders.load import embedder_from
from rag.errors import RagError
from rag.evaluation.metrics import latency_summary, mrr_at_k, ndcg_at_k, recall_at_k
from rag.evaluation.retrieval import Variant
from rag.ingest.build import build_index, spec_of
from rag.ingest.corpus import SourceDocument
from rag.search.retriever import Retriever
from rag.service import retriever_for
from rag.settings import Settings
from rag.stores.base import ChunkStore
from rag.stores.factory import open_store
from rag.stores.local.bm25 import bm25_scorer
from rag.types import Hit

CHUNK_DEPTH = 1000  # chunks retrieved per query, enough for 100 distinct documents


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RagError(f"cannot read {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # its own "line 1" is the line's, not the file's
                raise RagError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    return rows


def load_beir(folder: Path) -> tuple[list[SourceDocument], dict[str, str], dict[str, set[str]]]:
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        if not (folder / name).is_file():
            raise RagError(f"{folder} is not a BEIR dataset: {name} is missing")
    corpus_path = folder / "corpus.jsonl"
    documents = [
        SourceDocument(doc_id=str(row["_id"]), path=corpus_path, text=row.get("text") or "",
                       metadata={"title": (row.get("title") or "").strip() or str(row["_id"]),
                                 "source": folder.name, "author": None, "date": None, "url": None})
        for row in _read_jsonl(corpus_path)
    ]
    queries = {str(row["_id"]): row["text"] for row in _read_jsonl(folder / "queries.jsonl")}
    qrels: dict[str, set[str]] = {}
    for number, line in enumerate((folder / "qrels/test.tsv").read_text().splitlines()[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise RagError(f"{folder / 'qrels/test.tsv'}:{number}: expected query-id, corpus-id and an "
                           "integer score, tab-separated")
        if int(parts[2]) > 0:
            qrels.setdefault(parts[0], set()).add(parts[1])
    return documents, queries, qrels


def cache_key(folder: Path, settings: Settings) -> str:
    digest = hashlib.sha256((folder / "corpus.jsonl").read_bytes())
    digest.update(json.dumps([settings.model, settings.chunk_tokens, settings.chunk_overlap_tokens,
                              settings.embed_backend]).encode())  # each backend embeds its own
    return digest.hexdigest()[:16]


def doc_ranking(retriever: Retriever, hits: list[Hit]) -> list[str]:
    """Documents in the order of their best chunk."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(retriever.store.chunks[hit.row].doc_id, None)
    return list(seen)


def _scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.fmean(r[k] for r in rows), 4) for k in rows[0]}


def _doc_metrics(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    flags = [d in relevant for d in ranked]
    covered = [{d} & relevant for d in ranked]
    return {"ndcg@10": ndcg_at_k(flags, len(relevant), 10), "recall@10": recall_at_k(covered, len(relevant), 10),
            "recall@100": recall_at_k(covered, len(relevant), 100), "mrr@10": mrr_at_k(flags, 10)}


def judged_queries(folder: Path, limit: int | None) -> tuple[list[SourceDocument], dict[str, str], dict[str, set[str]],
                                                      list[str]]:
    documents, queries, qrels = load_beir(folder)
    judged = [q for q in sorted(qrels, key=_natural) if q in queries][:limit]
    if not judged:
        raise RagError(f"{folder}: no judged query has a text in queries.jsonl")
    return documents, queries, qrels, judged


def evaluate_whole_docs(folder: Path, settings: Settings, limit: int | None = None,
                        log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The published setting: one truncated vector per document, BM25 on the same text."""
    documents, queries, qrels, judged = judged_queries(folder, limit)
    texts = [f"{d.metadata['title']} {d.text}".strip() for d in documents]
    ids = [d.doc_id for d in documents]
    cache = settings.cache_dir / "beir" / f"{folder.name}-{cache_key(folder, settings)}-whole.npy"
    embedder = embedder_from(settings)
    if cache.exists():
        vectors = np.load(cache, allow_pickle=False)
    else:
        log(f"embedding {len(texts)} whole documents (truncated at {embedder.max_tokens} model tokens)")
        vectors = embedder.encode(texts, batch_size=settings.embed_batch_size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors, allow_pickle=False)
    lexical = bm25_scorer(texts)
    question_vectors = embedder.encode([queries[q] for q in judged], batch_size=settings.embed_batch_size)
    result: dict[str, Any] = {"dataset": folder.name, "queries": len(judged), "documents": len(documents),
                              "setting": "whole documents, title + ' ' + text, truncated by the model", "modes": {}}
    for mode in ("dense", "lexical"):
        rows = []
        for qid, vector in zip(judged, question_vectors):
            scores = vectors @ vector if mode == "dense" else lexical.scores(queries[qid])
            top = np.argsort(-scores, kind="stable")[:100]
            rows.append(_doc_metrics([ids[i] for i in top if mode == "dense" or scores[i] > 0], qrels[qid]))
        result["modes"][f"{mode}-whole"] = {"overall": _scores(rows)}
    return result


def beir_store(folder: Path, settings: Settings, embedder: Embedder, documents: list[SourceDocument],
               log: Callable[[str], None]) -> tuple[Settings, ChunkStore]:
    """The dataset's index in the configured store, built if missing or stale, and the
    settings it was opened with. A local index is cached under RAG_CACHE_DIR."""
    key = cache_key(folder, settings)
    index_dir = settings.cache_dir / "beir" / f"{folder.name}-{key}"
    # highlights are not scored here: no sentence vectors, which would double the build
    local = settings.model_copy(update={"index_dir": index_dir, "highlights": False, "max_k": CHUNK_DEPTH,
                                        "milvus_collection": "beir_" + re.sub(r"\W", "_", folder.name)[:16]
                                        + "_" + key[:8]})
    started = time.perf_counter()
    report = build_index(local, embedder, rules=None, documents=documents, log=log)
    log(f"index {'reused' if report.skipped else 'built'} ({local.vector_store}, {report.location}): "
        f"{report.chunks} chunks in {time.perf_counter() - started:.0f} s")
    return local, open_store(local, spec_of(local))


def evaluate_beir(folder: Path, settings: Settings, columns: list[Variant], limit: int | None = None,
                  log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    documents, queries, qrels, judged = judged_queries(folder, limit)
    embedder = embedder_from(settings)
    log(f"{folder.name}: {len(documents)} documents, {len(judged)} judged queries")
    local, store = beir_store(folder, settings, embedder, documents, log)
    retriever = retriever_for(local, store, embedder)

    vectors = embedder.encode([queries[q] for q in judged], batch_size=settings.embed_batch_size)
    result: dict[str, Any] = {"dataset": folder.name, "queries": len(judged), "documents": len(documents),
                              "chunks": retriever.store.count(), "build_id": retriever.store.build_id,
                              "modes": {}}
    for variant in columns:
        base = variant.fusion or retriever.fusion
        fusion = replace(base, depth=max(base.depth, CHUNK_DEPTH))  # deep enough for Recall@100
        rows, times = [], []
        for qid, vector in zip(judged, vectors):
            t0 = time.perf_counter()
            hits = retriever.search(queries[qid], CHUNK_DEPTH, mode=variant.mode, query_vector=vector,
                                    fusion=fusion, collapse=False)
            times.append((time.perf_counter() - t0) * 1000)
            rows.append(_doc_metrics(doc_ranking(retriever, hits), qrels[qid]))
        result["modes"][variant.label] = {
            "overall": _scores(rows),
            # dense and hybrid searches reuse the batch-encoded question: search time only
            "latency_ms": latency_summary(times),
        }
    return result


def _natural(qid: str) -> tuple[int, str]:
    return (int(qid), qid) if qid.isdigit() else (1 << 62, qid)
