"""`omni_loginWithOAuth2` (`methods/omni/login_with_oauth2.rs@60635e7f`).

Params ``{client_id, provider, code, state, redirect_uri?, uid, id_token}`` (`parse_rpc_params`);
the provider is case-insensitive here (-32700 ``Unsupported OAuth2 provider: <p>`` otherwise);
`verify_oauth2_authentication` failures are -32003 "OAuth2 authentication failed" with the
error's Display as ``reason``. On success one JWT of **typ id** — returned under the key
``access_token`` — for the Google/Apple identity of the provider's ``sub`` under ``client_id``,
and ``user_id`` is that ``sub``. No callback, no `HeimaJwtStorage` write, no client-id check.
"""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import parse_rpc_params
from agentkeys_kit.omni_sim.oauth2 import OAuth2Failed, provider_named, verify_oauth2_authentication
from agentkeys_kit.protocol.errors import AUTH_VERIFICATION_FAILED_CODE, DetailedError, internal_error, parse_error
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.serde_rules import Field, string
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ID_TYPE

PARAMS = (
    Field("client_id", string),
    Field("provider", string),
    Field("code", string),
    Field("state", string),
    Field("redirect_uri", string, optional=True),
    Field("uid", string),
    Field("id_token", string),
)


async def login_with_oauth2(ctx: SimContext, params: Any, ext: object) -> dict[str, str]:
    p = parse_rpc_params(ctx, params, PARAMS, "LoginWithOAuth2Params")
    provider = provider_named(p["provider"])
    if provider is None:
        raise parse_error(f"Unsupported OAuth2 provider: {p['provider']}")
    data = {**p, "provider": provider.wire_name}
    try:
        identity = await verify_oauth2_authentication(ctx, p["client_id"], data)
    except OAuth2Failed as exc:
        raise (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, "OAuth2 authentication failed")
            .with_reason(str(exc))
            .with_suggestion("Please check your OAuth2 credentials and try again")
            .to_rpc_error()
        ) from None
    account = hex_encode(identity.omni_account(p["client_id"]))
    token = ctx.mint_token(account, AUTH_TOKEN_ID_TYPE, p["client_id"], ctx.token_expiry())
    try:
        user_id = identity.raw.decode("utf-8")  # the 64-byte `IdentityString`, as the worker reads it back
    except UnicodeDecodeError as exc:
        raise internal_error(f"Failed to convert identity to string: {exc}") from None
    return {"user_id": user_id, "access_token": token}
