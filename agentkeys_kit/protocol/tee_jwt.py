"""The TEE worker's RS256 JWTs (spec §7).

Signing mirrors `jsonwebtoken` 9.3 as the worker calls it (`crypto/src/jwt.rs`,
`core/src/auth/auth_token.rs@677675c8`): header ``{"typ":"JWT","alg":"RS256"}`` in that order,
claims ``sub, typ, exp, aud`` in that order, compact serde JSON, base64url without padding,
RSASSA-PKCS1-v1_5 with SHA-256 (deterministic, so the same key and clock give the same bytes).

Verification mirrors `verify_auth_token_authentication`: RS256 only, ``exp`` with 60 s leeway
(jsonwebtoken's default), ``aud`` in an allow-list, ``sub``/``typ``/``aud`` present, then
``typ`` must equal the expected token type. `PyJWT` does the signature and claim checks with the
algorithm pinned; expiry is checked here against an injectable clock.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

AUTH_TOKEN_ACCESS_TYPE = "access"
AUTH_TOKEN_ID_TYPE = "id"
AUTH_TOKEN_EXPIRATION_DAYS = 7
AUTH_TOKEN_LIFETIME_SECONDS = AUTH_TOKEN_EXPIRATION_DAYS * 24 * 3600
JWT_LEEWAY_SECONDS = 60  # jsonwebtoken `Validation::default().leeway`

CLIENT_ID_HEIMA = "heima"
CLIENT_ID_PUMPX = "pumpx"
CLIENT_ID_WILDMETA = "wildmeta"
CLIENT_ID_AGENTKEYS = "agentkeys"
#: `auth_token.rs`: the audience allow-list is hard-coded in the upstream worker.
UPSTREAM_AUDIENCES: tuple[str, ...] = (CLIENT_ID_HEIMA, CLIENT_ID_PUMPX, CLIENT_ID_WILDMETA)

_HEADER_SEGMENT = b"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9"  # b64url('{"typ":"JWT","alg":"RS256"}')


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@dataclass(frozen=True, slots=True)
class AuthTokenClaims:
    """`AuthTokenClaims`: serialised in declaration order ``sub, typ, exp, aud``."""

    sub: str
    typ: str
    exp: int
    aud: str

    def to_json_bytes(self) -> bytes:
        body = {"sub": self.sub, "typ": self.typ, "exp": self.exp, "aud": self.aud}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_auth_token(claims: AuthTokenClaims, key: rsa.RSAPrivateKey) -> str:
    """`jwt::create(&claims, der)`: byte-identical to the worker for the same key and claims."""
    signing_input = _HEADER_SEGMENT + b"." + _b64url(claims.to_json_bytes())
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


class TokenRejected(ValueError):
    """The token fails the worker's validation; the message says which rule, `kind` is the
    jsonwebtoken `ErrorKind` the worker reports (``Auth token error: JwtError(<kind>)``)."""

    def __init__(self, message: str, kind: str = "InvalidToken") -> None:
        super().__init__(message)
        self.kind = kind


_PYJWT_KINDS = {
    "InvalidAudienceError": "InvalidAudience",
    "InvalidSignatureError": "InvalidSignature",
    "InvalidAlgorithmError": "InvalidAlgorithm",
    "ImmatureSignatureError": "ImmatureSignature",
}
_I64_MAX = 2**63 - 1


def verify_auth_token(
    token: str,
    public_key: rsa.RSAPublicKey,
    *,
    expected_type: str,
    audiences: Collection[str],
    now: int,
    leeway: int = JWT_LEEWAY_SECONDS,
    worker_exp_rules: bool = False,
) -> AuthTokenClaims:
    """Validate a TEE token as `verify_auth_token_authentication` does; raise `TokenRejected`.

    `worker_exp_rules` (the simulator only) reproduces how jsonwebtoken 10 and the worker's
    ``exp: i64`` treat odd expiries: a negative ``exp`` cannot be read as a number by
    `Validation::validate` (``numeric_type``), so it is not checked and the token never expires;
    an ``exp`` above ``i64::MAX`` fails to decode into `AuthTokenClaims` and is refused
    (`core/src/auth/auth_token.rs@c7751f89`). Verifiers of this kit (the broker) keep the strict
    default: any ``exp`` in the past is expired.
    """
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=list(audiences),
            options={
                "require": ["sub", "aud", "exp"],
                "verify_exp": False,  # checked below against the injectable clock
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError as exc:
        kind = _PYJWT_KINDS.get(type(exc).__name__, "InvalidToken")
        raise TokenRejected(f"{type(exc).__name__}: {exc}", kind) from exc
    sub, typ, exp, aud = (payload.get(k) for k in ("sub", "typ", "exp", "aud"))
    if not isinstance(sub, str) or not isinstance(typ, str) or not isinstance(aud, str):
        raise TokenRejected("claims do not deserialize into AuthTokenClaims", "Json")
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise TokenRejected("exp is not an integer", "Json")
    if worker_exp_rules and exp > _I64_MAX:
        raise TokenRejected("exp does not fit AuthTokenClaims.exp (i64)", "Json")
    expiry_checked = exp >= 0 or not worker_exp_rules
    if expiry_checked and exp < now - leeway:
        raise TokenRejected("ExpiredSignature", "ExpiredSignature")
    if typ != expected_type:
        raise TokenRejected(f"token type {typ!r} is not {expected_type!r}")
    return AuthTokenClaims(sub=sub, typ=typ, exp=exp, aud=aud)


def unverified_claims(token: str) -> dict[str, Any]:
    """Decode the payload without any check (for reports and journals only)."""
    try:
        payload = token.split(".")[1]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(decoded)
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}
