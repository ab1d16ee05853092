"""Optional cross-encoder reranking (`RAG_RERANKER=<name or path>`), off by default:
no cross-encoder ships offline. A reranker scores (question, passage) pairs; the
retriever reorders its top `rerank_depth` candidates by that score.

Left out: batching reranker calls across concurrent requests.
"""

from collections.abc import Sequence

from rag.encoders.load import resolve_model_path
from rag.errors import ModelError


class CrossEncoderReranker:
    def __init__(self, name: str):
        from sentence_transformers import CrossEncoder

        try:
            self._model = CrossEncoder(resolve_model_path(name), device="cpu")
        except Exception as exc:  # OSError, ValueError, HF errors: all mean "cannot load"
            raise ModelError(f"cannot load reranker '{name}' offline ({type(exc).__name__}: {exc})") from exc
        self.name = name

    def score(self, question: str, texts: Sequence[str]) -> Sequence[float]:
        if not texts:
            return []
        return [float(s) for s in self._model.predict([(question, t) for t in texts], show_progress_bar=False)]


def load_reranker(name: str) -> CrossEncoderReranker:
    return CrossEncoderReranker(name)
