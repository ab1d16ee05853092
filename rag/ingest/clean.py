"""Turn scraped article text into canonical text with sections.

Scraped pages carry navigation, promos, subscription prompts, teaser blocks, image
captions printed twice and paragraphs repeated verbatim. `clean()` removes them with
general rules, line-level and block-level, each with a name and a switch in `CleanRules`,
and records every removal (`CleanDocument.removed`) so a user can see why a line went.

The returned `text` is the document's canonical text: every offset in the index
(chunks, citations) points into it. Kept lines of one raw paragraph stay joined by "\\n";
paragraphs are joined by "\\n\\n". Headings stay in the text and also name the sections
that follow them.

Example (BODY is any paragraph of 25 words or more, which ends the page's head):
    doc = clean("Analysis\\n\\nMy Title\\n\\nBy Jane Roe\\n\\nIntro\\n\\n" + BODY, title="My Title")
    doc.text == "Intro\\n\\n" + BODY            # kicker, title and byline removed
    [(s.title, doc.text[s.char_start:s.char_end]) for s in doc.sections] == [("Intro", BODY)]

Left out: tables, lists nested deeper than one line, and languages other than English
(the phrase patterns are English).

Why one module of ~330 lines: the rules run in one order over one list of lines, and
each pass is a few lines; split, the order they run in would no longer read top to bottom.
"""

import re
from dataclasses import dataclass, field
from itertools import pairwise

# ---------------------------------------------------------------- configuration

# Whole-line boilerplate: navigation labels, inline promos, widget text. Matched against
# the full stripped line, case-insensitively.
BOILERPLATE_LINES = (
    r"more from our experts",
    r"more on:?",
    r"listen to (this|the) (article|story)( \S+)?",
    r"already a subscriber\?.*",
    r"not your account\?",
    r"you are commenting as.*",
    r"(sign in|log in|register) to .{0,60}",
    r"advertisement|sponsored( content)?",
    r"share (this|on) .{0,40}|share|print|email|tweet",
    r"close|view license detail",
    r"creative commons(: some rights reserved\.?)?",
    r"skip to (main )?content",
    r"(back to )?top",
)

# Promo phrases anywhere in a short line (<= promo_max_chars): the whole line goes.
PROMO_PHRASES = (
    r"\bsubscribe (now|today|to (our|the) newsletter)\b",
    r"\bsign up for (our|the) .{0,30}newsletter\b",
    r"\bfor media inquiries\b",
    r"\bcommenting on this .{0,60}subscription\b",
    r"\bjoin the conversation on this\b",
    r"\bplease follow our comment guidelines\b",
    r"\bthis work is licensed under\b",
)

# A line that starts a teaser/"read more" block at the end of a page: it and everything
# after it go, but only in the last part of the page (see tail_min_fraction), so the same
# words inside an article never cut it short.
TAIL_MARKERS = (
    r"related (publications|articles|stories|content|reading|coverage|posts)",
    r"recommended (resources|reading|for you|articles|stories)",
    r"more from (?!our experts).{1,40}",
    r"top stories( on .{1,40})?",
    r"read (more|next)|you (may|might) also like|most (popular|read)",
    r"join the conversation",
    r"view all (publications|articles|stories)",
    r"(\d+ )?comments|leave a (comment|reply)",
)

# Words a page puts above its headline to label the content type.
KICKER_WORDS = (
    "analysis", "backgrounder", "explainer", "opinion", "commentary", "interview",
    "report", "news", "feature", "essay", "review", "argument", "podcast", "video",
)

# Short line crediting an image: "Alex Nabaum illustration for Foreign Policy",
# "Photo by X/Getty Images", "Sputnik/Pool/Reuters".
CREDIT_LINE = (
    r".{0,60}\b(illustration|photo(graph)?|image|graphic|picture)s?\b.{0,10}\b(for|by|via|courtesy)\b.{0,50}"
    r"|.{0,60}/(reuters|ap|afp|getty images|pool|epa)\b.{0,30}"
)
BYLINE = r"by\b[\s:,].{0,160}"
SENTENCE_END = re.compile(r"[.!,;:]$")
BULLET = re.compile(r"([•*\-–]|\d{1,2}[.)]) ")


