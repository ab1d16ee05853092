"""`rag bench writes`: what adding and deleting one document costs in a live collection
of 100 chunks and of 100,000.

Each collection is filled with SciFact chunks and their real embeddings (the cached
`rag eval --beir` index, as `rag bench scale` uses), 10 chunks a document. Then, timed
one at a time with the configured model: `UPSERTS` one-page documents (two SciFact
abstracts, ~450 words: cleaned, chunked, embedded with their sentences, written, indexed),
each found by the next query (a word only it holds); then `UPSERTS` deletes. p50 and p95 per size.

Then what a big write does to queries: the p50 of queries on the seed index, idle and
while a ~100-page document (200 SciFact abstracts, ~40k words) is written into a live
collection on another thread, sharing the model and the 2 cores as in the service.

Collections live in the configured store (`--backend`, or RAG_VECTOR_STORE): local
files, or Milvus (a Milvus Lite file in the temporary folder unless RAG_MILVUS_URI names a
server). The queries of the big-write test run on the local seed index either way.

Left out: concurrent writers (the service has one writer thread) and files (PDF extraction
adds ~1 ms a page: rag.ingest.pdf).
"""

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rag.bench.rows import NearCopies
from rag.collections import Collections, text_document
from rag.encoders.load import embedder_from
from rag.evaluation.beir import beir_store, judged_queries
from rag.evaluation.metrics import percentile
from rag.records import DocumentRecord
from rag.search.retriever import Retriever
from rag.settings import Settings
from rag.stores.local.store import LocalStore
from rag.stores.milvus.client import release_lite

SIZES = (100, 100_000)
UPSERTS = 15
FILL_DOCUMENT_CHUNKS = 10


def run_writes(settings: Settings, scifact: Path, log: Callable[[str], None]) -> dict[str, Any]:
    embedder = embedder_from(settings)
    documents, _, _, _ = judged_queries(scifact, None)
    local = settings.model_copy(update={"vector_store": "local"})
    _, store = beir_store(scifact, local, embedder, documents, log)
    assert isinstance(store, LocalStore)
    source = NearCopies(store)
    pages = [f"{a.text}\n\n{b.text}" for a, b in zip(documents[::2], documents[1::2])]
    out: dict[str, Any] = {"model": settings.model, "backend": settings.embed_backend,
                           "store": settings.vector_store, "sizes": {}}
    for size in SIZES:
        with tempfile.TemporaryDirectory(prefix="rag-writes-") as tmp:
            collections = Collections(_scratch(settings, Path(tmp)), embedder)
            kb = collections.create("bench")
            started = time.perf_counter()
            _fill(kb, source, size)
            log(f"{size} chunks written in {time.perf_counter() - started:.1f} s; timing writes")
            retriever = Retriever(kb, embedder)
            add_ms, delete_ms, embedded = [], [], []
            for i in range(UPSERTS):
                marker = f"writemarker{i}q"  # a word no other text holds: the next query must find it
                doc = text_document(f"{pages[i]} {marker}.", f"page-{i}", f"Page {i}", None)
                t0 = time.perf_counter()
                written = collections.upsert("bench", doc, replace=False)
                add_ms.append((time.perf_counter() - t0) * 1000)
                embedded.append(written.embedded)
                found = retriever.search(marker, 5, mode="lexical")
                assert found and kb.chunks[found[0].row].doc_id == doc.doc_id, "a written page is not searchable"
            for i in range(UPSERTS):
                t0 = time.perf_counter()
                collections.remove("bench", f"page-{i}")
                delete_ms.append((time.perf_counter() - t0) * 1000)
            collections.close()
            release_lite(collections.settings.milvus_uri)
        out["sizes"][str(size)] = {"add_ms_p50": round(statistics.median(add_ms), 1),
                                   "add_ms_p95": round(percentile(add_ms, 0.95), 1),
                                   "delete_ms_p50": round(statistics.median(delete_ms), 1),
                                   "delete_ms_p95": round(percentile(delete_ms, 0.95), 1),
                                   "chunks_embedded_per_add": statistics.median(embedded)}
    out["queries_during_a_big_write"] = _impact(settings, embedder, "\n\n".join(d.text for d in documents[:200]))
    store.close()
    return out


