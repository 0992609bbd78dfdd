"""The TEE worker's RS256 JWTs (spec §7).

Signing mirrors `jsonwebtoken` 9.3 as the worker calls it (`crypto/src/jwt.rs`,
`core/src/auth/auth_token.rs@677675c8`): header ``{"typ":"JWT","alg":"RS256"}`` in that order,
claims ``sub, typ, exp, aud`` in that order, compact serde JSON, base64url without padding,
RSASSA-PKCS1-v1_5 with SHA-256 (deterministic, so the same key and clock give the same bytes).

Verification mirrors `verify_auth_token_authentication`: RS256 only, ``exp`` with 60 s leeway
(jsonwebtoken's default), ``aud`` in an allow-list, ``sub``/``typ``/``aud`` present, then
``typ`` must equal the expected token type. `PyJWT` does the signature and claim checks with the
algorithm pinned; expiry is checked here against an injectable clock.

Where PyJWT is more lenient than the worker's jsonwebtoken 9, `parse_compact` applies the
worker's rule first:

* each segment is base64url *without padding*, canonical (RFC 7515 §2; jsonwebtoken decodes with
  base64's ``URL_SAFE_NO_PAD``, whose ``DecodePaddingMode::RequireNone`` refuses ``=`` and whose
  default refuses non-zero trailing bits; PyJWT pads and accepts both, so ``sig==`` verified);
* header and claims are UTF-8 JSON objects (PyJWT's `json.loads` also takes UTF-16/32);
* a repeated header field or claim of the structs jsonwebtoken deserializes (`Header`,
  `AuthTokenClaims`, `ClaimsForValidation`) is refused, as serde refuses a duplicate field;
* ``exp`` must fit ``AuthTokenClaims.exp: i64`` (`auth_token.rs@c7751f89`; a larger value fails
  the decode, `heima-login-surface.md` §0 #8).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agentkeys_kit.protocol.json_rules import JsonRefused, duplicated_keys, loads_recording_duplicates

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
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
#: jsonwebtoken 9 `Header` fields (`src/header.rs`), refused when repeated.
HEADER_FIELDS = frozenset({"typ", "alg", "cty", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256"})
#: `AuthTokenClaims` and jsonwebtoken's `ClaimsForValidation` fields, refused when repeated.
CLAIM_FIELDS = frozenset({"sub", "typ", "exp", "aud", "nbf", "iss"})


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


def b64url_decode(segment: str) -> bytes:
    """A JWS segment: base64url without padding, canonical (RFC 7515 §2, as ``URL_SAFE_NO_PAD``)."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenRejected("a segment is not base64url without padding (RFC 7515 §2)", "Base64")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise TokenRejected("a segment is not base64url", "Base64") from None
    if _b64url(raw).decode("ascii") != segment:
        raise TokenRejected("a segment is not canonical base64url (non-zero trailing bits)", "Base64")
    return raw


@dataclass(frozen=True, slots=True)
class CompactToken:
    """The decoded parts of a compact JWS, not verified. `header` and `claims` record the keys
    their JSON repeated (`json_rules.duplicated_keys`)."""

    header: dict[str, Any]
    claims: dict[str, Any]


def parse_compact(token: str) -> CompactToken:
    """Split and decode a compact JWS the way jsonwebtoken does; raise `TokenRejected`."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("a JWS has three segments")
    header = _json_object(b64url_decode(parts[0]), "header")
    claims = _json_object(b64url_decode(parts[1]), "claims")
    b64url_decode(parts[2])
    return CompactToken(header, claims)


def _json_object(raw: bytes, name: str) -> dict[str, Any]:
    try:
        value = loads_recording_duplicates(raw)
    except JsonRefused as exc:
        raise TokenRejected(f"the {name} is not JSON: {exc}", "Json") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"the {name} is not a JSON object", "Json")
    return value


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
    ``exp: i64`` treat a negative expiry: `Validation::validate` cannot read it as a number
    (``numeric_type``), so it is not checked and the token never expires
    (`core/src/auth/auth_token.rs@c7751f89`). An ``exp`` outside ``i64`` fails the decode into
    `AuthTokenClaims` for every verifier. Verifiers of this kit (the broker) keep the strict
    default: any ``exp`` in the past is expired.
    """
    compact = parse_compact(token)
    repeated = (duplicated_keys(compact.header) & HEADER_FIELDS) | (duplicated_keys(compact.claims) & CLAIM_FIELDS)
    if repeated:
        raise TokenRejected(f"duplicate field `{min(repeated)}`", "Json")
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
    if not I64_MIN <= exp <= I64_MAX:
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
