"""`omni_userLogin` (`methods/omni/user_login.rs`, newest revision; spec §5.3).

1. parse ``{user_id, user_auth, client_id, client_auth?}`` (-32700 + reason);
2. `to_omni_auth` (bare -32700 on a mismatched pairing or bad hex in `user_id`);
3. `verify_auth` (-32003 "Server error"); side effects (code consumption, a spent OAuth2 state
   or passkey challenge) stay even if later steps fail; the identity an `o_auth2`, `passkey` or
   `auth_token` login proved is not compared with `user_id` upstream;
4. the OmniAccount of `user_id` under `client_id` (bare -32700);
5. mint the id and access tokens (same ``sub``, ``exp``, ``aud = client_id``);
6. only a client with a login backend goes on (upstream: ``wildmeta`` only): `post_heima_login`
   with the access token, then store the access token, then answer; any other client id gets a
   bare -32602 *after* authentication and minting.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from agentkeys_kit.omni_sim.backend_api import reserialize
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import call_backend, parse_rpc_params
from agentkeys_kit.omni_sim.verify_auth import AuthFailed, Verified, verify_auth
from agentkeys_kit.protocol.auth import (
    AuthTokenAuth,
    OAuth2Auth,
    OmniAuth,
    OmniAuthError,
    PasskeyAuth,
    UserId,
    parse_client_auth,
    parse_user_auth,
    parse_user_id,
    to_omni_auth,
)
from agentkeys_kit.protocol.callbacks import POST_HEIMA_LOGIN_DATA, post_heima_login_body
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import IdentityError
from agentkeys_kit.protocol.serde_rules import Field, string
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ACCESS_TYPE, AUTH_TOKEN_ID_TYPE


def params_fields(ctx: SimContext) -> tuple[Field, ...]:
    return (
        Field("user_id", parse_user_id),
        Field("user_auth", parse_user_auth),
        Field("client_id", string),
        Field(
            "client_auth",
            partial(parse_client_auth, variants=ctx.profile.client_auth_variants),
            optional=True,
        ),
    )


def proves_user_id(auth: OmniAuth, verified: Verified, user_id: UserId, client_id: str) -> bool:
    """The patch's subject binding: an id token's ``sub`` and ``aud``, a Google/Apple ``sub`` or a
    passkey's identity and client must be `user_id` under `client_id`. Web3 and e-mail logins
    verify `user_id` itself already."""
    if isinstance(auth, AuthTokenAuth):
        claims = verified.claims
        assert claims is not None
        return claims.sub == hex_encode(user_id.omni_account(client_id)) and claims.aud == client_id
    if isinstance(auth, OAuth2Auth | PasskeyAuth):
        return verified.identity == user_id.to_identity() and verified.client_id == client_id
    return True


async def user_login(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, params_fields(ctx), "UserLoginParams")
    user_id, client_id = p["user_id"], p["client_id"]
    try:
        auth = to_omni_auth(p["user_auth"], user_id, client_id)
    except OmniAuthError:
        raise ctx.errors.plain_parse_error() from None
    try:
        verified = await verify_auth(ctx, auth)
    except AuthFailed:
        raise ctx.errors.login_verification_failed() from None
    try:
        account = user_id.omni_account(client_id)
    except IdentityError:
        raise ctx.errors.plain_parse_error() from None
    if client_id in ctx.profile.subject_bound_clients and not proves_user_id(auth, verified, user_id, client_id):
        raise ctx.errors.login_verification_failed()  # agentkeys-patch clauses 5 and 8 (profiles.py)
    account_hex = hex_encode(account)
    expires_at = ctx.token_expiry()
    id_token = ctx.mint_token(account_hex, AUTH_TOKEN_ID_TYPE, client_id, expires_at)
    access_token = ctx.mint_token(account_hex, AUTH_TOKEN_ACCESS_TYPE, client_id, expires_at)

    backend_name = ctx.profile.login_backends.get(client_id)
    if backend_name is None:
        raise ctx.errors.plain_invalid_params()
    client_auth = p["client_auth"]
    body = post_heima_login_body(user_id.to_json(), client_id, None if client_auth is None else client_auth.to_json())
    response = await call_backend(
        ctx.backend(backend_name).post_heima_login(access_token, body),
        ctx.errors.post_heima_login_transport,
        ctx.errors.post_heima_login_code,
    )
    ctx.jwts.insert(account, AUTH_TOKEN_ACCESS_TYPE, access_token)
    return {
        "access_token": access_token,
        "id_token": id_token,
        "backend_response": reserialize(response, POST_HEIMA_LOGIN_DATA),
    }
