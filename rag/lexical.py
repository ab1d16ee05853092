"""BM25 over chunk texts, through bm25s (sparse matrices saved as .npy + JSON, no pickle).

Tokens: lowercase word characters, English stopwords removed, Snowball English stemming
(PyStemmer), the usual setting of the published BM25 baselines.

Example:
    >>> tokenize("Russia's oil exports rose")
    ['russia', 'oil', 'export', 'rose']

Left out: phrase and field queries, and languages other than English.
"""

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

TOKEN = re.compile(r"\w+")
STOPWORDS = frozenset(STOPWORDS_EN)
DEFAULT_K1 = 1.2
DEFAULT_B = 0.75


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    words = [w for w in TOKEN.findall(text.lower().replace("’", "'")) if w not in STOPWORDS]
    words = [w for w in words if not (len(w) == 1 and w.isalpha())]  # "s" of "Russia's"
    return list(_stemmer().stemWords(words))


class LexicalIndex:
    """BM25 scores for every chunk, in the order the chunks were indexed."""

    def __init__(self, bm25: bm25s.BM25, size: int):
        self._bm25 = bm25
        self.size = size

    @classmethod
    def build(cls, texts: list[str], k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> "LexicalIndex":
        bm25 = bm25s.BM25(k1=k1, b=b)
        # an empty token list breaks bm25s; a chunk of stopwords alone still needs a row
        bm25.index([tokenize(t) or ["\x00"] for t in texts], show_progress=False)
        return cls(bm25, len(texts))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for `query` (float32, zeros where no term matches)."""
        tokens = tokenize(query)
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def save(self, folder: Path) -> None:
        self._bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path, size: int) -> "LexicalIndex":
        bm25 = bm25s.BM25.load(str(folder), show_progress=False, verbosity=0)
        return cls(bm25, size)
