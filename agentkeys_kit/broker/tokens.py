"""TEE token verification as the broker does it (Phase 1): RS256 only, the pinned key, ``exp``
(no leeway), ``aud`` in the accepted client ids, ``typ == "access"``, ``sub`` shaped ``0x`` + 64
lowercase hex. `alg: none`, HS256 keyed with the public key, another RSA key, expired, wrong
audience or type, truncated or tampered tokens are all refused by `verify_auth_token`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker import errors
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ACCESS_TYPE, AuthTokenClaims, TokenRejected, verify_auth_token

_SUB_SHAPE = re.compile(r"0x[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class VerifiedBearer:
    claims: AuthTokenClaims
    token: str
    sha256: str  # what the audit log and the token record keep; computed once


def bearer_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_from_header(header: str | None) -> str:
    if not header:
        raise errors.missing_bearer()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.missing_bearer()
    return token.strip()


class TeeTokenVerifier:
    def __init__(
        self,
        public_key: rsa.RSAPublicKey,
        accepted_client_ids: tuple[str, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = public_key
        self._audiences = accepted_client_ids
        self._clock = clock

    def verify(self, header: str | None) -> VerifiedBearer:
        token = bearer_from_header(header)
        try:
            claims = verify_auth_token(
                token,
                self._key,
                expected_type=AUTH_TOKEN_ACCESS_TYPE,
                audiences=self._audiences,
                now=int(self._clock()),
                leeway=0,
            )
        except TokenRejected as exc:
            raise errors.invalid_token(str(exc)) from None
        if not _SUB_SHAPE.fullmatch(claims.sub):
            raise errors.invalid_token("sub is not 0x + 64 lowercase hex")
        return VerifiedBearer(claims, token, bearer_sha256(token))
