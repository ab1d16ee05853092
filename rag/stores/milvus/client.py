"""Milvus plumbing shared by builds (rag.stores.milvus.store) and live collections
(rag.stores.milvus.live): connecting (Milvus Lite from a file path, a server from a URI),
errors as one line, collection layouts and indexes, filter expressions and string
literals, search hits as rankings with the local store's scores.

Milvus Lite (a URI ending in .db) differs, and this module handles it: no whitespace
analyzer (its `standard` one, `\\w+` lowercased, splits our tokens alike), BM25 given as
a negative distance, index tuning read only from a nested "params" JSON, no filter
templates, and one process per file.

Left out: collection tuning (shards, partitions, mmap) and TLS options beyond the URI.
"""

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from rag.errors import IndexBusyError, SettingsError, StorageError
from rag.lexical import DEFAULT_B, DEFAULT_K1, tokenize
from rag.records import ChunkRecord
from rag.stores.base import Ranking
from rag.types import Filters

TOP_K = 16_384  # Milvus's cap on a search's limit
BATCH = 1_000  # rows per insert or get: a few MB, under Milvus's 64 MB gRPC messages
PART_CHARS = 16_000  # at most 64,000 UTF-8 bytes, under VARCHAR's 65,535
CACHE_ROWS = 4_096  # chunks a reader keeps: every chunk of a small corpus, the hot ones of a big one
PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
FILTER_COLUMNS = {"doc_ids": "doc_id", "sources": "source", "sections": "section"}
CHUNK_COLUMNS = ["chunk_id", "doc_id", "section", "char_start", "char_end", "text", "n_tokens", "n_model_tokens",
                 "embed_hash"]
BM25 = {"bm25_k1": DEFAULT_K1, "bm25_b": DEFAULT_B}  # the local store's
NO_VECTOR = [0.0, 0.0]
Field = tuple[str, dict[str, Any]]  # a DataType name and add_field's parameters


class Searches:
    """Dense and BM25 searches of a chunks collection, as rankings (`_search` does the call)."""

    remote = True  # each search waits on the engine: hybrid runs its two at once (rag.search.sides)

    def dense(self, vector: np.ndarray, depth: int, filters: Filters) -> Ranking:
        return self._search("vector", np.asarray(vector, dtype=np.float32).tolist(), "IP", depth, filters)

    def lexical(self, text: str, depth: int, filters: Filters) -> Ranking:
        terms = " ".join(tokenize(text))
        return self._search("sparse", terms, "BM25", depth, filters) if terms else sorted_ranking([])

    def _search(self, field: str, query: Any, metric: str, depth: int, filters: Filters) -> Ranking:
        raise NotImplementedError


def drop(client: Any, names: Iterable[str]) -> None:
    """Best effort: a collection that stays behind costs space, not correctness."""
    for name in names:
        with suppress(Exception):
            if client.has_collection(name):
                client.drop_collection(name)


def index_choice(uri: str) -> dict[str, Any]:
    """The indexes of a build or collection at `uri` (recorded in its manifest)."""
    lite = is_lite(uri)  # FLAT is exact; on a cluster AUTOINDEX (HNSW there) is the fast near-exact choice
    return {"dense": "FLAT" if lite else "AUTOINDEX", "metric": "IP", "lexical": "BM25", "k1": DEFAULT_K1,
            "b": DEFAULT_B, "analyzer": "standard" if lite else "whitespace"}


PLACEHOLDER_INDEX = {"_": {"index_type": "FLAT", "metric_type": "L2"}}


def build_layouts(dimension: int, dense: str, analyzer: str
                  ) -> dict[str, tuple[dict[str, Field], dict[str, Any], list]]:
    """Fields, indexes and functions of each collection of a build."""
    from pymilvus import Function, FunctionType

    key: Field = ("INT64", {"is_primary": True})
    number: Field = ("INT64", {})
    vector: Field = ("FLOAT_VECTOR", {"dim": dimension})
    text: Field = ("VARCHAR", {"max_length": 65_535})
    short: Field = ("VARCHAR", {"max_length": 4_096})
    placeholder: Field = ("FLOAT_VECTOR", {"dim": 2})
    vector_index = {"vector": {"index_type": dense, "metric_type": "IP"}}
    chunks = {"row": key, **dict.fromkeys(["chunk_id", "doc_id", "source", "section", "embed_hash"], short),
              **dict.fromkeys(["char_start", "char_end", "n_tokens", "n_model_tokens"], number), "text": text,
              "vector": vector, "sparse": ("SPARSE_FLOAT_VECTOR", {}),
              "lexical": ("VARCHAR", {"max_length": 65_535, "enable_analyzer": True,
                                      "analyzer_params": {"tokenizer": analyzer}})}
    # Milvus reads k1 and b as flat index params, Milvus Lite only from a nested "params" JSON: both given
    bm25_index = {"sparse": {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25",
                             "params": {**BM25, "params": BM25}}}
    bm25 = Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["lexical"],
                    output_field_names=["sparse"])
    documents = {"doc_id": ("VARCHAR", {"is_primary": True, "max_length": 4_096}), "ordinal": number,
                 "content_hash": short, "parts": number, "_": placeholder}
    parts = {"id": key, "doc_id": short, "part": number, "text": text, "_": placeholder}
    sentences = {"row": key, "doc_id": short, "char_start": number, "char_end": number, "text_hash": short,
                 "vector": vector}
    return {"chunks": (chunks, {**vector_index, **bm25_index}, [bm25]),
            "documents": (documents, PLACEHOLDER_INDEX, []), "parts": (parts, PLACEHOLDER_INDEX, []),
            "sentences": (sentences, vector_index, [])}


