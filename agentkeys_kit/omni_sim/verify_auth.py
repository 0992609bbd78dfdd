"""`verify_auth` per `OmniAuth` variant (`rpc-server/src/verify_auth.rs@0025e244`, spec §6).

* Web3: the code stored for the account is *removed before* the signature is checked (one attempt
  per code); the signed message is the compact JSON of `HeimaMessagePayload`.
* Email: a wrong code keeps the stored code (no attempt limit); the right one removes it.
* AuthToken: RS256, ``typ == "id"``, ``exp``, audience allow-list of the profile.
* OAuth2 and Passkey need state the login path here never creates (an OAuth2 state record from
  `omni_getOAuth2AuthorizationData`, a registered passkey), so they fail as the worker does
  without it.
"""

from __future__ import annotations

import logging

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.protocol.auth import AuthTokenAuth, EmailAuth, OmniAuth, Web3Auth
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import email_omni_account
from agentkeys_kit.protocol.signatures import verify_web3
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ID_TYPE, AuthTokenClaims, TokenRejected, verify_auth_token
from agentkeys_kit.protocol.web3_message import HeimaMessagePayload

log = logging.getLogger(__name__)


class AuthFailed(Exception):
    """`verify_auth` returned an error; the reason is for logs only."""


def verify_auth(ctx: SimContext, auth: OmniAuth) -> AuthTokenClaims | None:
    if isinstance(auth, Web3Auth):
        _verify_web3(ctx, auth)
        return None
    if isinstance(auth, EmailAuth):
        _verify_email(ctx, auth)
        return None
    if isinstance(auth, AuthTokenAuth):
        return verify_id_token(ctx, auth.token)
    raise AuthFailed(f"{type(auth).__name__}: no verification state exists for it in the simulator")


def _verify_web3(ctx: SimContext, auth: Web3Auth) -> None:
    account = auth.identity.omni_account(auth.client_id)
    code = ctx.codes.get(account)
    if code is None:
        raise AuthFailed("VerificationCodeNotFound")
    ctx.codes.remove(account)  # consumed before the signature check
    message = HeimaMessagePayload(auth.client_id, hex_encode(account), code).signing_bytes()
    if not verify_web3(message, auth.identity, auth.signature):
        raise AuthFailed("Web3InvalidSignature")


def _verify_email(ctx: SimContext, auth: EmailAuth) -> None:
    account = email_omni_account(auth.client_id, auth.email)
    store = ctx.email_code_store
    code = store.get(account)
    if code is None:
        raise AuthFailed("VerificationCodeNotFound")
    if code != auth.code:
        raise AuthFailed("InvalidVerificationCode")  # the stored code is kept
    store.remove(account)


def verify_id_token(ctx: SimContext, token: str) -> AuthTokenClaims:
    try:
        return verify_auth_token(
            token,
            ctx.jwt_public_key,
            expected_type=AUTH_TOKEN_ID_TYPE,
            audiences=ctx.profile.audiences,
            now=ctx.clock.now(),
        )
    except TokenRejected as exc:
        raise AuthFailed(str(exc)) from None
