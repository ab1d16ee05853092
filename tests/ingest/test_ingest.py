"""Reading documents: formats, metadata sources, refusals."""

from pathlib import Path

import pytest

from rag.errors import CorpusError
from rag.ingest.corpus import load_corpus, load_document


def test_bundled_corpus_has_its_metadata():
    from tests.helpers import CORPUS

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


def test_front_matter_that_is_no_mapping_is_refused(tmp_path: Path):
    """As a sidecar that is no object is (python-frontmatter read a list as no metadata)."""
    (tmp_path / "a.md").write_text("---\n- title\n- author\n---\nBody text.\n")
    with pytest.raises(CorpusError, match="a.md: front matter must be keys with values"):
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


def test_file_names_people_use_make_doc_ids(tmp_path: Path):
    """Found by probing: "my notes.txt" stopped the whole build ("doc_id 'my notes' must be
    1-128 letters…"); `rag add` took the same file as my-notes."""
    import hashlib

    from rag.ingest.uploads import uploaded_document

    for name in ("my notes.txt", "café résumé.md", "北京.txt", "fp-china-russia-axis.txt"):
        (tmp_path / name).write_text("Some text about trade.\n", encoding="utf-8")
    ids = sorted(d.doc_id for d in load_corpus(tmp_path))
    assert ids == sorted(["my-notes", "cafe-resume", "doc-" + hashlib.sha256("北京.txt".encode()).hexdigest()[:16],
                          "fp-china-russia-axis"])
    assert uploaded_document("my notes.txt", b"Some text about trade.")[0].doc_id == "my-notes"  # as rag add


def test_missing_folder(tmp_path: Path):
    with pytest.raises(CorpusError, match="corpus folder not found"):
        load_corpus(tmp_path / "nope")


def test_metadata_of_any_type_becomes_text_or_json(tmp_path: Path):
    """YAML and JSON give numbers, dates and lists where the API serves strings."""
    import json

    from rag.ingest.build import build_index
    from rag.settings import Settings
    from rag.stores.local.store import open_local
    from tests.helpers import FakeEmbedder

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    body = "Orwell wrote the novel in 1948 on the island of Jura. It was published the next year. " * 3
    (corpus / "novel.md").write_text(
        "---\ntitle: 1984\ndate: 2024\nauthor: [Ann, Bob]\ntags: [2024-01-01]\nurl: 7\nsource: null\n"
        "extra: {when: 2024-01-02T10:00:00Z, nested: [2024-01-03, {at: 2024-01-04}], none: null, ratio: .nan}\n"
        f"---\n# The novel\n\n{body}")
    (corpus / "essay.txt").write_text(body)
    (corpus / "essay.meta.json").write_text(json.dumps(
        {"title": 1984, "date": 2024.5, "author": ["Ann", None, 3], "url": 7, "tags": [1, "two"], "source": None}))

    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index", model="fake")
    build_index(settings, FakeEmbedder())
    documents = open_local(settings.index_dir).documents
    novel, essay = documents["novel"].metadata, documents["essay"].metadata
    assert {k: novel[k] for k in ("title", "date", "author", "url", "source", "tags")} == {
        "title": "1984", "date": "2024", "author": "Ann, Bob", "url": "7", "source": "novel.md",
        "tags": ["2024-01-01"]}
    assert novel["extra"] == {"when": "2024-01-02T10:00:00+00:00", "nested": ["2024-01-03", {"at": "2024-01-04"}],
                              "none": None, "ratio": "nan"}
    assert {k: essay[k] for k in ("title", "date", "author", "url", "source", "tags")} == {
        "title": "1984", "date": "2024.5", "author": "Ann, 3", "url": "7", "source": "essay.txt",
        "tags": [1, "two"]}
    for metadata in (novel, essay):
        json.dumps(metadata, allow_nan=False)  # strict JSON: what the API can serve
        assert all(isinstance(metadata[k], str) for k in ("title", "source"))
        assert all(isinstance(metadata[k], str | None) for k in ("author", "date", "url"))


@pytest.mark.parametrize(("front_matter", "sidecar", "field"), [
    ("title: {a: 1}", None, "title"),
    ("title: ok", '{"author": [["Ann"]]}', "author"),
    ("date: {year: 2024}", None, "date"),
])
def test_metadata_that_cannot_be_text_is_refused(tmp_path: Path, front_matter, sidecar, field):
    (tmp_path / "a.md").write_text(f"---\n{front_matter}\n---\nBody.")
    if sidecar:
        (tmp_path / "a.meta.json").write_text(sidecar)
    with pytest.raises(CorpusError, match=f"a.md: metadata '{field}' must be text"):
        load_corpus(tmp_path)


