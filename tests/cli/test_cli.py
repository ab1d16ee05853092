"""The `rag` command, driven through Typer's runner with the fake model."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag import service
from rag.cli import app
from rag.ingest import build as build_module
from rag.settings import Settings
from tests.helpers import FakeEmbedder

runner = CliRunner()


@pytest.fixture
def env(settings: Settings, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAG_CORPUS_DIR", str(settings.corpus_dir))
    monkeypatch.setenv("RAG_INDEX_DIR", str(settings.index_dir))
    monkeypatch.setenv("RAG_MODEL", "fake")
    fake = FakeEmbedder()
    monkeypatch.setattr(build_module, "embedder_from", lambda settings: fake)
    monkeypatch.setattr(service, "embedder_from", lambda settings: fake)
    return settings


def test_build_then_skip_then_query_json(env: Settings):
    first = runner.invoke(app, ["build"])
    assert first.exit_code == 0, first.output
    assert "documents 3, chunks" in first.stdout
    second = runner.invoke(app, ["build"])
    assert second.exit_code == 0 and "index is up to date" in second.stdout

    result = runner.invoke(app, ["query", "Russian oil imports", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert set(body) == {"question", "passages", "took_ms", "mode", "answerable", "confidence", "answer"}
    assert body["question"] == "Russian oil imports"
    assert [p["rank"] for p in body["passages"]] == [1, 2]
    assert set(body["passages"][0]["citation"]) == {
        "doc_id", "title", "source", "url", "section", "char_start", "char_end", "page_start", "page_end"}


def test_query_text_output_and_doc_filter(env: Settings):
    runner.invoke(app, ["build"])
    result = runner.invoke(app, ["query", "Arctic", "--doc", "usip-china-russia-global-cooperation",
                                 "--mode", "lexical"])
    assert result.exit_code == 0, result.output
    assert "[1]" in result.stdout and "usip-china-russia-global-cooperation" in result.stdout
    assert "cfr-china-russia-backgrounder" not in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["query", "   "], "error: question must not be empty"),
    (["query", "x", "-k", "0"], "error: k must be between 1 and 50, got 0"),
    (["query", "x", "--mode", "fuzzy"], "error: mode must be one of dense, lexical, hybrid, got 'fuzzy'"),
    (["query", "x", "--doc", "nope"], "error: unknown doc_ids: nope"),
])
def test_bad_query_input_is_one_line_and_exit_2(env: Settings, args, message):
    runner.invoke(app, ["build"])
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message


def test_query_without_index(env: Settings):
    result = runner.invoke(app, ["query", "anything"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no index at") and "run `rag build` first" in result.stderr


def test_bad_settings_are_reported(env: Settings, monkeypatch):
    monkeypatch.setenv("RAG_CHUNK_TOKENS", "banana")
    result = runner.invoke(app, ["build"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid settings: chunk_tokens:")


def test_settings_as_people_write_them(env: Settings, monkeypatch, tmp_path):
    """Found by probing: RAG_ALLOWED_HOSTS=rag.example.org was a 72-line traceback (only a
    JSON list parsed), a misspelled setting was silently ignored, and the Milvus Lite file
    stayed under the working folder whatever --index said."""
    from rag.cli import load_settings, unknown_settings

    monkeypatch.setenv("RAG_ALLOWED_HOSTS", "rag.example.org, chat.example.org")
    monkeypatch.setenv("RAG_CORS_ORIGINS", '["https://chat.example.org"]')
    settings = load_settings(index=tmp_path / "idx")
    assert settings.allowed_hosts == ["rag.example.org", "chat.example.org"]
    assert settings.cors_origins == ["https://chat.example.org"]
    assert settings.milvus_uri == str(tmp_path / "idx" / "milvus.db")
    assert unknown_settings({"RAG_CHUNK_TOKEN": "200", "RAG_MODEL": "x", "HOME": "/"}) == [
        "RAG_CHUNK_TOKEN is not a setting; did you mean RAG_CHUNK_TOKENS?"]
    monkeypatch.setenv("RAG_CHUNK_TOKEN", "200")
    monkeypatch.setenv("RAG_CORS_ORIGINS", "[not json")
    result = runner.invoke(app, ["query", "x"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "warning: RAG_CHUNK_TOKEN is not a setting; did you mean RAG_CHUNK_TOKENS?" in result.stderr
    assert "error: invalid settings: cors_origins: Value error, not a JSON list" in result.stderr


def test_missing_corpus(env: Settings, tmp_path):
    result = runner.invoke(app, ["build", "--corpus", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: corpus folder not found: {tmp_path / 'nowhere'}"


def test_disk_full_is_one_line_and_exit_2(env: Settings, monkeypatch):
    import errno

    from rag.stores.local import tables

    assert runner.invoke(app, ["build"]).exit_code == 0

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tables.TableWriter, "add_chunks", full_disk)
    result = runner.invoke(app, ["build", "--force"])
    assert result.exit_code == 2
    *progress, last = result.stderr.strip().splitlines()  # progress lines, then the one error line
    assert last == f"error: cannot write index at {env.index_dir}: No space left on device"
    assert not any(line.startswith("error") for line in progress)
    assert "Traceback" not in result.output
    assert not list((env.index_dir / "builds").glob(".tmp-*"))


def test_add_list_and_remove_documents_of_a_live_collection(env: Settings, tmp_path: Path):
    (tmp_path / "penguins.md").write_text("---\ntitle: Penguins\n---\nPenguins eat krill near the ice.\n")
    (tmp_path / "notes.txt").write_text("Krill stocks fell last winter.\n")
    added = runner.invoke(app, ["add", str(tmp_path / "penguins.md"), str(tmp_path / "notes.txt"),
                                "--collection", "field"])
    assert added.exit_code == 0, added.output
    assert "created   penguins" in added.stdout and "created   notes" in added.stdout
    again = runner.invoke(app, ["add", str(tmp_path / "notes.txt"), "--collection", "field"])
    assert "unchanged notes: 1 chunks (0 embedded)" in again.stdout
    listed = runner.invoke(app, ["collections"])
    assert listed.exit_code == 0 and "field" in listed.stdout and "2 documents" in listed.stdout
    found = runner.invoke(app, ["query", "penguins krill", "--collection", "field", "--json"])
    assert found.exit_code == 0, found.output
    assert {p["citation"]["doc_id"] for p in json.loads(found.stdout)["passages"]} <= {"penguins", "notes"}
    for command in (["add", str(tmp_path / "notes.txt")], ["rm", "notes"]):  # the built corpus is not written here
        refused = runner.invoke(app, [*command, "--collection", "default"])
        assert refused.exit_code == 2 and "'default' is the built corpus" in refused.output
    assert runner.invoke(app, ["rm", "notes", "--collection", "field"]).exit_code == 0
    missing = runner.invoke(app, ["rm", "notes", "--collection", "field"])
    assert missing.exit_code != 0 and "no document 'notes'" in missing.output
    bad = runner.invoke(app, ["add", str(tmp_path / "x.docx"), "--collection", "field"])
    assert bad.exit_code != 0 and "cannot read" in bad.output
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    damaged = runner.invoke(app, ["add", str(tmp_path / "broken.pdf"), "--collection", "field"])
    assert damaged.exit_code == 2 and f"error: {tmp_path / 'broken.pdf'}: the PDF is damaged" in damaged.stderr


def test_build_syncs_a_folder_into_a_live_collection_and_keeps_uploads(env: Settings, tmp_path: Path):
    from rag.collections import Collections, text_document

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha notes about penguins and krill.\n")
    (folder / "b.txt").write_text("Beta notes about seals.\n")
    first = runner.invoke(app, ["build", "--corpus", str(folder), "--collection", "field"])
    assert first.exit_code == 0, first.output
    assert "2 created" in first.stdout
    collections = Collections(env, FakeEmbedder())
    collections.upsert("field", text_document("An uploaded memo about walruses.", "memo", None, None), replace=False)
    collections.close()
    (folder / "b.txt").unlink()
    (folder / "a.txt").write_text("Alpha notes about penguins, krill and ice.\n")
    second = runner.invoke(app, ["build", "--corpus", str(folder), "--collection", "field"])
    assert second.exit_code == 0, second.output
    assert "1 replaced" in second.stdout and "1 removed" in second.stdout
    kept = Collections(env, None)
    assert sorted(kept.get("field").documents) == ["a", "memo"]  # the upload stays
    kept.close()


def test_progress_bars_only_on_a_terminal(monkeypatch):
    """Found by probing: a redirected build log held 140 KB of bar redraws."""
    import io

    from rag.encoders.base import PROGRESS_BAR_MIN_TEXTS, shows_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not shows_progress(10 * PROGRESS_BAR_MIN_TEXTS)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert shows_progress(PROGRESS_BAR_MIN_TEXTS) and not shows_progress(PROGRESS_BAR_MIN_TEXTS - 1)


def test_bench_is_a_group_of_subcommands():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("serve", "soak", "scale", "writes", "portable", "backends"):
        assert command in result.stdout
    assert runner.invoke(app, ["bench", "--scale", "1000"]).exit_code != 0  # the old flags are gone


def test_a_missing_extra_is_named_not_an_import_error(env: Settings, monkeypatch, tmp_path: Path):
    import importlib.util

    from rag.evaluation import report

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("aiohttp", "matplotlib") else real(name, *a))
    for command in (["bench", "serve"], ["bench", "soak", "60"], ["bench", "portable"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "the `bench` extra" in result.stderr and "Traceback" not in result.output
    monkeypatch.setattr(report, "markdown", lambda report, title: f"# {title}")
    paths = report.write_reports({"modes": {}}, tmp_path, "seed", "Seed")  # rag eval without the chart's extra
    assert [p.name for p in paths] == ["seed.json", "seed.md"] and all(p.exists() for p in paths)


def test_the_library_cli_never_imports_the_service():
    import subprocess
    import sys

    code = "import sys, rag.cli; assert not any(m == 'api' or m.startswith('api.') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    from api.cli import app as service_app  # the `rag` script's app: rag's commands plus serve

    assert "serve" in {c.name or c.callback.__name__ for c in service_app.registered_commands}  # type: ignore[union-attr]


def test_only_serve_and_soak_need_the_bench_extra():
    import subprocess
    import sys

    code = ("import sys; sys.modules['aiohttp'] = None\n"
            "import rag.bench.scale, rag.bench.writes, rag.bench.profile, rag.bench.server")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_serve_refuses_an_open_service_on_a_public_address(monkeypatch):
    from pydantic import SecretStr

    from api.app import check_exposure
    from api.cli import app as service_app

    monkeypatch.setenv("RAG_HOST", "0.0.0.0")
    result = runner.invoke(service_app, ["serve"])
    assert result.exit_code == 2 and "RAG_API_KEY" in result.stderr and "RAG_ALLOW_OPEN" in result.stderr
    check_exposure(Settings(host="0.0.0.0", api_key=SecretStr("k")))  # with a key: served
    check_exposure(Settings(host="0.0.0.0", allow_open=True))  # said to be meant: served
    check_exposure(Settings(host="127.0.0.1"))  # loopback: served
