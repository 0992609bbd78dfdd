"""Broker sessions: the broker's own ES256 tokens, their key, their JWKS, logout.

The session key (`BROKER_SESSION_KEYPAIR_PATH`, default ``~/.agentkeys/broker/session-keypair.json``)
is a JSON file ``{kid, private_key_pem (PKCS#8), purpose: "session"}`` (the layout of the AgentKeys
broker's key files, spec §1.4/§1.5), created mode 0600 in a 0700 directory on first start and
loaded once at start. The broker refuses to start when the file is not a session key (another
``purpose``, not a P-256 key) or is readable or writable by anyone but its owner. Replicas behind
one load balancer must be given the same file (it is created with an exclusive link, so replicas
starting together on a shared volume end up with one key).

A session token is a compact JWS, header ``{"alg": "ES256", "kid", "typ": "JWT"}``, claims
``iss`` (`BROKER_PUBLIC_URL`, else ``urn:agentkeys:broker``), ``sub = agentkeys:user:<omni>``,
``aud = agentkeys:broker``, ``iat``, ``exp`` (`BROKER_SESSION_JWT_TTL_SECONDS`, default 5 h,
60 s to 24 h), ``jti`` and ``agentkeys: {omni_account, wallet_address, identity_type,
identity_value}`` (spec §1.5). Every issued session is a row of ``broker_sessions``; logout sets
its ``revoked_at`` and every replica refuses it from the next request on.

Endpoints: ``GET /v1/auth/jwks.json`` (the session key as a JWK Set; the OIDC key for STS is
published separately at ``/.well-known/jwks.json``) and ``POST /v1/auth/logout`` (bearer: a
session is revoked by its ``jti``; a TEE access token is no longer accepted by this broker).

Signing and verification use PyJWT with the algorithm pinned; the key file handling is written
here because no library reads this file format.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.bearer import Principal, audit_event, protected
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.protocol.tee_jwt import TokenRejected

SESSION_AUDIENCE = "agentkeys:broker"
DEFAULT_ISSUER = "urn:agentkeys:broker"
SUBJECT_PREFIX = "agentkeys:user:"
KEY_PURPOSE = "session"
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class SessionKeyError(ValueError):
    """The session key file cannot be used (the broker does not start)."""


@dataclass(frozen=True, slots=True)
class SessionKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    path: Path
    public_key: ec.EllipticCurvePublicKey = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_key", self.private_key.public_key())  # derived once, not per request

    def jwk(self) -> dict[str, str]:
        numbers = self.public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------- the key file


def load_or_create_session_key(path: Path, now: int) -> SessionKey:
    """The session key at `path`, created on first start (0600, exclusive) if missing."""
    path = path.expanduser()
    if not path.exists():
        _create(path, now)
    return load_session_key(path)


def _create(path: Path, now: int) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SessionKeyError(f"cannot create the directory of {path}: {exc.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    document = {"kid": f"ak-session-{now}", "private_key_pem": pem.decode("ascii"), "purpose": KEY_PURPOSE}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # exclusive: a replica that got there first keeps its key
            os.link(temporary, path)
    except OSError as exc:
        raise SessionKeyError(f"cannot create the session key {path}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)


def load_session_key(path: Path) -> SessionKey:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SessionKeyError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise SessionKeyError(
                f"{path} is accessible to others (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise SessionKeyError(f"cannot read the session key {path}: {exc.strerror}") from None
    try:
        document = json.loads(raw)
    except ValueError:
        raise SessionKeyError(f"{path} is not a session key file (not JSON)") from None
    if not isinstance(document, dict):
        raise SessionKeyError(f"{path} is not a session key file")
    purpose = document.get("purpose")
    if purpose != KEY_PURPOSE:
        raise SessionKeyError(f"{path} is not a session key (purpose {purpose!r}, expected {KEY_PURPOSE!r})")
    kid, pem = document.get("kid"), document.get("private_key_pem")
    if not isinstance(kid, str) or not _KID.fullmatch(kid) or not isinstance(pem, str):
        raise SessionKeyError(f"{path}: kid and private_key_pem are required")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise SessionKeyError(f"{path}: private_key_pem is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SessionKeyError(f"{path}: a session key is an EC P-256 key (ES256)")
    return SessionKey(kid, key, path)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class SessionClaims:
    jti: str
    omni_account: str
    identity_type: str
    identity_value: str
    wallet: str | None
    issued_at: int
    expires_at: int


class SessionTokenRejected(TokenRejected):
    """A session token fails a rule; the message names it."""


#: Verified session tokens remembered (their claims), so a bearer presented again is not
#: re-verified: a signature check is deterministic for the same bytes and the one pinned key, so the
#: answer cannot change; the time rules (``exp``, ``iat``) are checked again on every use and
#: revocation is the caller's database read. Bounded; the oldest is forgotten first.
VERIFIED_CACHE_SIZE = 4096


class SessionIssuer:
    """Signs and verifies session tokens with the one session key (algorithm pinned to ES256)."""

    def __init__(self, key: SessionKey, issuer: str, ttl: int, skew: int) -> None:
        self.key = key
        self.issuer = issuer
        self.ttl = ttl
        self.skew = skew
        self._verified: OrderedDict[str, SessionClaims] = OrderedDict()

    def issue(
        self, *, omni_account: str, identity_type: str, identity_value: str, wallet: str | None, now: int
    ) -> tuple[str, SessionClaims]:
        claims = SessionClaims(
            jti="ses_" + secrets.token_hex(16),
            omni_account=omni_account,
            identity_type=identity_type,
            identity_value=identity_value,
            wallet=wallet,
            issued_at=now,
            expires_at=now + self.ttl,
        )
        payload = {
            "iss": self.issuer,
            "sub": SUBJECT_PREFIX + omni_account,
            "aud": SESSION_AUDIENCE,
            "iat": now,
            "exp": claims.expires_at,
            "jti": claims.jti,
            "agentkeys": {
                "omni_account": omni_account,
                "wallet_address": wallet,
                "identity_type": identity_type,
                "identity_value": identity_value,
            },
        }
        headers = {"kid": self.key.kid, "typ": "JWT"}
        token = jwt.encode(payload, self.key.private_key, algorithm="ES256", headers=headers)
        return token, claims

    def knows(self, token: str) -> bool:
        """`token` verified before (its signature and claims; the time rules still apply)."""
        return token in self._verified

    def verify(self, token: str, header: dict[str, Any], now: int) -> SessionClaims:
        """Signature (ES256, this key), ``kid``, ``iss``, ``aud``, ``exp`` (no leeway), ``iat``
        (at most the clock skew ahead), and the claims' shape. Revocation is the caller's."""
        cached = self._verified.get(token)
        if cached is None:
            cached = self._verify_signed(token, header)
            self._verified[token] = cached
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        if cached.expires_at <= now:
            raise SessionTokenRejected("the session has expired")
        if cached.issued_at > now + self.skew:
            raise SessionTokenRejected("the session was issued in the future (iat)")
        return cached

    def _verify_signed(self, token: str, header: dict[str, Any]) -> SessionClaims:
        if header.get("alg") != "ES256":
            raise SessionTokenRejected("a session token is ES256")
        if header.get("kid") != self.key.kid:
            raise SessionTokenRejected("unknown kid")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self.key.public_key,
                algorithms=["ES256"],
                audience=SESSION_AUDIENCE,
                issuer=self.issuer,
                options={
                    "require": ["iss", "sub", "aud", "iat", "exp", "jti"],
                    "verify_exp": False,  # checked below against the broker's clock
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise SessionTokenRejected(f"{type(exc).__name__}: {exc}") from None
        exp, iat, jti = payload["exp"], payload["iat"], payload["jti"]
        if any(isinstance(value, bool) or not isinstance(value, int) for value in (exp, iat)):
            raise SessionTokenRejected("exp and iat are integers")
        identity = payload.get("agentkeys")
        if not isinstance(jti, str) or not isinstance(identity, dict):
            raise SessionTokenRejected("jti and agentkeys are required")
        omni, kind, value, wallet = (
            identity.get(name) for name in ("omni_account", "identity_type", "identity_value", "wallet_address")
        )
        if not all(isinstance(item, str) for item in (omni, kind, value)) or not isinstance(wallet, (str, type(None))):
            raise SessionTokenRejected("agentkeys claims are malformed")
        if payload["sub"] != SUBJECT_PREFIX + str(omni):
            raise SessionTokenRejected("sub does not name agentkeys.omni_account")
        return SessionClaims(jti, str(omni), str(kind), str(value), wallet, iat, exp)


def session_issuer_name(public_url: str | None) -> str:
    return public_url or DEFAULT_ISSUER


# --------------------------------------------------------------------------- endpoints


async def session_jwks(request: web.Request) -> web.Response:
    """``GET /v1/auth/jwks.json``: the session key, so others can check a session's signature."""
    return web.json_response({"keys": [request.app[STATE].sessions.key.jwk()]})


@protected("logout")
async def logout(request: web.Request, state: BrokerState, principal: Principal) -> web.Response:
    """``POST /v1/auth/logout``: the presented bearer stops working at once, on every replica."""
    audit = audit_event(state, request, principal, "logout", detail=principal.via)
    if principal.via == "session":
        assert principal.session_id is not None
        jti = principal.session_id
        revoked = await state.db.run(lambda: login_store.revoke_session(jti=jti, audit=audit))
    else:
        sha = principal.token_sha256
        revoked = await state.db.run(lambda: login_store.revoke_access_token(token_sha256=sha, audit=audit))
    if not revoked:  # a concurrent logout of the same bearer got there first
        raise errors.invalid_bearer("the session was revoked")
    return errors.ok({"revoked": True, "via": principal.via, "omni_account": principal.omni_account})


def add_session_routes(app: web.Application) -> None:
    app.router.add_get("/v1/auth/jwks.json", session_jwks)
    app.router.add_post("/v1/auth/logout", logout)
