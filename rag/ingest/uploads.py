"""A file sent over HTTP as a document: `.txt`, `.md` (YAML front matter), `.html` (main
content) or `.pdf` (text by page).

Text files go through the same reader as the corpus folder (rag.ingest.corpus) and are cleaned
like it. A PDF's text is kept as extracted (not cleaned: cleaning drops lines, and the
page spans must keep pointing into the text), and its page spans are kept in the
document's metadata (`pages`), from which every citation gets `page_start` and `page_end`.

Left out: OCR (a scan is refused), Office formats, and archives.
"""

import hashlib
import tempfile
from pathlib import Path

from rag.errors import BadQueryError, CorpusError
from rag.ingest.corpus import DOC_ID_PATTERN, SourceDocument, doc_id_from_name, load_document
from rag.ingest.pdf import extract_pdf

TEXT_TYPES = (".txt", ".md", ".html", ".htm")
TYPES = (*TEXT_TYPES, ".pdf")


class UnsupportedTypeError(BadQueryError):
    """A file type the service does not read (HTTP 415)."""


def uploaded_document(filename: str, data: bytes, doc_id: str | None = None) -> tuple[SourceDocument, bool]:
    """The document in an uploaded file, and whether it is a PDF (kept as extracted, with
    pages). Refuses an unsupported type, an empty file, text that is not UTF-8, and an
    encrypted, damaged or text-free PDF, each with the reason."""
    name = Path(filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in TYPES:
        raise UnsupportedTypeError(f"{name}: files of type '{suffix or 'none'}' are not read; send "
                                   f"{', '.join(TYPES)}")
    if not data.strip():
        raise BadQueryError(f"{name} is empty")
    doc_id = checked_doc_id(doc_id or _doc_id(name, data))
    try:
        if suffix == ".pdf":
            pdf = extract_pdf(data)
            lead = len(pdf.text) - len(pdf.text.lstrip())  # the build strips the text: pages move with it
            pages = [[max(0, a - lead), max(0, b - lead)] for a, b in pdf.pages]
            metadata = {"title": Path(name).stem, "source": name, "pages": pages}
            return SourceDocument(doc_id, Path(name), pdf.text, metadata), True
        with tempfile.TemporaryDirectory(prefix="rag-upload-") as folder:
            path = Path(folder) / f"{doc_id}{suffix}"
            path.write_bytes(data)
            doc = load_document(path)
        doc.metadata["source"] = doc.metadata.get("source") if doc.metadata.get("source") != path.name else name
        return SourceDocument(doc_id, Path(name), doc.text, doc.metadata), False
    except CorpusError as exc:
        raise BadQueryError(str(exc).replace(f"{doc_id}{suffix}", name)) from exc


def checked_doc_id(doc_id: str) -> str:
    """A doc_id sent over HTTP, refused (422) unless it is one the corpus folder could give."""
    if not DOC_ID_PATTERN.match(doc_id):
        raise BadQueryError(f"doc_id {doc_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return doc_id


def _doc_id(name: str, data: bytes) -> str:
    """From the file name when it makes a valid id (rag.ingest.corpus.doc_id_from_name), else from the content."""
    return doc_id_from_name(name) or "doc-" + hashlib.sha256(data).hexdigest()[:16]
