"""`omni_getOAuth2AuthorizationData` (`methods/omni/get_oauth2_authorization_data.rs@60635e7f`).

1. params ``{provider, uid, redirect_uri?, client_id}`` parsed *directly*: any failure is a bare
   -32700 "Parse error" without data;
2. ``provider.to_lowercase()`` must be ``google`` or ``apple`` (-32602 "Invalid OAuth2 provider");
3. the client's OAuth2 configuration must exist (-32164 "Failed to get OAuth2 configuration",
   whose reason lists the *mailer* clients, as the worker's does);
4. a fresh 32-character alphanumeric state and nonce are stored for ``(client_id, uid)``,
   replacing any earlier pair;
5. result, in this key order: ``authorize_url, client_id`` (the request's, not the OAuth one),
   ``redirect_uri`` (left out when absent), ``state, nonce, scope, response_type`` and, for
   Apple, ``response_mode: form_post``.
"""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.oauth2 import ConfigMissing, authorize_data, client_config, provider_named, state_key
from agentkeys_kit.omni_sim.rpc import ABSENT
from agentkeys_kit.protocol.errors import EXTERNAL_API_ERROR_CODE, INVALID_PARAMS, DetailedError
from agentkeys_kit.protocol.serde_rules import Field, SerdeError, parse_struct, string

PARAMS = (
    Field("provider", string),
    Field("uid", string),
    Field("redirect_uri", string, optional=True),
    Field("client_id", string),
)


async def get_oauth2_authorization_data(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    try:
        p = parse_struct(None if params is ABSENT else params, PARAMS, "GetOAuth2AuthorizationDataParams")
    except SerdeError:
        raise ctx.errors.plain_parse_error() from None
    provider = provider_named(p["provider"])
    if provider is None:
        raise (
            DetailedError(INVALID_PARAMS, "Invalid OAuth2 provider")
            .with_field("provider")
            .with_expected("google, apple")
            .with_received(p["provider"])
            .to_rpc_error()
        )
    try:
        config = client_config(ctx, p["client_id"], provider)
    except ConfigMissing as exc:
        raise (
            DetailedError(EXTERNAL_API_ERROR_CODE, "Failed to get OAuth2 configuration")
            .with_field("client_id")
            .with_received(p["client_id"])
            .with_reason(f"Error: {exc}")
            .to_rpc_error()
        ) from None
    endpoints = ctx.config.oauth2_providers[provider]
    data = authorize_data(endpoints, config.client_id, p["redirect_uri"])
    ctx.oauth2_states.insert(state_key(p["client_id"], p["uid"]), data.state, data.nonce)
    result: dict[str, Any] = {"authorize_url": data.authorize_url, "client_id": p["client_id"]}
    if p["redirect_uri"] is not None:
        result["redirect_uri"] = p["redirect_uri"]
    result.update({"state": data.state, "nonce": data.nonce, "scope": endpoints.scopes, "response_type": "code"})
    if endpoints.use_response_mode:
        result["response_mode"] = "form_post"
    return result
