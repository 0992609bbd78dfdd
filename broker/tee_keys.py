"""Load the pinned TEE JWT public key once, at start.

Accepted: a PEM or DER public key (SubjectPublicKeyInfo or PKCS#1), or the worker's private key file
(`auth_token_key.bin`, PKCS#1 DER, or PEM), whose public half is taken. Only RSA keys of at least
2048 bits are accepted: the worker signs RS256 with RSA-2048.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class TeeKeyError(ValueError):
    """The configured TEE key cannot be used."""


def parse_public_key(data: bytes, source: str) -> rsa.RSAPublicKey:
    loaders_public = (serialization.load_pem_public_key, serialization.load_der_public_key)
    for load_public in loaders_public:
        try:
            key = load_public(data)
        except (ValueError, TypeError):
            continue
        return _require_rsa(key, source)
    for load_private in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            private = load_private(data, None)
        except (ValueError, TypeError):
            continue
        if isinstance(private, rsa.RSAPrivateKey):
            return _require_rsa(private.public_key(), source)
        raise TeeKeyError(f"{source}: not an RSA key")
    try:  # PKCS#1 RSAPublicKey in PEM ("BEGIN RSA PUBLIC KEY") is covered above; raw PKCS#1 DER:
        return _require_rsa(serialization.load_der_public_key(data), source)
    except (ValueError, TypeError):
        raise TeeKeyError(f"{source}: not a PEM or DER RSA key") from None


def _require_rsa(key: object, source: str) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise TeeKeyError(f"{source}: {type(key).__name__} is not an RSA public key")
    if key.key_size < 2048:
        raise TeeKeyError(f"{source}: RSA-{key.key_size} is too small")
    return key


def load_public_key_file(path: Path) -> rsa.RSAPublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TeeKeyError(f"cannot read TEE key {path}: {exc}") from None
    return parse_public_key(data, str(path))


async def fetch_public_key(url: str, limit_seconds: float = 10.0) -> rsa.RSAPublicKey:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_seconds)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise TeeKeyError(f"{url}: HTTP {response.status}")
            data = await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TeeKeyError(f"cannot fetch TEE key from {url}: {exc}") from None
    return parse_public_key(data, url)
