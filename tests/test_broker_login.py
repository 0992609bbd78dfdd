"""Login (`broker/login/`): the discovery document, the local wallet login (SIWE + EIP-191) and the
sessions it issues, on both databases, with the broker's clock moved where a rule is about time."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from broker_client import LOGIN, assert_refused, call, login_body
from broker_process import BROKER_COMMAND, BrokerProcess
from conftest import BrokerFactory, BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa
from login_client import AUTH_CONFIG, LOGOUT, WALLET_START, sign, wallet_login, wallet_start, wallet_verify, whoami

from agentkeys_kit.broker.login.wallet import WINDOW_SECONDS, eip55
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage import store
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import evm_address
from fixtures.wallets import EVM_ALICE_KEY, EVM_BOB_KEY, evm_user_id_value

ALICE = evm_user_id_value(EVM_ALICE_KEY)
BOB = evm_user_id_value(EVM_BOB_KEY)
LOCAL = {"BROKER_LOGIN_BACKEND": "local"}


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


async def local_broker(make_broker: BrokerFactory, clock: Clock | None = None, **env: str) -> BrokerHandle:
    return await make_broker(env={**LOCAL, **env}, clock=clock or Clock())


# --------------------------------------------------------------------------- discovery


async def test_config_names_the_backend_its_methods_and_for_heima_the_worker(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    heima = await make_broker(env={"BROKER_HEIMA_WORKER_URL": "http://127.0.0.1:2100/"})
    reply = await call(http, heima, AUTH_CONFIG, method="GET")
    assert reply.status == 200
    data = reply.body["data"]
    assert data["backend"] == "heima" and data["client_id"] == "agentkeys"
    assert data["heima"] == {"worker_url": "http://127.0.0.1:2100/", "client_id": "agentkeys"}
    assert data["methods"] == ["wallet", "email"]
    assert data["session"]["jwks_uri"] == "/v1/auth/jwks.json"
    # the heima backend serves no local login
    assert_refused(await call(http, heima, "v1/auth/wallet/start", json_body={}), 404, "not_found")

    local = await local_broker(make_broker)
    data = (await call(http, local, AUTH_CONFIG, method="GET")).body["data"]
    assert data["backend"] == "local" and "heima" not in data and "wallet" in data["methods"]


# --------------------------------------------------------------------------- the wallet login


async def test_wallet_login_issues_a_session_for_the_workers_omni_account(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    started = await wallet_start(http, broker, eip55(ALICE))
    lines = started["message"].split("\n")
    assert lines[0].endswith(" wants you to sign in with your Ethereum account:")
    assert lines[1] == eip55(ALICE) and lines[1] != ALICE  # EIP-55 in the message
    assert "Version: 1" in lines and "Chain ID: 84532" in lines
    assert started["expires_at"] - started["issued_at"] == WINDOW_SECONDS == 2700
    assert re.fullmatch(r"Nonce: [0-9a-f]{32}", lines[8])
    reply = await wallet_verify(http, broker, started["request_id"], sign(started["message"], EVM_ALICE_KEY))
    assert reply.status == 200, reply
    session = reply.body["data"]
    expected = omni_account_of(IdentityKind.EVM, ALICE, "agentkeys")
    assert session["omni_account"] == expected
    assert (session["identity_type"], session["identity_value"], session["wallet_address"]) == ("evm", ALICE, ALICE)

    header = jwt.get_unverified_header(session["session_token"])
    assert header == {"alg": "ES256", "kid": broker.state.sessions.key.kid, "typ": "JWT"}
    claims = jwt.decode(session["session_token"], options={"verify_signature": False})
    assert claims["sub"] == f"agentkeys:user:{expected}" and claims["aud"] == "agentkeys:broker"
    assert claims["exp"] - claims["iat"] == 18000 and claims["jti"] == session["session_id"]
    assert claims["agentkeys"] == {
        "omni_account": expected,
        "wallet_address": ALICE,
        "identity_type": "evm",
        "identity_value": ALICE,
    }

    me = await whoami(http, broker, session["session_token"])
    assert me.status == 200, me
    assert me.body["data"]["omni_account"] == expected and me.body["data"]["via"] == "session"
    user = await broker.state.db.run(store.find_user_by_identity, "evm", ALICE)
    assert user is not None and user.omni_account == expected and user.user_uid == session["user_id"]
    events = [row["event"] for row in await broker.state.db.run(store.audit_rows)]
    assert "login" in events


async def test_the_same_wallet_is_the_same_user_whichever_backend_logged_it_in(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    account = omni_account_of(IdentityKind.EVM, ALICE, "agentkeys")
    token = mint_tee_token(tee_key, account)
    heima = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", ALICE))
    assert heima.status == 200, heima
    session = await wallet_login(http, broker, EVM_ALICE_KEY, ALICE.upper().replace("0X", "0x"))
    assert session["user_id"] == heima.body["data"]["user_id"]
    assert session["omni_account"] == account
    assert await broker.state.db.run(store.count_users) == 1
    tee_me = (await whoami(http, broker, token)).body["data"]
    session_me = (await whoami(http, broker, session["session_token"])).body["data"]
    assert tee_me["via"] == "tee" and session_me["via"] == "session"
    assert {k: v for k, v in tee_me.items() if k not in ("via", "session_id")} == {
        k: v for k, v in session_me.items() if k not in ("via", "session_id")
    }


@pytest.mark.parametrize("v_offset", [0, -27], ids=["v27_28", "v0_1"])
async def test_recovery_accepts_v_as_0_1_or_27_28(
    v_offset: int, make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    started = await wallet_start(http, broker, ALICE)
    reply = await wallet_verify(http, broker, started["request_id"], sign(started["message"], EVM_ALICE_KEY, v_offset))
    assert reply.status == 200, reply


async def test_a_wrong_signer_or_v_is_refused_and_does_not_use_up_the_login(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    started = await wallet_start(http, broker, ALICE)
    by_bob = await wallet_verify(http, broker, started["request_id"], sign(started["message"], EVM_BOB_KEY))
    assert_refused(by_bob, 401, "login_refused")
    good = sign(started["message"], EVM_ALICE_KEY)
    bad_v = good[:-2] + "1d"  # v = 29
    assert_refused(await wallet_verify(http, broker, started["request_id"], bad_v), 401, "login_refused")
    other_message = sign(started["message"] + " ", EVM_ALICE_KEY)
    assert_refused(await wallet_verify(http, broker, started["request_id"], other_message), 401, "login_refused")
    assert (await wallet_verify(http, broker, started["request_id"], good)).status == 200
    assert await broker.state.db.run(store.count_users) == 1


BAD_STARTS: dict[str, Any] = {
    "short address": {"address": "0x1234", "chain_id": 1},
    "no 0x": {"address": "aa" * 20, "chain_id": 1},
    "chain id zero": {"address": "0x" + "aa" * 20, "chain_id": 0},
    "chain id as string": {"address": "0x" + "aa" * 20, "chain_id": "1"},
    "chain id too large": {"address": "0x" + "aa" * 20, "chain_id": 2**53},
    "no chain id": {"address": "0x" + "aa" * 20},
    "not an object": ["0x" + "aa" * 20],
}


async def test_wallet_starts_are_limited_per_client_address(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    """Each start writes a nonce row: beyond the limit a client address gets 429 with Retry-After,
    until the minute has passed."""
    clock = Clock()
    broker = await local_broker(make_broker, clock, BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY="3")
    for _ in range(3):
        await wallet_start(http, broker, ALICE)
    body = {"address": ALICE, "chain_id": 1}
    refused = await call(http, broker, "v1/auth/wallet/start", json_body=body)
    assert_refused(refused, 429, "rate_limited")
    assert 1 <= refused.body["data"]["retry_after_seconds"] <= 60
    async with http.post(broker.url + "v1/auth/wallet/start", json=body) as response:  # the header too
        assert response.status == 429 and 1 <= int(response.headers["Retry-After"]) <= 60
    clock.now += 61
    await wallet_start(http, broker, ALICE)


@pytest.mark.parametrize("case", list(BAD_STARTS))
async def test_a_malformed_start_is_400(case: str, make_broker: BrokerFactory, http: aiohttp.ClientSession) -> None:
    broker = await local_broker(make_broker)
    assert_refused(await call(http, broker, "v1/auth/wallet/start", json_body=BAD_STARTS[case]), 400, "malformed_body")


async def test_a_malformed_or_unknown_verify_is_refused(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    started = await wallet_start(http, broker, ALICE)
    good = sign(started["message"], EVM_ALICE_KEY)
    assert_refused(await wallet_verify(http, broker, started["request_id"], good[:-2]), 400, "malformed_body")
    assert_refused(await wallet_verify(http, broker, started["request_id"], good[2:]), 400, "malformed_body")
    assert_refused(await wallet_verify(http, broker, "wlr_" + "0" * 32, good), 401, "login_refused")
    assert_refused(await wallet_verify(http, broker, "anything", good), 401, "login_refused")


# --------------------------------------------------------------------------- the window and the nonce


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (-61, False),  # a replica more than the skew (60 s) behind the one that issued it
        (-60, True),
        (0, True),
        (WINDOW_SECONDS - 1, True),  # the last second of the 45 minutes
        (WINDOW_SECONDS, False),  # Expiration Time itself is expired
        (WINDOW_SECONDS + 3600, False),
    ],
)
async def test_the_45_minute_window_with_the_brokers_clock_moved(
    offset: int, accepted: bool, make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await local_broker(make_broker, clock)
    started = await wallet_start(http, broker, ALICE)
    clock.now = started["issued_at"] + offset
    reply = await wallet_verify(http, broker, started["request_id"], sign(started["message"], EVM_ALICE_KEY))
    if accepted:
        assert reply.status == 200, reply
    else:
        assert_refused(reply, 401, "login_refused")
        assert await broker.state.db.run(store.count_users) == 0


async def test_the_skew_is_configurable_and_bounded(make_broker: BrokerFactory, http: aiohttp.ClientSession) -> None:
    clock = Clock()
    broker = await local_broker(make_broker, clock, BROKER_LOGIN_CLOCK_SKEW_SECONDS="0")
    started = await wallet_start(http, broker, ALICE)
    clock.now = started["issued_at"] - 1
    refused = await wallet_verify(http, broker, started["request_id"], sign(started["message"], EVM_ALICE_KEY))
    assert_refused(refused, 401, "login_refused")
    assert "not valid yet" in refused.body["data"]["reason"]
    with pytest.raises(Exception, match="BROKER_LOGIN_CLOCK_SKEW_SECONDS"):
        await local_broker(make_broker, clock, BROKER_LOGIN_CLOCK_SKEW_SECONDS="301")


async def test_a_signed_message_is_single_use(make_broker: BrokerFactory, http: aiohttp.ClientSession) -> None:
    broker = await local_broker(make_broker)
    started = await wallet_start(http, broker, ALICE)
    signature = sign(started["message"], EVM_ALICE_KEY)
    assert (await wallet_verify(http, broker, started["request_id"], signature)).status == 200
    replay = await wallet_verify(http, broker, started["request_id"], signature)
    assert_refused(replay, 401, "login_refused")
    assert "already used" in replay.body["data"]["reason"]


async def test_concurrent_verifications_of_one_message_make_one_session(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    started = await wallet_start(http, broker, ALICE)
    signature = sign(started["message"], EVM_ALICE_KEY)
    replies = await asyncio.gather(*(wallet_verify(http, broker, started["request_id"], signature) for _ in range(8)))
    assert sorted(reply.status for reply in replies) == [200] + [401] * 7
    sessions = await broker.state.db.run(lambda: _count("broker_sessions"))
    assert sessions == 1


def _count(table: str) -> Any:
    from agentkeys_kit.broker.storage.base import Query

    row = yield Query.one(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608 - test constant
    return int(row["n"])


async def test_expired_login_state_is_purged(make_broker: BrokerFactory, http: aiohttp.ClientSession) -> None:
    clock = Clock()
    broker = await local_broker(make_broker, clock, BROKER_SESSION_JWT_TTL_SECONDS="60")
    await wallet_login(http, broker, EVM_ALICE_KEY, ALICE)
    await wallet_start(http, broker, BOB)
    db = broker.state.db
    assert (await db.run(lambda: _count("login_nonces")), await db.run(lambda: _count("broker_sessions"))) == (2, 1)
    counts = await db.run(login_store.purge_expired, int(clock.now) + 61)
    assert counts["broker_sessions"] == 1 and counts["login_nonces"] == 0
    # a login nonce stays an hour past its expiry (a late replay is still "already used")
    counts = await db.run(login_store.purge_expired, int(clock.now) + WINDOW_SECONDS + 3601)
    assert counts["login_nonces"] == 2
    assert await db.run(lambda: _count("login_nonces")) == 0


# --------------------------------------------------------------------------- sessions: expiry and logout


async def test_a_session_expires_at_its_exp_with_no_leeway(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await local_broker(make_broker, clock, BROKER_SESSION_JWT_TTL_SECONDS="600")
    session = await wallet_login(http, broker, EVM_ALICE_KEY, ALICE)
    clock.now = session["expires_at"] - 1
    assert (await whoami(http, broker, session["session_token"])).status == 200
    clock.now = session["expires_at"]
    assert_refused(await whoami(http, broker, session["session_token"]), 401, "invalid_token")


@pytest.mark.parametrize("value", ["59", "86401", "-1", "5h", ""])
async def test_the_session_lifetime_is_bounded(value: str, make_broker: BrokerFactory) -> None:
    with pytest.raises(Exception, match="BROKER_SESSION_JWT_TTL_SECONDS"):
        await local_broker(make_broker, BROKER_SESSION_JWT_TTL_SECONDS=value)


async def test_logout_revokes_the_session_at_once_and_leaves_others(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await local_broker(make_broker)
    first = await wallet_login(http, broker, EVM_ALICE_KEY, ALICE)
    second = await wallet_login(http, broker, EVM_ALICE_KEY, ALICE)
    out = await call(http, broker, LOGOUT, token=first["session_token"])
    assert out.status == 200 and out.body["data"]["revoked"] is True
    refused = await whoami(http, broker, first["session_token"])
    assert_refused(refused, 401, "invalid_token")
    assert "revoked" in refused.body["data"]["reason"]
    assert_refused(await call(http, broker, LOGOUT, token=first["session_token"]), 401, "invalid_token")
    assert (await whoami(http, broker, second["session_token"])).status == 200


async def test_logout_of_a_tee_token_makes_this_broker_refuse_it(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, omni_account_of(IdentityKind.EVM, ALICE, "agentkeys"))
    assert (await call(http, broker, LOGIN, token=token, json_body=login_body("evm", ALICE))).status == 200
    assert (await whoami(http, broker, token)).status == 200
    assert (await call(http, broker, LOGOUT, token=token)).status == 200
    assert_refused(await whoami(http, broker, token), 401, "invalid_token")


@pytest.mark.parametrize(
    "address",
    # EIP-55's own test vectors
    [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ],
)
def test_the_message_carries_the_eip55_address(address: str) -> None:
    assert eip55(address.lower()) == address


async def test_a_token_recorded_before_migration_6_is_still_a_bearer_after_it(
    db_url: tuple[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
) -> None:
    """Migration 6 copies each account's latest recorded access token into tee_access_tokens, so a
    user logged in before the upgrade keeps a working bearer (older tokens were never kept)."""
    from conftest import open_database_at

    from agentkeys_kit.broker.tokens import bearer_sha256
    from agentkeys_kit.protocol.tee_jwt import unverified_claims

    account = omni_account_of(IdentityKind.EVM, ALICE, "agentkeys")
    token = mint_tee_token(tee_key, account)
    v5 = await open_database_at(5, db_url, monkeypatch)
    await v5.run(_v5_record, account, bearer_sha256(token), unverified_claims(token)["exp"])
    await v5.close()
    broker = await make_broker()
    me = await whoami(http, broker, token)
    assert me.status == 200, me
    assert me.body["data"]["omni_account"] == account


def _v5_record(account: str, sha: str, exp: int) -> Any:
    """What a v5 broker's post_heima_login left: the user row and the latest token in tee_tokens."""
    from agentkeys_kit.broker.storage.base import Query

    yield Query.run(
        "INSERT INTO users (user_uid, client_id, identity_type, identity_value, omni_account, pumpx_omni_account, "
        "created_at) VALUES ('usr_v5', 'agentkeys', 'evm', ?, ?, ?, 1)",
        ALICE,
        account,
        "0x" + "22" * 32,
    )
    yield Query.run(
        "INSERT INTO tee_tokens (omni_account, token_type, client_id, token_sha256, expires_at, updated_at) "
        "VALUES (?, 'access', 'agentkeys', ?, ?, 1)",
        account,
        sha,
        exp,
    )


