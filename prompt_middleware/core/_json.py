"""JSON request bodies, read and written by orjson with the json module's meaning.

orjson reads and writes chat bodies several times faster than the json module
(benchmarks/README.md). Where the two differ, the json module does the work, as it did before
orjson, or the difference is shown not to matter:

* orjson refuses NaN, Infinity, 1e400 and lone surrogates (`\\ud800`), which the json module
  reads: the json module reads those bodies.
* orjson reads integers past 64 bits as floats, nests to 1024 levels (the json module to the
  recursion limit less the stack, ~950) and keeps the last of repeated keys without a word: a
  body that may hold any of these is read again by the json module.
* orjson writes inf as null, and refuses to write integers past 64 bits, lone surrogates and
  nesting past 254: the json module writes those, or refuses them as before.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

from .errors import InvalidPromptRequest

__all__ = [
    "KEY_CHAR_ESCAPE",
    "NOT_READ",
    "draft_object",
    "dump_json",
    "exact_object",
    "finite",
    "is_json",
    "load_document",
    "unsendable",
]

_BOM = b"\xef\xbb\xbf"
# orjson reads integer literals in [-2**63, 2**64) as int, those outside as float.
_INT64_MIN = -(2.0**63)
_UINT64_END = 2.0**64
# Deeper bodies go to the json module, whose own limit then decides, as before, if they parse.
_ORJSON_DEPTH = 200
# An escape that could spell a letter or "_" of a `unique` key (\u0050-\u007f).
KEY_CHAR_ESCAPE = re.compile(rb"\\u00[5-7]")
# Types orjson would write its own way (datetimes, dataclasses, subclasses of str, int, dict and
# list) are refused instead, and so written by the json module.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class _NotRead:
    def __repr__(self) -> str:
        return "NOT_READ"


NOT_READ: Final = _NotRead()
"""`draft_object`'s answer when orjson refused the body: only the json module can tell."""


def draft_object(body: bytes) -> dict[str, Any] | _NotRead | None:
    """orjson's reading of `body` when it is a JSON object, None when it is some other JSON
    value, `NOT_READ` when orjson refused it.

    A draft is exact in which keys the top level has and in its string values; anything else
    needs `exact_object`.
    """
    try:
        data = orjson.loads(body[3:] if body.startswith(_BOM) else body)
    except orjson.JSONDecodeError:
        return NOT_READ
    return data if isinstance(data, dict) else None


def exact_object(
    body: bytes, draft: dict[str, Any] | _NotRead | None, unique: frozenset[str]
) -> dict[str, Any] | None:
    """`body` as the json module reads a JSON object (UTF-8 only, a leading BOM ignored, NaN and
    Infinity refused), or None when it is anything else; `draft` is `draft_object(body)`.

    A top level that repeats a key of `unique` (made of a-z and "_") is an
    `InvalidPromptRequest`.
    """
    if draft is None:
        return None
    if isinstance(draft, _NotRead):
        return _load_exactly(body, unique)
    raw = body[3:] if body.startswith(_BOM) else body
    try:
        if orjson.dumps(draft) == raw:
            # Written as orjson writes (as httpx and openai-python send): then no key was dropped
            # as a repeat, no integer became a float, and the nesting is below 255; and this
            # check is much cheaper than `_read_alike`'s.
            return draft
    except orjson.JSONEncodeError:  # nested past 254
        pass
    return draft if _read_alike(raw, draft, unique) else _load_exactly(body, unique)


def _read_alike(raw: bytes, data: dict[str, Any], unique: frozenset[str]) -> bool:
    """Whether the json module reads `raw` as orjson read it, `data`, and no key of `unique` is
    repeated at the top level (`raw` not written as orjson writes `data`)."""
    if not unique.isdisjoint(data) and _may_repeat(raw, data, unique):
        return False
    return not _beyond(data, _INT64_MIN, _UINT64_END, _ORJSON_DEPTH)


