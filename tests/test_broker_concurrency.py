"""Concurrent callbacks and restart durability, on SQLite and PostgreSQL: the worker may call the
broker for one identity many times at once, and a restarted broker must find what it stored."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from broker_client import (
    ADD_WALLET,
    GET_USER_ID,
    GRANT_CREATE,
    GRANT_REVOKE,
    LOGIN,
    audit,
    call,
    count_users,
    evm_account,
    evm_address,
    is_bound,
    login,
    login_body,
    wallet_slots,
)
from conftest import BrokerFactory, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage.migrations import LATEST_SCHEMA_VERSION

MASTER = "0x" + "5a" * 20
AGENT = "0x" + "6b" * 20


def evm_token(key: rsa.RSAPrivateKey, address: str) -> str:
    return mint_tee_token(key, evm_account(address))


async def test_fifty_simultaneous_logins_of_one_identity_make_one_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = evm_token(tee_key, MASTER)
    body = login_body("evm", MASTER)
    replies = await asyncio.gather(*(call(http, broker, LOGIN, token=token, json_body=body) for _ in range(50)))
    assert [status for status, _ in replies] == [200] * 50, [reply for status, reply in replies if status != 200][:3]
    user_ids = {reply["data"]["user_id"] for _, reply in replies}
    assert len(user_ids) == 1
    assert await count_users(broker) == 1
    rows = await audit(broker)
    assert [row["outcome"] for row in rows] == ["ok"] * 50


async def test_simultaneous_first_lookups_of_one_email_make_one_user(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    emails = ["race@example.com", "Race@Example.com", "RACE@EXAMPLE.COM"] * 10
    replies = await asyncio.gather(
        *(call(http, broker, GET_USER_ID, method="GET", params={"email": email}) for email in emails)
    )
    assert [status for status, _ in replies] == [200] * len(emails)
    assert len({reply["data"]["userId"] for _, reply in replies}) == 1
    assert await count_users(broker) == 1
    details = [row["detail"] for row in await audit(broker)]
    assert sorted(details) == ["created"] + ["existing"] * (len(emails) - 1)


async def test_twenty_simultaneous_add_wallets_get_consecutive_slots(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    user_id, token = await login(http, broker, tee_key, MASTER)
    replies = await asyncio.gather(*(call(http, broker, ADD_WALLET, token=token) for _ in range(20)))
    failures = [(status, reply) for status, reply in replies if status != 200]
    assert failures == [], f"{len(failures)} of 20 failed, first: {failures[:1]}"
    assert all(reply == {"code": 10000, "message": "OK", "data": {}} for _, reply in replies)
    assert await wallet_slots(broker, user_id) == list(range(20))


async def test_simultaneous_add_wallets_for_different_users_each_start_at_slot_zero(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    addresses = [evm_address(n) for n in range(1, 11)]
    user_ids = [(await login(http, broker, tee_key, address))[0] for address in addresses]
    calls = [
        call(http, broker, ADD_WALLET, token=evm_token(tee_key, address)) for address in addresses for _ in range(2)
    ]
    replies = await asyncio.gather(*calls)
    assert [status for status, _ in replies] == [200] * len(calls)
    for user_id in user_ids:
        assert await wallet_slots(broker, user_id) == [0, 1]


async def test_a_restarted_broker_finds_users_wallets_and_grants(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    first = await make_broker()
    user_id, token = await login(http, first, tee_key, MASTER)
    assert (await call(http, first, ADD_WALLET, token=token))[0] == 200
    grant_body = {"agent_wallet": AGENT, "scope": "trade", "expires_at": int(time.time()) + 3600}
    status, created = await call(http, first, GRANT_CREATE, token=token, json_body=grant_body)
    assert status == 200, created
    grant_id = created["data"]["grant"]["grant_id"]
    await first.stop()

    second = await make_broker()
    assert second.url != first.url or second.state is not first.state
    assert (await login(http, second, tee_key, MASTER))[0] == user_id
    assert await count_users(second) == 1
    assert await wallet_slots(second, user_id) == [0]
    assert await is_bound(http, second, MASTER, AGENT, login_type=0) is True
    assert (await call(http, second, ADD_WALLET, token=token))[0] == 200
    assert await wallet_slots(second, user_id) == [0, 1]
    status, revoked = await call(http, second, GRANT_REVOKE, token=token, json_body={"grant_id": grant_id})
    assert status == 200 and revoked["data"]["grant"]["status"] == "revoked"
    assert await is_bound(http, second, MASTER, AGENT, login_type=0) is False
    assert await second.state.db.schema_version() == LATEST_SCHEMA_VERSION
    events = {row["event"] for row in await audit(second)}
    assert {"post_heima_login", "add_wallet", "grant_create", "grant_revoke"} <= events