@dataclass(frozen=True)
class CleanRules:
    """Every rule can be switched off or retuned; the defaults suit news and analysis pages."""

    boilerplate_lines: tuple[str, ...] = BOILERPLATE_LINES
    promo_phrases: tuple[str, ...] = PROMO_PHRASES
    promo_max_chars: int = 240
    tail_markers: tuple[str, ...] = TAIL_MARKERS
    tail_min_fraction: float = 0.5  # a tail marker counts only past this share of the text
    kicker_words: tuple[str, ...] = KICKER_WORDS
    credit_line: str = CREDIT_LINE
    byline: str = BYLINE
    head_ends_at_words: int = 25  # the head is every line before the first paragraph this long
    drop_title_lines: bool = True
    drop_captions_twice: bool = True
    caption_min_chars: int = 20
    nav_run_min_lines: int = 3  # this many short non-sentence lines in a row are a menu
    nav_line_max_words: int = 4
    drop_repeated_paragraphs: bool = True
    repeated_min_chars: int = 40
    heading_max_words: int = 12
    heading_max_chars: int = 100
    # A paragraph after this many blank lines starts an untitled section: scrapers often
    # drop a heading element and leave its empty lines behind. 0 switches it off.
    section_break_blank_lines: int = 2


@dataclass(frozen=True)
class Section:
    title: str | None
    char_start: int  # body start in canonical text (the heading itself is not included)
    char_end: int


@dataclass(frozen=True)
class Removal:
    rule: str
    line_no: int  # 1-based line in the raw text
    text: str


@dataclass
class CleanDocument:
    text: str
    sections: list[Section]
    removed: list[Removal] = field(default_factory=list)


@dataclass
class _Line:
    no: int  # 1-based raw line number
    text: str
    group: int  # raw paragraph (run of non-blank lines) it belongs to
    blank_before: int  # blank raw lines right before its group
    heading: bool = False  # set for markdown '#' lines, and by heading detection


def _full(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?:{pattern})", re.IGNORECASE)


def _words(text: str) -> int:
    return len(text.split())


def clean(raw: str, title: str | None = None, rules: CleanRules = CleanRules()) -> CleanDocument:
    lines = _split_lines(raw)
    removed: list[Removal] = []

    def drop(rule: str, doomed: list[_Line]) -> None:
        ids = {id(line) for line in doomed}
        removed.extend(Removal(rule, line.no, line.text) for line in doomed)
        lines[:] = [line for line in lines if id(line) not in ids]

    drop("tail_teasers", _tail(lines, rules))
    boilerplate = [_full(p) for p in rules.boilerplate_lines]
    drop("boilerplate", [ln for ln in lines if any(p.fullmatch(ln.text) for p in boilerplate)])
    promos = [_full(p) for p in rules.promo_phrases]
    drop("promo", [ln for ln in lines if len(ln.text) <= rules.promo_max_chars
                   and any(p.search(ln.text) for p in promos)])
    if rules.drop_title_lines and title:
        folded = title.strip().casefold()  # once, not once per line: a long title times many lines
        drop("title", [ln for ln in lines if ln.text.casefold() == folded])
    credit = _full(rules.credit_line)
    drop("credit", [ln for ln in lines if _words(ln.text) <= 12 and credit.fullmatch(ln.text)])
    head = _head(lines, rules)
    drop("kicker", [ln for ln in head if ln.text.casefold().rstrip(":") in rules.kicker_words])
    byline = _full(rules.byline)
    drop("byline", [ln for ln in head if byline.fullmatch(ln.text)])
    if rules.drop_captions_twice:
        drop("caption_twice", _captions_twice(lines, rules))
    if rules.nav_run_min_lines:
        drop("nav_list", _nav_runs(lines, rules))
    if rules.drop_repeated_paragraphs:
        drop("repeated_paragraph", _repeats(lines, rules))
    _mark_headings(lines, rules)
    return _assemble(lines, removed, rules)


