"""The broker as an OIDC issuer that AWS STS trusts (`agentkeys-broker.md` §1.4).

* ``GET /.well-known/openid-configuration`` and ``GET /.well-known/jwks.json``, exactly the
  fields §1.4 lists; ``claims_supported`` names the claims this broker issues (the #64 list named
  claims it never set).
* The signing key: ES256 (P-256) in `BROKER_OIDC_KEYPAIR_PATH` (default
  ``~/.agentkeys/broker/oidc-keypair.json``), the spec's file ``{kid, private_key_pem (PKCS#8),
  purpose}`` with ``purpose: "oidc"``, ``kid`` ``v1-<unix seconds at generation>``, created with
  mode 0600 on first start. A file that is not a regular file, is readable or writable by group or
  others, has another or no ``purpose`` (the session key's file included: V0.1-FOLLOWUPS R1-F9),
  or holds another kind of key is refused, at start and at every reload (R1-F7).
* Rotation (`agentkeys-broker oidc rotate`): the file gets a new key; the old one's *public* key
  moves to ``retired`` with ``publish_until`` = rotation time + the longest OIDC JWT lifetime
  (3600 s) + `RELOAD_GRACE`; its private key is dropped (nothing signs with it again). The JWKS
  publishes the active key and every retired key until its ``publish_until``, so a token signed
  just before the rotation verifies until it expires, and one signed after uses the new key.
* Keys are read once at start, then again only when the file changes (`OidcKeys.watch` looks at
  its size, inode and mtime every `RELOAD_SECONDS`): a running broker picks up a rotation within
  seconds, without a restart. A changed file that fails a check is not used; the broker keeps its
  keys and says so once per change.

The file format and the rotation are the broker's own (no library manages an OIDC issuer's key
file); signing and the JWK encoding are PyJWT's and cryptography's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from agentkeys_kit.broker import background

log = logging.getLogger(__name__)

PURPOSE = "oidc"
MAX_JWT_TTL = 3600  # the longest BROKER_OIDC_JWT_TTL_SECONDS
RELOAD_SECONDS = 2.0
RELOAD_GRACE = 120  # seconds a retired key stays published beyond the longest token: reload + clock skew
_KID = re.compile(r"v1-[0-9]{1,12}")
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"
#: What this broker puts in an OIDC JWT (`broker/mint.py`).
CLAIMS_SUPPORTED = (
    "iss",
    "sub",
    "aud",
    "iat",
    "exp",
    "agentkeys_user_wallet",
    "agentkeys_actor_omni",
    "agentkeys_grant_id",
    "https://aws.amazon.com/tags",
)


class OidcKeyError(RuntimeError):
    """The key file cannot be used (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class RetiredKey:
    kid: str
    public_jwk: dict[str, str]
    retired_at: int
    publish_until: int


@dataclass(frozen=True, slots=True)
class OidcKeySet:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: int
    retired: tuple[RetiredKey, ...] = ()

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.kid, self.private_key.public_key())

    def published(self, now: int) -> list[dict[str, str]]:
        """The JWKS keys at `now`: the active key, then retired keys still inside their window."""
        return [self.public_jwk()] + [key.public_jwk for key in self.retired if key.publish_until > now]

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.private_key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})


