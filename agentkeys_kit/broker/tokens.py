"""TEE token verification as the broker does it (Phase 1): RS256 only, the pinned key, ``exp``
(no leeway), ``aud`` in the accepted client ids, ``typ == "access"``, ``sub`` shaped ``0x`` + 64
lowercase hex. `alg: none`, HS256 keyed with the public key, another RSA key, expired, wrong
audience or type, truncated or tampered tokens are all refused by `verify_auth_token`, and so
are padded or non-canonical base64url, a repeated known field and an ``exp`` beyond i64 (the
worker's own rules, `protocol.tee_jwt`).

The broker adds three rules of its own, stricter than the worker, for a token that verified:

* **any repeated JSON key** in header or claims is refused (RFC 7515 §5.2 allows refusing; a key
  read twice is a token two parsers may read two ways, and the TEE never mints one);
* **``crit``** in the header is refused: RFC 7515 §4.1.11 requires refusing a critical extension
  the recipient does not understand, and the broker understands none;
* **``nbf``**, when present, must be an integer in i64 and not in the future (RFC 7519 §4.1.5
  "MUST NOT be accepted for processing" before it; the worker ignores ``nbf`` and never sets it,
  so honouring it can only refuse a token its issuer said is not valid yet).

Other header fields (``kid``, ``jku``, ``x5u``, …) and unknown claims are ignored, as the worker
ignores them: the key and the algorithm are pinned, so no header field can choose either, and
refusing them would break on a harmless worker change such as adding ``kid``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker import errors
from agentkeys_kit.protocol.json_rules import duplicated_keys
from agentkeys_kit.protocol.tee_jwt import (
    AUTH_TOKEN_ACCESS_TYPE,
    I64_MAX,
    I64_MIN,
    AuthTokenClaims,
    TokenRejected,
    parse_compact,
    verify_auth_token,
)

_SUB_SHAPE = re.compile(r"0x[0-9a-f]{64}")
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class VerifiedBearer:
    claims: AuthTokenClaims
    token: str
    sha256: str  # what the audit log and the token record keep; computed once
    header_fields: frozenset[str] = frozenset()  # the JWS header's field names (`bearer.py` refuses some)


def bearer_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_from_header(header: str | None) -> str:
    if not header:
        raise errors.missing_bearer()
    if not _VISIBLE_ASCII.fullmatch(header):  # the worker's HeaderValue::to_str refuses it too
        raise errors.authorization_not_ascii()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.missing_bearer()
    return token.strip()


#: Tokens that verified, remembered so that a bearer presented again is not parsed and verified
#: again: the signature check is deterministic for the same bytes and the one pinned key, and
#: ``exp`` is checked again on every use (``nbf`` only grows more valid). Bounded, oldest first out.
VERIFIED_CACHE_SIZE = 4096


class TeeTokenVerifier:
    def __init__(
        self,
        public_key: rsa.RSAPublicKey | None,
        accepted_client_ids: tuple[str, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`public_key` None: a ``local`` broker without a worker, which refuses every TEE token."""
        self._key = public_key
        self._audiences = accepted_client_ids
        self._clock = clock
        self._verified: OrderedDict[str, VerifiedBearer] = OrderedDict()

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def knows(self, token: str) -> bool:
        return token in self._verified

    def verify(self, header: str | None) -> VerifiedBearer:
        token = bearer_from_header(header)
        cached = self._verified.get(token)
        if cached is not None:
            if cached.claims.exp < int(self._clock()):
                raise errors.invalid_token("ExpiredSignature")
            return cached
        verified = self._verify(token)
        self._verified[token] = verified
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return verified

    def _verify(self, token: str) -> VerifiedBearer:
        if self._key is None:
            raise errors.invalid_token(
                "this broker has no TEE key (BROKER_TEE_JWT_PUBLIC_KEY): it accepts no TEE token"
            )
        try:
            claims = verify_auth_token(
                token,
                self._key,
                expected_type=AUTH_TOKEN_ACCESS_TYPE,
                audiences=self._audiences,
                now=int(self._clock()),
                leeway=0,
            )
            header_fields = broker_token_rules(token, now=int(self._clock()))
        except TokenRejected as exc:
            raise errors.invalid_token(str(exc)) from None
        if not _SUB_SHAPE.fullmatch(claims.sub):
            raise errors.invalid_token("sub is not 0x + 64 lowercase hex")
        return VerifiedBearer(claims, token, bearer_sha256(token), header_fields)


def broker_token_rules(token: str, *, now: int) -> frozenset[str]:
    """The broker's rules beyond the worker's (module docstring): no repeated key, no ``crit``,
    ``nbf`` honoured. Raise `TokenRejected`; return the header's field names."""
    compact = parse_compact(token)
    repeated = duplicated_keys(compact.header) | duplicated_keys(compact.claims)
    if repeated:
        raise TokenRejected(f"the key {min(repeated)!r} is repeated")
    if "crit" in compact.header:
        raise TokenRejected("crit names an extension the broker does not understand (RFC 7515 §4.1.11)")
    if "nbf" in compact.claims:
        nbf = compact.claims["nbf"]
        if isinstance(nbf, bool) or not isinstance(nbf, int) or not I64_MIN <= nbf <= I64_MAX:
            raise TokenRejected("nbf is not an i64 integer")
        if nbf > now:
            raise TokenRejected("the token is not valid yet (nbf)")
    return frozenset(compact.header)
