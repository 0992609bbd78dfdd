"""`omni_renamePasskeyAliasName` (`methods/omni/rename_passkey_alias.rs@60635e7f`): the OmniAccount
first (-32700), then `to_omni_auth` and `verify_auth`; a missing passkey is -32603
``Failed to rename passkey alias: ValidationError``."""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import omni_account_of, omni_auth_of, parse_rpc_params
from agentkeys_kit.omni_sim.stores import PasskeyError
from agentkeys_kit.omni_sim.verify_auth import AuthFailed, verify_auth
from agentkeys_kit.protocol.auth import parse_user_auth, parse_user_id
from agentkeys_kit.protocol.errors import internal_error
from agentkeys_kit.protocol.serde_rules import Field, string

PARAMS = (
    Field("user_id", parse_user_id),
    Field("user_auth", parse_user_auth),
    Field("client_id", string),
    Field("credential_id", string),
    Field("new_alias_name", string),
)


async def rename_passkey_alias(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, PARAMS, "RenamePasskeyAliasParams")
    account = omni_account_of(p["user_id"], p["client_id"])
    auth = omni_auth_of(p["user_auth"], p["user_id"], p["client_id"])
    try:
        await verify_auth(ctx, auth)
    except AuthFailed as exc:
        raise exc.to_detailed_error() from None
    try:
        ctx.passkeys.rename(account, p["credential_id"], p["new_alias_name"])
    except PasskeyError as exc:
        raise internal_error(f"Failed to rename passkey alias: {exc}") from None
    message = f"Passkey alias for credential {p['credential_id']} successfully renamed to {p['new_alias_name']}"
    return {"success": True, "message": message}
