"""`base64::engine::general_purpose::URL_SAFE_NO_PAD` of the `base64` crate 0.22 (the worker's
`Cargo.toml@701b0755`), with its refusals and their Display texts.

Python's `urlsafe_b64decode` is lenient (it ignores stray characters, accepts padding and
non-zero trailing bits); the worker's engine refuses all three, and the passkey and OAuth2 paths
put the error text into ``data.reason``. So this decoder is written out here.
"""

from __future__ import annotations

import base64

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUES = {byte: index for index, byte in enumerate(_ALPHABET)}
_PAD = ord("=")


class Base64Error(ValueError):
    """`base64::DecodeError`; the message is its Display."""


def decode(text: str) -> bytes:
    """Decode unpadded base64url; raise `Base64Error` where the `base64` crate would."""
    raw = text.encode("utf-8", errors="surrogateescape")
    for index, byte in enumerate(raw):
        if byte in _VALUES:
            continue
        if byte == _PAD and set(raw[index:]) == {_PAD} and len(raw) - index <= 2:
            raise Base64Error("Invalid padding")  # padding is refused by `RequireNone`
        raise Base64Error(f"Invalid symbol {byte}, offset {index}.")
    if len(raw) % 4 == 1:
        raise Base64Error(f"Invalid input length: {len(raw)}")
    remainder = len(raw) % 4
    if remainder:
        last = _VALUES[raw[-1]]
        unused_bits = {2: 4, 3: 2}[remainder]
        if last & ((1 << unused_bits) - 1):
            raise Base64Error(f"Invalid last symbol {raw[-1]}, offset {len(raw) - 1}.")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def encode(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