def _split_lines(raw: str) -> list[_Line]:
    """Normalise whitespace and number the non-blank lines with their raw paragraph."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    lines: list[_Line] = []
    group, blanks = 0, 0
    for no, line in enumerate(text.split("\n"), start=1):
        stripped = " ".join(line.split())
        if not stripped:
            blanks += 1
            continue
        if blanks or not lines:
            group += 1
        heading = bool(re.match(r"#{1,6} ", stripped))
        if heading:
            stripped = stripped.lstrip("#").strip()
        lines.append(_Line(no, stripped, group, blanks if blanks or not lines else 0, heading))
        blanks = 0
    return lines


def _tail(lines: list[_Line], rules: CleanRules) -> list[_Line]:
    markers = [_full(p) for p in rules.tail_markers]
    total = sum(len(ln.text) for ln in lines) or 1
    seen = 0
    for i, line in enumerate(lines):
        if seen / total >= rules.tail_min_fraction and any(m.fullmatch(line.text) for m in markers):
            return lines[i:]
        seen += len(line.text)
    return []


def _head(lines: list[_Line], rules: CleanRules) -> list[_Line]:
    for i, line in enumerate(lines):
        if _words(line.text) >= rules.head_ends_at_words:
            return lines[:i]
    return []


def _captions_twice(lines: list[_Line], rules: CleanRules) -> list[_Line]:
    """Adjacent lines of one raw paragraph where one repeats the other (a caption, then
    the caption again with its credit appended): both go."""
    # a dict keyed by the line's id, as an ordered set: membership per line is O(1); a list
    # scanned per pair made cleaning quadratic in the lines of a paragraph (15 s at 8,000)
    doomed: dict[int, _Line] = {}
    for a, b in pairwise(lines):
        if a.group != b.group or len(a.text) < rules.caption_min_chars:
            continue
        if b.text.startswith(a.text) or a.text.startswith(b.text):
            doomed.setdefault(id(a), a)
            doomed.setdefault(id(b), b)
    return list(doomed.values())


def _nav_runs(lines: list[_Line], rules: CleanRules) -> list[_Line]:
    def short(line: _Line) -> bool:
        return (_words(line.text) <= rules.nav_line_max_words and not line.heading
                and not re.search(r"[.!?]$", line.text))

    doomed: list[_Line] = []
    run: list[_Line] = []
    for line in [*lines, None]:
        if line is not None and short(line):
            run.append(line)
            continue
        if len(run) >= rules.nav_run_min_lines:
            doomed += run
        run = []
    return doomed


def _repeats(lines: list[_Line], rules: CleanRules) -> list[_Line]:
    seen: set[str] = set()
    doomed = []
    for line in lines:
        key = line.text.casefold()
        if len(key) >= rules.repeated_min_chars and key in seen:
            doomed.append(line)
        seen.add(key)
    return doomed


def _mark_headings(lines: list[_Line], rules: CleanRules) -> None:
    """A heading stands on its own line after a blank line or a finished sentence, and
    before a blank line or a bullet list; it is short, does not end like a sentence (a
    question mark is fine: 'Are China and Russia allies?'), starts with a capital, and is
    followed by a longer paragraph."""
    for i, line in enumerate(lines[:-1]):
        # scraped text often runs a dek, a heading and a list together in one raw paragraph
        first = i == 0 or lines[i - 1].group != line.group or bool(
            re.search(r"[.!?][\"”’)]?$", lines[i - 1].text))
        nxt = lines[i + 1]
        alone = first and (nxt.group != line.group or BULLET.match(nxt.text) is not None)
        text = line.text
        line.heading = line.heading or (
            alone
            and _words(text) <= rules.heading_max_words
            and len(text) <= rules.heading_max_chars
            and not SENTENCE_END.search(text)
            and text[0].isupper()
            and not lines[i + 1].heading
            and _words(lines[i + 1].text) > _words(text)
        )


SECTION_TITLE_CHARS = 500  # a longer "heading" (a Markdown line of thousands) is cut: titles fill citations


def _section_title(text: str) -> str:
    if len(text) <= SECTION_TITLE_CHARS:
        return text
    return text[:SECTION_TITLE_CHARS].rsplit(" ", 1)[0].rstrip() + "…"


def _assemble(lines: list[_Line], removed: list[Removal], rules: CleanRules) -> CleanDocument:
    parts: list[str] = []
    sections: list[Section] = []
    pos = 0
    title: str | None = None
    body_start: int | None = None

    def close(end: int) -> None:
        if body_start is not None and end > body_start:
            sections.append(Section(title, body_start, end))

    prev: _Line | None = None
    for line in lines:
        same_paragraph = prev is not None and prev.group == line.group and not prev.heading
        sep = "" if prev is None else ("\n" if same_paragraph and not line.heading else "\n\n")
        start = pos + len(sep)
        if line.heading:
            close(pos)
            title, body_start = _section_title(line.text), None
        elif body_start is None:
            body_start = start
        elif (rules.section_break_blank_lines and not same_paragraph
              and line.blank_before >= rules.section_break_blank_lines):
            close(pos)
            title, body_start = None, start
        parts.append(sep + line.text)
        pos = start + len(line.text)
        prev = line
    close(pos)
    removed.sort(key=lambda r: r.line_no)
    return CleanDocument("".join(parts), sections, removed)
