"""`rag reembed` (rag.portable.reembed): a live collection moves to another model while it
serves; writes during the move land in both; a run cut off resumes; the cutover is atomic
and queries then encode with the new model."""

import threading
from pathlib import Path

import pytest

from rag import jobs as jobs_module
from rag.collections import Collections, text_document
from rag.encoders.pool import ModelPool
from rag.errors import BadQueryError, ConflictError
from rag.jobs import Job, Jobs
from rag.portable import reembed as reembed_module
from rag.portable.reembed import cancel, reembed
from rag.service import retriever_for
from rag.settings import Settings
from tests.helpers import FakeEmbedder, article

TOPICS = ["penguins", "volcanoes", "glaciers", "krill", "ferries", "harbours"]


class Small(FakeEmbedder):
    name = "small"


def registry(settings: Settings) -> Collections:
    """Collections whose other model, `small` (torch), is a 32-d fake."""
    fake = FakeEmbedder()
    small = Small(dimension=32)
    return Collections(settings, fake, models=ModelPool(settings, fake, lambda name, backend: small))


def passages(collections: Collections, name: str, question: str) -> list[tuple[str, int, int, float]]:
    kb = collections.get(name)
    response = retriever_for(collections.settings, kb, collections.embedder_of(kb)).query(question, k=4)
    return [(p.citation.doc_id, p.citation.char_start, p.citation.char_end, round(p.score, 5))
            for p in response.passages]


def fill(collections: Collections, name: str, topics: list[str]) -> None:
    collections.create(name)
    for topic in topics:
        collections.upsert(name, text_document(article(topic), topic, None, None), replace=False)


def test_a_collection_moves_to_another_model_and_answers_as_if_made_with_it(settings: Settings):
    with registry(settings) as collections:
        fill(collections, "notes", TOPICS)
        before = passages(collections, "notes", "krill policy")
        done = reembed(collections, "notes", "small", "torch")
        assert (done.documents, done.embedded) == (6, 6)
        kb = collections.get("notes")
        assert kb.manifest["model"]["name"] == "small" and kb.manifest["model"]["dimension"] == 32
        assert "reembed" not in kb.manifest and collections.embedder_of(kb).dimension == 32
        assert sorted(p.name for p in (collections.root / "notes").glob("*.sqlite")) == [
            kb.manifest["store"]["database"]]  # the old vectors are gone
    small_settings = settings.model_copy(update={"model": "small", "embed_backend": "torch",
                                                 "index_dir": settings.index_dir.parent / "direct"})
    with Collections(small_settings, Small(dimension=32)) as direct:  # made with the small model from the start
        fill(direct, "notes", TOPICS)
        expected = passages(direct, "notes", "krill policy")
    with registry(settings) as collections:
        assert passages(collections, "notes", "krill policy") == expected != before


