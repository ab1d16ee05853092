"""An archive written by format v1 (tests/fixtures/notes-v1.tar, made by `rag export` of a
two-document collection with the fake model) keeps importing: a later change of the format
must keep reading it, or say in its version why it cannot."""

import shutil
from pathlib import Path

from rag.collections import Collections
from rag.portable.archive import Archive
from rag.portable.importing import import_archive
from rag.service import retriever_for
from rag.settings import Settings
from tests.helpers import REPO, FakeEmbedder

FIXTURE = REPO / "tests" / "fixtures" / "notes-v1.tar"


def test_the_v1_archive_still_imports_whole(tmp_path: Path):
    archive = tmp_path / "notes-v1.tar"  # a copy: the test never writes into the repository
    shutil.copyfile(FIXTURE, archive)
    with Archive(archive) as opened:
        opened.verify()
        assert opened.manifest["format_version"] == 1 and opened.counts == {"documents": 2, "chunks": 6,
                                                                            "sentences": 69}
    settings = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index", model="fake")
    embedder = FakeEmbedder()
    imported = import_archive(settings, archive, embedder)
    assert (imported.name, imported.documents, imported.chunks, imported.sentences) == ("notes", 2, 6, 69)
    with Collections(settings, embedder) as collections:
        notes = collections.get("notes")
        assert (notes.origin("penguins"), notes.origin("krill")) == ("upload", "sync")
        assert notes.documents["penguins"].metadata["author"] == "A. Diver"
        assert (collections.root / "notes" / "vector_store.json").read_text() == '{"name": "field notes"}\n'
        response = retriever_for(settings, notes, embedder).query("krill policy number 8", k=2, mode="hybrid")
        assert [p.chunk_id for p in response.passages] == ["krill-550ef44df76b", "penguins-fa60900fe019"]
        top = response.passages[0]
        assert top.text == notes.documents["krill"].text[top.citation.char_start:top.citation.char_end]
        assert top.highlights  # the sentences and their vectors came through
