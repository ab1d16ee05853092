"""The names of the sources a stream sends to Open WebUI: no [n] prefix (Open WebUI numbers
its source list itself and maps [n] in the answer to its n-th entry), and distinct (it
merges sources of one name into one entry, which would shift every later number)."""

import asyncio
from typing import Any

from api.chat.answers import ChatCitation, source_names
from api.chat.stream import Frame, once


def citation(n: int, doc_id: str, title: str, section: str | None, start: int, end: int) -> ChatCitation:
    return ChatCitation(n=n, chunk_id=f"{doc_id}-{start}", doc_id=doc_id, title=title, section=section,
                        source="CFR", char_start=start, char_end=end, url=f"http://h/#cite={doc_id}:{start}-{end}",
                        text=f"passage {n}")


TIES = "China and Russia: Exploring Ties"
CITATIONS = [
    citation(1, "cfr", TIES, "What are their economic ties?", 0, 812),
    citation(2, "cfr", TIES, "What are their economic ties?", 812, 1630),  # the same section again
    citation(3, "cfr", TIES, "Arctic", 2000, 2600),
    citation(4, "copy", TIES, "What are their economic ties?", 0, 812),  # another document, same title and span
    citation(5, "other", "Polar Silk Road", None, 0, 500),
]


def test_names_carry_no_number_and_a_suffix_only_where_they_would_clash():
    assert source_names(CITATIONS) == [
        f"{TIES} — What are their economic ties? (cfr, characters 0–812)",
        f"{TIES} — What are their economic ties? (characters 812–1630)",
        f"{TIES} — Arctic",
        f"{TIES} — What are their economic ties? (copy, characters 0–812)",
        "Polar Silk Road",
    ]
    assert source_names(CITATIONS[2:3] + CITATIONS[4:]) == [f"{TIES} — Arctic", "Polar Silk Road"]
    assert source_names([]) == []


def test_names_stay_distinct_even_when_every_suffix_clashes():
    twins = [citation(1, "a", "T", None, 0, 9), citation(2, "a", "T", None, 0, 9)]
    assert source_names(twins) == ["T (a, characters 0–9)", "T (a, characters 0–9) #2"]
    # a title that reads like another passage's suffixed name
    odd = [citation(1, "a", "T", None, 0, 9), citation(2, "a", "T", None, 10, 19),
           citation(3, "b", "T (characters 0–9)", None, 0, 5)]
    names = source_names(odd)
    assert len(set(names)) == 3 and not any(name.startswith("[") for name in names)


def test_the_stream_sends_these_names_in_citation_order():
    async def events() -> list[dict[str, Any]]:
        frame = Frame("chatcmpl-x", 0, "rag")
        return [e async for e in frame.stream_text([once("Trade rose. [1] [2]")], CITATIONS)]

    sources = [e["event"]["data"] for e in asyncio.run(events()) if "event" in e]
    names = source_names(CITATIONS)
    assert [s["source"]["name"] for s in sources] == names
    assert [m["source"] for s in sources for m in s["metadata"]] == names  # Open WebUI's key for a source
    assert [s["document"] for s in sources] == [[c.text] for c in CITATIONS]