def test_writes_during_a_reembed_land_in_both_and_none_is_lost(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(reembed_module, "GROUP", 1)  # many small steps: writes fall between them
    with registry(settings) as collections:
        fill(collections, "notes", TOPICS)
        stop, failures, acked = threading.Event(), [], {"krill": 1, "deleted": False}

        def write_and_query() -> None:
            version = 1
            while not stop.is_set():
                version += 1
                try:
                    collections.upsert("notes", text_document(article("krill", version), "krill", None, None),
                                       replace=True)
                    acked["krill"] = version
                    if version == 3:
                        collections.remove("notes", "ferries")
                        acked["deleted"] = True
                    assert passages(collections, "notes", "krill policy")  # queries never fail
                except Exception as exc:  # every failure counts: none is expected
                    failures.append(repr(exc))
        worker = threading.Thread(target=write_and_query)
        worker.start()
        try:
            reembed(collections, "notes", "small", "torch")
        finally:
            stop.set()
            worker.join()
        assert failures == [] and acked["deleted"] and acked["krill"] > 3
        kb = collections.get("notes")
        assert kb.manifest["model"]["name"] == "small"
        assert sorted(kb.documents) == sorted(set(TOPICS) - {"ferries"})
        assert f"(version {acked['krill']})" in kb.documents["krill"].text  # the last acknowledged write
        small = collections.embedder_of(kb)
        for doc_id in kb.documents:  # every chunk's vector is the small model's, of its text
            for row in kb.rows_of(doc_id):
                chunk = kb.chunks[row]
                stored = kb.vectors_by_hash([chunk.embed_hash])[chunk.embed_hash]
                title = kb.documents[doc_id].metadata["title"]
                assert stored == pytest.approx(small.vector(f"{title}\n{chunk.text}"), abs=1e-6)


def test_a_reembed_cut_off_resumes_where_it_stopped(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(reembed_module, "GROUP", 1)
    real_copy = reembed_module._copy
    calls = []

    def dies_after_three(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt  # as a kill would, mid-way
        return real_copy(*args, **kwargs)

    with registry(settings) as collections:
        fill(collections, "notes", TOPICS)
        monkeypatch.setattr(reembed_module, "_copy", dies_after_three)
        with pytest.raises(KeyboardInterrupt):
            reembed(collections, "notes", "small", "torch")
        kb = collections.get("notes")
        assert kb.manifest["model"]["name"] == "fake" and kb.manifest["reembed"]  # the old one serves meanwhile
        assert passages(collections, "notes", "krill policy")
        with pytest.raises(ConflictError, match="being re-embedded with small"):
            reembed(collections, "notes", "other", "torch")
    monkeypatch.setattr(reembed_module, "_copy", real_copy)
    with registry(settings) as collections:  # a new process
        done = reembed(collections, "notes", "small", None)
        assert done.embedded == 3  # the three done before the cut are not embedded again
        assert collections.get("notes").manifest["model"]["name"] == "small"


def test_a_resumed_reembed_never_reports_a_negative_rate(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """A resume walks again from document 0 past what the cut-off run did: its job's rate
    counts from 0 too (it counted from where the last run stopped: negative at first)."""
    monkeypatch.setattr(reembed_module, "GROUP", 1)
    monkeypatch.setattr(jobs_module, "SAVE_EVERY_S", 0.0)  # every progress written, as a slow step's is
    real_copy, calls = reembed_module._copy, []

    def dies_after_three(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_copy(*args, **kwargs)

    jobs = Jobs(settings.index_dir)
    with registry(settings) as collections:
        fill(collections, "notes", TOPICS)
        job = jobs.create("reembed", "notes", {"model": "small", "backend": "torch"}, owner="cli")
        monkeypatch.setattr(reembed_module, "_copy", dies_after_three)
        with pytest.raises(KeyboardInterrupt):
            reembed(collections, "notes", "small", "torch", job=job)
        monkeypatch.setattr(reembed_module, "_copy", real_copy)
        resumed = jobs.get(job.id)  # as `rag reembed` takes an orphaned job back
        assert resumed.done == 3
        rates, real_progress = [], Job.progress

        def progress(self, done, total=None):  # type: ignore[no-untyped-def]
            real_progress(self, done, total)
            rates.append(jobs.get(self.id).rate)  # as /ready and `rag collections` read it
        monkeypatch.setattr(Job, "progress", progress)
        reembed(collections, "notes", "small", "torch", job=resumed)
        assert len(rates) == 7 and all(r is not None and r >= 0 for r in rates), rates


def test_a_cancel_from_the_cli_ends_the_job_of_a_killed_run(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """`rag reembed --cancel` after a run was killed: the re-embed is listed no more (its
    job, orphaned, was left unfinished: `rag collections` and /ready said "stalled" for ever)."""
    from typer.testing import CliRunner

    from rag.cli import app
    from tests.test_jobs import _dead_pid

    monkeypatch.setenv("RAG_INDEX_DIR", str(settings.index_dir))
    monkeypatch.setenv("RAG_MODEL", "fake")
    jobs = Jobs(settings.index_dir)
    with registry(settings) as collections:
        fill(collections, "notes", TOPICS[:2])
        reembed_module._begin(collections, "notes", settings.model_copy(update={"model": "small",
                                                                                "embed_backend": "torch"}),
                              Small(dimension=32), lambda m: None)
    killed = jobs.create("reembed", "notes", {"model": "small", "backend": "torch"}, owner="cli")
    killed.start()
    killed.pid = _dead_pid()  # the run was killed
    killed.touch()
    assert [r["state"] for r in reembed_module.under_way(settings.index_dir)] == ["stalled"]
    listed = CliRunner().invoke(app, ["collections"])
    assert "re-embedding to small (torch): stalled" in listed.output
    cancelled = CliRunner().invoke(app, ["reembed", "--collection", "notes", "--cancel"])
    assert cancelled.exit_code == 0, cancelled.output
    assert reembed_module.under_way(settings.index_dir) == [] and jobs.get(killed.id).state == "cancelled"
    listed = CliRunner().invoke(app, ["collections"])
    assert listed.exit_code == 0 and "re-embedding" not in listed.output, listed.output


def test_cancel_and_bad_requests(settings: Settings):
    with registry(settings) as collections:
        fill(collections, "notes", TOPICS[:2])
        with pytest.raises(BadQueryError, match="--model, --backend"):
            reembed(collections, "notes", None, None)
        with pytest.raises(ConflictError, match="rag build"):
            reembed(collections, "default", "small", None)
        assert reembed(collections, "notes", "fake", "onnx").embedded == 0  # already there
        assert not cancel(collections, "notes")
        reembed_module._begin(collections, "notes", settings.model_copy(update={"model": "small",
                                                                                "embed_backend": "torch"}),
                              Small(dimension=32), lambda m: None)
        assert cancel(collections, "notes")
        kb = collections.get("notes")
        assert "reembed" not in kb.manifest and [p.name for p in Path(kb.folder).glob("*.sqlite")] == ["kb.sqlite"]
