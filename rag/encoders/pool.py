"""The embedding models a process holds: the configured one, and any other a collection was
made with (a collection keeps its own model: `rag reembed` moves it to another, and until
it does, its queries and writes are embedded with the one its vectors came from).

A model is loaded on first use and kept: a collection on another model costs that model's
memory once, not per collection (`loaded` says which are held, for /ready).

Left out: unloading a model no collection uses any more (a restart does it).
"""

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.encoders.base import Embedder
from rag.encoders.load import load_embedder
from rag.settings import Settings

Loader = Callable[[str, str], Embedder]  # (model, backend) -> the model


class ModelPool:
    def __init__(self, settings: Settings, default: Embedder | None, load: Loader | None = None):
        self.settings, self.default = settings, default
        self._load = load or (lambda name, backend: load_embedder(name, backend, settings.cache_dir,
                                                                  settings.embed_threads))
        self._held: dict[tuple[str, str], Embedder] = {}
        self._memory: dict[tuple[str, str], float] = {}  # MB the process grew by when each was loaded
        self._lock = threading.Lock()

    def of(self, manifest: dict[str, Any]) -> Embedder:
        """The model a collection (its manifest) embeds with."""
        model = manifest["model"]
        return self.get(str(model["name"]), str(model.get("backend", self.settings.embed_backend)))

    def get(self, name: str, backend: str) -> Embedder:
        if (name, backend) == (self.settings.model, self.settings.embed_backend) and self.default is not None:
            return self.default
        with self._lock:  # one load per model, however many threads ask at once
            if (name, backend) not in self._held:
                before = rss_mb()
                self._held[(name, backend)] = self._load(name, backend)
                self._memory[(name, backend)] = round(rss_mb() - before, 1)
            return self._held[(name, backend)]

    def loaded(self) -> list[dict[str, Any]]:
        """The models held, the configured one (if loaded) first, each with the MB the process
        grew by when it was loaded (None for the configured one, loaded at start)."""
        held: list[tuple[str, str]] = [(self.settings.model, self.settings.embed_backend)] if self.default else []
        with self._lock:
            held += list(self._held)
            memory = dict(self._memory)
        return [{"model": name, "backend": backend, "loaded_mb": memory.get((name, backend))}
                for name, backend in held]


def rss_mb() -> float:
    """This process's resident memory, MB (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
