"""Strict JSON: what a JSON text must be before anyone acts on it.

`json.loads` is lenient where the worker's `serde_json` and the broker's storage are not, and each
leniency once became a 500 or an ambiguity:

* bytes are decoded as UTF-8 only (`json.loads` also guesses UTF-16 and UTF-32; serde_json takes
  UTF-8 only, RFC 8259 §8.1);
* a repeated object key is an error (`json.loads` keeps the last one silently, so two parsers can
  read one document two ways; serde_json refuses a repeated struct field);
* ``NaN``, ``Infinity`` and numbers that overflow a float are errors (not JSON, RFC 8259 §6);
* a lone UTF-16 surrogate (``"\\ud800"``) is an error: it is not a Unicode scalar value, cannot be
  encoded as UTF-8 (SQLite raised), and serde_json refuses it in a `String`;
* U+0000 is an error when asked (`allow_nul=False`): PostgreSQL ``text`` cannot hold it, and no
  field of this protocol carries it.

Written here rather than taken from a library because these are this protocol's rules (the
stdlib parser does the parsing; only the checks are ours).
"""

from __future__ import annotations

import json
import math
from typing import Any


class JsonRefused(ValueError):
    """The text is not strict JSON; the message says which rule (never the offending bytes)."""


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonRefused("a number overflows a 64-bit float")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(key)
        result[key] = value
    return result


class _RecordingObject(dict[str, Any]):
    """An object that remembers which keys its text repeated (the last value wins, as in serde_json's `Map`)."""

    duplicates: frozenset[str] = frozenset()


def _recording_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = _RecordingObject()
    repeated = set()
    for key, value in pairs:
        if key in result:
            repeated.add(key)
        result[key] = value
    if repeated:
        result.duplicates = frozenset(repeated)
    return result


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonRefused("the text is not UTF-8") from None


def check_strings(value: Any, *, allow_nul: bool = False) -> None:
    """Every string in `value` (keys included) is a sequence of Unicode scalar values, without
    U+0000 unless `allow_nul`. Iterative: the depth is whatever the parser allowed."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_string(item, allow_nul)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_string(key, allow_nul)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _check_string(text: str, allow_nul: bool) -> None:
    if text.isascii():
        if not allow_nul and "\x00" in text:
            raise JsonRefused("a string contains U+0000")
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused("a string contains a lone UTF-16 surrogate") from None
    if not allow_nul and "\x00" in text:
        raise JsonRefused("a string contains U+0000")


def loads(data: bytes | str, *, allow_nul: bool = False) -> Any:
    """Parse strict JSON (rules above); raise `JsonRefused`."""
    try:
        value = json.loads(
            _text(data),
            object_pairs_hook=_unique_object,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except _Duplicate as exc:
        raise JsonRefused(f"the key {exc.key!r} is repeated in one object") from None
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused("the text nests too deeply") from None
    except ValueError as exc:
        raise JsonRefused(_reason(exc)) from None
    check_strings(value, allow_nul=allow_nul)
    return value


def loads_recording_duplicates(data: bytes | str) -> Any:
    """Parse JSON as serde_json reads it into a map (UTF-8 only, last value wins) but record the
    repeated keys of each object in its `duplicates` attribute (see `duplicated_keys`)."""
    try:
        return json.loads(_text(data), object_pairs_hook=_recording_object, parse_constant=_refuse_constant)
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused("the text nests too deeply") from None
    except ValueError as exc:
        raise JsonRefused(_reason(exc)) from None


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):  # its message names the rule and a position, not the text
        return f"not JSON: {exc.msg} at character {exc.pos}"
    return "not JSON: a number has too many digits"  # int() refuses more than 4300 digits


def duplicated_keys(value: Any) -> frozenset[str]:
    """The keys an object parsed by `loads_recording_duplicates` repeated."""
    return getattr(value, "duplicates", frozenset())
