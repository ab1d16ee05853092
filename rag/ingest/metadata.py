"""A document's metadata, whichever way it came (YAML front matter, a `.meta.json`
sidecar, or JSON sent to the API), made safe by one rule (`normalise_metadata`): the known
keys as text, every other value JSON-safe, and the whole bounded in size, depth and keys,
each violation refused naming the field. Front matter's YAML is read only after its tokens
show no anchor or alias (a few hundred bytes of nested aliases expand to gigabytes).

Left out: schemas per source (any key is kept, bounded), and TOML or JSON front matter's
own bounds beyond the same rule.
"""

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from rag.errors import CorpusError
from rag.text import is_unicode_text

SIDECAR_SUFFIX = ".meta.json"
TEXT_KEYS = ("title", "source", "author", "date", "url")  # the API serves these as strings


TEXT_KEY_CHARS = 1_000  # 4 UTF-8 bytes a character at most: under Milvus's 4,096-byte fields


# Metadata is stored with each document and walked, copied and serialised on every write:
# bounds far above what an article's metadata holds (a few keys, ~1 KB), far below what
# makes a write slow or a response heavy.
MAX_METADATA_BYTES = 16_384  # the whole of it, as UTF-8 JSON: the five text keys at 1,000 characters fit


MAX_METADATA_DEPTH = 8  # lists/mappings inside a key's value: front matter nests 2-3; bounds every recursive pass


MAX_METADATA_KEYS = 256  # mapping keys in all, nested ones counted: a taxonomy, not a database


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


def read_sidecar(path: Path) -> dict[str, Any]:
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


def split_front_matter(raw: str, path: Path) -> tuple[str, dict[str, Any]]:
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
