"""OpenAI's vector store search filters over a document's attributes: comparisons
`{"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte"|"in"|"nin", "key", "value"}` and compounds
`{"type": "and"|"or", "filters": [...]}` (openai-python's `shared_params/comparison_filter.py`
and `compound_filter.py`). `check_filter` refuses anything else with a message naming where;
`matches` says whether a document's attributes pass.

Example:
    >>> matches({"type": "and", "filters": [{"type": "eq", "key": "topic", "value": "krill"},
    ...                                     {"type": "gte", "key": "year", "value": 2020}]},
    ...         {"topic": "krill", "year": 2021})
    True

Left out: filters over anything but attributes (file names, dates of upload).
"""

from collections.abc import Mapping
from typing import Any

from rag.errors import BadQueryError

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")


def check_filter(spec: Any, where: str = "filters") -> None:
    """Refuse (BadQueryError) a filter that is not OpenAI's grammar: a comparison
    `{type: eq|ne|gt|gte|lt|lte|in|nin, key, value}` or a compound `{type: and|or, filters}`."""
    if not isinstance(spec, dict):
        raise BadQueryError(f"{where} must be an object")
    kind = spec.get("type")
    if kind in COMPOUNDS:
        if unknown := set(spec) - {"type", "filters"}:
            raise BadQueryError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise BadQueryError(f"{where}.filters must be a non-empty list of filters")
        for i, part in enumerate(parts):
            check_filter(part, f"{where}.filters[{i}]")
        return
    if kind not in COMPARISONS:
        raise BadQueryError(f"{where}.type must be one of {', '.join(COMPARISONS + COMPOUNDS)}, got {kind!r}")
    if unknown := set(spec) - {"type", "key", "value"}:
        raise BadQueryError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if not isinstance(spec.get("key"), str) or not spec["key"]:
        raise BadQueryError(f"{where}.key must be a non-empty string")
    if "value" not in spec:
        raise BadQueryError(f"{where}.value is required")
    value = spec["value"]
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                  for v in value):
            raise BadQueryError(f"{where}.value must be a list of strings or numbers for '{kind}'")
    elif not isinstance(value, str | int | float):  # bool is an int
        raise BadQueryError(f"{where}.value must be a string, a number or a boolean")
    elif kind in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        raise BadQueryError(f"{where}: '{kind}' compares numbers or strings, not booleans")


def matches(spec: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    """Whether `attributes` pass the (checked) filter. Booleans equal only booleans; numbers
    compare with numbers and strings with strings (ISO dates order as text); a missing key
    or a type mismatch fails every comparison but `ne` and `nin`."""
    kind = spec["type"]
    if kind == "and":
        return all(matches(part, attributes) for part in spec["filters"])
    if kind == "or":
        return any(matches(part, attributes) for part in spec["filters"])
    key, value = spec["key"], spec["value"]
    if key not in attributes:
        return kind in ("ne", "nin")
    have = attributes[key]
    if kind in ("eq", "ne"):
        return _same(have, value) == (kind == "eq")
    if kind in ("in", "nin"):
        return any(_same(have, v) for v in value) == (kind == "in")
    order = _order(have, value)
    if order is None:
        return False
    return {"gt": order > 0, "gte": order >= 0, "lt": order < 0, "lte": order <= 0}[kind]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)  # 2 == 2.0; "2" != 2


def _order(a: Any, b: Any) -> int | None:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if numbers or (isinstance(a, str) and isinstance(b, str)):
        return (a > b) - (a < b)
    return None
