"""`verify_auth` per `OmniAuth` variant (`rpc-server/src/verify_auth.rs@c7751f89`, spec §6).

* Web3: the code stored for the account is *removed before* the signature is checked (one attempt
  per code); the signed message is the compact JSON of `HeimaMessagePayload`.
* Email: a wrong code keeps the stored code (no attempt limit); the right one removes it.
* AuthToken: RS256, ``typ == "id"``, ``exp``, audience allow-list of the profile.
* OAuth2: `oauth2.verify_oauth2_authentication`; the verified identity is returned here but the
  worker's `verify_auth` discards it (``.map(|_| ())``).
* Passkey: `verify_passkey_authentication`, below, in the worker's order; the identity it proved
  is ``passkey_data.user_id`` under ``passkey_data.client_id``, which the worker discards too.

`AuthFailed`'s message is the worker's `AuthenticationError` Display: `omni_userLogin` hides it
(bare -32003), `AuthenticationError::to_detailed_error` (attach/remove/rename passkey) shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.login_config import compiled_passkey_config
from agentkeys_kit.omni_sim.oauth2 import OAuth2Failed, verify_oauth2_authentication
from agentkeys_kit.omni_sim.passkey import (
    PasskeyVerifierError,
    parse_client_data_json,
    public_key_from_sec1,
    verify_passkey_signature_only,
    verify_rp_id_hash,
)
from agentkeys_kit.omni_sim.stores import ChallengeError
from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.auth import AuthTokenAuth, EmailAuth, OAuth2Auth, OmniAuth, PasskeyAuth, UserId, Web3Auth
from agentkeys_kit.protocol.errors import AUTH_VERIFICATION_FAILED_CODE, DetailedError, RpcError
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import Identity, IdentityError, email_omni_account
from agentkeys_kit.protocol.signatures import verify_web3
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ID_TYPE, AuthTokenClaims, TokenRejected, verify_auth_token
from agentkeys_kit.protocol.web3_message import HeimaMessagePayload

log = logging.getLogger(__name__)


class AuthFailed(Exception):
    """`verify_auth` returned an error; the message is the `AuthenticationError` Display."""

    def to_detailed_error(self) -> RpcError:
        """`AuthenticationError::to_detailed_error`: -32003 "Authentication verification failed"."""
        return (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, "Authentication verification failed")
            .with_reason(str(self))
            .to_rpc_error()
        )


def passkey_error(message: str) -> AuthFailed:
    return AuthFailed(f"Passkey error: {message}")


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verification proved: claims of an id token, or an identity under a client id."""

    claims: AuthTokenClaims | None = None
    identity: Identity | None = None
    client_id: str | None = None


async def verify_auth(ctx: SimContext, auth: OmniAuth) -> Verified:
    if isinstance(auth, Web3Auth):
        _verify_web3(ctx, auth)
        return Verified(identity=auth.identity, client_id=auth.client_id)
    if isinstance(auth, EmailAuth):
        _verify_email(ctx, auth)
        return Verified()
    if isinstance(auth, AuthTokenAuth):
        return Verified(claims=verify_id_token(ctx, auth.token))
    if isinstance(auth, OAuth2Auth):
        try:
            identity = await verify_oauth2_authentication(ctx, auth.client_id, auth.data)
        except OAuth2Failed as exc:
            raise AuthFailed(str(exc)) from None
        return Verified(identity=identity, client_id=auth.client_id)
    assert isinstance(auth, PasskeyAuth)
    return verify_passkey_authentication(ctx, auth.data)


def _verify_web3(ctx: SimContext, auth: Web3Auth) -> None:
    account = auth.identity.omni_account(auth.client_id)
    code = ctx.codes.get(account)
    if code is None:
        raise AuthFailed("Verification code not found")
    ctx.codes.remove(account)  # consumed before the signature check
    message = HeimaMessagePayload(auth.client_id, hex_encode(account), code).signing_bytes()
    if not verify_web3(message, auth.identity, auth.signature):
        raise AuthFailed("Invalid Web3 signature")


