"""Load the pinned TEE JWT public key once, at start.

Accepted: a PEM or DER RSA public key (SubjectPublicKeyInfo or PKCS#1) of at least 2048 bits (the
worker signs RS256 with RSA-2048). A *private* key is refused: the worker's `auth_token_key.bin`
also signs the tokens the worker itself trusts (`omni_addWallet`, `omni_exportWallet`), so a
broker holding it could forge any identity there. Export the public half instead:
``openssl rsa -inform DER -in auth_token_key.bin -pubout -out tee_jwt_public_key.pem``.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class TeeKeyError(ValueError):
    """The configured TEE key cannot be used."""


def parse_public_key(data: bytes, source: str) -> rsa.RSAPublicKey:
    for load_private in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            load_private(data, None)
        except (ValueError, TypeError):
            continue
        raise TeeKeyError(
            f"{source} is a private key: give the broker the TEE's public key only "
            "(openssl rsa -inform DER -in auth_token_key.bin -pubout)"
        )
    for load_public in (serialization.load_pem_public_key, serialization.load_der_public_key):
        try:
            return _require_rsa(load_public(data), source)
        except (ValueError, TypeError):
            continue
    raise TeeKeyError(f"{source}: not a PEM or DER RSA public key")


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
