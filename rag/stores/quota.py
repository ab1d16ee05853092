"""Per-collection quotas: at most RAG_MAX_COLLECTION_DOCUMENTS documents and
RAG_MAX_COLLECTION_BYTES bytes of (cleaned, UTF-8) text in one live collection. A write
that would pass either is refused before anything is embedded (QuotaError: 413, naming
the setting); a replacement counts what it adds beyond the text it replaces.

The text size is counted once per opened collection (a pass over its documents: SQLite's
rows, or Milvus's parts) and then kept up to date by this process's writes, so a check
costs a dict lookup. Both caps are off by default (None), and then nothing is counted.

Left out: writes of other processes to the same collection after it was counted (a
replica's count drifts by what the others wrote until the collection is reopened);
quotas on the built corpus (`rag build` writes it, not the service).
"""

from rag.errors import QuotaError
from rag.settings import Settings
from rag.stores.base import LiveStore


class Quotas:
    def __init__(self, settings: Settings):
        self.max_documents = settings.max_collection_documents
        self.max_bytes = settings.max_collection_bytes
        self._bytes: dict[str, tuple[LiveStore, int]] = {}  # name -> (the store counted, its text bytes)

    def check(self, name: str, kb: LiveStore, doc_id: str, text: str) -> None:
        """Refuse a write of `text` as `doc_id` that would pass a cap."""
        existing = kb.documents.get(doc_id) if self.max_bytes is not None or self.max_documents is not None else None
        if self.max_documents is not None and existing is None and len(kb.documents) >= self.max_documents:
            raise QuotaError(f"collection '{name}' holds {len(kb.documents)} documents, its quota "
                             f"(RAG_MAX_COLLECTION_DOCUMENTS={self.max_documents}): delete some first")
        if self.max_bytes is not None:
            after = self.size(name, kb) - _size(existing.text if existing else "") + _size(text)
            if after > self.max_bytes:
                raise QuotaError(f"collection '{name}' would hold {after:,} bytes of text, over its quota "
                                 f"(RAG_MAX_COLLECTION_BYTES={self.max_bytes:,}): delete some first")

    def size(self, name: str, kb: LiveStore) -> int:
        counted = self._bytes.get(name)
        if counted is None or counted[0] is not kb:  # never counted, or reopened since
            counted = (kb, sum(_size(d.text) for d in kb.documents.values()))
            self._bytes[name] = counted
        return counted[1]

    def counting(self, name: str, kb: LiveStore) -> bool:
        """Whether this collection's size is being kept (then writes report what they changed)."""
        counted = self._bytes.get(name)
        return counted is not None and counted[0] is kb

    def wrote(self, name: str, kb: LiveStore, before: str, after: str) -> None:
        """A document's text went from `before` to `after` ("" for none)."""
        counted = self._bytes.get(name)
        if counted is not None and counted[0] is kb:
            self._bytes[name] = (kb, counted[1] - _size(before) + _size(after))


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
