"""Types shared by retrieval, the stores, evaluation, the CLI and the service: the
retrieval modes, filters, a ranked hit, the fusion and abstention models, and per-step
timings. They live here, not in the retriever, so that a module needing one does not import retrieval.

Left out: the response models (`rag.schema`), which are the wire format.
"""

import math
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
    """Milliseconds per named step: each `lap(name)` adds the time since the previous lap (or
    since the Laps was made). One request's laps may be taken on several threads in turn (the
    route, then the model thread, then the route again): perf_counter is one clock per process."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str, now: float | None = None) -> None:
        """`now`: a perf_counter() reading taken earlier (one reading shared by a batch's requests)."""
        now = time.perf_counter() if now is None else now
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._last) * 1000
        self._last = now

    def server_timing(self) -> str:
        """The laps as a Server-Timing header value (W3C Server Timing): `dense-search;dur=0.123, ...`."""
        return ", ".join(f"{name.replace(' ', '-').replace(',', '')};dur={ms:.3f}" for name, ms in self.ms.items())


def lap(laps: Laps | None, name: str, now: float | None = None) -> None:
    """`laps.lap(name, now)`, where a caller collects laps (most do not)."""
    if laps is not None:
        laps.lap(name, now)


@dataclass(frozen=True)
class Abstention:
    """confidence = 1 / (1 + exp(-(slope * best_cosine + missing_weight * missing
    + answer_weight * (answer - answer_center) + offset))), `missing` the share of the
    question's years, numbers and quoted terms that the returned passages never mention
    (rag.search.answer.missing_share), `answer` the score of the answer's lead sentence
    (rag.search.answer.choose: how well some sentence answers it; no sentences, no evidence: 0)."""

    slope: float = 14.457  # fitted on the seed questions for the default model (rag eval --calibrate)
    offset: float = -5.005
    missing_weight: float = -5.863
    answer_weight: float = 1.164
    answer_center: float = 1.608

    def confidence(self, best_cosine: float, missing: float = 0.0, answer: float | None = None) -> float:
        evidence = answer - self.answer_center if answer is not None else 0.0
        z = self.slope * best_cosine + self.missing_weight * missing + self.answer_weight * evidence + self.offset
        return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))


Method = Literal["rrf", "convex"]


@dataclass(frozen=True)
class Fusion:
    method: Method = "rrf"
    rrf_k: int = 60  # damps the weight of top ranks
    alpha: float = 0.5  # weight of the dense ranking in convex fusion
    depth: int = 1000  # each ranking's top that takes part (the retriever asks the store for it)

    @property
    def name(self) -> str:
        return f"rrf{self.rrf_k}" if self.method == "rrf" else f"convex{self.alpha:g}"

    @classmethod
    def parse(cls, name: str, depth: int = 1000) -> "Fusion":
        """Fusion.parse("rrf60"), Fusion.parse("convex0.7")"""
        for method in ("rrf", "convex"):
            if name.startswith(method):
                number = name.removeprefix(method)
                try:
                    if method == "rrf":
                        return cls("rrf", rrf_k=int(number), depth=depth)
                    alpha = float(number)
                    if 0 <= alpha <= 1:
                        return cls("convex", alpha=alpha, depth=depth)
                except ValueError:
                    pass
        raise ValueError(f"unknown fusion '{name}': use rrf<k> (e.g. rrf60) or convex<alpha> (e.g. convex0.5)")


# chosen by `rag eval --sweep` on the seed set and SciFact together: best nDCG@10 on both
# (docs/benchmarks.md#retrieval-by-mode-seed-set-and-scifact)
DEFAULT_FUSION = Fusion("convex", alpha=0.7, depth=1000)
