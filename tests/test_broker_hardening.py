"""Findings of the security review, pinned: each of these once failed."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import aiohttp
import pytest
from broker_client import (
    GET_USER_ID,
    GRANT_CREATE,
    GRANT_REVOKE,
    LOGIN,
    USER_CONNECT,
    assert_refused,
    call,
    is_bound,
    login,
    login_body,
)
from conftest import TEE_KEY_PATH, BrokerFactory, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.config import BrokerConfigError, config_from_env
from agentkeys_kit.broker.storage import ValueRefused, store
from agentkeys_kit.broker.storage.base import Operation, Query, UniqueViolation
from agentkeys_kit.broker.tee_keys import TeeKeyError, load_public_key_file
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of, pumpx_omni_account

MASTER = "0x" + "a7" * 20
AGENT = "0x" + "b8" * 20


def test_the_broker_refuses_to_hold_the_tee_private_key() -> None:
    with pytest.raises(TeeKeyError, match="private key"):
        load_public_key_file(TEE_KEY_PATH)
    assert load_public_key_file(TEE_KEY_PATH.with_name("tee_jwt_public_key.test.pem")).key_size == 2048


def test_schema_names_must_be_plain_identifiers() -> None:
    base = {"BROKER_TEE_JWT_PUBLIC_KEY": "k.pem"}
    assert config_from_env({**base, "BROKER_DB_SCHEMA": "broker_1"}).db_schema == "broker_1"
    for bad in ('x"; DROP SCHEMA public; --', "Public", "1st"):
        with pytest.raises(BrokerConfigError):
            config_from_env({**base, "BROKER_DB_SCHEMA": bad})


async def test_no_table_stores_a_bearer_token(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    for table in ("users", "wallets", "tee_tokens", "grants", "audit_log"):

        def rows(name: str = table) -> Operation[list[dict[str, object]]]:
            return (yield Query.all(f"SELECT * FROM {name}"))  # noqa: S608 (constant table names)

        for row in await broker.state.db.run(rows):
            assert all(token not in str(value) for value in row.values()), table


async def test_a_body_split_across_packets_is_read_whole(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, omni_account_of(IdentityKind.EVM, MASTER, "agentkeys"))
    body = json.dumps(login_body("evm", MASTER)).encode()
    url = urlsplit(broker.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        f"POST /{LOGIN} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:20])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[20:])
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


async def test_credential_less_callbacks_are_refused_through_a_proxy(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    for header in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}):
        async with http.get(broker.url + GET_USER_ID, params={"email": "p@example.com"}, headers=header) as response:
            assert response.status == 403
            assert (await response.json())["data"]["error"] == "network_refused"


async def test_malicious_shapes_get_4xx_not_500(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    deep = await call(http, broker, LOGIN, token=token, data="[" * 30000)
    assert_refused(deep, 400, "malformed_body")
    far = await call(
        http, broker, GRANT_CREATE, token=token, json_body={"agent_wallet": AGENT, "scope": "s", "expires_at": 2**63}
    )
    assert_refused(far, 400, "malformed_body")


async def test_a_non_ascii_google_code_is_a_failed_check_not_a_crash(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    lookup = await call(http, broker, GET_USER_ID, method="GET", params={"email": "totp@example.com"})
    uid = lookup.body["data"]["userId"]
    assert await broker.state.db.run(store.set_totp_secret, uid, "JBSWY3DPEHPK3PXP")
    token = mint_tee_token(tee_key, "0x" + pumpx_omni_account("agentkeys", uid).hex())
    body = {"email": "totp@example.com", "inviteCode": None, "googleCode": "１２３４５６", "userId": uid}
    reply = await call(http, broker, USER_CONNECT, token=token, json_body=body)
    assert reply.status == 200 and reply.body["data"]["googleAuthCheck"] is False


async def test_one_active_grant_per_pair_and_revoke_always_unbinds(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    grant = {"agent_wallet": AGENT, "scope": "trade", "expires_at": int(time.time()) + 3600}
    first = await call(http, broker, GRANT_CREATE, token=token, json_body=grant)
    assert first.status == 200
    assert_refused(await call(http, broker, GRANT_CREATE, token=token, json_body=grant), 409, "grant_exists")
    # The database itself refuses a second open grant for the pair, whoever writes it.
    grant_id = first.body["data"]["grant"]["grant_id"]

    def second_open_grant() -> Operation[None]:
        yield Query.run(
            "INSERT INTO grants (grant_id, master_omni_account, master_wallet, agent_wallet, scope, created_at, "
            "expires_at) SELECT 'grn_second', master_omni_account, master_wallet, agent_wallet, scope, created_at, "
            "expires_at FROM grants WHERE grant_id = ?",
            grant_id,
        )

    with pytest.raises(UniqueViolation):
        await broker.state.db.run(second_open_grant)
    assert (await call(http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": grant_id})).status == 200
    assert await is_bound(http, broker, MASTER, AGENT) is False


async def test_concurrent_revokes_succeed_once(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    grant = {"agent_wallet": AGENT, "scope": "trade", "expires_at": int(time.time()) + 3600}
    grant_id = (await call(http, broker, GRANT_CREATE, token=token, json_body=grant)).body["data"]["grant"]["grant_id"]
    replies = await asyncio.gather(
        *(call(http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": grant_id}) for _ in range(8))
    )
    assert sorted(reply.status for reply in replies) == [200] + [409] * 7


def test_the_development_key_url_must_not_travel_in_clear() -> None:
    assert config_from_env({"BROKER_TEE_JWT_PUBLIC_KEY_URL": "http://127.0.0.1:2100/_sim/jwt-public-key"})
    assert config_from_env({"BROKER_TEE_JWT_PUBLIC_KEY_URL": "https://tee.example/key.pem"})
    with pytest.raises(BrokerConfigError, match="https"):
        config_from_env({"BROKER_TEE_JWT_PUBLIC_KEY_URL": "http://tee.example/key.pem"})


async def test_a_value_the_database_cannot_store_is_a_400_and_no_outage(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """A lone surrogate (SQLite cannot encode it), a NUL byte (PostgreSQL refuses it in text) or an
    integer beyond 64 bits reaching the database is the request's fault: 400 in the envelope,
    never a 500 or a 503, and the storage log does not report an outage."""
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    lone = await call(http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": "grn_\ud800"})
    assert_refused(lone, 400, "malformed_body")
    nul = await call(http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": "grn_\x00"})
    assert_refused(nul, 400, "malformed_body")  # the request layer refuses NUL before any database
    with pytest.raises(ValueRefused):
        await broker.state.db.run(store.find_user_by_uid, "usr_\udfff")

    def huge() -> Operation[None]:
        yield Query.run("UPDATE users SET last_login_at = ? WHERE id = 0", 2**63)

    with pytest.raises(ValueRefused):
        await broker.state.db.run(huge)
    assert not broker.state.db.outage.failing
    assert (
        await call(
            http,
            broker,
            GRANT_CREATE,
            token=token,
            json_body={"agent_wallet": AGENT, "scope": "s", "expires_at": int(time.time()) + 60},
        )
    ).status == 200