def public_jwk(kid: str, key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """RFC 7517 EC JWK, x/y base64url without padding (PyJWT's encoder), plus kid/alg/use."""
    fields = json.loads(ECAlgorithm.to_jwk(key))
    return {"kty": "EC", "crv": "P-256", "x": fields["x"], "y": fields["y"], "kid": kid, "alg": "ES256", "use": "sig"}


# --------------------------------------------------------------------------- the key file


def _check_file(path: Path) -> os.stat_result:
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise OidcKeyError(f"cannot read the OIDC key file {path} (BROKER_OIDC_KEYPAIR_PATH): {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise OidcKeyError(f"the OIDC key file {path} is not a regular file (a symlink or a directory is refused)")
    if info.st_mode & 0o077:
        raise OidcKeyError(
            f"the OIDC key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group and others must have no "
            f"access (chmod 600 {path})"
        )
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise OidcKeyError(f"the OIDC key file {path} belongs to another user (uid {info.st_uid})")
    return info


def _load_private_key(pem: Any, path: Path) -> ec.EllipticCurvePrivateKey:
    if not isinstance(pem, str) or "PRIVATE KEY" not in pem:
        raise OidcKeyError(f"{path}: private_key_pem must be a PKCS#8 PEM private key")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise OidcKeyError(f"{path}: private_key_pem is not a readable unencrypted PKCS#8 key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise OidcKeyError(f"{path}: the OIDC key must be an EC P-256 key (ES256)")
    return key


def _parse(path: Path, raw: bytes) -> OidcKeySet:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OidcKeyError(f"{path} is not a JSON key file") from None
    if not isinstance(document, dict):
        raise OidcKeyError(f"{path} is not a JSON key file")
    purpose = document.get("purpose")
    if purpose != PURPOSE:
        raise OidcKeyError(
            f"{path} is not an OIDC signing key (purpose {purpose!r}, expected {PURPOSE!r}): the OIDC key and the "
            "session key must be different files"
        )
    kid = document.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise OidcKeyError(f"{path}: kid must be v1-<unix seconds>")
    key = _load_private_key(document.get("private_key_pem"), path)
    retired = []
    for item in document.get("retired", []):
        try:
            jwk = {name: str(item["public_jwk"][name]) for name in ("kty", "crv", "x", "y", "kid", "alg", "use")}
            retired.append(RetiredKey(str(item["kid"]), jwk, int(item["retired_at"]), int(item["publish_until"])))
        except (KeyError, TypeError, ValueError):
            raise OidcKeyError(f"{path}: a retired key entry is malformed") from None
    return OidcKeySet(kid, key, int(document.get("created_at", kid[3:])), tuple(retired))


def _document(keys: OidcKeySet) -> dict[str, Any]:
    pem = keys.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return {
        "purpose": PURPOSE,
        "kid": keys.kid,
        "private_key_pem": pem,
        "created_at": keys.created_at,
        "retired": [
            {
                "kid": key.kid,
                "public_jwk": key.public_jwk,
                "retired_at": key.retired_at,
                "publish_until": key.publish_until,
            }
            for key in keys.retired
        ],
    }


def _write_new(path: Path, keys: OidcKeySet, *, replace: bool) -> None:
    """Write the file with mode 0600 from its first byte: a new file (O_EXCL) or, for `replace`,
    a temporary file renamed over the old one (a crash leaves the old or the new file, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps(_document(keys), indent=2) + "\n").encode("ascii")
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(target, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def generate(now: int) -> OidcKeySet:
    return OidcKeySet(f"v1-{now}", ec.generate_private_key(ec.SECP256R1()), now)


def read_key_file(path: Path) -> OidcKeySet:
    _check_file(path)
    return _parse(path, path.read_bytes())


def load_or_create(path: Path, now: int) -> tuple[OidcKeySet, bool]:
    """The key set in `path`, created (0600) when there is no file; returns (keys, created)."""
    try:
        return read_key_file(path), False
    except FileNotFoundError:
        pass
    keys = generate(now)
    try:
        _write_new(path, keys, replace=False)
    except FileExistsError:  # another broker created it a moment ago
        return read_key_file(path), False
    except OSError as exc:
        raise OidcKeyError(f"cannot create the OIDC key file {path}: {exc.strerror}") from None
    return keys, True


def rotate(path: Path, now: int) -> tuple[OidcKeySet, RetiredKey]:
    """A new active key; the old one's public key published until its last token expired."""
    try:
        current = read_key_file(path)
    except FileNotFoundError:
        raise OidcKeyError(f"no OIDC key file at {path}: start the broker once to create it") from None
    new = generate(now)
    if new.kid == current.kid or any(key.kid == new.kid for key in current.retired):
        raise OidcKeyError(f"a key with kid {new.kid} exists already: rotate again in a second")
    old = RetiredKey(current.kid, current.public_jwk(), now, now + MAX_JWT_TTL + RELOAD_GRACE)
    kept = tuple(key for key in current.retired if key.publish_until > now)
    rotated = OidcKeySet(new.kid, new.private_key, now, (*kept, old))
    _write_new(path, rotated, replace=True)
    return rotated, old


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class OidcKeys:
    """The key set a running broker signs and publishes with, reloaded when its file changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.current: OidcKeySet | None = None
        self._seen: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> bool:
        """At start: read (or create) the file; a refused file stops the broker. True if created."""
        keys, created = load_or_create(self.path, int(self.clock()))
        self.current = keys
        self._seen = _signature(self.path)
        return created

    @property
    def keys(self) -> OidcKeySet:
        if self.current is None:
            raise OidcKeyError("the OIDC keys are not loaded")
        return self.current

    def reload_if_changed(self) -> bool:
        seen = _signature(self.path)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            keys = read_key_file(self.path)
        except (OidcKeyError, OSError) as exc:
            log.error("the OIDC key file changed but cannot be used; keeping kid %s: %s", self.keys.kid, exc)
            return False
        if keys.kid != self.keys.kid:
            log.warning("OIDC signing key rotated: %s -> %s", self.keys.kid, keys.kid)
        self.current = keys
        return True

    def watch(self, interval: float = RELOAD_SECONDS) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await asyncio.to_thread(self.reload_if_changed)

        self._task = asyncio.create_task(loop(), name="broker-oidc-keys")

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await background.stop(task)


# --------------------------------------------------------------------------- discovery and JWKS


def discovery_document(issuer: str) -> dict[str, Any]:
    """§1.4: what AWS reads to find the JWKS (the issuer byte-exact, as configured)."""
    return {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": list(CLAIMS_SUPPORTED),
    }


OIDC_KEYS = web.AppKey("broker_oidc_keys", OidcKeys)
ISSUER = web.AppKey("broker_oidc_issuer", str)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("broker_oidc_clock")


async def openid_configuration(request: web.Request) -> web.Response:
    response = web.json_response(discovery_document(request.app[ISSUER]))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


async def jwks(request: web.Request) -> web.Response:
    now = int(request.app[CLOCK]())
    response = web.json_response({"keys": request.app[OIDC_KEYS].keys.published(now)})
    # Short: a rotation must reach AWS while the retired key is still published.
    response.headers["Cache-Control"] = "public, max-age=60"
    return response


def add_oidc_routes(app: web.Application, keys: OidcKeys, issuer: str, clock: Callable[[], float]) -> None:
    app[OIDC_KEYS] = keys
    app[ISSUER] = issuer
    app[CLOCK] = clock
    app.router.add_get(DISCOVERY_PATH, openid_configuration)
    app.router.add_get(JWKS_PATH, jwks)
