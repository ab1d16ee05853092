"""`rag jobs` (rag.cli.jobs) and the folder sync's job (`rag build --collection`): a file or
document that fails is listed with its reason and the sync goes on; a killed sync is
resumed as a new run of its job; list, show and cancel, in text and JSON."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag import service
from rag.cli import app
from rag.collections import Collections, text_document
from rag.ingest import build as build_module
from rag.jobs import Jobs
from rag.settings import Settings
from tests.helpers import FakeEmbedder
from tests.test_jobs import _dead_pid

runner = CliRunner()


@pytest.fixture
def env(settings: Settings, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAG_INDEX_DIR", str(settings.index_dir))
    monkeypatch.setenv("RAG_MODEL", "fake")
    fake = FakeEmbedder()
    monkeypatch.setattr(build_module, "embedder_from", lambda settings: fake)
    monkeypatch.setattr(service, "embedder_from", lambda settings: fake)
    return settings


def test_a_sync_lists_its_failed_files_and_goes_on_with_the_others(env: Settings, tmp_path: Path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha notes about penguins and krill.\n")
    (folder / "b.txt").write_text("Beta notes about seals.\n")
    first = runner.invoke(app, ["build", "--corpus", str(folder), "--collection", "field"])
    assert first.exit_code == 0, first.output
    collections = Collections(env, FakeEmbedder())
    collections.upsert("field", text_document("An uploaded memo about walruses.", "memo", None, None), replace=False)
    collections.close()
    (folder / "b.txt").write_bytes(b"\xff\xfe not UTF-8")  # unreadable now: its document stays
    (folder / "memo.txt").write_text("A file whose doc_id an upload holds.\n")  # refused: added another way
    (folder / "c.txt").write_text("Gamma notes about terns.\n")
    second = runner.invoke(app, ["build", "--corpus", str(folder), "--collection", "field"])
    assert second.exit_code == 1, second.output
    assert "1 created" in second.stdout and "2 failed" in second.stdout and "0 removed" in second.stdout
    assert "no document was removed this time" in second.stderr
    kept = Collections(env, None)
    assert sorted(kept.get("field").documents) == ["a", "b", "c", "memo"]
    kept.close()
    job = Jobs(env.index_dir).list()[0]
    assert (job.kind, job.target, job.owner, job.state) == ("sync", "field", "cli", "succeeded")
    assert (job.done, job.total) == (3, 3)
    assert sorted(e["item"] for e in job.errors) == ["b.txt", "memo.txt"]
    reasons = {e["item"]: e["reason"] for e in job.errors}
    assert "not UTF-8" in reasons["b.txt"] and "added another way" in reasons["memo.txt"]
    assert f"rag jobs show {job.id}" in second.stderr

    listing = runner.invoke(app, ["jobs"])
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "KIND", "COLLECTION", "STATE"]
    assert job.id in lines[1] and "sync" in lines[1] and "3/3 documents" in lines[1] and "2 errors" in lines[1]
    shown = runner.invoke(app, ["jobs", "show", job.id])
    assert shown.exit_code == 0 and "failed items (2)" in shown.stdout and "memo.txt: " in shown.stdout
    as_json = json.loads(runner.invoke(app, ["jobs", "--json"]).stdout)
    assert [j["id"] for j in as_json] == [job.id, Jobs(env.index_dir).list()[1].id]
    assert json.loads(runner.invoke(app, ["jobs", "show", job.id, "--json"]).stdout)["errors_count"] == 2


def test_a_killed_sync_is_resumed_as_a_new_run_of_its_job(env: Settings, tmp_path: Path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha notes about penguins and krill.\n")
    jobs = Jobs(env.index_dir)
    killed = jobs.create("sync", "field", {"folder": str(folder.resolve())}, "cli")
    killed.start()
    killed.pid = _dead_pid()
    killed.touch()
    result = runner.invoke(app, ["build", "--corpus", str(folder), "--collection", "field"])
    assert result.exit_code == 0, result.output
    again = jobs.get(killed.id)
    assert (again.state, again.runs, again.done) == ("succeeded", 2, 1)
    assert len(jobs.list()) == 1


def test_cancel_show_and_mistakes(env: Settings):
    jobs = Jobs(env.index_dir)
    running = jobs.create("reembed", "notes", {}, "admin", unit="chunks", total=100)
    running.start()
    running.progress(40)
    result = runner.invoke(app, ["jobs", "cancel", running.id])
    assert result.exit_code == 0 and "cancel asked" in result.stdout
    assert running.cancelled  # its runner sees it
    stopped = jobs.create("export", "notes", {}, "admin")
    stopped.pid = _dead_pid()
    stopped.touch()
    assert "stopped: its process is gone" in runner.invoke(app, ["jobs"]).stdout
    assert runner.invoke(app, ["jobs", "cancel", stopped.id]).stdout.strip().endswith("cancelled")
    assert jobs.get(stopped.id).state == "cancelled"
    again = runner.invoke(app, ["jobs", "cancel", stopped.id, "--json"])
    assert json.loads(again.stdout)["state"] == "cancelled"
    missing = runner.invoke(app, ["jobs", "show", "job-nope"])
    assert missing.exit_code == 2 and "error: no job with id 'job-nope'" in missing.stderr


def test_no_jobs(env: Settings):
    result = runner.invoke(app, ["jobs"])
    assert result.exit_code == 0 and result.stdout.strip() == "no jobs"
    assert json.loads(runner.invoke(app, ["jobs", "--json"]).stdout) == []
