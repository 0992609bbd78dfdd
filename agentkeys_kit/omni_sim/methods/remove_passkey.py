"""`omni_removePasskey` (`methods/omni/remove_passkey.rs@60635e7f`): `to_omni_auth`, `verify_auth`
(codes are consumed), the OmniAccount, then a missing passkey is -32603 ``Passkey not found``;
result ``{success: true, message: "Passkey <id> successfully removed"}``."""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import omni_account_of, omni_auth_of, parse_rpc_params
from agentkeys_kit.omni_sim.verify_auth import AuthFailed, verify_auth
from agentkeys_kit.protocol.auth import parse_user_auth, parse_user_id
from agentkeys_kit.protocol.errors import internal_error
from agentkeys_kit.protocol.serde_rules import Field, string

PARAMS = (
    Field("user_id", parse_user_id),
    Field("user_auth", parse_user_auth),
    Field("client_id", string),
    Field("credential_id", string),
)


async def remove_passkey(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, PARAMS, "RemovePasskeyParams")
    auth = omni_auth_of(p["user_auth"], p["user_id"], p["client_id"])
    try:
        await verify_auth(ctx, auth)
    except AuthFailed as exc:
        raise exc.to_detailed_error() from None
    account = omni_account_of(p["user_id"], p["client_id"])
    if not ctx.passkeys.exists(account, p["credential_id"]):
        raise internal_error("Passkey not found")
    ctx.passkeys.remove(account, p["credential_id"])
    return {"success": True, "message": f"Passkey {p['credential_id']} successfully removed"}
