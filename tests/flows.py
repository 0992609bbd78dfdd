"""Client-side login flows, written from the wire contract (what a wallet front end does)."""

from __future__ import annotations

from typing import Any

import aiohttp
from conftest import rpc

from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import sign_evm_personal
from agentkeys_kit.protocol.web3_message import HeimaMessagePayload
from fixtures.wallets import evm_user_id_value


async def sign_in_message(http: aiohttp.ClientSession, url: str, client_id: str, account: str) -> HeimaMessagePayload:
    answer = await rpc(http, url, "omni_getWeb3SignInMessage", {"client_id": client_id, "omni_account": account})
    return HeimaMessagePayload(**answer["result"])


def evm_login_params(
    key: bytes, client_id: str, message: HeimaMessagePayload, client_auth: Any = None
) -> dict[str, Any]:
    signature = sign_evm_personal(message.signing_bytes(), key)
    return {
        "user_id": {"type": "evm", "value": evm_user_id_value(key)},
        "user_auth": {"type": "evm", "value": "0x" + signature.hex()},
        "client_id": client_id,
        "client_auth": client_auth,
    }


async def evm_login(
    http: aiohttp.ClientSession, url: str, key: bytes, client_id: str, client_auth: Any = None
) -> dict[str, Any]:
    account = omni_account_of(IdentityKind.EVM, evm_user_id_value(key), client_id)
    message = await sign_in_message(http, url, client_id, account)
    return await rpc(http, url, "omni_userLogin", evm_login_params(key, client_id, message, client_auth))
