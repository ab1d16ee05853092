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

Metadata is bounded, by one rule whichever way it came (front matter, sidecar, or JSON
sent to the API: `normalise_metadata`): at most MAX_METADATA_BYTES (16 KB) as JSON,
nested at most MAX_METADATA_DEPTH (8) levels below a key, MAX_METADATA_KEYS (256) keys in
all, nested ones counted; each is refused naming the field. YAML anchors and aliases are
refused before anything is built from them (a few hundred bytes of nested aliases expand
to gigabytes).

Example: `corpus/fp-axis.txt` + `corpus/fp-axis.meta.json` {"title": "The Axis"}
    -> SourceDocument(doc_id="fp-axis", metadata={"title": "The Axis", "source": "fp-axis.txt", ...})

Left out: PDF and DOCX; recursive folders (only the top level is read); encodings other
than UTF-8 (a file that is not UTF-8 is refused with its name).
"""

import datetime as dt
import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import CorpusError
from rag.ingest.clean import CleanDocument
from rag.ingest.sandbox import ParseLimits, check_chars, run_limited
from rag.text import is_unicode_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".html", ".htm")
SIDECAR_SUFFIX = ".meta.json"
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TEXT_KEYS = ("title", "source", "author", "date", "url")  # the API serves these as strings
TEXT_KEY_CHARS = 1_000  # 4 UTF-8 bytes a character at most: under Milvus's 4,096-byte fields
# Metadata is stored with each document and walked, copied and serialised on every write:
# bounds far above what an article's metadata holds (a few keys, ~1 KB), far below what
# makes a write slow or a response heavy.
MAX_METADATA_BYTES = 16_384  # the whole of it, as UTF-8 JSON: the five text keys at 1,000 characters fit
MAX_METADATA_DEPTH = 8  # lists/mappings inside a key's value: front matter nests 2-3; bounds every recursive pass
MAX_METADATA_KEYS = 256  # mapping keys in all, nested ones counted: a taxonomy, not a database


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


def load_corpus(corpus_dir: Path, limits: ParseLimits = ParseLimits()) -> list[SourceDocument]:
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
    # each file is parsed in a worker process under `limits` (rag.ingest.sandbox)
    documents = [run_limited(load_checked, p, limits, limits=limits, what=f"the parser on {p.name}") for p in paths]
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
        text, metadata = _split_front_matter(raw, path)
    elif suffix in (".html", ".htm"):
        text, metadata = _extract_html(raw, path)
    else:
        text, metadata = raw, {}
    metadata.update(_read_sidecar(path))

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


def normalise_metadata(metadata: dict[str, Any], where: str) -> dict[str, Any]:
    """The known keys as str | None, every other value JSON-safe. YAML gives numbers,
    dates and lists where users meant text; the index stores JSON and the API strings.
    A known key's text is at most TEXT_KEY_CHARS long (a store may keep it in a field of
    bounded size: Milvus's 4,096 bytes); the whole is at most MAX_METADATA_BYTES as JSON,
    MAX_METADATA_DEPTH deep and MAX_METADATA_KEYS keys (checked before it is walked
    recursively). `where` names the document in messages (its file name, or "document 'x'")."""
    _check_shape(metadata, where)
    known = {key: _as_text(metadata.get(key), where, key) for key in TEXT_KEYS}
    if too_long := [key for key, value in known.items() if value is not None and len(value) > TEXT_KEY_CHARS]:
        raise CorpusError(f"{where}: metadata {', '.join(map(repr, too_long))} longer than "
                          f"{TEXT_KEY_CHARS:,} characters")
    out = known | {str(key): _json_safe(value) for key, value in metadata.items() if key not in TEXT_KEYS}
    # a JSON sidecar may escape a lone surrogate ("\ud800"): no response could carry it
    serialised = json.dumps(out, ensure_ascii=False)
    if not is_unicode_text(serialised):
        raise CorpusError(f"{where}: metadata holds text that is not valid Unicode (a lone surrogate)")
    if (size := len(serialised.encode())) > MAX_METADATA_BYTES:
        sizes = {key: len(json.dumps(value, ensure_ascii=False).encode()) for key, value in out.items()}
        largest = max(sizes, key=lambda key: sizes[key])
        raise CorpusError(f"{where}: metadata is {size:,} bytes as JSON, over {MAX_METADATA_BYTES:,} bytes "
                          f"(the largest field: '{largest}', {sizes[largest]:,} bytes)")
    return out


def _check_shape(metadata: dict[str, Any], where: str) -> None:
    """Refuses metadata nested deeper than MAX_METADATA_DEPTH below a key, or with more than
    MAX_METADATA_KEYS keys in all, naming the field; without recursion, and stopping at
    the first violation (a body of deeply nested JSON costs no more than its size)."""
    if (keys := len(metadata)) > MAX_METADATA_KEYS:
        raise CorpusError(f"{where}: metadata has {keys:,} keys, more than {MAX_METADATA_KEYS}")
    stack: list[tuple[str, Any, int]] = [(str(key), value, 0) for key, value in metadata.items()]
    while stack:
        field, value, depth = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
            keys += len(value)
        elif isinstance(value, list | tuple | set | frozenset):
            children = list(value)
        else:
            continue
        if depth >= MAX_METADATA_DEPTH:
            raise CorpusError(f"{where}: metadata '{field}' is nested deeper than {MAX_METADATA_DEPTH} levels")
        if keys > MAX_METADATA_KEYS:
            raise CorpusError(f"{where}: metadata '{field}' brings it to more than {MAX_METADATA_KEYS} keys "
                              "(nested ones counted)")
        stack += [(field, child, depth + 1) for child in children]


def _as_text(value: Any, where: str, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and not any(isinstance(v, list | tuple | dict) for v in value):
        return ", ".join(t for v in value if (t := _as_text(v, where, key))) or None  # ["Ann", "Bob"]
    if isinstance(value, list | tuple | dict):
        raise CorpusError(f"{where}: metadata '{key}' must be text, a number, a date or a list of "
                          f"them, not {value!r}")
    if isinstance(value, dt.date | dt.time):  # datetime is a date too
        return value.isoformat()
    return str(value)


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN/Infinity are not JSON
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, set | frozenset):  # YAML !!set: a stable order keeps the content hash stable
        return [_json_safe(v) for v in sorted(value, key=repr)]
    return str(value)


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested deep
        raise CorpusError(f"{sidecar.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorpusError(f"{sidecar.name} must hold a JSON object, not {type(data).__name__}")
    return data


def _split_front_matter(raw: str, path: Path) -> tuple[str, dict[str, Any]]:
    """YAML front matter (a `---` block first) as metadata, and the text after it. Its
    tokens are checked before any object is built from them (`_check_yaml_tokens`: no
    anchor or alias, no nesting past MAX_METADATA_DEPTH); then yaml's safe loader reads it.
    Front matter python-frontmatter reads otherwise (TOML, JSON) is read by it, as before."""
    import frontmatter  # python-frontmatter: front matter, only needed for .md
    import yaml

    text = raw.strip()  # as python-frontmatter reads it
    handler = frontmatter.YAMLHandler()
    try:
        if not handler.detect(text):  # no YAML: python-frontmatter's other formats, or none
            post = frontmatter.loads(raw)
            return post.content, dict(post.metadata)
        try:
            header, content = handler.split(text)
        except ValueError:  # an opening `---` without a closing one: no front matter
            return text, {}
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when it is there, as python-frontmatter
        _check_yaml_tokens(header, path.name, loader, raw[:len(raw) - len(text)].count("\n"))
        data = yaml.load(header, Loader=loader)  # a safe loader: plain data only
    except CorpusError:
        raise
    except Exception as exc:  # yaml raises several unrelated types
        raise CorpusError(f"{path.name}: front matter is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise CorpusError(f"{path.name}: front matter must be keys with values (a YAML mapping), "
                          f"not a {type(data).__name__}")
    return content.strip(), dict(data or {})


def _check_yaml_tokens(header: str, name: str, loader: Any, lines_before: int) -> None:
    """Refuses YAML anchors and aliases (nested aliases of a few hundred bytes expand to
    gigabytes) and nesting past MAX_METADATA_DEPTH, from the scanner's tokens: linear in
    the header, and nothing is built. Names the top-level key it is in, and the file's line
    (`lines_before` the text's first: the header starts at the end of its `---` line)."""
    import yaml

    opens = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
             yaml.FlowSequenceStartToken)
    closes = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    depth, field, key_next = 0, None, False
    for token in yaml.scan(header, Loader=loader):
        where = f"metadata '{field}'" if field is not None else "front matter"
        if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
            kind, sign = ("anchor", "&") if isinstance(token, yaml.AnchorToken) else ("alias", "*")
            raise CorpusError(f"{name}: {where} uses a YAML {kind} ({sign}{token.value} on line "
                              f"{lines_before + token.start_mark.line + 1}): anchors and aliases are refused")
        if isinstance(token, opens):
            depth += 1
            if depth > MAX_METADATA_DEPTH + 1:  # the front matter's own mapping is one
                raise CorpusError(f"{name}: {where} is nested deeper than {MAX_METADATA_DEPTH} levels")
        elif isinstance(token, closes):
            depth -= 1
        elif isinstance(token, yaml.KeyToken):
            key_next = depth == 1
        elif isinstance(token, yaml.ScalarToken) and key_next:
            field, key_next = token.value, False


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
