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

from rag.errors import BadQueryError, CorpusError, TooLargeError
from rag.ingest.clean import CleanRules, clean
from rag.ingest.corpus import DOC_ID_PATTERN, SourceDocument, doc_id_from_name, load_document
from rag.ingest.pdf import extract_pdf
from rag.ingest.sandbox import ParseLimits, check_chars, run_limited

TEXT_TYPES = (".txt", ".md", ".html", ".htm")
TYPES = (*TEXT_TYPES, ".pdf")


class UnsupportedTypeError(BadQueryError):
    """A file type the service does not read (HTTP 415)."""


def uploaded_document(filename: str, data: bytes, doc_id: str | None = None,
                      limits: ParseLimits = ParseLimits(), title: str | None = None) -> tuple[SourceDocument, bool]:
    """The document in an uploaded file, and whether it is a PDF (kept as extracted, with
    pages). Refuses an unsupported type, an empty file, text that is not UTF-8, an
    encrypted, damaged or text-free PDF, a text nothing is left of once cleaned, and a
    document past `limits` (pages, characters: 413), each with the reason. `title` is the
    title when the file gives none (else its doc_id). The file is parsed, and a text
    cleaned, in a worker process under `limits` (rag.ingest.sandbox): a parser that
    crashes or overruns fails this document alone, and cleaning is not the server's work."""
    name = Path(filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in TYPES:
        raise UnsupportedTypeError(f"{name}: files of type '{suffix or 'none'}' are not read; send "
                                   f"{', '.join(TYPES)}")
    if not data.strip():
        raise BadQueryError(f"{name} is empty")
    doc_id = checked_doc_id(doc_id or _doc_id(name, data))
    what = f"the {suffix.lstrip('.').upper()} parser on {name}"
    return run_limited(parse_upload, name, suffix, data, doc_id, limits, title, limits=limits, what=what)


def parse_upload(name: str, suffix: str, data: bytes, doc_id: str, limits: ParseLimits,
                 title: str | None = None) -> tuple[SourceDocument, bool]:
    """What `uploaded_document` runs in the worker process."""
    try:
        if suffix == ".pdf":
            pdf = extract_pdf(data, max_pages=limits.max_pages, max_chars=limits.max_chars)
            lead = len(pdf.text) - len(pdf.text.lstrip())  # the build strips the text: pages move with it
            pages = [[max(0, a - lead), max(0, b - lead)] for a, b in pdf.pages]
            metadata = {"title": Path(name).stem, "source": name, "pages": pages}
            return SourceDocument(doc_id, Path(name), pdf.text, metadata), True
        with tempfile.TemporaryDirectory(prefix="rag-upload-") as folder:
            path = Path(folder) / f"{doc_id}{suffix}"
            path.write_bytes(data)
            doc = load_document(path)
        check_chars(doc.text, limits)
        doc.metadata["source"] = doc.metadata.get("source") if doc.metadata.get("source") != path.name else name
        if title and doc.metadata.get("title") == doc_id.replace("-", " "):  # the file gave none
            doc.metadata["title"] = title
        cleaned = clean(doc.text, title=str(doc.metadata["title"]), rules=CleanRules())
        if not cleaned.text:
            raise CorpusError(f"{name}: nothing is left after cleaning")
        return SourceDocument(doc_id, Path(name), doc.text, doc.metadata, cleaned), False
    except TooLargeError as exc:
        raise TooLargeError(f"{name}: {exc}") from exc
    except CorpusError as exc:
        raise BadQueryError(str(exc).replace(f"{doc_id}{suffix}", name)) from exc


def checked_doc_id(doc_id: str) -> str:
    """A doc_id sent over HTTP, refused (422) unless it is one the corpus folder could give."""
    if not DOC_ID_PATTERN.fullmatch(doc_id):
        raise BadQueryError(f"doc_id {doc_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return doc_id


def _doc_id(name: str, data: bytes) -> str:
    """From the file name when it makes a valid id (rag.ingest.corpus.doc_id_from_name), else from the content."""
    return doc_id_from_name(name) or "doc-" + hashlib.sha256(data).hexdigest()[:16]
