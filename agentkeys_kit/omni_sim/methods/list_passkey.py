"""`omni_listPasskey` (`methods/omni/list_passkey.rs@c7751f89`): **no authentication**; params
``{user_id, client_id}``; every passkey of the OmniAccount in index order as
``{credential_id, alias_name, created_at, last_used}``."""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import omni_account_of, parse_rpc_params
from agentkeys_kit.protocol.auth import parse_user_id
from agentkeys_kit.protocol.serde_rules import Field, string

PARAMS = (Field("user_id", parse_user_id), Field("client_id", string))


async def list_passkey(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, PARAMS, "ListPasskeyParams")
    account = omni_account_of(p["user_id"], p["client_id"])
    return {
        "passkeys": [
            {
                "credential_id": record.credential_id,
                "alias_name": record.alias_name,
                "created_at": record.created_at,
                "last_used": record.last_used,
            }
            for record in ctx.passkeys.list(account)
        ]
    }
