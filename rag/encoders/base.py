"""What every encoder is (`Embedder`, a small protocol, so tests can swap in a fake model
and the service can swap backends without knowing), and when encoders show progress.

Vectors are float32 and L2-normalised, so inner product is cosine similarity.

Left out: GPU selection and query/document prompts (`prompt_name`).
"""

import sys
from collections.abc import Sequence
from typing import Protocol

import numpy as np

# Long builds show a progress bar; a handful of texts (a query) never does.
PROGRESS_BAR_MIN_TEXTS = 256


def shows_progress(texts: int) -> bool:
    """A progress bar for this many texts: only when there are many, and only on a terminal
    (redirected, a build's log held 140 KB of bar redraws, and a server's log had them
    between its JSON lines)."""
    return texts >= PROGRESS_BAR_MIN_TEXTS and sys.stderr.isatty()


class Embedder(Protocol):
    name: str  # as recorded in the index manifest
    dimension: int
    max_tokens: int  # max sequence length, special tokens included

    def count_tokens(self, text: str) -> int: ...

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


# vectors of one family are interchangeable (cosine >= 0.9999, `rag bench backends`);
# an index built with one family refuses queries encoded by another
VECTOR_FAMILY = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8"}
