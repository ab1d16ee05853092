"""The torch backend: a sentence-transformers model, as its authors run it.

Loads from a folder (the bundled default, a path, or the local Hugging Face cache;
HF_HUB_OFFLINE=1 is forced before sentence-transformers is imported, so nothing is
downloaded). Importing this module imports nothing heavy; building an encoder imports
torch and sentence-transformers (~6 s, ~400 MB).

Left out: GPU selection (sentence-transformers picks CUDA itself when it is there) and
query/document prompts (`prompt_name`) for models that want them.
"""

import os
from collections.abc import Callable, Sequence

import numpy as np

from rag.encoders.base import shows_progress
from rag.errors import ModelError


class SentenceTransformerEmbedder:
    def __init__(self, name: str, model_path: str):
        os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the hub, even for a bad name
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import huggingface_hub.constants
        from sentence_transformers import SentenceTransformer

        huggingface_hub.constants.HF_HUB_OFFLINE = True  # in case the hub was imported before the variable was set

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
            convert_to_numpy=True, show_progress_bar=shows_progress(len(texts)),
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def model_only(self, texts: Sequence[str], batch_size: int) -> Callable[[], object]:
        """The model's own work on `texts`, to time against the build's path (`rag bench serve`)."""
        return lambda: self._model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                          show_progress_bar=False)


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()