async def test_a_local_broker_runs_without_a_tee_key_and_refuses_every_tee_token(
    db_url: tuple[str, str | None], tmp_path: Path, http: aiohttp.ClientSession, tee_key: rsa.RSAPrivateKey
) -> None:
    """A deployment with no worker: no TEE key to invent. Logins and sessions work; a TEE token
    (however well signed) and the worker's callbacks are refused; the start line says so. A
    ``heima`` broker without a key is still a configuration mistake."""
    broker = BrokerProcess(db_url, tmp_path, env={"BROKER_LOGIN_BACKEND": "local", "BROKER_TEE_JWT_PUBLIC_KEY": ""})
    broker.start()
    try:
        messages = [line["msg"] for line in broker.log_lines()]
        assert any(message.startswith("no TEE key: TEE access tokens") for message in messages), messages
        async with http.get(broker.url + "readyz") as response:
            assert response.status == 200 and (await response.json())["tee_key"] is False
        key = secrets.token_bytes(32)
        address = "0x" + evm_address(key).hex()
        async with http.post(broker.url + WALLET_START, json={"address": address, "chain_id": 1}) as response:
            started = (await response.json())["data"]
        proof = {"request_id": started["request_id"], "signature": sign(started["message"], key)}
        async with http.post(broker.url + "v1/auth/wallet/verify", json=proof) as response:
            session = (await response.json())["data"]["session_token"]
        async with http.get(broker.url + "v1/whoami", headers={"Authorization": f"Bearer {session}"}) as response:
            assert response.status == 200
        account = omni_account_of(IdentityKind.EVM, address, "agentkeys")
        tee_token = mint_tee_token(tee_key, account)
        async with http.get(broker.url + "v1/whoami", headers={"Authorization": f"Bearer {tee_token}"}) as response:
            refused = await response.json()
            assert response.status == 401 and refused["data"]["error"] == "invalid_token"
        body = {"userId": {"type": "evm", "value": address}, "clientId": "agentkeys", "clientAuth": None}
        headers = {"Authorization": f"Bearer {tee_token}"}
        async with http.post(broker.url + "v3/account/post_heima_login", json=body, headers=headers) as response:
            assert response.status == 401
    finally:
        broker.stop()


def test_a_heima_broker_without_a_tee_key_is_one_line(db_url: tuple[str, str | None]) -> None:
    env = {**os.environ, "BROKER_DB_URL": db_url[0], "BROKER_TEE_JWT_PUBLIC_KEY": "", "BROKER_LOGIN_BACKEND": "heima"}
    ran = subprocess.run([BROKER_COMMAND, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0 and "no TEE key" in ran.stderr and ran.stderr.count("\n") == 1, ran.stderr
