"""The model calls of the query path: one call for many texts, and a text the model rejects
failing alone (its request gets a 422; the others their vectors).

Left out: retrying a failed call (a model that fails once on valid text fails again).
"""

import logging
from dataclasses import dataclass

import numpy as np

from rag.encoders.base import Embedder
from rag.errors import BadQueryError

log = logging.getLogger("rag.engine")


@dataclass
class Embedded:
    vectors: np.ndarray  # (texts, dimension) float32, as the model gives them
    tokens: int  # model tokens read: each text's own, at most the model's max_tokens (it truncates)


def embedded(embedder: Embedder, texts: list[str], encoded: list[np.ndarray | Exception]) -> Embedded | Exception:
    """One embedding request's answer: its vectors and the tokens the model read, or the
    first error among its texts (a text the model rejects is named by its place in `input`)."""
    vectors: list[np.ndarray] = []
    for i, vector in enumerate(encoded):
        if isinstance(vector, BadQueryError):
            return BadQueryError(f"the embedding model cannot encode input[{i}] ({type(vector.__cause__).__name__})")
        if isinstance(vector, Exception):
            return vector
        vectors.append(vector)
    try:  # the model took the texts, so its tokenizer does too; a failure here fails this request alone
        tokens = sum(min(embedder.count_tokens(text), embedder.max_tokens) for text in texts)
    except Exception as exc:
        return rejected(exc)
    return Embedded(np.stack(vectors).astype(np.float32, copy=False), tokens)


INPUT_ERRORS = (TypeError, ValueError, UnicodeError)  # what tokenizers raise for text they cannot take


def encode_each(embedder: Embedder, questions: list[str]) -> list[np.ndarray | Exception]:
    """One model call for all; if it raises, one call per question, so that a question the
    model rejects fails alone and the others are answered. A rejection of the text itself
    (TypeError, ValueError, UnicodeError) is the question's fault: 422. Anything else (the
    runtime out of memory, a broken model) is the server's, and stays a 500."""
    try:
        return list(embedder.encode(questions))
    except Exception as exc:
        if len(questions) == 1:
            return [rejected(exc)]
    out: list[np.ndarray | Exception] = []
    for question in questions:
        try:
            out.append(embedder.encode([question])[0])
        except Exception as exc:
            out.append(rejected(exc))
    return out


def rejected(exc: Exception) -> Exception:
    if not isinstance(exc, INPUT_ERRORS):
        log.error("the model failed on a question: %r", exc)
        return exc
    log.warning("the model rejected a question: %r", exc)
    error = BadQueryError(f"the embedding model cannot encode this question ({type(exc).__name__})")
    error.__cause__ = exc
    return error
