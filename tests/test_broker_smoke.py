"""The broker answers `post_heima_login` for a proven identity, on both databases."""

from __future__ import annotations

import aiohttp
from conftest import BrokerFactory, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

ADDRESS = "0x" + "ab" * 20


async def test_post_heima_login_creates_the_user_for_the_token_subject(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    account = omni_account_of(IdentityKind.EVM, ADDRESS, "agentkeys")
    body = {
        "userId": {"type": "evm", "value": ADDRESS},
        "clientId": "agentkeys",
        "clientAuth": None,
        "heimaLoginSuccess": True,
    }
    headers = {"Authorization": "Bearer " + mint_tee_token(tee_key, account)}
    async with http.post(broker.url + "v3/account/post_heima_login", json=body, headers=headers) as response:
        assert response.status == 200
        reply = await response.json()
    assert list(reply) == ["code", "message", "data"] and reply["code"] == 10000
    assert reply["data"]["user_id"].startswith("usr_")
