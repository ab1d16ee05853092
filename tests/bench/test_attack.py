"""`rag bench attack`'s hostile inputs are what they claim to be, and the server's log names
each refusal's reason (what the benchmark counts)."""

import logging

import pytest

from rag.bench.attack import _many_pages_pdf, _yaml_bomb
from rag.errors import BadQueryError, TooLargeError
from rag.ingest.pdf import extract_pdf
from rag.ingest.uploads import uploaded_document
from rag.settings import Settings
from tests.helpers import client_for


def test_the_hand_written_pdf_has_its_pages_and_is_refused_past_the_limit():
    with pytest.raises(TooLargeError, match="has 3 pages; the limit is 2"):  # PDFium reads it: a valid PDF
        extract_pdf(_many_pages_pdf(3), max_pages=2)
    with pytest.raises(TooLargeError, match="has 10000 pages; the limit is 2000"):
        uploaded_document("many.pdf", _many_pages_pdf(10_000))


def test_the_yaml_bomb_is_refused_before_it_expands():
    with pytest.raises(BadQueryError, match="anchors and aliases are refused"):
        uploaded_document("bomb.md", _yaml_bomb(9).encode())


def test_the_access_log_names_a_refusal_s_reason(built: Settings, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="rag.access"), client_for(built) as c:
        assert c.post("/query", json={"question": "trade", "k": 500}).status_code == 422
    lines = [r.getMessage() for r in caplog.records if r.name == "rag.access"]
    assert any('"status": 422' in line and "less than or equal to 50" in line for line in lines), lines
