"""Read a folder of articles into `SourceDocument`s: raw text plus metadata.

Formats:
- `.txt`: plain text, as scraped.
- `.md`: Markdown; YAML front matter (`---` block) is metadata; `#` lines are headings.
- `.html`/`.htm`: main content extracted by trafilatura (headings kept as `#` lines);
  the page's own title/author/date/site name fill metadata the user did not give.

Metadata for any file may also come from a sidecar `<stem>.meta.json`; it wins over
front matter and over what trafilatura found. Recognised keys: doc_id, title, source,
author, date, url. Their values become strings (title and source always, the others
or None): a number -> "1984", a date -> "2024-01-01", a list -> "Ann, Bob"; a mapping
is refused. Any other key is kept, made JSON-safe: dates inside it become ISO strings,
and whatever JSON cannot hold (bytes, NaN) becomes its str().

Metadata is normalised and bounded by one rule, whichever way it came
(rag.ingest.metadata).

Example: `corpus/fp-axis.txt` + `corpus/fp-axis.meta.json` {"title": "The Axis"}
    -> SourceDocument(doc_id="fp-axis", metadata={"title": "The Axis", "source": "fp-axis.txt", ...})

Left out: PDF and DOCX; recursive folders (only the top level is read); encodings other
than UTF-8 (a file that is not UTF-8 is refused with its name).
"""

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import CorpusError, RagError
from rag.ingest.clean import CleanDocument
from rag.ingest.metadata import normalise_metadata, read_sidecar, split_front_matter
from rag.ingest.sandbox import ParseLimits, check_chars, run_limited

SUPPORTED_SUFFIXES = (".txt", ".md", ".html", ".htm")
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SourceDocument:
    doc_id: str
    path: Path
    text: str  # the raw text, before cleaning
    metadata: dict[str, Any] = field(default_factory=dict)
    # the text cleaned already, where it was parsed (an upload's worker process, so that its
    # cleaning is not the server's work); the build cleans it otherwise
    cleaned: CleanDocument | None = field(default=None, compare=False, repr=False)

    @property
    def content_hash(self) -> str:
        """Hash of what the build depends on: raw text and metadata."""
        payload = json.dumps({"text": self.text, "meta": self.metadata}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def load_corpus(corpus_dir: Path, limits: ParseLimits = ParseLimits(),
                failed: Callable[[Path, str], None] | None = None) -> list[SourceDocument]:
    """All supported files of `corpus_dir`, sorted by doc_id; refuses an empty folder. A
    file that cannot be read fails the whole, unless `failed` is given: then it is told
    there (the file, the reason) and left out (a folder sync goes on with the others)."""
    if not corpus_dir.is_dir():
        raise CorpusError(f"corpus folder not found: {corpus_dir}")
    paths = sorted(
        p for p in corpus_dir.iterdir()
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
    )
    if not paths:
        raise CorpusError(
            f"no documents in {corpus_dir} (looked for {', '.join(SUPPORTED_SUFFIXES)} files)"
        )
    # each file is parsed in a worker process under `limits` (rag.ingest.sandbox)
    documents = []
    for p in paths:
        try:
            documents.append(run_limited(load_checked, p, limits, limits=limits, what=f"the parser on {p.name}"))
        except RagError as exc:
            if failed is None:
                raise
            failed(p, str(exc))
    seen: dict[str, Path] = {}
    for doc in documents:
        if doc.doc_id in seen:
            raise CorpusError(
                f"two files map to doc_id '{doc.doc_id}': {seen[doc.doc_id].name} and {doc.path.name}"
            )
        seen[doc.doc_id] = doc.path
    return sorted(documents, key=lambda d: d.doc_id)


def load_checked(path: Path, limits: ParseLimits) -> SourceDocument:
    """`load_document`, and the cap on its text (what a worker process runs)."""
    doc = load_document(path)
    check_chars(doc.text, limits)
    return doc


def load_document(path: Path) -> SourceDocument:
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path.name} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from exc

    suffix = path.suffix.lower()
    if suffix == ".md":
        text, metadata = split_front_matter(raw, path)
    elif suffix in (".html", ".htm"):
        text, metadata = _extract_html(raw, path)
    else:
        text, metadata = raw, {}
    metadata.update(read_sidecar(path))

    doc_id = str(metadata.pop("doc_id", None) or doc_id_from_name(path.name)
                 or "doc-" + hashlib.sha256(path.name.encode()).hexdigest()[:16])
    if not DOC_ID_PATTERN.fullmatch(doc_id):
        raise CorpusError(
            f"{path.name}: doc_id '{doc_id}' must be 1-128 letters, digits, '.', '_' or '-'"
        )
    metadata = normalise_metadata(metadata, path.name)
    metadata["title"] = metadata["title"] or path.stem.replace("-", " ").replace("_", " ")
    metadata["source"] = metadata["source"] or path.name
    return SourceDocument(doc_id=doc_id, path=path, text=text, metadata=metadata)


def doc_id_from_name(name: str) -> str | None:
    """A file's doc_id from its name: the stem as it is when it is a valid id, else made
    one ("my notes.txt" -> "my-notes", "café résumé.md" -> "cafe-resume"); None when nothing
    of it is left ("北京.txt": the caller falls back to a hash)."""
    stem = Path(name).stem
    if DOC_ID_PATTERN.fullmatch(stem):
        return stem
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_stem).strip("-._")[:100]
    return slug if slug and DOC_ID_PATTERN.fullmatch(slug) else None


def _extract_html(raw: str, path: Path) -> tuple[str, dict[str, Any]]:
    import trafilatura  # main-content extraction; only needed for HTML

    text = trafilatura.extract(
        raw, output_format="markdown", include_comments=False, include_tables=False,
        include_images=False, include_links=False, favor_precision=True,
    )
    if not text:
        raise CorpusError(f"{path.name}: no article text found in the HTML")
    found = trafilatura.extract_metadata(raw)
    metadata: dict[str, Any] = {}
    if found is not None:
        for ours, theirs in (("title", "title"), ("author", "author"), ("date", "date"),
                             ("source", "sitename"), ("url", "url")):
            value = getattr(found, theirs, None)
            if value:
                metadata[ours] = value
    return text, metadata
