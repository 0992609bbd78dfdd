"""`omni_getOmniAccount` (spec §5.8, `get_omni_account.rs@beb343ae`): the e-mail identity's
OmniAccount, no validation. Era A only: the newest worker does not register it, so the simulator
serves it in the `legacy` era alone; the derivation stays reachable as
`protocol.identity.email_omni_account` and ``GET /_sim/omni-account``."""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import parse_rpc_params
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import email_omni_account
from agentkeys_kit.protocol.serde_rules import Field, string

PARAMS = (Field("client_id", string), Field("user_email", string))


async def get_omni_account(ctx: SimContext, params: Any, ext: object) -> str:
    p = parse_rpc_params(ctx, params, PARAMS, "GetOmniAccountParams")
    return hex_encode(email_omni_account(p["client_id"], p["user_email"]))
