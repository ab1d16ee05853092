"""The audit log: one timestamped JSON line per event, filtered reads, torn lines after a
crash, concurrent writers, and the fields it refuses."""

import json
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rag.access.audit import MAX_LINE, MAX_VALUE, AuditLog
from rag.errors import StorageError

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys
from pathlib import Path
from rag.access.audit import AuditLog
log = AuditLog(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    log.append({"key": sys.argv[2], "action": "query", "n": i, "status": 200})
"""


def log_file(index: Path) -> Path:
    return index / "access" / "audit.jsonl"


def test_append_then_read_in_order(tmp_path: Path):
    log = AuditLog(tmp_path / "index")
    assert list(log.read()) == [] and not (tmp_path / "index").exists()  # reading makes nothing
    before = datetime.now(UTC).replace(microsecond=0)
    log.append({"key": "ci", "role": "reader", "action": "query", "collection": "notes", "status": 200})
    log.append({"key": "bot", "role": "writer", "action": "documents.upsert", "collection": "notes",
                "doc_id": "memo-1", "status": 201})
    events = list(log.read())
    assert [e["key"] for e in events] == ["ci", "bot"]
    assert list(events[1]) == ["time", "key", "role", "action", "collection", "doc_id", "status"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", events[0]["time"])
    assert before <= datetime.fromisoformat(events[0]["time"]) <= datetime.now(UTC)
    lines = log_file(tmp_path / "index").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == events[1]


def test_filters_by_key_and_time(tmp_path: Path):
    log = AuditLog(tmp_path)
    log_file(tmp_path).parent.mkdir(parents=True)
    log_file(tmp_path).write_text('{"time":"2020-01-01T00:00:00.000Z","key":"old","action":"query"}\n')
    log.append({"key": "ci", "action": "query"})
    log.append({"key": "bot", "action": "query"})
    assert [e["key"] for e in log.read()] == ["old", "ci", "bot"]
    assert [e["key"] for e in log.read(key="ci")] == ["ci"]
    assert [e["key"] for e in log.read(since=datetime.now(UTC) - timedelta(hours=1))] == ["ci", "bot"]
    assert [e["key"] for e in log.read(since=datetime(2019, 12, 31, 23, 0))] == ["old", "ci", "bot"]  # naive: UTC
    assert [e["key"] for e in log.read(since=datetime(2020, 1, 1, 0, 0, 1))] == ["ci", "bot"]
    assert list(log.read(since=datetime.now(UTC) + timedelta(minutes=1))) == []
    assert list(log.read(since=datetime.now(UTC) - timedelta(hours=1), key="old")) == []


def test_a_torn_last_line_is_skipped_and_the_next_line_still_read(tmp_path: Path):
    log = AuditLog(tmp_path)
    log.append({"key": "a", "action": "query"})
    log.append({"key": "b", "action": "query"})
    with open(log_file(tmp_path), "ab") as out:  # a crash mid-write: no newline
        out.write(b'{"time":"2030-01-01T00:00:00.000Z","key":"c","act')
    assert [e["key"] for e in log.read()] == ["a", "b"]
    log.append({"key": "d", "action": "query"})  # lands on the torn line's end
    assert [e["key"] for e in log.read()] == ["a", "b", "d"]
    with open(log_file(tmp_path), "ab") as out:  # what a power cut can leave: zeros
        out.write(b"\0" * 40)
    log.append({"key": "e", "action": "query", "nested": {"time": 1}})
    assert [e["key"] for e in log.read()] == ["a", "b", "d", "e"]
    with open(log_file(tmp_path), "ab") as out:
        out.write(b'{"time":"2030-01-01T00:00:00.000Z","key":"f","nested":{"time":')
    log.append({"key": "g", "action": "query", "nested": {"time": 2}})
    assert [e["key"] for e in log.read()] == ["a", "b", "d", "e", "g"]


def test_a_damaged_line_inside_is_an_error_not_skipped(tmp_path: Path):
    log = AuditLog(tmp_path)
    log.append({"key": "a", "action": "query"})
    with open(log_file(tmp_path), "ab") as out:
        out.write(b"hello\n")
    log.append({"key": "b", "action": "query"})
    with pytest.raises(StorageError, match="audit.jsonl is damaged at line 2"):
        list(log.read())


@pytest.mark.parametrize("field", ["secret", "key_secret", "text", "token", "authorization", "Authorization", "TEXT"])
def test_secrets_and_document_text_are_refused(tmp_path: Path, field: str):
    log = AuditLog(tmp_path)
    with pytest.raises(ValueError, match="never holds secrets or document text"):
        log.append({"key": "ci", "action": "query", field: "rag_abc"})
    assert not log_file(tmp_path).exists()


@pytest.mark.parametrize(("event", "message"), [
    ({"time": "now"}, 'stamps "time" itself'),
    ({"key": "ci", "when": datetime.now()}, "plain JSON"),
    ({"key": "ci", "score": float("nan")}, "plain JSON"),
    ({"key": "ci", "extra": ["é" * MAX_LINE]}, "at most"),
])
def test_other_bad_events_are_refused(tmp_path: Path, event: dict, message: str):
    with pytest.raises(ValueError, match=message):
        AuditLog(tmp_path).append(event)
    assert not log_file(tmp_path).exists()


def test_long_values_are_cut_and_say_so(tmp_path: Path):
    log = AuditLog(tmp_path)
    log.append({"key": "ci", "action": "DELETE", "doc_id": "x" * 100_000, "collection": "é" * 5000, "status": 404})
    event = next(log.read())
    assert event["doc_id"] == "x" * MAX_VALUE + f"…(+{100_000 - MAX_VALUE} chars)"
    assert event["collection"].startswith("é" * MAX_VALUE + "…(+") and event["status"] == 404


def test_unicode_values_stay_one_ascii_line(tmp_path: Path):
    log = AuditLog(tmp_path)
    log.append({"key": "ci", "doc_id": "café\nline"})
    raw = log_file(tmp_path).read_bytes()
    assert raw.isascii() and raw.count(b"\n") == 1
    assert next(log.read())["doc_id"] == "café\nline"


def test_threads_and_processes_append_whole_lines(tmp_path: Path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"proc{i}", "30"], cwd=REPO)
               for i in range(2)]
    log = AuditLog(tmp_path)

    def append(name: str) -> None:
        for i in range(30):
            log.append({"key": name, "action": "query", "n": i, "padding": "x" * 500})

    threads = [threading.Thread(target=append, args=(f"thread{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    events = list(log.read())
    assert len(events) == 5 * 30
    for name in ("proc0", "proc1", "thread0", "thread1", "thread2"):
        assert [e["n"] for e in events if e["key"] == name] == list(range(30))
