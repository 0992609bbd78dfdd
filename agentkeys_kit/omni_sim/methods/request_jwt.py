"""`omni_requestJwt` (`methods/omni/request_jwt.rs`, newest revision; era A `@05ff5857`).

Verify the e-mail code; ``GET get_account_user_id?email=`` (no envelope-code check, no status
check); the account is the *Pumpx* identity of the returned user id; mint the access token;
``POST user_connect`` with it; the current era checks the envelope code, then
``googleAuthCheck``; mint the id token; store both. No client-id restriction upstream; the
patch sends `agentkeys` requests to the agentkeys API.
"""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.backend_api import reserialize
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import call_backend, parse_rpc_params
from agentkeys_kit.omni_sim.verify_auth import AuthFailed, verify_auth
from agentkeys_kit.protocol.auth import EmailAuth
from agentkeys_kit.protocol.callbacks import USER_CONNECT_DATA, user_connect_body
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import pumpx_omni_account
from agentkeys_kit.protocol.serde_rules import Field, string
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ACCESS_TYPE, AUTH_TOKEN_ID_TYPE

PARAMS = (
    Field("client_id", string),
    Field("user_email", string),
    Field("invite_code", string, optional=True),
    Field("google_code", string),
    Field("language", string, optional=True),
    Field("email_code", string),
)


async def request_jwt(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, PARAMS, "RequestJwtParams")
    client_id, email = p["client_id"], p["user_email"]
    errors = ctx.errors
    try:
        await verify_auth(ctx, EmailAuth(client_id, email, p["email_code"]))
    except AuthFailed:
        raise errors.request_jwt_verification_failed() from None
    expires_at = ctx.token_expiry()
    backend = ctx.backend(ctx.profile.backend_for_client(client_id))

    lookup = await call_backend(backend.get_account_user_id(email), errors.get_account_user_id_transport, None)
    user_id = lookup.data.get("userId")
    if user_id is None:
        raise errors.empty_user_id()
    account = pumpx_omni_account(client_id, user_id)
    account_hex = hex_encode(account)
    access_token = ctx.mint_token(account_hex, AUTH_TOKEN_ACCESS_TYPE, client_id, expires_at)

    body = user_connect_body(email, p["invite_code"], p["google_code"], user_id)
    connect = await call_backend(
        backend.user_connect(access_token, body, p["language"]),
        errors.user_connect_transport,
        errors.user_connect_code if errors.user_connect_code_checked_first else None,
    )
    if connect.data.get("googleAuthCheck") is not True:
        raise errors.google_auth_check_failed()
    id_token = ctx.mint_token(account_hex, AUTH_TOKEN_ID_TYPE, client_id, expires_at)
    ctx.jwts.insert(account, AUTH_TOKEN_ACCESS_TYPE, access_token)
    ctx.jwts.insert(account, AUTH_TOKEN_ID_TYPE, id_token)
    if not errors.user_connect_code_checked_first and not connect.ok:
        raise errors.user_connect_code(connect.code, connect.message)  # era A: after storing
    return {
        "access_token": access_token,
        "id_token": id_token,
        "backend_response": reserialize(connect, USER_CONNECT_DATA),
    }
