"""Passages from ranked chunks: grouped so that no response says a sentence twice
(`group_hits`), then assembled (`Passages`): the text, the citation with its PDF pages, the
highlighted sentences and the answer sentences.

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

Highlights mark the passage sentence(s) that best match the question: cosine similarity
plus `highlight_lexical_weight` times the share of the question's terms the sentence holds
(the weight's measurement: docs/benchmarks.md).

Left out: merging chunks with text between them (a gap means different sentences).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from rag.lexical import term_set
from rag.records import ChunkRecord, page_span
from rag.schema import AnswerSentence, Citation, Passage, Span
from rag.search import answer as answers
from rag.stores.base import ChunkStore
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


Sentences = tuple[list[tuple[int, int]], list[str], list[np.ndarray]]  # a passage's: spans, texts, vectors
HIGHLIGHT_NEAR = 0.9  # a second sentence is highlighted too if it scores >= 90% of the best


class Passages:
    """A store's passages: citations (with PDF pages), sentences, highlights and answer
    sentences for the groups a ranking became."""

    def __init__(self, store: ChunkStore, highlight_lexical_weight: float = 0.3):
        self.store = store
        self.highlight_lexical_weight = highlight_lexical_weight
        # citations read a document's metadata, not its text: keep the recent ones, per store
        # version (a live collection bumps it on every write, so a replaced title never shows)
        # (the cached function holds the store, not self: no reference cycle, so a dropped
        # retriever frees its store at once, not at the next full GC)
        self._metadata = lru_cache(maxsize=4096)(lambda doc_id, version: store.documents[doc_id].metadata)

    def passage(self, rank: int, group: Group, sentences: Sentences, query_vector: np.ndarray,
                terms: set[str]) -> Passage:
        """A passage: one chunk, or overlapping chunks of a document merged (rag.search.passages)."""
        chunk = self.store.chunks[group.hit.row]
        citation = self.paged(self.citation(group.hit.row).model_copy(
            update={"char_start": group.char_start, "char_end": group.char_end}))
        return Passage(rank=rank, chunk_id=chunk.chunk_id, text=group_text(group, self.store.chunks),
                       score=round(group.hit.score, 6),
                       scores={k: round(v, 6) for k, v in group.hit.components.items()},
                       highlights=self.highlights(sentences, query_vector, terms), citation=citation,
                       chunk_ids=[self.store.chunks[r].chunk_id for r in group.rows])

    def sentences(self, group: Group) -> Sentences:
        """The sentences of a passage's chunks, each once, in reading order: spans, texts, vectors."""
        found: dict[tuple[int, int], tuple[str, np.ndarray]] = {}
        for row in group.rows:
            chunk = self.store.chunks[row]
            spans, vectors = self.store.sentences(row)
            for (a, b), vector in zip(spans, vectors):
                found.setdefault((a, b), (chunk.text[a - chunk.char_start:b - chunk.char_start], vector))
        spans = sorted(found)
        return spans, [found[s][0] for s in spans], [found[s][1] for s in spans]

    def highlights(self, sentences: Sentences, query_vector: np.ndarray, terms: set[str]) -> list[Span]:
        """The sentence of a passage that best matches the question (`terms`: its BM25
        tokens), and a second one if it scores nearly as well; document offsets, best first."""
        spans, texts, vectors = sentences
        if not spans:
            return []
        scores = np.stack(vectors) @ query_vector
        if terms and self.highlight_lexical_weight:
            shares = [len(terms & term_set(text)) / len(terms) for text in texts]
            scores = scores + self.highlight_lexical_weight * np.asarray(shares)
        order = np.argsort(-scores)
        chosen = [order[0]] + [i for i in order[1:2] if scores[i] >= HIGHLIGHT_NEAR * scores[order[0]] > 0]
        return [Span(char_start=spans[i][0], char_end=spans[i][1], score=round(float(scores[i]), 4))
                for i in chosen]

    def answer(self, question: str, query_vector: np.ndarray, groups: list[Group],
               sentences: list[Sentences]) -> list[AnswerSentence]:
        """The sentences of the top passages that answer the question, best first (rag.search.answer)."""
        return [AnswerSentence(text=c.text, passage=c.rank, doc_id=c.doc_id, char_start=c.char_start,
                               char_end=c.char_end, score=c.score)
                for c in answers.choose(question, query_vector, candidates(groups, sentences))]

    def citation(self, row: int) -> Citation:
        chunk = self.store.chunks[row]
        meta = self._metadata(chunk.doc_id, getattr(self.store, "version", 0))
        # a reader may follow citation.url: only an http(s) one is kept (javascript:, file:, data: are
        # null), here rather than at ingest, so that indexes built before the rule comply too
        url = meta.get("url")
        url = url if isinstance(url, str) and url[:8].lower().startswith(("http://", "https://")) else None
        return self.paged(Citation(
            doc_id=chunk.doc_id, title=str(meta["title"]), source=str(meta["source"]),
            url=url, section=chunk.section, char_start=chunk.char_start, char_end=chunk.char_end,
        ))

    def paged(self, citation: Citation) -> Citation:
        """With the pages it is on, for a document that has pages (a PDF)."""
        pages = self._metadata(citation.doc_id, getattr(self.store, "version", 0)).get("pages")
        if not pages:
            return citation
        first, last = page_span([tuple(p) for p in pages], citation.char_start, citation.char_end)
        return citation.model_copy(update={"page_start": first, "page_end": last})



def candidates(groups: list[Group], sentences: list[Sentences]) -> list[answers.Candidate]:
    """The sentences of the top ANSWER_PASSAGES passages, each with its passage's rank."""
    return [answers.Candidate(rank, group.doc_id, a, b, text, vector)
            for rank, (group, (spans, texts, vectors)) in enumerate(
                zip(groups[:answers.ANSWER_PASSAGES], sentences), start=1)
            for (a, b), text, vector in zip(spans, texts, vectors)]
