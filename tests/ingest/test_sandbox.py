"""Parsers run in a limited worker process (rag.ingest.sandbox): a crash, a memory hog, a
CPU hog or a hang fails that document alone, with the limit named, and the caller goes on."""

import time

import pytest

from rag.errors import BadQueryError, ParserLimitError, TooLargeError
from rag.ingest.sandbox import ParseLimits, run_limited
from rag.ingest.uploads import uploaded_document
from rag.settings import Settings
from tests.helpers import PDF_PAGES, client_for, pdf_bytes
from tests.ingest.parser_targets import crash, fail_with_a_bug, hog_memory, refuse, sleep_long, spin

SMALL = ParseLimits(memory_mb=512, cpu_seconds=1, wall_seconds=5)


def test_a_planted_crash_fails_that_call_alone():
    with pytest.raises(ParserLimitError, match="crashed .SIGABRT"):
        run_limited(crash, limits=SMALL)
    assert run_limited(len, "still works", limits=SMALL) == 11  # the next document is parsed


def test_a_memory_hog_is_stopped_at_its_limit():
    with pytest.raises(ParserLimitError, match="ran out of memory .limit 512 MB"):
        run_limited(hog_memory, limits=SMALL)


@pytest.mark.slow
def test_a_cpu_hog_is_stopped_at_its_limit():
    with pytest.raises(ParserLimitError, match="more than 1 s of CPU|past 1 s of CPU"):
        run_limited(spin, limits=SMALL)


@pytest.mark.slow
def test_a_hang_is_killed_at_the_wall_timeout():
    started = time.monotonic()
    with pytest.raises(ParserLimitError, match="did not finish within 1 s"):
        run_limited(sleep_long, limits=ParseLimits(wall_seconds=1))
    assert time.monotonic() - started < 5


def test_errors_come_back_as_they_were_raised():
    with pytest.raises(TooLargeError, match="10000 pages"):  # its class decides the HTTP status (413)
        run_limited(refuse, limits=SMALL)
    with pytest.raises(ParserLimitError, match="failed .ValueError: a parser bug"):
        run_limited(fail_with_a_bug, limits=SMALL)


def test_caps_on_pages_and_text_are_413s():
    with pytest.raises(TooLargeError, match="4 pages; the limit is 3"):
        uploaded_document("r.pdf", pdf_bytes(PDF_PAGES), limits=ParseLimits(max_pages=3))
    with pytest.raises(TooLargeError, match="the limit is 1000"):
        uploaded_document("r.txt", b"word " * 1000, limits=ParseLimits(max_chars=1000))
    with pytest.raises(BadQueryError, match="not UTF-8"):  # the parser's own refusals are unchanged
        uploaded_document("r.txt", "café".encode("latin-1"))


def test_an_upload_whose_parser_overruns_is_a_422_naming_the_limit_and_the_service_goes_on(built: Settings):
    settings = built.model_copy(update={"parse_wall_seconds": 0.001, "max_pdf_pages": 3})
    with client_for(settings) as c:
        assert c.post("/collections", json={"name": "notes"}).status_code == 201
        r = c.post("/collections/notes/documents", files={"file": ("a.md", b"# Title\n\nSome text.")})
        assert r.status_code == 422 and "RAG_PARSE_WALL_SECONDS" in r.json()["detail"], r.text
        r = c.post("/query", json={"question": "China Russia trade"})
        assert r.status_code == 200
    with client_for(built.model_copy(update={"max_pdf_pages": 3})) as c:
        c.post("/collections", json={"name": "notes"})
        r = c.post("/collections/notes/documents", files={"file": ("r.pdf", pdf_bytes(PDF_PAGES))})
        assert r.status_code == 413 and "RAG_MAX_PDF_PAGES" in r.json()["detail"], r.text


def test_an_upload_is_cleaned_in_the_worker_not_by_the_server(built: Settings, monkeypatch: pytest.MonkeyPatch):
    from rag.collections import Collections
    from rag.ingest import build as build_module
    from tests.helpers import FakeEmbedder

    doc, _ = uploaded_document("notes.md", b"# Penguins\n\nPenguins eat krill. They live in colonies.\n")
    assert doc.cleaned is not None and "Penguins eat krill." in doc.cleaned.text
    monkeypatch.setattr(build_module, "clean", lambda *a, **k: pytest.fail("the server cleaned an upload"))
    with Collections(built, FakeEmbedder()) as collections:
        collections.create("notes")
        assert collections.upsert("notes", doc, replace=False).status == "created"
    with pytest.raises(BadQueryError, match="nothing is left after cleaning"):  # said at once, not after a 202
        uploaded_document("captions.txt", b"A caption that repeats.\n" * 2000)
