"""RFC 6238 TOTP (SHA-1, 30 s, 6 digits), for `user_connect`'s `googleAuthCheck`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct


def totp(secret_b32: str, at: int, *, step: int = 30, digits: int = 6) -> str:
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    counter = struct.pack(">Q", at // step)
    digest = hmac.new(key, counter, hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def verify_totp(secret_b32: str, code: str, at: int, *, window: int = 1) -> bool:
    """Accept the current step and `window` steps either side; compare in constant time."""
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return False
    try:
        candidates = [totp(secret_b32, at + delta * 30) for delta in range(-window, window + 1)]
    except (ValueError, TypeError):
        return False
    return any(hmac.compare_digest(candidate, code) for candidate in candidates)