def create_indexed(client: Any, name: str, fields: dict[str, Field], indexes: dict[str, Any],
                   functions: Sequence[Any] = ()) -> None:
    """A collection with its indexes, loaded."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    for field, (kind, params) in fields.items():
        schema.add_field(field, getattr(DataType, kind), **params)
    for function in functions:
        schema.add_function(function)
    index_params = client.prepare_index_params()
    for field, params in indexes.items():
        index_params.add_index(field, **params)
    client.create_collection(name, schema=schema, consistency_level="Strong")
    # sync=False: else pymilvus polls each index of the empty collection every 0.5 s (and asks Milvus Lite for a
    # timestamp it cannot give, logging errors); loading waits for the indexes anyway
    client.create_index(name, index_params, sync=False)
    client.load_collection(name)


def connect(uri: str, prefix: str, token: str | None, timeout: float) -> Any:
    if not PREFIX.fullmatch(prefix):
        raise SettingsError(f"milvus collection prefix {prefix!r}: use a letter, then letters, digits or _")
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise StorageError("the milvus store needs pymilvus: pip install '.[milvus]'") from exc
    # pymilvus (and Milvus Lite) log every failed call with a traceback; the user gets one line instead
    for name in ("pymilvus", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if is_lite(uri) and not _lite_started(uri):
        raise StorageError(f"cannot open Milvus Lite at {uri}: another process has it open (a Milvus Lite "
                           "file serves one process: stop it, or use a Milvus server), or it is no Milvus Lite data")
    with milvus_errors("connect to", public_uri(uri)):
        return MilvusClient(uri=uri, token=token or "", timeout=timeout)


def _lite_started(uri: str) -> bool:
    """Whether this process could start (or already runs) Milvus Lite's server for `uri`:
    it cannot while another process holds the file. pymilvus would start it the same way,
    but then fail with only "Open local milvus failed"."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # another Milvus Lite: let pymilvus say what fails
        return True
    return server_manager_instance.start_and_get_uri(uri) is not None


def release_lite(uri: str) -> None:
    """Stop this process's Milvus Lite server of `uri`, if it runs one: its memory goes, and
    another process may open the file."""
    if not is_lite(uri):
        return
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # no Milvus Lite installed: none runs
        return
    server_manager_instance.release_server(uri)


@contextmanager
def milvus_errors(doing: str, where: str, is_live: Callable[[], bool] | None = None) -> Iterator[None]:
    """A Milvus error as one line, `cannot connect to Milvus at http://host:19530: ...`; for
    a reader whose build is no longer live (a newer one went live, and this one may be
    gone), IndexBusyError: open the store again."""
    from pymilvus import MilvusException

    try:
        yield
    except MilvusException as exc:
        live = True
        if is_live is not None:
            with suppress(MilvusException):
                live = is_live()
        if not live:
            raise IndexBusyError(f"index in Milvus at {where} changed while it was being read ({_reason(exc)}): "
                                 "retry") from exc
        raise StorageError(f"cannot {doing} Milvus at {where}: {_reason(exc)}") from exc


def filter_expression(filters: Filters) -> str | None:
    """The filters as a Milvus expression ("" for none); None when they allow nothing."""
    terms = []
    for name, column in FILTER_COLUMNS.items():
        values = getattr(filters, name)
        if values is not None and not values:
            return None
        if values is not None:
            terms.append(f"{column} in [{', '.join(map(quote, values))}]")
    return " and ".join(terms)


def quote(value: str) -> str:
    """A string literal of a Milvus expression. These escapes are all Milvus Lite reads (no
    \\uXXXX, so no json.dumps), and Milvus reads them alike."""
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        value = value.replace(raw, escaped)
    return f'"{value}"'


def clipped(chunk: ChunkRecord, found: list[dict[str, Any]], dimension: int
            ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Sentence rows of a chunk (in reading order) as spans clipped to it, and their vectors."""
    spans = [(max(s["char_start"], chunk.char_start), min(s["char_end"], chunk.char_end)) for s in found]
    return spans, np.array([s["vector"] for s in found], dtype=np.float32).reshape(len(found), dimension)


def scored_ranking(hits: Iterable[Any], metric: str) -> Ranking:
    """A search's hits as a ranking with the local store's scores."""
    if metric == "IP":
        return sorted_ranking([(int(h.id), h.distance) for h in hits])
    # Milvus gives the BM25 score, Milvus Lite its negative; no query term, no hit. Both keep Lucene's
    # classic (k1 + 1) factor, which the local store (like Lucene 8+) drops: divided out, scores are equal
    return sorted_ranking([(int(h.id), abs(h.distance) / (1 + DEFAULT_K1)) for h in hits if h.distance])


def sorted_ranking(hits: list[tuple[int, float]]) -> Ranking:
    hits.sort(key=lambda h: (-h[1], h[0]))  # best first; ties: lower row first, as the local store
    return np.array([r for r, _ in hits], dtype=np.int64), np.array([s for _, s in hits], dtype=np.float32)


def in_batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def is_lite(uri: str) -> bool:
    return "://" not in uri and uri.endswith(".db")  # pymilvus runs Milvus Lite in-process for these


def public_uri(uri: str) -> str:
    """`uri` without its password: http://user:secret@host -> http://user@host."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=f"{parts.username or ''}@{parts.netloc.rpartition('@')[2]}".lstrip("@")).geturl()


def _reason(exc: Exception) -> str:
    return (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
