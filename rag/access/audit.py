"""The audit log, `<index_dir>/access/audit.jsonl`: one JSON line per event, the oldest first.

A line is `{"time": "2025-01-31T12:00:00.123Z", **event}`; the service passes `key` (the
key's name), `role`, `action`, `collection`, `doc_id` or `file_id`, and `status`; the CLI
logs its key changes as `{"key": "cli", "role": "admin", "action": "keys.create" or
"keys.revoke", "target": NAME, "status": "ok"}`. A string value is cut at MAX_VALUE
characters (an id in a hostile URL must not fail the write it records).

Each event is one os.write of its whole line to a file opened with O_APPEND, fsynced before
`append` returns. Linux performs an O_APPEND write to a regular file under the file's lock,
at its end, whole; lines this short (at most MAX_LINE bytes) are never split by a short
write, so threads and processes appending at once never interleave their lines. A crash
mid-write can leave a torn line without its newline; `read` skips it, and the next line
appended after it (glued onto the torn bytes) is still read.

Left out: rotation and retention (move the file away; the next event starts a new one),
tamper evidence (hash chaining), and any secret or document text: `append` refuses them.
"""

import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.errors import StorageError
from rag.files import fsync_path

# fields that would put a secret or a document's text into the log: refused, whatever the
# caller (a guard against future callers, compared case-insensitively)
FORBIDDEN = frozenset({"secret", "key_secret", "text", "token", "authorization"})
MAX_VALUE = 256  # characters of a string field kept (a hostile URL's id is cut, and says so)
MAX_LINE = 32768  # bytes; a line past it is refused (only many long non-ASCII fields reach it)
_START = b'{"time":'  # how every line begins: where a line glued onto a torn one starts


def utc_stamp(at: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds: 2025-01-31T12:00:00.123Z."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class AuditLog:
    """Appends and reads one index folder's audit log; thread- and process-safe."""

    def __init__(self, index_dir: Path):
        self.folder = Path(index_dir) / "access"
        self.path = self.folder / "audit.jsonl"
        self._made = False  # the file exists (and its folder entry is durable)

    def append(self, event: Mapping[str, Any]) -> None:
        """Log one event, durably, before returning. String values past MAX_VALUE characters
        are cut (marked `…(+N chars)`). ValueError for a forbidden field (a secret, a token,
        document text), a "time" field (the log stamps it), a value JSON cannot hold, or a
        line past MAX_LINE; StorageError (not OSError) if the file cannot be written."""
        if bad := sorted(k for k in event if str(k).lower() in FORBIDDEN):
            raise ValueError(f"the audit log never holds secrets or document text: refused field(s) {', '.join(bad)}")
        if "time" in event:
            raise ValueError('the audit log stamps "time" itself')
        try:
            line = json.dumps({"time": utc_stamp(), **{k: _cut(v) for k, v in event.items()}},
                              separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"an audit event must be plain JSON: {exc}") from exc
        data = (line + "\n").encode("ascii")  # json.dumps escapes everything else
        if len(data) > MAX_LINE:
            raise ValueError(f"an audit line is at most {MAX_LINE} bytes, this one is {len(data)}")
        try:
            made = self._made or self._make()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if not made:
                fsync_path(self.folder)  # the new file's entry survives a crash too
                self._made = True
        except OSError as exc:
            raise StorageError(f"cannot write the audit log {self.path}: {exc.strerror}") from exc
        if written != len(data):  # only a full disk does this; the reader skips the torn line
            raise StorageError(f"cannot write the audit log {self.path}: only {written} of {len(data)} bytes written")

    def read(self, since: datetime | None = None, key: str | None = None) -> Iterator[dict[str, Any]]:
        """The events in the order logged, those at or after `since` (a naive datetime is
        UTC) and of key `key` only if given. A torn last line (a crash mid-write, or a write
        under way) is skipped; StorageError for any other line that is not an event."""
        if since is not None:
            since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
        try:
            with open(self.path, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.endswith(b"\n"):
                        return  # the torn last line
                    parsed = _first_event(raw)
                    if parsed is None:
                        raise StorageError(f"the audit log {self.path} is damaged at line {number}")
                    event, at = parsed
                    if (key is None or event.get("key") == key) and (since is None or at >= since):
                        yield event
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot read the audit log {self.path}: {exc.strerror}") from exc

    def _make(self) -> bool:
        """Make the folder if missing; -> whether the file exists already."""
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            fsync_path(self.folder.parent)
        self._made = self.path.exists()
        return self._made


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_VALUE:
        return f"{value[:MAX_VALUE]}…(+{len(value) - MAX_VALUE} chars)"
    return value


def _first_event(raw: bytes) -> tuple[dict[str, Any], datetime] | None:
    """The event a line holds: from its start, or (a line glued onto a torn one) from a
    later `{"time":` that begins a whole event."""
    start = 0
    while start != -1:
        if parsed := _event(raw[start:]):
            return parsed
        start = raw.find(_START, start + 1)
    return None


def _event(raw: bytes) -> tuple[dict[str, Any], datetime] | None:
    """A line's event and its time, or None if the line is not one."""
    if not raw.startswith(_START):
        return None
    try:
        event = json.loads(raw)
        at = datetime.fromisoformat(event["time"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(event, dict):
        return None
    return event, at if at.tzinfo else at.replace(tzinfo=UTC)
