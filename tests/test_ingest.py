"""Reading documents: formats, metadata sources, refusals."""

from pathlib import Path

import pytest

from rag.errors import CorpusError
from rag.ingest import load_corpus, load_document


def test_bundled_corpus_has_its_metadata():
    from conftest import CORPUS

    docs = {d.doc_id: d for d in load_corpus(CORPUS)}
    assert sorted(docs) == ["cfr-china-russia-backgrounder", "fp-china-russia-axis",
                            "usip-china-russia-global-cooperation"]
    fp = docs["fp-china-russia-axis"].metadata
    assert (fp["title"], fp["source"], fp["author"]) == (
        "The China-Russia Axis Takes Shape", "Foreign Policy", "Bonny Lin")


def test_plain_text_without_metadata_gets_defaults(tmp_path: Path):
    (tmp_path / "my_notes.txt").write_text("Some text.")
    doc = load_document(tmp_path / "my_notes.txt")
    assert doc.doc_id == "my_notes"
    assert doc.metadata == {"title": "my notes", "source": "my_notes.txt", "author": None,
                            "date": None, "url": None}


def test_markdown_front_matter_and_sidecar_override(tmp_path: Path):
    (tmp_path / "a.md").write_text("---\ntitle: From front matter\nauthor: Ann\ndate: 2024-05-01\n---\n# Head\n\nBody.")
    (tmp_path / "a.meta.json").write_text('{"author": "Sidecar Sam", "doc_id": "custom-id"}')
    doc = load_document(tmp_path / "a.md")
    assert doc.doc_id == "custom-id"
    assert doc.text == "# Head\n\nBody."
    assert (doc.metadata["title"], doc.metadata["author"], doc.metadata["date"]) == (
        "From front matter", "Sidecar Sam", "2024-05-01")


def test_html_goes_through_trafilatura(tmp_path: Path):
    body = " ".join(["China and Russia signed a long agreement on energy trade."] * 6)
    (tmp_path / "page.html").write_text(
        "<html><head><title>Energy Deal</title></head><body><nav><a href='/'>Home</a> "
        f"<a href='/x'>Subscribe</a></nav><article><h1>Energy Deal</h1><h2>Background</h2><p>{body}</p>"
        f"<p>{body}</p></article><footer>Copyright footer text</footer></body></html>")
    doc = load_document(tmp_path / "page.html")
    assert doc.metadata["title"] == "Energy Deal"
    assert "China and Russia signed" in doc.text and "Copyright footer" not in doc.text
    assert "## Background" in doc.text


def test_non_utf8_is_refused_with_the_file_name(tmp_path: Path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(CorpusError, match="bad.txt is not UTF-8"):
        load_corpus(tmp_path)


def test_bad_sidecar_is_refused(tmp_path: Path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.meta.json").write_text("[1, 2]")
    with pytest.raises(CorpusError, match="must hold a JSON object"):
        load_corpus(tmp_path)


def test_bad_doc_id_and_duplicates_are_refused(tmp_path: Path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.md").write_text("y")
    with pytest.raises(CorpusError, match="two files map to doc_id 'a'"):
        load_corpus(tmp_path)
    (tmp_path / "a.md").unlink()
    (tmp_path / "a.meta.json").write_text('{"doc_id": "no spaces allowed"}')
    with pytest.raises(CorpusError, match="must be 1-128 letters"):
        load_corpus(tmp_path)


def test_missing_folder(tmp_path: Path):
    with pytest.raises(CorpusError, match="corpus folder not found"):
        load_corpus(tmp_path / "nope")
