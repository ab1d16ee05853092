"""Extract the text of a PDF page by page, so every character offset maps back to its pages.

`extract_pdf(data)` gives `PdfText`: the pages' text joined by PAGE_SEPARATOR, and each
page's span in it (page n at index n-1, `text[start:end]` is that page's text). Normalised:
"\\r\\n" and lone "\\r" become "\\n"; control characters other than "\\t" and "\\n" (NUL
included), lone surrogates and the noncharacter U+FFFF are removed; leading and trailing
whitespace of each page goes. A hyphen at a line end stays as it is printed ("manip-\\n
ulation"): PDFium marks one with U+FFFE and joins the lines, we put back "-\\n".
`page_span(pages, start, end)` gives the 1-based first and last page a span touches.

Errors (all `CorpusError`s, messages meant for the user): `PdfEncryptedError` (a user
password, an unsupported security handler, or an owner password that forbids copying text),
`PdfDamagedError` (not a PDF, no %%EOF in the last 1024 bytes, so truncated, or unreadable
by PDFium), `PdfNoTextError` (no page holds text: a scan). No library exception escapes.

Library: pypdfium2 (PDFium; Apache-2.0/BSD-3-Clause, PDFium BSD-3), chosen over pypdf
(BSD-3) and pdfplumber (MIT, on pdfminer.six): as correct as pypdf and 3-20x faster;
PyMuPDF left out (AGPL). Non-BMP text (𝐀𝐁𝐂) comes out right through `get_text_range`.
Measured figures: docs/benchmarks.md#pdf-libraries-ragingestpdfpy.
Line-end hyphens: the 31 in libtasn1.pdf all split one word ("manip-ulation"), but PDFium
marks "well-\\nknown" and "end-\\n\\nNew para" the same way, so joining is left to the caller.

PDFium is not thread-safe, not even across documents: one lock serialises all extraction.

Left out: OCR, tables, reading order of multi-column layouts (PDFium's order is kept),
running headers/footers and page numbers (they stay in each page's text), annotations and
form fields, passwords (an encrypted PDF is refused), ligature/Unicode normalisation.
"""

import re
import threading
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from rag.errors import CorpusError, TooLargeError

PAGE_SEPARATOR = "\n\n"
_COPY_TEXT = 1 << 4  # bit 5 of the /P permissions: copy or extract text and graphics
_LOCK = threading.Lock()
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c]")
_UNWANTED = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ud800-\udfff\uffff]")
_LOAD_ERRORS = {
    pdfium_c.FPDF_ERR_SUCCESS: "it has no pages",
    pdfium_c.FPDF_ERR_FILE: "it cannot be read",
    pdfium_c.FPDF_ERR_FORMAT: "its structure cannot be read",
    pdfium_c.FPDF_ERR_PAGE: "its pages cannot be read",
}


class PdfEncryptedError(CorpusError):
    def __init__(self) -> None:
        super().__init__("the PDF is encrypted")


class PdfDamagedError(CorpusError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"the PDF is damaged: {reason}")


class PdfNoTextError(CorpusError):
    def __init__(self) -> None:
        super().__init__("no extractable text; OCR is not supported")


@dataclass(frozen=True)
class PdfText:
    text: str
    pages: list[tuple[int, int]]  # page n's (char_start, char_end) in text, at index n-1


def extract_pdf(data: bytes, max_pages: int | None = None, max_chars: int | None = None) -> PdfText:
    """The text of every page of the PDF in `data`; raises a `CorpusError` subclass, a
    `TooLargeError` past `max_pages` pages or `max_chars` characters of text (checked as
    the pages are read, so a huge PDF is never read whole)."""
    if b"%PDF-" not in data[:1024]:
        raise PdfDamagedError("not a PDF file (no %PDF- header)")
    if b"%%EOF" not in data[-1024:]:
        raise PdfDamagedError("truncated (no %%EOF at the end)")
    with _LOCK:
        raw_texts = _read_pages(data, max_pages, max_chars)
    texts = [_normalise(t) for t in raw_texts]
    if not any(texts):
        raise PdfNoTextError()
    pages: list[tuple[int, int]] = []
    position = 0
    for text in texts:
        pages.append((position, position + len(text)))
        position += len(text) + len(PAGE_SEPARATOR)
    return PdfText(text=PAGE_SEPARATOR.join(texts), pages=pages)


def _read_pages(data: bytes, max_pages: int | None, max_chars: int | None) -> list[str]:
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise PdfEncryptedError() from exc
        raise PdfDamagedError(_LOAD_ERRORS.get(exc.err_code, str(exc))) from exc
    except MemoryError:
        raise
    except Exception as exc:  # ctypes and PDFium fail in ways no list can foresee
        raise PdfDamagedError(str(exc) or type(exc).__name__) from exc
    number = 0
    try:
        if not pdfium_c.FPDF_GetDocPermissions(document) & _COPY_TEXT:
            raise PdfEncryptedError()
        if max_pages is not None and len(document) > max_pages:
            raise TooLargeError(f"the PDF has {len(document)} pages; the limit is {max_pages} (RAG_MAX_PDF_PAGES)")
        texts, chars = [], 0
        for number in range(1, len(document) + 1):
            page = document[number - 1]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
            chars += len(texts[-1])
            if max_chars is not None and chars > max_chars:
                raise TooLargeError(f"the PDF holds more than {max_chars} characters of text by page {number} "
                                    "(RAG_MAX_DOCUMENT_CHARS)")
        return texts
    except (CorpusError, MemoryError):
        raise
    except Exception as exc:
        where = f"page {number}" if number else "the document"
        raise PdfDamagedError(f"{where} cannot be read ({exc})") from exc
    finally:
        document.close()  # closes any page left open too


def _normalise(text: str) -> str:
    text = text.replace("\ufffe", "-\n")  # PDFium's mark of a hyphen it joined across a line end
    text = _LINE_BREAKS.sub("\n", text)
    return _UNWANTED.sub("", text).strip()
