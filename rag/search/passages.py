"""Passages from ranked chunks, so that no response says a sentence twice.

Neighbouring chunks of a document share ~40 tokens (whole sentences), so the top five
chunks used to repeat about one sentence per question. Chunks of the same document whose
spans overlap or touch are merged into one passage with one span: the union, whose text
is still exactly `document[char_start:char_end]` (chunks are exact slices, so the union of
overlapping ones is too). A merged passage keeps the rank, score and chunk id of its best
chunk and lists all of them in `chunk_ids`. Merging goes on down the ranking until `k`
passages are formed (or the candidates run out), so k passages come back where the corpus
has them. `max_per_doc` counts passages, not chunks.

Example: chunks (0, 100) ranked 1st and (60, 180) ranked 3rd of one document become one
passage (0, 180) at rank 1; the chunk ranked 2nd becomes passage 2.

Left out: merging chunks with text between them (a gap means different sentences).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rag.records import ChunkRecord
from rag.types import Hit


@dataclass
class Group:
    hit: Hit  # the best chunk's
    doc_id: str
    char_start: int
    char_end: int
    rows: list[int] = field(default_factory=list)  # its chunks, best first


def group_hits(hits: Iterable[Hit], chunks: Sequence[ChunkRecord], k: int,
               max_per_doc: int | None = None) -> list[Group]:
    """The first k passages of a ranking of chunks, overlapping chunks merged."""
    groups: list[Group] = []
    for hit in hits:
        chunk = chunks[hit.row]
        joined = [g for g in groups if g.doc_id == chunk.doc_id
                  and chunk.char_start <= g.char_end and g.char_start <= chunk.char_end]
        if joined:
            first = joined[0]  # the best-ranked of the groups it joins: they become one
            first.rows.append(hit.row)
            for other in joined[1:]:
                first.rows += other.rows
                groups.remove(other)
            first.char_start = min([chunk.char_start, *(g.char_start for g in joined)])
            first.char_end = max([chunk.char_end, *(g.char_end for g in joined)])
            continue
        if len(groups) == k:
            break  # a chunk that would join no passage: the k passages are formed
        if max_per_doc is not None and sum(g.doc_id == chunk.doc_id for g in groups) >= max_per_doc:
            continue
        groups.append(Group(hit, chunk.doc_id, chunk.char_start, chunk.char_end, [hit.row]))
    return groups


def group_text(group: Group, chunks: Sequence[ChunkRecord]) -> str:
    """document[group.char_start:group.char_end], from its chunks' texts."""
    parts, at = [], group.char_start
    for chunk in sorted((chunks[r] for r in group.rows), key=lambda c: c.char_start):
        if chunk.char_end > at:
            parts.append(chunk.text[at - chunk.char_start:])
            at = chunk.char_end
    return "".join(parts)
