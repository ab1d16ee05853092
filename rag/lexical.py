"""The BM25 tokenizer, shared by every store so that lexical search means the same
everywhere: lowercase word characters, English stopwords removed, Snowball English
stemming (PyStemmer), the usual setting of the published BM25 baselines. The BM25
index itself is the store's (`rag.stores.local.bm25` locally, Milvus's BM25 function there).

Example:
    >>> tokenize("Russia's oil exports rose")
    ['russia', 'oil', 'export', 'rose']

Left out: phrase and field queries, and languages other than English.
"""

import re
from functools import lru_cache
from typing import Any

TOKEN = re.compile(r"\w+")
# the English stopword list the SciFact BM25 figures were measured with (from the BM25S project, MIT licence)
STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with"))
DEFAULT_K1 = 1.2
DEFAULT_B = 0.75


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=65536)
def term_set(text: str) -> frozenset[str]:
    """The distinct BM25 terms of a text, cached: sentences of hot passages are asked again
    and again (highlights, answer sentences), and stemming them costs ~15 us each."""
    return frozenset(tokenize(text))


def tokenize(text: str) -> list[str]:
    words = [w for w in TOKEN.findall(text.lower().replace("’", "'")) if w not in STOPWORDS]
    words = [w for w in words if not (len(w) == 1 and w.isalpha())]  # "s" of "Russia's"
    return list(_stemmer().stemWords(words))
