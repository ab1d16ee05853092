"""`rag keys create|list|revoke` and `rag audit`: scoped API keys and the audit log from the
command line. They touch only `<index_dir>/access/`, so they work while a server runs on the
same index folder (it sees a key made or revoked within a second). Every key change made
here is logged too, as key "cli" with role admin.

Left out: changing a key in place (revoke it, then create another) and following the log
as it grows (`tail -f <index_dir>/access/audit.jsonl`).
"""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from rag.access import ROLES, AuditLog, Key, KeyStore
from rag.access.audit import utc_stamp
from rag.cli.base import IndexOpt, fail, load_settings, user_errors
from rag.errors import BadQueryError, RagError

app = typer.Typer(help="Scoped API keys: create, list, revoke (the secret is shown once, at create).",
                  no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _when(at: float | None, never: str = "never") -> str:
    return never if at is None else utc_stamp(datetime.fromtimestamp(at, UTC))


def _log_change(log: AuditLog, action: str, name: str) -> None:
    """The change is made: a log that cannot be written is said on stderr, exit status 2."""
    try:
        log.append({"key": "cli", "role": "admin", "action": action, "target": name, "status": "ok"})
    except RagError as exc:
        fail(f"{action} {name} done, but it is not in the audit log: {exc}")


@app.command("create")
@user_errors
def create(
    name: Annotated[str, typer.Argument(help="the key's name: 1-63 letters, digits, '_', '.' or '-'")],
    role: Annotated[str, typer.Option("--role", help="|".join(ROLES))],
    collection: Annotated[list[str] | None, typer.Option(
        "--collection", help="a collection it may use (repeat it); none: every collection")] = None,
    expires_days: Annotated[float | None, typer.Option(
        "--expires-days", help="days until it expires; none: never")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="requests per second; none: the service default")] = None,
    as_json: JsonOpt = False,
    index: IndexOpt = None,
) -> None:
    """Make a key and print its secret, once: it is stored only as a hash."""
    settings = load_settings(index=index)
    key, secret = KeyStore(settings.index_dir).create(
        name, role, collections=collection or None, expires_days=expires_days, rate=rate)
    if as_json:
        typer.echo(json.dumps({"name": key.name, "key": secret, "role": key.role,
                               "collections": None if key.collections is None else list(key.collections),
                               "expires_at": key.expires_at, "rate": key.rate}))
    else:
        typer.echo(f"made key {key.name}\n"
                   f"  role:        {key.role}\n"
                   f"  collections: {', '.join(key.collections) if key.collections else 'every collection'}\n"
                   f"  expires:     {_when(key.expires_at)}\n"
                   f"  rate:        {f'{key.rate:g}/s' if key.rate else 'the service default'}\n"
                   f"  secret:      {secret}\n"
                   "store it now: it is not shown again")
    _log_change(AuditLog(settings.index_dir), "keys.create", key.name)


@app.command("list")
@user_errors
def list_keys(as_json: JsonOpt = False, index: IndexOpt = None) -> None:
    """List the keys (never their secrets or hashes)."""
    keys = KeyStore(load_settings(index=index).index_dir).list()
    if as_json:
        typer.echo(json.dumps([{**k.as_dict(), "expired": k.expired()} for k in keys]))
        return
    if not keys:
        typer.echo("no keys (RAG_API_KEY alone, if set, guards the service)", err=True)
    for key in keys:
        typer.echo(_key_line(key))


def _key_line(key: Key) -> str:
    scope = ",".join(key.collections) if key.collections else "*"
    expiry = _when(key.expires_at) + (" (expired)" if key.expired() else "")
    rate = f"{key.rate:g}/s" if key.rate else "default"
    return f"{key.name:<24} {key.role:<6} {scope:<24} expires {expiry:<34} rate {rate:<10} made {_when(key.created_at)}"


@app.command("revoke")
@user_errors
def revoke(name: Annotated[str, typer.Argument(help="the key to remove")], index: IndexOpt = None) -> None:
    """Remove a key: a running server refuses it within a second."""
    settings = load_settings(index=index)
    KeyStore(settings.index_dir).revoke(name)
    typer.echo(f"revoked {name}")
    _log_change(AuditLog(settings.index_dir), "keys.revoke", name)


@user_errors
def audit(
    since: Annotated[str | None, typer.Option(
        help="from this time on: ISO-8601 (UTC unless it says otherwise), or ago: 30s, 30m, 1h, 2d, 1w")] = None,
    key: Annotated[str | None, typer.Option(help="only this key's events (cli: the key changes made here)")] = None,
    as_json: JsonOpt = False,
    index: IndexOpt = None,
) -> None:
    """Print the audit log, oldest first: who did what, on which collection, and how it went."""
    start = parse_since(since) if since is not None else None
    for event in AuditLog(load_settings(index=index).index_dir).read(since=start, key=key):
        typer.echo(json.dumps(event) if as_json else _event_line(event))


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2025-01-31`, `2025-01-31T12:00:00Z` (naive: UTC) or a time ago: `90s`, `30m`, `1h`, `2d`, `1w`."""
    if match := _RELATIVE.fullmatch(text.strip()):
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadQueryError(f"--since {text!r}: give an ISO-8601 time (2025-01-31T12:00Z) "
                            "or a time ago (30m, 1h, 2d)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# C0 and C1 controls and DEL: a value a client chose (a path parameter) must not start a
# new line or move the cursor on the reader's terminal
CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _shown(value: Any) -> str:
    return str(value).translate(CONTROLS)


def _event_line(event: dict[str, Any]) -> str:
    rest = {k: v for k, v in event.items() if k not in ("time", "key", "role", "action", "status")}
    extra = " ".join(f"{_shown(k)}={_shown(v)}" for k, v in rest.items())
    return (f"{_shown(event.get('time', '?')):<24} {_shown(event.get('key', '-')):<16} "
            f"{_shown(event.get('role', '-')):<6} {_shown(event.get('action', '-')):<20} "
            f"{_shown(event.get('status', '-')):<6} {extra}").rstrip()