def _impact(settings: Settings, embedder: Any, big_text: str) -> dict[str, Any]:
    from rag.bench.server import QUESTIONS
    from rag.ingest.build import spec_of
    from rag.service import retriever_for
    from rag.stores.factory import open_store

    seed = settings.model_copy(update={"vector_store": "local"})
    retriever = retriever_for(seed, open_store(seed, spec_of(seed)), embedder)

    def timed(n: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            retriever.query(QUESTIONS[i % len(QUESTIONS)], 5)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    timed(20)
    idle = timed(150)
    done = threading.Event()
    took: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rag-writes-") as tmp:
        collections = Collections(_scratch(settings, Path(tmp)), embedder)
        collections.create("big")

        def write() -> None:
            t0 = time.perf_counter()
            collections.upsert("big", text_document(big_text, "big", "Big", None), replace=False)
            took.append(time.perf_counter() - t0)
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        busy: list[float] = []
        while not done.is_set():
            busy += timed(10)
        writer.join()
        collections.close()
        release_lite(collections.settings.milvus_uri)
    return {"words": len(big_text.split()), "write_s": round(took[0], 1),
            "query_ms_p50_idle": round(statistics.median(idle), 2),
            "query_ms_p50_during": round(statistics.median(busy), 2),
            "ratio": round(statistics.median(busy) / statistics.median(idle), 2), "queries_during": len(busy)}


def _scratch(settings: Settings, folder: Path) -> Settings:
    """Settings whose collections live in `folder` (a Milvus Lite file there, for milvus,
    unless the configured URI is a server)."""
    update: dict[str, Any] = {"index_dir": folder}
    if settings.vector_store == "milvus" and "://" not in settings.milvus_uri:
        update["milvus_uri"] = str(folder / "milvus.db")
    return settings.model_copy(update=update)


def _fill(kb: Any, source: NearCopies, size: int) -> None:
    """`size` chunks of real text and vectors, FILL_DOCUMENT_CHUNKS to a document, in big writes."""
    for start in range(0, size, 5000):
        rows = range(start, min(size, start + 5000))
        _, chunks, texts = source.records(rows)
        vectors = source.vectors[[r % len(source.chunks) for r in rows]]
        # regroup: every FILL_DOCUMENT_CHUNKS rows are one document, whatever the source's documents
        grouped = [replace(c, doc_id=f"fill-{(start + i) // FILL_DOCUMENT_CHUNKS}") for i, c in enumerate(chunks)]
        with kb.writing("bench") as write:
            write.add_documents(DocumentRecord(doc_id, {"title": doc_id, "source": "bench"}, "", [], doc_id)
                                for doc_id in dict.fromkeys(c.doc_id for c in grouped))
            write.add_chunks(grouped, vectors, texts)


def writes_table(result: dict[str, Any]) -> str:
    lines = [f"writes to a live collection in the {result.get('store', 'local')} store ({result['model']}, "
             f"{result['backend']}): one-page document",
             "chunks in collection   add p50    add p95   delete p50  delete p95   chunks embedded per add"]
    for size, row in result["sizes"].items():
        lines.append(f"{int(size):>20,}   {row['add_ms_p50']:>7.1f}   {row['add_ms_p95']:>7.1f}   "
                     f"{row['delete_ms_p50']:>9.1f}  {row['delete_ms_p95']:>9.1f}   {row['chunks_embedded_per_add']}")
    big = result["queries_during_a_big_write"]
    lines.append(f"queries while a {big['words']:,}-word document is written ({big['write_s']} s): p50 "
                 f"{big['query_ms_p50_during']} ms vs {big['query_ms_p50_idle']} ms idle ({big['ratio']}x, "
                 f"{big['queries_during']} queries)")
    return "\n".join(lines)
