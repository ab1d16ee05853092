"""Types shared by retrieval, the stores, evaluation, the CLI and the service: the
retrieval modes, filters, a ranked hit, and per-step timings. They live here, not in the
retriever, so that a module needing one does not import retrieval.

Left out: the response models (`rag.schema`), which are the wire format.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")


@dataclass(frozen=True)
class Filters:
    doc_ids: Sequence[str] | None = None
    sources: Sequence[str] | None = None
    sections: Sequence[str] | None = None


@dataclass(frozen=True)
class Hit:
    row: int  # chunk row in the index
    score: float  # what the result is ranked by
    components: dict[str, float] = field(default_factory=dict)  # dense, lexical, fused, rerank


class Laps:
    """Milliseconds per named step: each `lap(name)` adds the time since the previous lap."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._last) * 1000
        self._last = now
