"""Concurrent callbacks and restart durability, on SQLite and PostgreSQL: the worker may call the
broker for one identity many times at once, and a restarted broker must find what it stored."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from conftest import BrokerFactory, BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.storage import store
from broker.storage.migrations import LATEST_SCHEMA_VERSION
from protocol.identity import IdentityKind, omni_account_of

CLIENT = "agentkeys"
LOGIN = "v3/account/post_heima_login"
ADD_WALLET = "v3/account/add_wallet"
CHECK_AGENT = "v1/account/check_hyper_agent_address"
GET_USER_ID = "v3/account/get_account_user_id"
MASTER = "0x" + "5a" * 20
AGENT = "0x" + "6b" * 20


def evm_token(key: rsa.RSAPrivateKey, address: str) -> str:
    return mint_tee_token(key, omni_account_of(IdentityKind.EVM, address, CLIENT))


def login_body(address: str) -> dict[str, Any]:
    return {
        "userId": {"type": "evm", "value": address},
        "clientId": CLIENT,
        "clientAuth": None,
        "heimaLoginSuccess": True,
    }


async def post(
    http: aiohttp.ClientSession, broker: BrokerHandle, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(broker.url + path, json=body, headers=headers) as response:
        return response.status, json.loads(await response.text())


async def login(http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, address: str) -> str:
    status, reply = await post(http, broker, LOGIN, evm_token(key, address), login_body(address))
    assert status == 200, reply
    user_id: str = reply["data"]["user_id"]
    return user_id


async def is_bound(http: aiohttp.ClientSession, broker: BrokerHandle, main: str, agent: str) -> bool:
    status, reply = await post(
        http, broker, CHECK_AGENT, body={"main_address": main, "agent_address": agent, "login_type": 0}
    )
    assert status == 200, reply
    bound: bool = reply["data"]["isBound"]
    return bound


async def wallet_slots(broker: BrokerHandle, user_uid: str) -> list[int]:
    user = await broker.state.db.run(store.find_user_by_uid, user_uid)
    assert user is not None
    slots: list[int] = await broker.state.db.run(store.list_wallets, user.id)
    return slots


async def test_fifty_simultaneous_logins_of_one_identity_make_one_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = evm_token(tee_key, MASTER)
    replies = await asyncio.gather(*(post(http, broker, LOGIN, token, login_body(MASTER)) for _ in range(50)))
    assert [status for status, _ in replies] == [200] * 50, [reply for status, reply in replies if status != 200][:3]
    user_ids = {reply["data"]["user_id"] for _, reply in replies}
    assert len(user_ids) == 1
    assert await broker.state.db.run(store.count_users) == 1
    rows = await broker.state.db.run(store.audit_rows)
    assert [row["outcome"] for row in rows] == ["ok"] * 50


async def test_simultaneous_first_lookups_of_one_email_make_one_user(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()

    async def lookup(email: str) -> tuple[int, Any]:
        async with http.get(broker.url + GET_USER_ID, params={"email": email}) as response:
            return response.status, json.loads(await response.text())

    emails = ["race@example.com", "Race@Example.com", "RACE@EXAMPLE.COM"] * 10
    replies = await asyncio.gather(*(lookup(email) for email in emails))
    assert [status for status, _ in replies] == [200] * len(emails)
    assert len({reply["data"]["userId"] for _, reply in replies}) == 1
    assert await broker.state.db.run(store.count_users) == 1
    details = [row["detail"] for row in await broker.state.db.run(store.audit_rows)]
    assert sorted(details) == ["created"] + ["existing"] * (len(emails) - 1)


async def test_twenty_simultaneous_add_wallets_get_consecutive_slots(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    user_id = await login(http, broker, tee_key, MASTER)
    token = evm_token(tee_key, MASTER)
    replies = await asyncio.gather(*(post(http, broker, ADD_WALLET, token) for _ in range(20)))
    failures = [(status, reply) for status, reply in replies if status != 200]
    assert failures == [], f"{len(failures)} of 20 failed, first: {failures[:1]}"
    assert all(reply == {"code": 10000, "message": "OK", "data": {}} for _, reply in replies)
    assert await wallet_slots(broker, user_id) == list(range(20))


async def test_simultaneous_add_wallets_for_different_users_each_start_at_slot_zero(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    addresses = [f"0x{n:040x}" for n in range(1, 11)]
    user_ids = [await login(http, broker, tee_key, address) for address in addresses]
    calls = [post(http, broker, ADD_WALLET, evm_token(tee_key, address)) for address in addresses for _ in range(2)]
    replies = await asyncio.gather(*calls)
    assert [status for status, _ in replies] == [200] * len(calls)
    for user_id in user_ids:
        assert await wallet_slots(broker, user_id) == [0, 1]


async def test_a_restarted_broker_finds_users_wallets_and_grants(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    first = await make_broker()
    user_id = await login(http, first, tee_key, MASTER)
    token = evm_token(tee_key, MASTER)
    assert (await post(http, first, ADD_WALLET, token))[0] == 200
    grant_body = {"agent_wallet": AGENT, "scope": "trade", "expires_at": int(time.time()) + 3600}
    status, created = await post(http, first, "v1/grant/create", token, grant_body)
    assert status == 200, created
    grant_id = created["data"]["grant"]["grant_id"]
    await first.stop()

    second = await make_broker()
    assert second.url != first.url or second.state is not first.state
    assert await login(http, second, tee_key, MASTER) == user_id
    assert await second.state.db.run(store.count_users) == 1
    assert await wallet_slots(second, user_id) == [0]
    assert await is_bound(http, second, MASTER, AGENT) is True
    assert (await post(http, second, ADD_WALLET, token))[0] == 200
    assert await wallet_slots(second, user_id) == [0, 1]
    status, revoked = await post(http, second, "v1/grant/revoke", token, {"grant_id": grant_id})
    assert status == 200 and revoked["data"]["grant"]["status"] == "revoked"
    assert await is_bound(http, second, MASTER, AGENT) is False
    assert await second.state.db.schema_version() == LATEST_SCHEMA_VERSION
    events = {row["event"] for row in await second.state.db.run(store.audit_rows)}
    assert {"post_heima_login", "add_wallet", "grant_create", "grant_revoke"} <= events