def _may_repeat(raw: bytes, data: dict[str, Any], unique: frozenset[str]) -> bool:
    """False when no key of `unique` can occur twice at the top level of `raw`.

    A key written plainly puts its quoted form in the bytes once; more occurrences (a repeat, or
    the same text elsewhere) or an escape that could spell a letter of it send the body to the
    json module, whose hook sees every pair.
    """
    return (
        any(raw.count(b'"%s"' % key.encode()) != 1 for key in unique.intersection(data))
        or KEY_CHAR_ESCAPE.search(raw) is not None
    )


def _beyond(value: Any, low: float, high: float, max_depth: float = math.inf) -> bool:
    """Whether `value` holds a float not strictly between `low` and `high`, or dicts, lists and
    tuples nested deeper than `max_depth`. (Level by level: no recursion, depth for free.)"""
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        below: list[Any] = []
        for item in level:
            kind = item.__class__
            if kind is dict:
                below.extend(item.values())
            elif kind is list or kind is tuple:
                below.extend(item)
            elif isinstance(item, float) and not low < item < high:
                return True
        level = below
    return False


def load_document(data: bytes | str) -> Any:
    """A registry's JSON document (a Langfuse answer, a prompt file) as the json module reads
    it, a leading UTF-8 BOM ignored. `ValueError` for what is not JSON, for NaN and Infinity
    (no JSON writer can send them on) and for nesting past the recursion limit."""
    if isinstance(data, str):
        data = data.removeprefix("\ufeff")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def is_json(body: bytes) -> bool:
    """Whether `body` is JSON at all (any value) as the json module reads UTF-8, NaN and
    Infinity refused; for bodies already found not to be a readable JSON object."""
    try:
        json.loads(body.decode("utf-8").removeprefix("\ufeff"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def unsendable(value: Any, max_depth: int) -> bool:
    """Whether `value` holds a float JSON cannot carry (NaN, ±inf) or nests dicts and lists
    deeper than `max_depth`."""
    return _beyond(value, -math.inf, math.inf, max_depth)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _OutOfRange(float):
    """A number too large for a float (1e400 reads as inf). orjson refuses to write the subclass,
    so `dump_json` hands it to the json module, which refuses it too."""

    __slots__ = ()


def _read_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _OutOfRange(value)


def _load_exactly(body: bytes, unique: frozenset[str]) -> dict[str, Any] | None:
    """`exact_object` with the json module alone; a hook sees each object's pairs."""
    repeated: list[tuple[dict[str, Any], list[tuple[str, Any]]]] = []

    def make_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            repeated.append((obj, pairs))
        return obj

    try:
        text = body.decode("utf-8")
        data = json.loads(
            text[1:] if text.startswith("\ufeff") else text,
            parse_constant=_reject_constant,
            parse_float=_read_float,
            object_pairs_hook=make_object,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(data, dict):
        return None
    if repeated and repeated[-1][0] is data:  # the top level is the last object completed
        seen: set[str] = set()
        for key, _ in repeated[-1][1]:
            if key in seen and key in unique:
                raise InvalidPromptRequest(f"The request body repeats {key!r}.", param=key)
            seen.add(key)
    return data


def dump_json(data: Any) -> bytes:
    """Compact UTF-8 JSON. `InvalidPromptRequest` for what JSON cannot carry: a number out of
    range (a client's 1e400 parses as inf) or nesting past the recursion limit."""
    try:
        return orjson.dumps(data, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        pass  # see the module docstring; _OutOfRange lands here too
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise _out_of_range() from None
    except RecursionError:  # parsed just within the recursion limit, a few frames higher up
        raise InvalidPromptRequest("The request body is nested too deeply.") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (only sendable as a \ud800 escape): kept as that escape.
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("ascii")


def finite(value: Any) -> None:
    """Raise what `dump_json` raised for a non-finite float in `value`, which orjson would write
    as null; for values that did not come from `load_object` (a prompt's config)."""
    if isinstance(value, float):
        bad = not math.isfinite(value)
    else:
        bad = isinstance(value, dict | list | tuple) and _beyond(value, -math.inf, math.inf)
    if bad:
        raise _out_of_range()


def _out_of_range() -> InvalidPromptRequest:
    return InvalidPromptRequest(
        "The request holds a number JSON cannot represent (out of range, e.g. 1e400)."
    )