def test_metadata_with_a_lone_surrogate_is_refused(tmp_path):
    from rag.errors import CorpusError
    from rag.ingest.corpus import load_document

    (tmp_path / "a.txt").write_text("Some text.")
    (tmp_path / "a.meta.json").write_text('{"title": "bad \\ud800 title"}')
    with pytest.raises(CorpusError, match="a.txt: metadata holds text that is not valid Unicode"):
        load_document(tmp_path / "a.txt")


def _bomb(levels: int) -> str:
    """YAML front matter of a few hundred bytes whose aliases expand 10x a level."""
    lines = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@pytest.mark.parametrize(("front_matter", "field", "line"), [
    ("title: A title\nsource: *t", "source", 3),  # an alias
    ("base: &b {author: Ann}\nmore:\n  <<: *b\n  date: 2024", "base", 2),  # a merge key needs an anchor and an alias
    ("title: &t A title", "title", 2),  # an anchor alone
    (_bomb(5), "l0", 2),  # 100,000 x's once expanded; 9 levels exhausted memory
])
def test_yaml_anchors_and_aliases_are_refused_before_they_expand(tmp_path: Path, front_matter, field, line):
    (tmp_path / "a.md").write_text(f"---\n{front_matter}\n---\nBody.")
    with pytest.raises(CorpusError, match=rf"a\.md: metadata '{field}' uses a YAML (anchor|alias) \([&*]\w+ on line {line}\)"):
        load_document(tmp_path / "a.md")


def test_a_yaml_bomb_of_nine_levels_is_refused_at_once(tmp_path: Path):
    import time

    (tmp_path / "a.md").write_text(f"---\n{_bomb(9)}\n---\nBody.")
    start = time.monotonic()
    with pytest.raises(CorpusError, match="YAML anchor"):
        load_document(tmp_path / "a.md")
    assert time.monotonic() - start < 1


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_metadata_is_bounded_in_size_depth_and_keys_naming_the_field(tmp_path: Path):
    """One rule for front matter, sidecars and metadata sent as JSON (rag.collections.text_document)."""
    import json

    from rag.collections import text_document
    from rag.errors import BadQueryError
    from rag.ingest.metadata import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_METADATA_KEYS

    assert (MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_METADATA_KEYS) == (16_384, 8, 256)
    at_limits = {"deep": json.loads(_nested(MAX_METADATA_DEPTH)),
                 "keys": {f"k{i}": i for i in range(MAX_METADATA_KEYS - 3)}, "notes": "n" * 10_000}
    (tmp_path / "ok.txt").write_text("Body.")
    (tmp_path / "ok.meta.json").write_text(json.dumps(at_limits))
    assert load_document(tmp_path / "ok.txt").metadata["deep"] == at_limits["deep"]

    cases = [  # metadata, the field named, what the message says
        ({"deep": json.loads(_nested(MAX_METADATA_DEPTH + 1))}, "deep", "nested deeper than 8 levels"),
        ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}}, "deep", "nested deeper than 8"),
        ({"tags": {f"k{i}": i for i in range(300)}}, "tags", "more than 256 keys"),
        ({"extra": [["x" * 1000] * 20]}, "extra", "16,384 bytes"),  # nested lists count too
        ({"notes": "n" * 17_000}, "notes", "16,384 bytes"),
    ]
    for metadata, field, says in cases:
        (tmp_path / "a.txt").write_text("Body.")
        (tmp_path / "a.meta.json").write_text(json.dumps(metadata))
        with pytest.raises(CorpusError, match=rf"a\.txt: metadata .*'{field}'.*{says}|a\.txt: metadata.*{says}.*'{field}'"):
            load_document(tmp_path / "a.txt")
        with pytest.raises(BadQueryError, match=rf"document 't': metadata .*'{field}'|document 't': .*{says}"):
            text_document("Body.", "t", None, metadata)
    (tmp_path / "b.md").write_text(f"---\ndeep: {_nested(MAX_METADATA_DEPTH + 1)}\n---\nBody.")
    with pytest.raises(CorpusError, match=r"b\.md: metadata 'deep' is nested deeper than 8 levels"):
        load_document(tmp_path / "b.md")
    (tmp_path / "c.md").write_text(f"---\ndeep: {_nested(900)}\n---\nBody.")  # refused before it is built
    with pytest.raises(CorpusError, match=r"c\.md: metadata 'deep' is nested deeper than 8 levels"):
        load_document(tmp_path / "c.md")


def test_a_doc_id_with_a_trailing_newline_is_refused(tmp_path: Path):
    from rag.errors import BadQueryError
    from rag.ingest.uploads import checked_doc_id

    (tmp_path / "a.txt").write_text("Body.")
    (tmp_path / "a.meta.json").write_text('{"doc_id": "abc\\n"}')
    with pytest.raises(CorpusError, match="must be 1-128 letters"):
        load_document(tmp_path / "a.txt")
    with pytest.raises(BadQueryError, match="doc_id 'abc\\\\n'"):
        checked_doc_id("abc\n")
