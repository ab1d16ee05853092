"""[n] markers in an answer become OpenAI `file_citation` annotations.

Our answers cite passages as chat answers do: "Oil imports rose. [1]" (extractive, after
the sentence) or "China bought more Russian oil [1]." (an upstream model, before the full
stop). OpenAI's output text carries no markers: each citation is an annotation whose
`index` is the position in the text where it belongs, right after the sentence it
supports. `Citer` removes the markers (and the space before one) and places each
annotation after the sentence's closing punctuation when it follows the marker, else
where the marker stood:

    >>> c = Citer({1: ("doc-a", "a.txt")})
    >>> c.feed("China bought more oil [1]."), c.finish()  # "[1]." may still become "[1]..."
    (('China bought more oil', []), ('.', [{'type': 'file_citation', 'file_id': 'doc-a', 'filename': 'a.txt', \
'index': 22}]))

It works on a stream: text that could still be the start of a marker (" ", "[1", "[1]"
awaiting its full stop) is held back until the next delta says what it is, so the deltas
sent add up to the final text and every annotation's index is inside what was sent.
A marker naming a number that is not a passage ("[7]" of five) is left in the text as
written; "[1][2]" and "[1, 2]" cite both. One annotation per file and position.

Left out: other citation styles a model may invent ("(1)", "【1】", "Source 1").
"""

import re
from typing import Any

MARKER = re.compile(r" ?((?:\[\d{1,3}(?:, ?\d{1,3})*\])+)([.!?]*)")
# what may still grow into a MARKER: held back at the end of a stream's text so far
PARTIAL = re.compile(r" ?(?:\[[\d, ]{0,16}\]?)*[.!?]*")
HOLD_MAX = 64  # characters: no marker is longer; text further back is always sent


class Citer:
    def __init__(self, files: dict[int, tuple[str, str]]):
        """`files`: marker number -> (file_id, filename)."""
        self.files = files
        self.pending = ""
        self.sent = 0  # characters of clean text produced so far
        self.placed: set[tuple[str, int]] = set()

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        """The clean text that can be sent now, and the annotations inside it."""
        self.pending += delta
        hold = self._hold_from(self.pending)
        ready, self.pending = self.pending[:hold], self.pending[hold:]
        return self._clean(ready)

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        ready, self.pending = self.pending, ""
        return self._clean(ready)

    @staticmethod
    def _hold_from(text: str) -> int:
        """Where the tail that may still become a marker starts (len(text): none)."""
        start = max(0, len(text) - HOLD_MAX)
        for i in range(start, len(text)):
            if text[i] in " [" and PARTIAL.fullmatch(text, i):
                return i
        return len(text)

    def _clean(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        out: list[str] = []
        annotations: list[dict[str, Any]] = []
        at = 0
        for match in MARKER.finditer(text):
            numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
            if not all(n in self.files for n in numbers):
                continue  # not our marker: left as written
            out.append(text[at:match.start()] + match.group(2))
            at = match.end()
            index = self.sent + sum(len(part) for part in out)
            for n in numbers:
                file_id, filename = self.files[n]
                if (file_id, index) not in self.placed:
                    self.placed.add((file_id, index))
                    annotations.append({"type": "file_citation", "file_id": file_id, "filename": filename,
                                        "index": index})
        out.append(text[at:])
        clean = "".join(out)
        self.sent += len(clean)
        return clean, annotations
