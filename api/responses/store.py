"""Stored responses (`store`, true by default as in OpenAI's API): one JSON file per response,
`<index_dir>/responses/<id>.json`, written atomically and durably (rag.files.replace_text),
so that every process serving the index folder finds it, and a restart keeps it.

A record holds the Response object as made (file search results included, shown only when
asked for), the key that made it (`owner`: it and admins may read or delete it; anyone
else gets the 404 of a missing one), and the conversation's user turns, oldest first, this
response's question last: what `previous_response_id` searches a follow-up with.

Bounded: a response expires after MAX_AGE_DAYS (30, as OpenAI keeps them), and only the
newest MAX_STORED (2,000; a record is ~2-20 KB, results included) are kept. Pruning runs
on the first save of a process and then every PRUNE_EVERY saves, so the count may pass
MAX_STORED by that many for a while; an expired record is never served. A read-only
service (RAG_READ_ONLY, whose index folder may be read-only) keeps them in memory, the
same bounds applied, until it stops.

Left out: listing stored responses (OpenAI has no such call) and their input items
(`GET /v1/responses/{id}/input_items`).
"""

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from pathlib import Path
from typing import Any

from rag.access.gate import Principal
from rag.errors import NotFoundError, StorageError
from rag.files import fsync_path, replace_text
from rag.settings import Settings

log = logging.getLogger("rag.responses")
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
MAX_STORED = 2000
MAX_AGE_DAYS = 30
PRUNE_EVERY = 50
DEBRIS_SECONDS = 3600  # a temporary file this old is what a crash left


class ResponseStore:
    def __init__(self, root: Path | None, max_stored: int = MAX_STORED, max_age_days: float = MAX_AGE_DAYS):
        """`root`: the folder; None keeps records in memory (a read-only service)."""
        self.root, self.max_stored, self.max_age = root, max_stored, max_age_days * 86400
        self.memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.lock = threading.Lock()
        self.saves = 0

    def save(self, record: dict[str, Any]) -> None:
        """`record`: {"response": {...}, "owner": the key's id, "turns": [...]}."""
        response_id = record["response"]["id"]
        record = {**record, "stored_at": time.time()}
        if self.root is None:
            with self.lock:
                self.memory[response_id] = record
                while len(self.memory) > self.max_stored:
                    self.memory.popitem(last=False)
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            replace_text(self.root / f"{response_id}.json", json.dumps(record, ensure_ascii=False))
        except OSError as exc:
            raise StorageError(f"cannot store response '{response_id}': {exc}") from exc
        with self.lock:
            self.saves += 1
            due = self.saves % PRUNE_EVERY == 1 or PRUNE_EVERY == 1
        if due:
            self.prune()

    def load(self, response_id: str, principal: Principal) -> dict[str, Any]:
        """The record, if `principal` may read it and it has not expired; else a 404."""
        missing = NotFoundError(f"no response with id '{response_id}'")
        if not RESPONSE_ID.fullmatch(response_id):
            raise missing
        if self.root is None:
            with self.lock:
                record = self.memory.get(response_id)
        else:
            try:
                record = json.loads((self.root / f"{response_id}.json").read_text(encoding="utf-8"))
            except FileNotFoundError:
                record = None
            except (OSError, ValueError) as exc:
                raise StorageError(f"cannot read response '{response_id}': {exc}") from exc
        if record is None or time.time() - record["stored_at"] > self.max_age:
            raise missing
        if not (principal.admin or record["owner"] == principal.id):
            raise missing
        return record

    def delete(self, response_id: str, principal: Principal) -> None:
        self.load(response_id, principal)
        if self.root is None:
            with self.lock:
                self.memory.pop(response_id, None)
            return
        try:
            (self.root / f"{response_id}.json").unlink()
            fsync_path(self.root)
        except FileNotFoundError:
            raise NotFoundError(f"no response with id '{response_id}'") from None
        except OSError as exc:
            raise StorageError(f"cannot delete response '{response_id}': {exc}") from exc

    def prune(self) -> None:
        """Expired records, all but the newest `max_stored`, and old crash debris: removed.
        Best effort (a failure is logged: the next prune tries again)."""
        if self.root is None:
            return
        now = time.time()
        try:
            kept: list[tuple[float, Path]] = []
            with os.scandir(self.root) as entries:
                for entry in entries:
                    age = now - entry.stat().st_mtime
                    if entry.name.startswith(".") and entry.name.endswith(".tmp") and age > DEBRIS_SECONDS:
                        with suppress(FileNotFoundError):
                            os.unlink(entry.path)
                    elif RESPONSE_ID.fullmatch(entry.name.removesuffix(".json")):
                        kept.append((entry.stat().st_mtime, Path(entry.path)))
            kept.sort(reverse=True)
            for n, (mtime, path) in enumerate(kept):
                if n >= self.max_stored or now - mtime > self.max_age:
                    with suppress(FileNotFoundError):
                        path.unlink()
        except OSError as exc:
            log.warning("pruning stored responses failed: %r", exc)


def response_store(state: Any, settings: Settings) -> ResponseStore:
    """The app's store, made on first use (`state`: the app's `state`)."""
    store: ResponseStore | None = getattr(state, "response_store", None)
    if store is None:
        store = ResponseStore(None if settings.read_only else settings.index_dir / "responses")
        state.response_store = store
    return store
