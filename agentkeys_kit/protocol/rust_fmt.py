"""Rust's ``Debug`` and ``Display`` renderings that reach the wire inside error ``reason`` texts.

The worker formats many reasons as ``format!("{ctx}: {err:?}")`` (`RpcResultExt::map_err_internal`
and `map_err_parse`, `rpc-server/src/utils/types.rs@677675c8`), so a `&str` error shows up quoted
and escaped, a `Vec<u64>` as ``[1, 2]``, an enum variant by name. Only the shapes the login path
produces are here.
"""

from __future__ import annotations

from collections.abc import Iterable

_ESCAPES = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", "\0": "\\0"}


def _escape_char(char: str, quote: str) -> str:
    """`char::escape_debug`: the quote of the literal, backslash and control characters are
    escaped; other printable characters stay as they are."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char == quote:
        return "\\" + char
    if not char.isprintable():
        return f"\\u{{{ord(char):x}}}"
    return char


def debug_str(text: str) -> str:
    """``{:?}`` of a `&str` / `String`: ``"text"`` with `escape_debug` inside."""
    return '"' + "".join(_escape_char(char, '"') for char in text) + '"'


def debug_char(char: str) -> str:
    """``{:?}`` of a `char`: ``'c'``."""
    return "'" + _escape_char(char, "'") + "'"


def debug_list(items: Iterable[object]) -> str:
    """``{:?}`` of a `Vec`: numbers as they are, strings quoted, ``", "`` between them."""
    rendered = (debug_str(item) if isinstance(item, str) else str(item) for item in items)
    return "[" + ", ".join(rendered) + "]"


def to_i32(value: int) -> int:
    """``value as i32`` for a `u32`: the bits are kept, so 2³¹ and above wrap to negatives."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
