"""Key files in the worker's own format under ``<local-dir>/keystore/``.

`auth_token_key.bin` is the JWT key: RSA-2048, raw PKCS#1 DER, generated on first start and used
as is afterwards (`rpc-server/src/auth_token_key_store.rs@0ea95c49`, `bin/src/main.rs@17b8c4dc`), so
pointing the simulator at a real worker's key file reproduces its tokens byte for byte.
`shielding_key.bin` holds the RSA-3072 shielding key, also PKCS#1 DER (the worker's exact
encoding of that file is not pinned; only its public half is observable, via
`omni_getShieldingKey`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

AUTH_TOKEN_KEY_FILE = "auth_token_key.bin"
SHIELDING_KEY_FILE = "shielding_key.bin"
AUTH_TOKEN_KEY_BITS = 2048
SHIELDING_KEY_BITS = 3072


class KeystoreError(RuntimeError):
    """A key file exists but cannot be used."""


def keystore_dir(local_dir: Path) -> Path:
    return local_dir / "keystore"


def load_or_create_rsa_key(path: Path, bits: int) -> rsa.RSAPrivateKey:
    if path.exists():
        return load_pkcs1_der(path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1 RSAPrivateKey
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(der)
    os.replace(tmp, path)
    return key


def load_pkcs1_der(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_der_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeystoreError(f"{path} is not a PKCS#1 DER RSA private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeystoreError(f"{path} holds a {type(key).__name__}, not an RSA key")
    return key


def load_auth_token_key(local_dir: Path) -> rsa.RSAPrivateKey:
    return load_or_create_rsa_key(keystore_dir(local_dir) / AUTH_TOKEN_KEY_FILE, AUTH_TOKEN_KEY_BITS)


def load_shielding_key(local_dir: Path) -> rsa.RSAPrivateKey:
    return load_or_create_rsa_key(keystore_dir(local_dir) / SHIELDING_KEY_FILE, SHIELDING_KEY_BITS)


def public_key_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
