"""How the worker's serde-derived structs accept JSON, restated for Python values.

The worker parses params with jsonrpsee `Params::parse` = `serde_json::from_str` into derived
structs (spec §2.3). The rules reproduced here:

* a struct accepts an object (unknown keys ignored, a missing `Option` field is `None`, a missing
  required field is an error, a repeated known field is an error) or an array holding *exactly*
  its fields in declaration order (a missing trailing element is an error even for `Option`
  fields; extra elements are an error);
* `null`, strings, numbers and booleans are not structs;
* `String` accepts only JSON strings; `u32`/`u64`/`u128` only non-negative integers below 2³²/2⁶⁴/
  2¹²⁸ (not floats, not booleans); `Option<T>` accepts `null` or `T`;
* adjacently tagged enums (`#[serde(tag = "type", content = "value")]`) accept
  ``{"type": tag, "value": content}`` in either key order, unknown keys ignored, or the
  two-element array ``[tag, content]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class SerdeError(ValueError):
    """A value the worker's deserializer rejects."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    parse: Callable[[Any], Any]
    optional: bool = False


def duplicated_keys(value: Mapping[str, Any]) -> frozenset[str]:
    """Keys the JSON object repeated, when the decoder recorded them (see `omni_sim.rpc`)."""
    return getattr(value, "duplicates", frozenset())


def parse_struct(value: Any, fields: Sequence[Field], struct: str) -> dict[str, Any]:
    """Parse `value` as a derived struct with `fields`; returns name → parsed value."""
    if isinstance(value, Mapping):
        repeated = duplicated_keys(value) & {spec.name for spec in fields}
        if repeated:
            raise SerdeError(f"duplicate field `{min(repeated)}` in {struct}")
        out: dict[str, Any] = {}
        for spec in fields:
            if spec.name not in value:
                if not spec.optional:
                    raise SerdeError(f"missing field `{spec.name}` in {struct}")
                out[spec.name] = None
                continue
            out[spec.name] = _parse_field(spec, value[spec.name])
        return out
    if isinstance(value, list):
        if len(value) != len(fields):
            raise SerdeError(f"invalid length {len(value)}, expected struct {struct} with {len(fields)} elements")
        return {spec.name: _parse_field(spec, item) for spec, item in zip(fields, value, strict=True)}
    raise SerdeError(f"invalid type: {json_type(value)}, expected struct {struct}")


def _parse_field(spec: Field, raw: Any) -> Any:
    if spec.optional and raw is None:
        return None
    try:
        return spec.parse(raw)
    except SerdeError as exc:
        raise SerdeError(f"{spec.name}: {exc}") from exc


def parse_adjacently_tagged(value: Any, enum: str) -> tuple[str, Any, bool]:
    """Split an adjacently tagged enum into (tag, content, has_content)."""
    if isinstance(value, Mapping):
        if duplicated_keys(value) & {"type", "value"}:
            raise SerdeError(f"duplicate field in {enum}")
        tag = value.get("type")
        if "type" not in value:
            raise SerdeError(f"missing field `type` in {enum}")
        if not isinstance(tag, str):
            raise SerdeError(f"invalid type: {json_type(tag)}, expected variant identifier of {enum}")
        return tag, value.get("value"), "value" in value
    if isinstance(value, list):
        if len(value) != 2 or not isinstance(value[0], str):
            raise SerdeError(f"invalid adjacently tagged {enum}")
        return value[0], value[1], True
    raise SerdeError(f"invalid type: {json_type(value)}, expected adjacently tagged enum {enum}")


def string(value: Any) -> str:
    """`String`: a JSON string that is valid Unicode (serde_json refuses lone surrogates)."""
    if not isinstance(value, str):
        raise SerdeError(f"invalid type: {json_type(value)}, expected a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SerdeError("lone surrogate in string") from None
    return value


def _unsigned(value: Any, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SerdeError(f"invalid type: {json_type(value)}, expected u{bits}")
    if not 0 <= value < 1 << bits:
        raise SerdeError(f"invalid value: integer `{value}`, expected u{bits}")
    return value


def u32(value: Any) -> int:
    return _unsigned(value, 32)


def u64(value: Any) -> int:
    return _unsigned(value, 64)


def u128(value: Any) -> int:
    """`u128`: serde_json reads integers up to 2¹²⁸−1 (floats and negatives are refused)."""
    return _unsigned(value, 128)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SerdeError(f"invalid type: {json_type(value)}, expected a boolean")
    return value


def optional(parse: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def parse_optional(value: Any) -> T | None:
        return None if value is None else parse(value)

    return parse_optional


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "sequence"
    return "map"
