"""The states of writes the service tracks past their request, by (collection, doc_id):
`in_progress` (with the content's hash), then `completed` or `failed` with the reason.

A big document is answered 202 and written later on the writer thread (api.engine's
`write_later`); a vector store file is tracked while its write runs. The writer thread
records outcomes while the event loop starts, reads and forgets writes, so every change
takes one lock, and an outcome is recorded only if its write is still the one tracked:
a later write of the same document, queued behind it, speaks for the document.

Left out: keeping states across restarts (a write cut off by one is not acknowledged).
"""

import threading
from collections.abc import Iterator

Key = tuple[str, str]  # (collection, doc_id)
State = dict[str, str | None]  # status, error, content_hash


class WriteStates:
    def __init__(self) -> None:
        self._states: dict[Key, State] = {}
        self._lock = threading.Lock()

    def get(self, key: Key) -> State | None:
        with self._lock:
            found = self._states.get(key)
            return dict(found) if found is not None else None

    def items(self) -> Iterator[tuple[Key, State]]:
        """A snapshot, safe to iterate while writes go on."""
        with self._lock:
            snapshot = [(key, dict(state)) for key, state in self._states.items()]
        return iter(snapshot)

    def start(self, key: Key, content_hash: str | None = None) -> State:
        """Track a new write of the document (replacing what was tracked); its token for `finish`."""
        state: State = {"status": "in_progress", "error": None, "content_hash": content_hash}
        with self._lock:
            self._states[key] = state
        return state

    def finish(self, key: Key, started: State, outcome: State | None) -> None:
        """Record a write's outcome (None: forget it), unless another write of the document
        was started since."""
        with self._lock:
            if self._states.get(key) is started:
                if outcome is None:
                    del self._states[key]
                else:
                    self._states[key] = outcome

    def forget(self, key: Key) -> State | None:
        """Drop a finished write's state (a delete, or a later write that succeeded); one in
        progress is kept. The state dropped, if any."""
        with self._lock:
            state = self._states.get(key)
            if state is None or state["status"] == "in_progress":
                return None
            return self._states.pop(key)
