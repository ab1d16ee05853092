"""How a live collection lies in Milvus (rag.stores.milvus.live reads and writes it).

Each collection is five Milvus collections `<prefix>_live_<tag>_<kind>` (the tag is made
at creation and kept in the collection's manifest.json, so a collection deleted and made
again under its name is another one):
- chunks, sentences, parts: as a build's (rag.stores.milvus.store); every write of a document
  is a new version `gen`, and its rows' keys are `gen << KEY_BITS | i` (i: the row's
  place in the version), so a version's rows are found by key, never by a filter (a
  filter scans every row in Milvus Lite: ~150 ms at 100k chunks, a key read ~1 ms);
  a chunk also records the range of its version's sentences that it overlaps;
- documents: one row per document, its pointer: doc_id (key), the live gen, the
  version's row counts, origin, source, order; the row with doc_id "" holds a stamp
  (63 random bits) every write changes;
- pending: one row per write in flight, the intent log of recovery and of the claims on
  gens: its key (63 random bits, in the field named `gen`), doc_id, and the versions it
  touches (the new one and the live one, as JSON).

A generation number `gen` is seconds since 2025 and 12 random bits, above every one its
process drew: KEY_BITS + 44 bits, so keys stay under 2**63 (until 2161). Two writers may
draw the same candidate (same second: odds 1 in 4096); the claim (rag.stores.milvus.claims)
lets one of them keep it, so no two versions whose rows are stored share a gen, whatever
the number of processes.

Left out: schema migrations (a collection keeps the layout it was made with).
"""

import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np

from rag.records import ChunkRecord, SentenceRecord
from rag.stores.milvus.client import (
    PLACEHOLDER_INDEX,
    Field,
    build_layouts,
    connect,
    create_indexed,
    drop,
    index_choice,
    milvus_errors,
    public_uri,
)

KINDS = ("chunks", "documents", "parts", "sentences", "pending")
EPOCH = 1_735_689_600  # 2025-01-01T00:00:00Z, in seconds
KEY_BITS = 19  # rows of one kind in one version: up to 524,288 (a 32 MiB text has ~330k sentences)
STAMP = ""  # the documents row whose gen every write changes (no document has an empty id)
FILTERED = ("doc_id", "source", "section", "chunk_id", "embed_hash")  # chunk fields filters name: indexed


@dataclass(frozen=True)
class Pointer:
    """A document's live version."""
    gen: int
    chunks: int
    sentences: int
    parts: int  # pieces of the document's JSON text
    origin: str
    source: str
    order: int  # nanoseconds of the write: documents list in the order they were last written
    content_hash: str

    def keys(self, kind: str) -> list[int]:
        return keys(self.gen, {"chunks": self.chunks, "sentences": self.sentences, "parts": self.parts}[kind])


POINTER_FIELDS = tuple(f.name for f in dataclass_fields(Pointer))


def keys(gen: int, count: int, first: int = 0) -> list[int]:
    return [gen << KEY_BITS | i for i in range(first, first + count)]


def names(prefix: str, tag: str) -> dict[str, str]:
    return {kind: f"{prefix}_live_{tag}_{kind}" for kind in KINDS}


def create_collection(uri: str, prefix: str, tag: str, dimension: int, token: str | None = None) -> dict[str, Any]:
    """Make the Milvus collections of a new live collection; returns what its manifest
    records of them."""
    index = index_choice(uri)
    client = connect(uri, prefix, token, 10.0)
    made = names(prefix, tag)
    number: Field = ("INT64", {})
    short: Field = ("VARCHAR", {"max_length": 4_096})
    placeholder: Field = ("FLOAT_VECTOR", {"dim": 2})
    try:
        with milvus_errors("create a collection in", public_uri(uri)):
            layouts = build_layouts(dimension, index["dense"], index["analyzer"])
            extra = {"chunks": {"gen": number, "sentence_lo": number, "sentence_hi": number},
                     "parts": {"gen": number}, "sentences": {"gen": number}}
            for kind, added in extra.items():
                fields, indexes, functions = layouts[kind]
                if kind == "chunks":  # searches filter on these: an index spares a scan of every row
                    indexes = {**indexes, **{f: {"index_type": "INVERTED"} for f in FILTERED}}
                create_indexed(client, made[kind], {**fields, **added}, indexes, functions)
            pointer = {f: short if f in ("origin", "source", "content_hash") else number for f in POINTER_FIELDS}
            document_key: Field = ("VARCHAR", {"is_primary": True, "max_length": 4_096})
            create_indexed(client, made["documents"], {"doc_id": document_key, **pointer, "_": placeholder},
                           PLACEHOLDER_INDEX)
            create_indexed(client, made["pending"], {"gen": ("INT64", {"is_primary": True}), "doc_id": short,
                                                     "at": number, "versions": ("VARCHAR", {"max_length": 65_535}),
                                                     "_": placeholder}, PLACEHOLDER_INDEX)
    except BaseException:
        drop(client, made.values())
        raise
    finally:
        client.close()
    return {"backend": "milvus", "uri": public_uri(uri), "prefix": prefix, "tag": tag, "index": index}


def drop_collection(uri: str, prefix: str, tag: str, token: str | None = None) -> None:
    """Best effort: what stays behind costs space, not correctness."""
    client = connect(uri, prefix, token, 10.0)
    try:
        drop(client, names(prefix, tag).values())
    finally:
        client.close()


def new_tag() -> str:
    """A new collection's tag: 12 hex digits, its creation time (8, seconds) then 4 random,
    so a sweep can tell a collection being made from one a crash left."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{random.getrandbits(16):04x}"


def sweep_unregistered(uri: str, prefix: str, registered: set[str], token: str | None = None,
                       older_than_s: float = 600.0) -> list[str]:
    """Drop the Milvus collections of live collections no manifest names (a crash between
    making them and registering the name, or between unregistering and dropping), if made
    more than `older_than_s` ago: a replica's create in progress is younger. The tags dropped."""
    pattern = re.compile(rf"^{re.escape(prefix)}_live_([0-9a-f]{{12}})_(?:{'|'.join(KINDS)})$")
    client = connect(uri, prefix, token, 10.0)
    try:
        tags = {m.group(1) for name in client.list_collections() if (m := pattern.fullmatch(name))}
        stale = sorted(t for t in tags - registered if time.time() - _made_at(t) > older_than_s)
        for tag in stale:
            drop(client, names(prefix, tag).values())
        return stale
    finally:
        client.close()


def _made_at(tag: str) -> float:
    """When a tag's collection was made (new_tag); 0 for a tag of the older, random kind."""
    made = int(tag[:8], 16)
    return float(made) if EPOCH <= made <= time.time() + 86_400 else 0.0


def next_gen(last: int) -> int:
    """A version number above `last` (this process's previous one)."""
    drawn = max(int(time.time()) - EPOCH, 0) << 12 | random.getrandbits(12)
    return max(drawn, last + 1)


def sentence_ranges(chunks: Sequence[ChunkRecord], sentences: Sequence[SentenceRecord]) -> list[tuple[int, int]]:
    """For each chunk, the indexes [lo, hi) of the sentences it overlaps (sentences in
    document order: a chunk overlaps a run of them; (0, 0) for none)."""
    starts = np.array([s.char_start for s in sentences], dtype=np.int64)
    ends = np.array([s.char_end for s in sentences], dtype=np.int64)
    out = []
    for chunk in chunks:
        hits = np.flatnonzero((starts < chunk.char_end) & (ends > chunk.char_start))
        out.append((int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, 0))
    return out
