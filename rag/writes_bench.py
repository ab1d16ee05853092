"""`rag bench --writes`: what adding and deleting one document costs in a live collection
of 100 chunks and of 100,000.

Each collection is filled with SciFact chunks and their real embeddings (the cached
`rag eval --beir` index, as `rag bench --scale` uses), 10 chunks a document. Then, timed
one at a time with the configured model: `UPSERTS` one-page documents (two SciFact
abstracts, ~450 words: cleaned, chunked, embedded with their sentences, written, indexed),
each found by the next query (a word only it holds); then `UPSERTS` deletes. p50 and p95 per size.

Left out: concurrent writers (the service has one writer thread) and files (PDF extraction
adds ~1 ms a page: rag.pdf).
"""

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rag.beir import _judged, beir_store
from rag.collections import Collections, text_document
from rag.embed import embedder_from
from rag.metrics import percentile
from rag.records import DocumentRecord
from rag.retrieve import Retriever
from rag.scale import Source
from rag.settings import Settings
from rag.stores.local import LocalStore

SIZES = (100, 100_000)
UPSERTS = 15
FILL_DOCUMENT_CHUNKS = 10


def run_writes(settings: Settings, scifact: Path, log: Callable[[str], None]) -> dict[str, Any]:
    embedder = embedder_from(settings)
    documents, _, _, _ = _judged(scifact, None)
    local = settings.model_copy(update={"vector_store": "local"})
    _, store = beir_store(scifact, local, embedder, documents, log)
    assert isinstance(store, LocalStore)
    source = Source(store)
    pages = [f"{a.text}\n\n{b.text}" for a, b in zip(documents[::2], documents[1::2])]
    out: dict[str, Any] = {"model": settings.model, "backend": settings.embed_backend, "sizes": {}}
    for size in SIZES:
        with tempfile.TemporaryDirectory(prefix="rag-writes-") as tmp:
            target = settings.model_copy(update={"index_dir": Path(tmp)})
            collections = Collections(target, embedder)
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
        out["sizes"][str(size)] = {"add_ms_p50": round(statistics.median(add_ms), 1),
                                   "add_ms_p95": round(percentile(add_ms, 0.95), 1),
                                   "delete_ms_p50": round(statistics.median(delete_ms), 1),
                                   "delete_ms_p95": round(percentile(delete_ms, 0.95), 1),
                                   "chunks_embedded_per_add": statistics.median(embedded)}
    store.close()
    return out


def _fill(kb: Any, source: Source, size: int) -> None:
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
    lines = [f"writes to a live collection ({result['model']}, {result['backend']}): one-page document",
             "chunks in collection   add p50    add p95   delete p50  delete p95   chunks embedded per add"]
    for size, row in result["sizes"].items():
        lines.append(f"{int(size):>20,}   {row['add_ms_p50']:>7.1f}   {row['add_ms_p95']:>7.1f}   "
                     f"{row['delete_ms_p50']:>9.1f}  {row['delete_ms_p95']:>9.1f}   {row['chunks_embedded_per_add']}")
    return "\n".join(lines)
