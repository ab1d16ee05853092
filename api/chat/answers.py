"""Answers for chat frontends, with their sources kept all the way to the screen.

- `turns_from(messages)`: the last user message is the question, the earlier user
  messages its history (a follow-up, "and in 2023?", is searched with them: rag.search.conversation).
- `extractive_answer(response, link)`: no language model needed. The answer sentences
  (`rag.search.answer`: the sentence that answers the question first), each followed by its
  passage's marker [n]; then a Markdown "Sources" list with title, section and a link to
  the passage on this service. When the retriever abstains (`answerable` false)
  the answer says so plainly and cites nothing. Document text quoted in it, like titles
  and sections, is Markdown-escaped (`plain`): a document cannot put a link or HTML on
  the reader's screen.
- `llm_messages(question, block)`: the prompt for an upstream OpenAI-compatible model,
  told to answer only from the numbered context and to cite [n].

Example answer:
    Trade between the countries reached an all-time high of $245 billion in 2024. [1]

    **Sources**
    [1] China and Russia: Exploring Ties ... — What are their economic ties? (http://127.0.0.1:8000/#cite=...)

Left out: abstractive answers without an upstream model, and condensing a follow-up with
the upstream model (rag.search.conversation's heuristic reads it with the earlier turns).
"""

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from rag.errors import BadQueryError
from rag.schema import Passage, QueryResponse
from rag.search.context import ContextBlock

NO_ANSWER = "I could not find an answer to that in the documents I have."
ANSWER_PASSAGES = 3  # passages whose highlighted sentences make the extractive answer
ANSWER_NEAR = 0.8  # a lower passage joins the answer if its best sentence scores 80% of the top one


Link = Callable[[str, int, int], str]  # (doc_id, char_start, char_end) -> URL of the passage


class ChatCitation(BaseModel):
    n: int
    chunk_id: str
    doc_id: str
    title: str
    section: str | None
    source: str
    char_start: int
    char_end: int
    url: str  # the passage on this service
    text: str


class ChatAnswer(BaseModel):
    text: str  # the whole answer, Sources list included
    citations: list[ChatCitation]


ROLES = ("system", "developer", "user", "assistant", "tool", "function")  # OpenAI's message roles


