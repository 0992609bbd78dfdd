"""Hex and base58 codecs with the worker's exact acceptance rules.

`decode_hex` is `primitives/src/utils/hex.rs` (`decode_hex`): an optional *lowercase* ``0x`` prefix
is stripped, then the rest must be hex digits of either case, in pairs. `hex_encode` renders
``0x`` + lowercase hex, as the worker does for OmniAccounts and signatures.
"""

from __future__ import annotations

import base58

from agentkeys_kit.protocol.rust_fmt import debug_char

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_HEX_BYTES = frozenset(b"0123456789abcdefABCDEF")


class HexError(ValueError):
    """A string that the worker's hex decoder refuses; `display` is the `hex` crate's
    `FromHexError` Display (``Odd number of digits``, ``Invalid character 'x' at position 3``)."""

    def __init__(self, message: str, display: str = "Invalid string length") -> None:
        super().__init__(message)
        self.display = display


def _hex_crate_error(value: str) -> str:
    """`hex::decode`'s first error: odd length before any character; a bad character is reported
    byte by byte (`c: byte as char`, `index` in bytes)."""
    raw = value.encode("utf-8", errors="surrogateescape")
    if len(raw) % 2:
        return "Odd number of digits"
    for index, byte in enumerate(raw):
        if byte not in _HEX_BYTES:
            return f"Invalid character {debug_char(chr(byte))} at position {index}"
    return "Invalid string length"


def decode_hex(value: str) -> bytes:
    """Decode hex with an optional lowercase ``0x`` prefix (`decode_hex` in the worker)."""
    body = value[2:] if value.startswith("0x") else value
    return decode_bare_hex(body)


def decode_bare_hex(value: str) -> bytes:
    """Decode hex without any prefix (`hex::decode`, used for Bitcoin signatures)."""
    if len(value) % 2 or not _HEX_DIGITS.issuperset(value):
        raise HexError(f"invalid hex string: {value[:80]!r}", _hex_crate_error(value))
    return bytes.fromhex(value)


def hex_encode(raw: bytes) -> str:
    """``0x`` + lowercase hex (`hex_encode` in the worker)."""
    return "0x" + raw.hex()


def decode_base58(value: str) -> bytes:
    """Bitcoin-alphabet base58 (the `base58` crate's `FromBase58`)."""
    try:
        return base58.b58decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise HexError(f"invalid base58 string: {value[:80]!r}") from exc


def encode_base58(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")
