"""`omni_addWallet` (`methods/omni/add_wallet.rs@701b0755`): protected (id token), no params.

The sender comes from the verified token; the *access* token stored for that account at login
is what the backend receives (-32163 if the account never logged in through `omni_userLogin` or
`omni_requestJwt`). ``POST v3/account/add_wallet`` with an empty body; the reply's `data` must be
an object. The patch calls the API of the token's audience.
"""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.backend_api import reserialize
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import call_backend
from agentkeys_kit.omni_sim.rpc import RpcExtensions
from agentkeys_kit.protocol.callbacks import ADD_WALLET_DATA
from agentkeys_kit.protocol.errors import DetailedError
from agentkeys_kit.protocol.hexcodec import HexError, decode_hex
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_ACCESS_TYPE


async def add_wallet(ctx: SimContext, params: Any, ext: RpcExtensions | None) -> dict[str, Any]:
    if ext is None:
        raise DetailedError(-32002, "Invalid rpc extension").to_rpc_error()
    try:
        account = decode_hex(ext.sender)
    except HexError:
        account = b""
    if len(account) != 32:
        raise (DetailedError(-32700, "Parse error").with_reason("Failed to parse omni_account").to_rpc_error())
    access_token = ctx.jwts.get(account, AUTH_TOKEN_ACCESS_TYPE)
    if access_token is None:
        raise ctx.errors.access_token_not_stored()
    backend = ctx.backend(ctx.profile.backend_for_client(ext.client_id))
    response = await call_backend(
        backend.add_wallet(access_token),
        ctx.errors.add_wallet_transport,
        ctx.errors.add_wallet_code,
    )
    return {"backend_response": reserialize(response, ADD_WALLET_DATA)}
