"""`rag keys create|list|revoke` and `rag audit`, through Typer's runner on an index folder
in tmp_path, and once through the installed `rag` script."""

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.access import AuditLog, KeyStore
from rag.cli import app
from rag.cli.keys import parse_since

runner = CliRunner()


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "index"
    monkeypatch.setenv("RAG_INDEX_DIR", str(folder))
    return folder


def rag(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_create_json_prints_the_secret_once_and_nothing_else(index: Path):
    result = rag("keys", "create", "ci", "--role", "reader", "--collection", "notes", "--collection", "docs",
                 "--expires-days", "2", "--rate", "5", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)  # the whole of stdout is the one object
    assert list(body) == ["name", "key", "role", "collections", "expires_at", "rate"]
    assert body["name"] == "ci" and body["role"] == "reader" and body["collections"] == ["notes", "docs"]
    assert body["rate"] == 5.0 and body["expires_at"] > datetime.now(UTC).timestamp() + 86400
    secret = body["key"]
    assert secret.startswith("rag_") and secret not in (index / "access" / "keys.json").read_text()
    found = KeyStore(index).lookup(secret)
    assert found is not None and found.name == "ci"

    every = rag("keys", "create", "ops", "--role", "admin", "--json")
    assert json.loads(every.stdout)["collections"] is None and json.loads(every.stdout)["expires_at"] is None
    assert sorted(p.name for p in index.iterdir()) == ["access"]  # nothing outside access/


def test_create_plain_says_store_it_now(index: Path):
    result = rag("keys", "create", "bot", "--role", "writer", "--collection", "notes")
    assert result.exit_code == 0, result.output
    [secret] = [w for w in result.stdout.split() if w.startswith("rag_")]
    assert KeyStore(index).lookup(secret) is not None
    for words in ("bot", "writer", "notes", "never", "store it now: it is not shown again"):
        assert words in result.stdout


def test_list_never_shows_secrets(index: Path):
    secret = json.loads(rag("keys", "create", "ci", "--role", "reader", "--json").stdout)["key"]
    rag("keys", "create", "old", "--role", "writer", "--expires-days", "0.0000001")  # 8.6 ms
    time.sleep(0.05)
    plain = rag("keys", "list")
    assert plain.exit_code == 0, plain.output
    assert "ci" in plain.stdout and "old" in plain.stdout and "(expired)" in plain.stdout
    as_json = rag("keys", "list", "--json")
    listed = json.loads(as_json.stdout)
    assert [(k["name"], k["role"], k["expired"]) for k in listed] == [("ci", "reader", False), ("old", "writer", True)]
    digest = json.loads((index / "access" / "keys.json").read_text())["keys"][0]["sha256"]
    for out in (plain.output, as_json.output):
        assert secret not in out and secret[4:] not in out and digest not in out and "rag_" not in out


def test_revoke_and_the_audit_log_shows_the_changes(index: Path):
    secret = json.loads(rag("keys", "create", "ci", "--role", "reader", "--json").stdout)["key"]
    result = rag("keys", "revoke", "ci")
    assert result.exit_code == 0 and "revoked ci" in result.stdout
    assert KeyStore(index).lookup(secret) is None
    again = rag("keys", "revoke", "ci")
    assert again.exit_code == 2 and "error: no key named 'ci'" in again.stderr

    events = [json.loads(line) for line in rag("audit", "--json").stdout.splitlines()]
    assert [{k: v for k, v in e.items() if k != "time"} for e in events] == [
        {"key": "cli", "role": "admin", "action": "keys.create", "target": "ci", "status": "ok"},
        {"key": "cli", "role": "admin", "action": "keys.revoke", "target": "ci", "status": "ok"},
    ]
    plain = rag("audit", "--since", "1h", "--key", "cli").stdout.splitlines()
    assert len(plain) == 2 and "keys.create" in plain[0] and "target=ci" in plain[0]
    assert plain[0].index("keys.create") == plain[1].index("keys.revoke")  # aligned
    assert secret not in (index / "access" / "audit.jsonl").read_text()

    AuditLog(index).append({"key": "ci", "role": "reader", "action": "query", "collection": "notes", "status": 200})
    assert len(rag("audit", "--key", "ci").stdout.splitlines()) == 1
    assert rag("audit", "--since", (datetime.now(UTC) + timedelta(minutes=5)).isoformat()).stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["keys", "create", "a b", "--role", "reader"], "error: key name 'a b'"),
    (["keys", "create", "k", "--role", "root"], "error: role must be one of reader, writer, admin"),
    (["keys", "create", "k", "--role", "reader", "--collection", "Bad"], "error: collection name 'Bad'"),
    (["keys", "create", "k", "--role", "reader", "--expires-days", "0"], "error: expires_days must be"),
    (["keys", "create", "k", "--role", "reader", "--rate", "-1"], "error: rate must be"),
    (["audit", "--since", "yesterday"], "error: --since 'yesterday'"),
])
def test_mistakes_are_one_line_and_exit_2(index: Path, args: list[str], message: str):
    result = rag(*args)
    assert result.exit_code == 2 and message in result.stderr and result.stdout == ""
    assert not (index / "access" / "keys.json").exists()


def test_duplicate_name_is_refused(index: Path):
    rag("keys", "create", "ci", "--role", "reader")
    result = rag("keys", "create", "ci", "--role", "writer")
    assert result.exit_code == 2 and "a key named 'ci' exists" in result.stderr
    assert len(KeyStore(index).list()) == 1


def test_since_reads_iso_and_relative_times():
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("1.5h", now) == now - timedelta(hours=1.5)
    assert parse_since("2025-01-31T10:00:00Z") == datetime(2025, 1, 31, 10, tzinfo=UTC)
    assert parse_since("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)  # naive: UTC
    assert parse_since("2025-01-31T12:00+02:00") == datetime(2025, 1, 31, 10, tzinfo=UTC)


def test_the_rag_script(tmp_path: Path):
    """The installed command, in its own process, as an operator runs it beside a server."""
    script = Path(sys.executable).with_name("rag")
    env = {**os.environ, "RAG_INDEX_DIR": str(tmp_path / "index")}
    made = subprocess.run([str(script), "keys", "create", "ci", "--role", "reader", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["key"]
    listed = subprocess.run([str(script), "keys", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "ci" in listed.stdout and secret not in listed.stdout


def test_rag_audit_shows_control_characters_escaped():
    from rag.cli.keys import _event_line

    line = _event_line({"time": "2026-12-02T12:00:00.000Z", "key": "ra", "role": "reader",
                        "action": "DELETE /x\n2026-12-02T12:00:00.000Z admin admin\x1b[2K", "status": 404})
    assert "\n" not in line and "\x1b" not in line and "\\x0a" in line and "\\x1b" in line
