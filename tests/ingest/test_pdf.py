"""PDF text extraction: PDFs with known text on known pages, built in memory with fpdf2."""

import io
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from fpdf import FPDF
from fpdf.enums import AccessPermission
from PIL import Image

from rag.errors import CorpusError
from rag.ingest.pdf import PAGE_SEPARATOR, PdfDamagedError, PdfEncryptedError, PdfNoTextError, _normalise, extract_pdf
from rag.records import page_span
from tests.helpers import pdf_bytes

PAGES = [
    ["The first page opens the report.", "Revenue grew in the north."],
    ["The second page covers costs.", "Staff costs fell by a tenth.", "The last line of page two ends here."],
    ["Page three begins with the outlook.", "The board expects growth next year."],
    ["The fourth page thanks the staff."],
]


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def report() -> bytes:
    return pdf_bytes(PAGES)


def test_each_page_holds_its_sentences_and_span(report):
    doc = extract_pdf(report)
    assert len(doc.pages) == len(PAGES)
    for (start, end), sentences in zip(doc.pages, PAGES):
        assert words(doc.text[start:end]) == " ".join(sentences)  # the page's text, nothing else
    for (_, end), (next_start, _) in zip(doc.pages, doc.pages[1:]):
        assert doc.text[end:next_start] == PAGE_SEPARATOR
    assert doc.pages[0][0] == 0 and doc.pages[-1][1] == len(doc.text)


def test_page_span_of_sentences_and_passages(report):
    doc = extract_pdf(report)
    sentence = "Staff costs fell by a tenth."
    start = doc.text.index(sentence)
    assert page_span(doc.pages, start, start + len(sentence)) == (2, 2)
    end_of_two, start_of_three = "The last line of page two ends here.", "Page three begins with the outlook."
    start = doc.text.index(end_of_two)
    end = doc.text.index(start_of_three) + len(start_of_three)
    assert page_span(doc.pages, start, end) == (2, 3)
    assert page_span(doc.pages, 0, len(doc.text)) == (1, 4)


def test_page_span_edges():
    pages = [(0, 10), (12, 20), (22, 22), (24, 30)]  # page 3 is empty
    assert page_span(pages, 0, 10) == (1, 1)  # char_end is exclusive
    assert page_span(pages, 9, 13) == (1, 2)
    assert page_span(pages, 10, 12) == (1, 1)  # only the separator: the page before it
    assert page_span(pages, 15, 15) == (2, 2)  # empty span
    assert page_span(pages, 18, 26) == (2, 4)
    assert page_span(pages, 29, 99) == (4, 4)
    for bad in ((-1, 3), (5, 4)):
        with pytest.raises(ValueError):
            page_span(pages, *bad)
    with pytest.raises(ValueError):
        page_span([], 0, 0)


def test_blank_page_keeps_numbering():
    doc = extract_pdf(pdf_bytes([["Before the blank page."], [], ["After the blank page."]]))
    assert [doc.text[s:e] for s, e in doc.pages] == ["Before the blank page.", "", "After the blank page."]
    start = doc.text.index("After")
    assert page_span(doc.pages, start, start + 5) == (3, 3)


def test_unicode_round_trips():
    lines = ["“Curly quotes” and an em—dash: café, naïve, Straße, ½ µ Ω.", "Привет мир, Καλημέρα κόσμε."]
    doc = extract_pdf(pdf_bytes([lines, ["Second page — ünïcödé too."]], font="DejaVuSans.ttf"))
    assert doc.text == "\n".join(lines) + PAGE_SEPARATOR + "Second page — ünïcödé too."
    # CJK and astral-plane text, in the fonts at hand (LastResort draws placeholders, but its
    # character map is real, so the text must come back exactly)
    assert extract_pdf(pdf_bytes([["北京 欢迎你"]], font="LastResortHE-Regular.ttf")).text == "北京 欢迎你"
    assert extract_pdf(pdf_bytes([["Bold 𝐀𝐁𝐂 here"]], font="STIXGeneral.ttf")).text == "Bold 𝐀𝐁𝐂 here"


def test_line_end_hyphen_is_left_as_printed():
    doc = extract_pdf(pdf_bytes([["a manip-\nulation and a well-\nknown fact"]]))
    assert doc.text == "a manip-\nulation and a well-\nknown fact"


def test_normalise_removes_what_no_consumer_can_take():
    assert _normalise(" a\r\nb\rc\x0cd\x00e\x07f\ud800g\uffffh\tI\ufffej \n") == "a\nb\nc\ndefgh\tI-\nj"


@pytest.mark.parametrize("encrypt", [
    {"owner_password": "owner", "user_password": "user"},  # a password to open it
    {"owner_password": "owner", "permissions": AccessPermission.PRINT_LOW_RES},  # opens, but no copying
], ids=["user-password", "no-copy-permission"])
def test_encrypted_pdf_is_refused(encrypt):
    with pytest.raises(PdfEncryptedError, match="^the PDF is encrypted$"):
        extract_pdf(pdf_bytes(PAGES, encrypt=encrypt))


def test_owner_password_that_allows_copying_is_read():
    doc = extract_pdf(pdf_bytes(PAGES, encrypt={"owner_password": "owner"}))
    assert "Staff costs fell by a tenth." in doc.text


@pytest.mark.parametrize("data, reason", [
    (b"", "not a PDF file"),
    (random.Random(7).randbytes(4000), "not a PDF file"),
    (b"%PDF-1.7\n" + random.Random(8).randbytes(4000) + b"\n%%EOF\n", "its structure cannot be read"),
], ids=["empty", "random", "garbage-body"])
def test_damaged_pdf_is_refused(data, reason):
    with pytest.raises(PdfDamagedError, match=f"^the PDF is damaged: {reason}"):
        extract_pdf(data)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_pdf_is_refused(report, keep):
    with pytest.raises(PdfDamagedError, match="^the PDF is damaged: truncated"):
        extract_pdf(report[: int(len(report) * keep)])


def drawing_only(kind: str) -> bytes:
    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        if kind == "rectangle":
            pdf.rect(20, 20, 100, 60, style="DF")
        else:
            image = Image.new("RGB", (64, 32), (200, 30, 30))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pdf.image(buffer, x=20, y=20, w=100)
    return bytes(pdf.output())


@pytest.mark.parametrize("kind", ["rectangle", "image"])
def test_pdf_without_text_is_refused(kind):
    with pytest.raises(PdfNoTextError, match="^no extractable text; OCR is not supported$"):
        extract_pdf(drawing_only(kind))


def test_errors_are_corpus_errors():
    assert issubclass(PdfEncryptedError, CorpusError)
    assert issubclass(PdfDamagedError, CorpusError)
    assert issubclass(PdfNoTextError, CorpusError)


def test_threads_may_extract_at_once(report):
    """PDFium is not thread-safe; the module's lock must make concurrent calls safe."""
    expected = extract_pdf(report)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: extract_pdf(report), range(16)))
    assert all(result == expected for result in results)