def turns_from(messages: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The question (the last user message) and the earlier user messages, oldest first.
    A message without one of OpenAI's roles is refused, naming where it is."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise BadQueryError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r:.80}")
    users = [_text(m.get("content"), i) for i, m in enumerate(messages) if m.get("role") == "user"]
    users = [u.strip() for u in users if u.strip()]
    return (users[-1], users[:-1]) if users else ("", [])


def message_texts(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The text of every message (what `usage.prompt_tokens` counts); unreadable content: none."""
    texts = []
    for i, m in enumerate(messages):
        try:
            texts.append(_text(m.get("content"), i))
        except BadQueryError:
            continue
    return texts


def _text(content: Any, at: int) -> str:
    """Message content is a string, null, or a list of parts of which the text ones count;
    anything else is refused, naming where it is."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadQueryError(f"messages[{at}].content must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadQueryError(f"messages[{at}].content[{j}] must be an object with a 'type'")
        if part.get("type") == "text":
            if not isinstance(part.get("text"), str):
                raise BadQueryError(f"messages[{at}].content[{j}].text must be a string")
            texts.append(part["text"])
    return " ".join(texts)


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def plain(text: str) -> str:
    """A title, section or quoted sentence as inert Markdown text: one line, special
    characters escaped, so a document titled '[x](javascript:...)' shows as text and never
    as a link or HTML."""
    line = " ".join(text.split())
    return MARKDOWN_SPECIAL.sub(r"\\\1", line)


def source_name(c: "ChatCitation") -> str:
    """'title — section', escaped: the Sources list and Open WebUI's source events use it."""
    return plain(c.title) + (f" — {plain(c.section)}" if c.section else "")


def source_names(citations: Sequence["ChatCitation"]) -> list[str]:
    """The names of Open WebUI's source events, in citation order: 'title — section', with
    no [n] (Open WebUI numbers its source list itself and maps [n] in the text to its n-th
    entry), and distinct, since it merges the sources of one name into one entry (which
    would shift every later number). Only names that clash get a suffix: the passage's
    character span, then its doc_id too (the same title and section in two documents);
    a name still taken gets '#2', '#3'.
    ['Ties — Trade', 'Ties — Trade'] -> ['Ties — Trade (characters 0–812)', 'Ties — Trade (characters 812–1630)']"""
    names = [source_name(c) for c in citations]
    for suffix in (lambda c: f"characters {c.char_start}–{c.char_end}",
                   lambda c: f"{c.doc_id}, characters {c.char_start}–{c.char_end}"):
        taken = Counter(names)
        names = [f"{source_name(c)} ({suffix(c)})" if taken[name] > 1 else name for name, c in zip(names, citations)]
    seen: Counter[str] = Counter()
    distinct = []
    for name in names:
        seen[name] += 1
        distinct.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return distinct


def cite(passages: Sequence[Passage], link: Link) -> list[ChatCitation]:
    return [ChatCitation(n=n, chunk_id=p.chunk_id, url=link(p.citation.doc_id, p.citation.char_start,
                                                            p.citation.char_end),
                         text=p.text, **p.citation.model_dump(exclude={"url"}))
            for n, p in enumerate(passages, start=1)]


def sources_markdown(citations: Sequence[ChatCitation]) -> str:
    lines = [f"[{c.n}] {source_name(c)} ({c.url})" for c in citations]
    return "\n\n**Sources**\n" + "\n".join(lines) if lines else ""


def extractive_answer(response: QueryResponse, link: Link) -> ChatAnswer:
    """The answer sentences (rag.search.answer), the one answering the question first, each
    followed by its passage's marker; passages numbered in the order the answer cites them.
    A response without answer sentences (an index built without sentences) falls back to
    the highlights of the top passages."""
    if not response.answerable or not response.passages:
        return ChatAnswer(text=NO_ANSWER, citations=[])
    if response.answer:
        used: list[Passage] = []
        parts = []
        for sentence in response.answer:
            passage = response.passages[sentence.passage - 1]
            if passage not in used:
                used.append(passage)
            parts.append(f"{plain(sentence.text)} [{used.index(passage) + 1}]")
        citations = cite(used, link)
        return ChatAnswer(text=" ".join(parts) + sources_markdown(citations), citations=citations)
    return _highlights_answer(response, link)


def _highlights_answer(response: QueryResponse, link: Link) -> ChatAnswer:
    top = _best_sentence_score(response.passages[0])
    passages = [p for i, p in enumerate(response.passages[:ANSWER_PASSAGES])
                if i == 0 or top is None or (_best_sentence_score(p) or 0.0) >= ANSWER_NEAR * top]
    sentences: list[tuple[str, int]] = []
    seen: set[str] = set()
    used: list[Passage] = []
    for passage in passages:
        offset = passage.citation.char_start
        spans = sorted(passage.highlights or [], key=lambda h: h.char_start)  # in reading order
        picked = [passage.text[h.char_start - offset:h.char_end - offset] for h in spans] or [passage.text]
        fresh = [s for s in picked if s not in seen]
        if not fresh:
            continue
        used.append(passage)
        seen.update(fresh)
        sentences += [(s, len(used)) for s in fresh]
    citations = cite(used, link)
    body = " ".join(f"{plain(s)} [{n}]" for s, n in sentences)
    return ChatAnswer(text=body + sources_markdown(citations), citations=citations)


def _best_sentence_score(passage: Passage) -> float | None:
    scores = [h.score for h in passage.highlights if h.score is not None]
    return max(scores) if scores else None


SYSTEM_PROMPT = (
    "Answer the question using only the numbered context passages below. After each statement, cite the "
    "passage it comes from as [n]. If the context does not contain the answer, say that the documents do "
    "not answer it. Do not use outside knowledge.\n\nContext:\n{context}"
)


def llm_messages(question: str, block: ContextBlock) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT.format(context=block.context)},
            {"role": "user", "content": question}]


def chat_citations(block: ContextBlock, passages: Sequence[Passage], link: Link) -> list[ChatCitation]:
    """Citations of the passages that made it into the packed block, numbered as there."""
    kept = {c.chunk_id for c in block.citations}
    return cite([p for p in passages if p.chunk_id in kept], link)
