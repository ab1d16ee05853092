"""Read a folder of articles into `SourceDocument`s: raw text plus metadata.

Formats:
- `.txt`: plain text, as scraped.
- `.md`: Markdown; YAML front matter (`---` block) is metadata; `#` lines are headings.
- `.html`/`.htm`: main content extracted by trafilatura (headings kept as `#` lines);
  the page's own title/author/date/site name fill metadata the user did not give.

Metadata for any file may also come from a sidecar `<stem>.meta.json`; it wins over
front matter and over what trafilatura found. Recognised keys: doc_id, title, source,
author, date, url; any other keys are kept and returned as they are.

Example: `corpus/fp-axis.txt` + `corpus/fp-axis.meta.json` {"title": "The Axis"}
    -> SourceDocument(doc_id="fp-axis", metadata={"title": "The Axis", "source": "fp-axis.txt", ...})

Left out: PDF and DOCX; recursive folders (only the top level is read); encodings other
than UTF-8 (a file that is not UTF-8 is refused with its name).
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import CorpusError

SUPPORTED_SUFFIXES = (".txt", ".md", ".html", ".htm")
SIDECAR_SUFFIX = ".meta.json"
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SourceDocument:
    doc_id: str
    path: Path
    text: str  # the raw text, before cleaning
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Hash of what the build depends on: raw text and metadata."""
        payload = json.dumps({"text": self.text, "meta": self.metadata}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def load_corpus(corpus_dir: Path) -> list[SourceDocument]:
    """All supported files of `corpus_dir`, sorted by doc_id; refuses an empty folder."""
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
    documents = [load_document(p) for p in paths]
    seen: dict[str, Path] = {}
    for doc in documents:
        if doc.doc_id in seen:
            raise CorpusError(
                f"two files map to doc_id '{doc.doc_id}': {seen[doc.doc_id].name} and {doc.path.name}"
            )
        seen[doc.doc_id] = doc.path
    return sorted(documents, key=lambda d: d.doc_id)


def load_document(path: Path) -> SourceDocument:
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path.name} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from exc

    suffix = path.suffix.lower()
    if suffix == ".md":
        text, metadata = _split_front_matter(raw, path)
    elif suffix in (".html", ".htm"):
        text, metadata = _extract_html(raw, path)
    else:
        text, metadata = raw, {}
    metadata.update(_read_sidecar(path))

    doc_id = str(metadata.pop("doc_id", None) or path.stem)
    if not DOC_ID_PATTERN.match(doc_id):
        raise CorpusError(
            f"{path.name}: doc_id '{doc_id}' must be 1-128 letters, digits, '.', '_' or '-'"
        )
    metadata.setdefault("title", None)
    metadata["title"] = metadata["title"] or path.stem.replace("-", " ").replace("_", " ")
    metadata["source"] = metadata.get("source") or path.name
    for key in ("author", "date", "url"):
        metadata.setdefault(key, None)
    return SourceDocument(doc_id=doc_id, path=path, text=text, metadata=metadata)


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusError(f"{sidecar.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorpusError(f"{sidecar.name} must hold a JSON object, not {type(data).__name__}")
    return data


def _split_front_matter(raw: str, path: Path) -> tuple[str, dict[str, Any]]:
    import frontmatter  # python-frontmatter: YAML front matter, only needed for .md

    try:
        post = frontmatter.loads(raw)
    except Exception as exc:  # yaml raises several unrelated types
        raise CorpusError(f"{path.name}: front matter is not valid YAML: {exc}") from exc
    metadata = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in post.metadata.items()}
    return post.content, metadata


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
