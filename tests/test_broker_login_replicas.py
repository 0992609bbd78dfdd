"""Two `agentkeys-broker run` processes on one PostgreSQL schema behave as one broker for login:
a wallet login started on one is finished on the other, a login message used on one is refused
on the other, a logout on one is refused at once by the other, and a TEE token recorded by one is
a bearer at the other. They share the session key file, as replicas must."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from broker_process import BrokerProcess
from conftest import _drop_schema, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa
from login_client import sign

from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from fixtures.wallets import EVM_ALICE_KEY, evm_user_id_value

ALICE = evm_user_id_value(EVM_ALICE_KEY)


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[tuple[str, str]]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield pg_dsn, schema
    asyncio.run(_drop_schema(pg_dsn, schema))


async def post(http: aiohttp.ClientSession, url: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def test_two_broker_processes_on_one_schema_are_one_broker(
    pg_schema: tuple[str, str], tmp_path: Path, tee_key: rsa.RSAPrivateKey
) -> None:
    local = {"BROKER_LOGIN_BACKEND": "local"}
    first = BrokerProcess(pg_schema, tmp_path, env=local).start()
    second = BrokerProcess(pg_schema, tmp_path, env=local).start()
    try:
        async with aiohttp.ClientSession() as http:
            status, started = await post(http, first.url + "v1/auth/wallet/start", {"address": ALICE, "chain_id": 1})
            assert status == 200, started
            proof = {
                "request_id": started["data"]["request_id"],
                "signature": sign(started["data"]["message"], EVM_ALICE_KEY),
            }
            status, session = await post(http, second.url + "v1/auth/wallet/verify", proof)
            assert status == 200, session
            token = session["data"]["session_token"]
            assert session["data"]["omni_account"] == omni_account_of(IdentityKind.EVM, ALICE, "agentkeys")

            # the message is used: the first process refuses it too
            status, replay = await post(http, first.url + "v1/auth/wallet/verify", proof)
            assert (status, replay["data"]["error"]) == (401, "login_refused")
            assert "already used" in replay["data"]["reason"]

            # the session one issued is a bearer at both; a logout at one is refused by the other
            for broker in (first, second):
                assert (await get(http, broker.url + "v1/whoami", token))[0] == 200
            assert (await post(http, first.url + "v1/auth/logout", {}, token))[0] == 200
            status, refused = await get(http, second.url + "v1/whoami", token)
            assert (status, refused["data"]["reason"]) == (401, "the session was revoked")

            # a TEE token recorded by the callback on one is a bearer at the other
            account = omni_account_of(IdentityKind.EVM, ALICE, "agentkeys")
            tee = mint_tee_token(tee_key, account)
            body = {
                "userId": {"type": "evm", "value": ALICE},
                "clientId": "agentkeys",
                "clientAuth": None,
                "heimaLoginSuccess": True,
            }
            assert (await post(http, first.url + "v3/account/post_heima_login", body, tee))[0] == 200
            status, me = await get(http, second.url + "v1/whoami", tee)
            assert status == 200 and me["data"]["omni_account"] == account and me["data"]["via"] == "tee"
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
