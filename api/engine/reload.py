"""Hot reload of the built corpus: a background task polls `index/CURRENT` (every
`reload_poll_seconds`) and, when it names a new build, loads it in a thread and swaps the
retriever reference. A request in flight keeps the retriever it started with, so nothing
fails mid-swap. `POST /admin/reload` does the same at once. A build that fails to load,
with any exception, is reported by /ready's `reload_error` while the previous one keeps
serving; it is not retried every poll unless the failure may pass (the build changed
while it was read, or reading it failed: EIO, EMFILE), and the watcher itself never dies.

Left out: watching with inotify (a poll works on every filesystem, network ones too).
"""

import asyncio
import errno
import logging
from collections.abc import Callable

from rag.errors import IndexBusyError, RagError, ReloadError, StorageError
from rag.search.retriever import Retriever
from rag.settings import Settings

log = logging.getLogger("rag.engine")


class LiveIndex:
    """The built corpus's retriever, kept current with the index folder."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.retriever: Retriever | None = None
        self.not_ready: str | None = "starting: loading the model"
        self.reload_error: str | None = None
        self._lock = asyncio.Lock()
        self._failed_build: str | None = None  # a build that failed to load for good: not retried by polls

    def _pointer(self) -> str | None:
        try:
            return (self.settings.index_dir / "CURRENT").read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    @property
    def served_build(self) -> str | None:
        return self.retriever.store.build_id if self.retriever is not None else None

    async def reload(self, load: Callable[[], Retriever], explicit: bool = False) -> bool:
        """Load the live build with `load` if it differs from the one served. True if
        swapped. With `explicit`, a build that fails to load raises ReloadError; otherwise
        the failure is recorded for /ready."""
        async with self._lock:
            pointer = self._pointer()
            if pointer is not None and pointer == self.served_build:
                return False
            loop = asyncio.get_running_loop()
            try:  # loading and preparing an index is CPU work: never on the event loop
                retriever = await loop.run_in_executor(None, load)
            except Exception as exc:  # any failure: keep serving, and say why
                transient = _may_pass(exc)
                message = str(exc) if isinstance(exc, RagError) else f"{type(exc).__name__}: {exc}"
                if not transient:
                    self._failed_build = pointer
                if self.retriever is None:
                    self.not_ready = message
                else:
                    self.reload_error = message
                log.warning("index not loaded: %s", message)
                if explicit:
                    serving = f"; still serving build {self.served_build}" if self.retriever else ""
                    raise ReloadError(f"the new build could not be loaded: {message}{serving}") from exc
                return False
            self.retriever = retriever
            self._failed_build = None
            self.not_ready = self.reload_error = None
            log.info("serving index build %s (%d chunks)", retriever.store.build_id, retriever.store.count())
            return True

    async def watch(self, load: Callable[[], Retriever]) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_poll_seconds)
            try:
                pointer = self._pointer()
                if pointer is not None and pointer not in (self.served_build, self._failed_build):
                    await self.reload(load)
            except Exception:  # the watcher must outlive anything a build can do to it
                log.exception("index watcher: reload failed")


PASSING_ERRNOS = {errno.EIO, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EINTR}


def _may_pass(exc: Exception) -> bool:
    """A load failure a later poll may not repeat: the build moved while it was read, or
    reading it hit EIO or ran out of file handles. Permission denied does not pass."""
    if isinstance(exc, IndexBusyError):
        return True
    cause = exc if isinstance(exc, OSError) else exc.__cause__ if isinstance(exc, StorageError) else None
    return isinstance(cause, OSError) and cause.errno in PASSING_ERRNOS