def _verify_email(ctx: SimContext, auth: EmailAuth) -> None:
    account = email_omni_account(auth.client_id, auth.email)
    store = ctx.email_code_store
    code = store.get(account)
    if code is None:
        raise AuthFailed("Verification code not found")
    if code != auth.code:
        raise AuthFailed("Invalid email verification code")  # the stored code is kept
    store.remove(account)


def verify_id_token(ctx: SimContext, token: str) -> AuthTokenClaims:
    try:
        return verify_auth_token(
            token,
            ctx.jwt_public_key,
            expected_type=AUTH_TOKEN_ID_TYPE,
            audiences=ctx.profile.audiences,
            now=ctx.clock.now(),
            worker_exp_rules=True,
        )
    except TokenRejected as exc:
        log.debug("auth_token refused: %s", exc)
        raise AuthFailed(f"Auth token error: JwtError({exc.kind})") from None


_CHALLENGE_ERRORS = {
    "ChallengeNotFound": "Challenge not found",
    "ChallengeExpired": "Challenge expired",
    "InvalidChallenge": "Invalid challenge",
}


def passkey_config(ctx: SimContext, client_id: str) -> tuple[str, tuple[str, ...]]:
    """``get_passkey_config(client_id)`` → ``(rp_id, allowed_origins)`` (see `login_config`)."""
    config = ctx.config.passkey_overrides.get(client_id.lower()) or compiled_passkey_config(client_id)
    return config.rp_id, config.allowed_origins


def verify_passkey_authentication(ctx: SimContext, data: Mapping[str, Any]) -> Verified:
    """`verify_passkey_authentication` (`verify_auth.rs@c7751f89`), step by step."""
    user_id: UserId = data["user_id"]
    client_id: str = data["client_id"]
    try:
        identity = user_id.to_identity()
    except IdentityError:
        raise passkey_error("Invalid user ID format") from None
    account = identity.omni_account(client_id)
    try:
        client_data = parse_client_data_json(data["client_data_json"])
    except PasskeyVerifierError as exc:
        raise passkey_error(f"Failed to parse client data: {exc.display}") from None
    rp_id, origins = passkey_config(ctx, client_id)
    if client_data.origin not in origins:
        raise passkey_error("Origin verification failed")
    if client_data.type != "webauthn.get":
        raise passkey_error(f"Invalid client data type: expected 'webauthn.get', got '{client_data.type}'")
    try:  # the challenge is spent before any signature check
        ctx.passkey_challenges.verify_and_consume(client_data.challenge, account, ctx.clock.now())
    except ChallengeError as exc:
        raise passkey_error(_CHALLENGE_ERRORS[str(exc)]) from None
    record = ctx.passkeys.get(account, data["credential_id"])
    if record is None:
        raise passkey_error("Passkey not found for this account and credential")
    try:
        public_key = public_key_from_sec1(record.pubkey)
    except PasskeyVerifierError as exc:
        raise passkey_error(f"Invalid stored public key: {exc.display}") from None
    try:
        auth_data = base64url.decode(data["auth_data"])
    except base64url.Base64Error:
        raise passkey_error("Invalid auth data base64 format") from None
    _check_authenticator_data(auth_data, rp_id, client_id)
    try:
        valid = verify_passkey_signature_only(
            data["auth_data"], data["client_data_json"], data["signature"], public_key
        )
    except PasskeyVerifierError as exc:
        raise passkey_error(f"Passkey signature verification failed: {exc.display}") from None
    if not valid:
        raise AuthFailed("Invalid Web3 signature")
    ctx.passkeys.touch(account, data["credential_id"], ctx.clock.now())
    return Verified(identity=identity, client_id=client_id)


def _check_authenticator_data(auth_data: bytes, rp_id: str, client_id: str) -> None:
    if len(auth_data) < 37:
        raise passkey_error("Auth data too short")
    try:
        verify_rp_id_hash(auth_data, rp_id)
    except PasskeyVerifierError as exc:
        raise passkey_error(
            f"RP ID validation failed: {exc.display}. Expected RP ID: '{rp_id}' for client_id: '{client_id}'"
        ) from None
    flags = auth_data[32]
    if not flags & 0x01:
        raise passkey_error("User presence flag not set")
    if not flags & 0x04:
        raise passkey_error("User verification flag not set")
