"""Grants (`broker/grants.py`, `broker/cli.py`): created over HTTP by a master's TEE access token or
by the operator CLI, answered by `check_hyper_agent_address`'s ``isBound``, on both databases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from broker_client import (
    CLIENT,
    GRANT_CREATE,
    GRANT_LIST,
    GRANT_REVOKE,
    Reply,
    account_of,
    assert_refused,
    audit,
    call,
    is_bound,
    login,
)
from conftest import BrokerFactory, BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker import cli
from agentkeys_kit.broker.storage import store
from agentkeys_kit.protocol.identity import IdentityKind

HOUR = 3600

MASTER = "0x" + "a1" * 20
OTHER_MASTER = "0x" + "b2" * 20
AGENT = "0x" + "c3" * 20
AGENT_2 = "0x" + "d4" * 20


# --------------------------------------------------------------------------- helpers


class Clock:
    """A clock the test moves; the broker reads it for token expiry, grant expiry and audit."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


async def login_master(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, address: str = MASTER
) -> str:
    _, token = await login(http, broker, key, address)
    return token


async def create(
    http: aiohttp.ClientSession,
    broker: BrokerHandle,
    token: str,
    agent: str = AGENT,
    *,
    expires_at: int | None = None,
    scope: str = "trade:perp",
) -> Reply:
    expiry = expires_at if expires_at is not None else broker.state.now() + HOUR
    return await call(
        http, broker, GRANT_CREATE, token=token, json_body={"agent_wallet": agent, "scope": scope, "expires_at": expiry}
    )


async def create_ok(
    http: aiohttp.ClientSession, broker: BrokerHandle, token: str, agent: str = AGENT, **kwargs: Any
) -> dict[str, Any]:
    reply = await create(http, broker, token, agent, **kwargs)
    assert reply.status == 200, reply
    assert reply.body["code"] == 10000 and reply.body["message"] == "OK"
    grant: dict[str, Any] = reply.body["data"]["grant"]
    return grant


async def revoke(http: aiohttp.ClientSession, broker: BrokerHandle, token: str, grant_id: str) -> Reply:
    return await call(http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": grant_id})


async def listing(http: aiohttp.ClientSession, broker: BrokerHandle, token: str) -> list[dict[str, Any]]:
    reply = await call(http, broker, GRANT_LIST, method="GET", token=token)
    assert reply.status == 200, reply
    grants: list[dict[str, Any]] = reply.body["data"]["grants"]
    return grants


async def stored_grants(broker: BrokerHandle) -> list[dict[str, Any]]:
    grants = await broker.state.db.run(store.list_grants, None)
    return [grant.to_json(broker.state.now()) for grant in grants]


def case_variants(address: str) -> list[str]:
    body = address[2:]
    mixed = "".join(ch.upper() if i % 2 else ch for i, ch in enumerate(body))
    return [address, "0x" + body.upper(), "0x" + mixed]


# --------------------------------------------------------------------------- HTTP grants


async def test_create_returns_the_active_grant_and_binds_the_pair(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(clock=clock)
    token = await login_master(http, broker, tee_key)
    assert await is_bound(http, broker, MASTER, AGENT) is False
    expires_at = int(clock.now) + HOUR
    grant = await create_ok(http, broker, token, AGENT.upper().replace("0X", "0x"), expires_at=expires_at)
    assert grant["grant_id"].startswith("grn_")
    assert grant == {
        "grant_id": grant["grant_id"],
        "master_omni_account": account_of(IdentityKind.EVM, MASTER),
        "master_wallet": MASTER,
        "agent_wallet": AGENT,
        "scope": "trade:perp",
        "created_at": int(clock.now),
        "expires_at": expires_at,
        "revoked_at": None,
        "superseded_by": None,
        "max_uses": None,
        "uses": 0,
        "status": "active",
    }
    assert await is_bound(http, broker, MASTER, AGENT) is True
    assert await stored_grants(broker) == [grant]


async def test_is_bound_truth_table(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = await login_master(http, broker, tee_key)
    other = await login_master(http, broker, tee_key, OTHER_MASTER)
    await create_ok(http, broker, token, AGENT)
    await create_ok(http, broker, other, AGENT_2)
    for main in case_variants(MASTER):
        for agent in case_variants(AGENT):
            assert await is_bound(http, broker, main, agent) is True, (main, agent)
    assert await is_bound(http, broker, AGENT, MASTER) is False  # reversed pair
    assert await is_bound(http, broker, MASTER, AGENT_2) is False  # another master's agent
    assert await is_bound(http, broker, OTHER_MASTER, AGENT) is False  # this master's agent, other master
    assert await is_bound(http, broker, OTHER_MASTER, AGENT_2) is True
    assert await is_bound(http, broker, "0x" + "ee" * 20, "0x" + "ff" * 20) is False  # unknown pair
    for login_type in (0, 1, 2, -1, 99):  # login_type carries no AgentKeys meaning
        assert await is_bound(http, broker, MASTER, AGENT, login_type) is True


async def test_revoke_unbinds_immediately_and_a_second_revoke_is_409(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(clock=clock)
    token = await login_master(http, broker, tee_key)
    grant = await create_ok(http, broker, token)
    assert await is_bound(http, broker, MASTER, AGENT) is True
    reply = await revoke(http, broker, token, grant["grant_id"])
    assert reply.status == 200 and reply.body["code"] == 10000
    assert reply.body["data"]["grant"] == {**grant, "revoked_at": int(clock.now), "status": "revoked"}
    assert await is_bound(http, broker, MASTER, AGENT) is False
    assert_refused(await revoke(http, broker, token, grant["grant_id"]), 409, "already_revoked")
    assert (await stored_grants(broker))[0]["revoked_at"] == int(clock.now)


async def test_a_new_grant_after_a_revoke_binds_again(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = await login_master(http, broker, tee_key)
    first = await create_ok(http, broker, token)
    assert (await revoke(http, broker, token, first["grant_id"])).status == 200
    second = await create_ok(http, broker, token)
    assert second["grant_id"] != first["grant_id"]
    assert await is_bound(http, broker, MASTER, AGENT) is True
    assert (await revoke(http, broker, token, second["grant_id"])).status == 200
    assert await is_bound(http, broker, MASTER, AGENT) is False


async def test_a_grant_is_unbound_from_its_expiry_second(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(clock=clock)
    token = await login_master(http, broker, tee_key)
    start = clock.now
    grant = await create_ok(http, broker, token, expires_at=int(start) + 100)
    clock.now = start + 99
    assert await is_bound(http, broker, MASTER, AGENT) is True
    assert [g["status"] for g in await listing(http, broker, token)] == ["active"]
    clock.now = start + 100
    assert await is_bound(http, broker, MASTER, AGENT) is False
    assert await listing(http, broker, token) == [{**grant, "status": "expired"}]
    clock.now = start + 10 * HOUR
    assert await is_bound(http, broker, MASTER, AGENT) is False


async def test_revoking_another_masters_grant_is_unknown_grant_and_leaves_it_active(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    owner = await login_master(http, broker, tee_key)
    intruder = await login_master(http, broker, tee_key, OTHER_MASTER)
    grant = await create_ok(http, broker, owner)
    reply = await revoke(http, broker, intruder, grant["grant_id"])
    assert_refused(reply, 404, "unknown_grant")
    unknown = await revoke(http, broker, intruder, "grn_doesnotexist")
    assert_refused(unknown, 404, "unknown_grant")
    assert reply.body == unknown.body  # ownership is not leaked
    assert await is_bound(http, broker, MASTER, AGENT) is True
    assert [g["status"] for g in await listing(http, broker, owner)] == ["active"]


async def test_list_shows_only_the_callers_grants_with_their_status(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(clock=clock)
    token = await login_master(http, broker, tee_key)
    other = await login_master(http, broker, tee_key, OTHER_MASTER)
    start = int(clock.now)
    expiring = await create_ok(http, broker, token, "0x" + "01" * 20, expires_at=start + 50)
    clock.now += 1
    revoked = await create_ok(http, broker, token, "0x" + "02" * 20)
    clock.now += 1
    active = await create_ok(http, broker, token, "0x" + "03" * 20)
    foreign = await create_ok(http, broker, other, "0x" + "04" * 20)
    assert (await revoke(http, broker, token, revoked["grant_id"])).status == 200
    clock.now = start + 60
    mine = await listing(http, broker, token)
    assert {g["grant_id"]: g["status"] for g in mine} == {
        expiring["grant_id"]: "expired",
        revoked["grant_id"]: "revoked",
        active["grant_id"]: "active",
    }
    assert all(g["master_omni_account"] == account_of(IdentityKind.EVM, MASTER) for g in mine)
    assert [g["grant_id"] for g in await listing(http, broker, other)] == [foreign["grant_id"]]


async def test_a_master_that_logged_in_with_an_email_is_not_a_wallet_identity(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, "master@example.com", IdentityKind.EMAIL)
    assert_refused(await create(http, broker, token), 403, "not_a_wallet_identity")
    assert_refused(await call(http, broker, GRANT_LIST, method="GET", token=token), 403, "not_a_wallet_identity")
    assert_refused(await revoke(http, broker, token, "grn_x"), 403, "not_a_wallet_identity")
    assert await stored_grants(broker) == []


async def test_a_master_whose_login_never_reached_the_broker_is_refused(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    # A valid TEE access token that post_heima_login never recorded: the broker never heard of
    # that login (`bearer.py`), so it is not a bearer here.
    broker = await make_broker()
    token = mint_tee_token(tee_key, account_of(IdentityKind.EVM, MASTER))
    reply = await create(http, broker, token)
    assert_refused(reply, 401, "invalid_token")
    assert "never recorded" in reply.body["data"]["reason"]
    assert await stored_grants(broker) == []


async def test_grant_endpoints_need_a_valid_tee_access_token(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    await login_master(http, broker, tee_key)
    body = {"agent_wallet": AGENT, "scope": "s", "expires_at": int(time.time()) + HOUR}
    assert_refused(await call(http, broker, GRANT_CREATE, json_body=body), 401, "missing_bearer")
    id_token = mint_tee_token(tee_key, account_of(IdentityKind.EVM, MASTER), typ="id")
    assert_refused(await call(http, broker, GRANT_CREATE, token=id_token, json_body=body), 401, "invalid_token")
    expired = mint_tee_token(tee_key, account_of(IdentityKind.EVM, MASTER), exp=int(time.time()) - 1)
    assert_refused(await call(http, broker, GRANT_LIST, method="GET", token=expired), 401, "invalid_token")
    assert await stored_grants(broker) == []


BAD_CREATE_REQUESTS: dict[str, dict[str, Any]] = {
    "expiry_in_the_past": {"expires_at": -1},
    "expiry_at_the_epoch": {"expires_at": 0},
    "agent_is_the_master": {"agent_wallet": MASTER},
    "agent_is_the_master_other_case": {"agent_wallet": "0x" + MASTER[2:].upper()},
    "short_agent": {"agent_wallet": "0x1234"},
    "agent_without_0x": {"agent_wallet": "c3" * 20},
    "empty_scope": {"scope": ""},
    "blank_scope": {"scope": "   "},
    "scope_too_long": {"scope": "x" * 257},
    "expiry_as_string": {"expires_at": "9999999999"},
    "expiry_as_bool": {"expires_at": True},
    "no_agent": {"agent_wallet": None},
}


@pytest.mark.parametrize("case", list(BAD_CREATE_REQUESTS))
async def test_create_refuses_a_bad_request_with_400(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    case: str,
) -> None:
    broker = await make_broker()
    token = await login_master(http, broker, tee_key)
    body = {"agent_wallet": AGENT, "scope": "trade", "expires_at": broker.state.now() + HOUR}
    body.update(BAD_CREATE_REQUESTS[case])
    assert_refused(await call(http, broker, GRANT_CREATE, token=token, json_body=body), 400, "malformed_body")
    assert await stored_grants(broker) == []


async def test_expiry_equal_to_now_is_refused(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(clock=clock)
    token = await login_master(http, broker, tee_key)
    assert_refused(await create(http, broker, token, expires_at=int(clock.now)), 400, "malformed_body")
    assert (await create(http, broker, token, expires_at=int(clock.now) + 1)).status == 200


async def test_audit_rows_for_grant_create_and_revoke(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = await login_master(http, broker, tee_key)
    grant = await create_ok(http, broker, token)
    assert (await revoke(http, broker, token, grant["grant_id"])).status == 200
    assert (await revoke(http, broker, token, grant["grant_id"])).status == 409
    rows = [row for row in await audit(broker) if row["event"].startswith("grant_")]
    assert [(row["event"], row["outcome"]) for row in rows] == [
        ("grant_create", "ok"),
        ("grant_revoke", "ok"),
        ("grant_revoke", "refused:already_revoked"),
    ]
    assert rows[0]["detail"] == f"{MASTER}->{AGENT}"
    assert rows[1]["detail"] == grant["grant_id"]
    for row in rows:
        assert row["omni_account"] == account_of(IdentityKind.EVM, MASTER)
        assert row["client_id"] == CLIENT
        assert row["remote_addr"] == "127.0.0.1"
        assert all(token not in str(value) for value in row.values())


# --------------------------------------------------------------------------- operator CLI


@pytest.fixture
def operator(
    db_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Any]:
    """Run `agentkeys-broker grants …` against the broker's database (PostgreSQL: its schema, via
    `BROKER_DB_SCHEMA`); returns (exit code, stdout lines)."""
    url, schema = db_url
    monkeypatch.setenv("BROKER_DB_URL", url)
    if schema is None:
        monkeypatch.delenv("BROKER_DB_SCHEMA", raising=False)
    else:
        monkeypatch.setenv("BROKER_DB_SCHEMA", schema)

    async def run(*argv: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["grants", *argv])
        return code, capsys.readouterr().out.splitlines()

    return run


async def test_cli_create_list_revoke_drive_is_bound(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, operator: Any
) -> None:
    broker = await make_broker()
    token = await login_master(http, broker, tee_key)
    code, out = await operator(
        "create",
        "--master-wallet",
        MASTER.upper().replace("0X", "0x"),
        "--agent-wallet",
        AGENT,
        "--scope",
        "s",
        "--ttl",
        "3600",
    )
    assert code == 0
    [line] = out
    grant = json.loads(line)
    assert grant["status"] == "active" and grant["master_wallet"] == MASTER and grant["agent_wallet"] == AGENT
    assert grant["master_omni_account"] == account_of(IdentityKind.EVM, MASTER)
    assert await is_bound(http, broker, MASTER, AGENT) is True
    assert [g["grant_id"] for g in await listing(http, broker, token)] == [grant["grant_id"]]

    code, out = await operator("list")
    assert code == 0 and [json.loads(line)["grant_id"] for line in out] == [grant["grant_id"]]
    code, out = await operator("list", "--master-account", account_of(IdentityKind.EVM, OTHER_MASTER))
    assert code == 0 and out == []

    assert await operator("revoke", grant["grant_id"]) == (0, ["revoked"])
    assert await is_bound(http, broker, MASTER, AGENT) is False
    assert await operator("revoke", grant["grant_id"]) == (1, ["already_revoked"])
    assert await operator("revoke", "grn_missing") == (1, ["not_found"])
    code, out = await operator("list")
    assert code == 0 and json.loads(out[0])["status"] == "revoked"

    operator_rows = [row for row in await audit(broker) if row["remote_addr"] == "operator"]
    assert [(row["event"], row["outcome"]) for row in operator_rows] == [
        ("grant_create", "ok"),
        ("grant_revoke", "ok"),
    ]
    assert operator_rows[0]["detail"] == f"{MASTER}->{AGENT}"


async def test_cli_revokes_a_grant_made_over_http(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, operator: Any
) -> None:
    broker = await make_broker()
    token = await login_master(http, broker, tee_key)
    grant = await create_ok(http, broker, token)
    assert await operator("revoke", grant["grant_id"]) == (0, ["revoked"])
    assert await is_bound(http, broker, MASTER, AGENT) is False
    assert_refused(await revoke(http, broker, token, grant["grant_id"]), 409, "already_revoked")


async def test_cli_create_for_a_wallet_that_never_logged_in_fails(
    make_broker: BrokerFactory, operator: Any, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    code, out = await operator(
        "create", "--master-wallet", MASTER, "--agent-wallet", AGENT, "--scope", "s", "--ttl", "60"
    )
    assert code == 1 and out == []
    assert await stored_grants(broker) == []


async def test_cli_create_with_an_expiry_in_the_past_fails(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, operator: Any
) -> None:
    broker = await make_broker()
    await login_master(http, broker, tee_key)
    past = str(int(time.time()) - 10)
    code, _ = await operator(
        "create", "--master-wallet", MASTER, "--agent-wallet", AGENT, "--scope", "s", "--expires-at", past
    )
    assert code == 2
    assert await stored_grants(broker) == []


@pytest.mark.parametrize(
    ("agent", "scope"),
    [(MASTER, "s"), ("not-an-address", "s"), (AGENT, "")],
    ids=["agent_is_the_master", "agent_not_an_address", "empty_scope"],
)
async def test_cli_create_refuses_what_the_http_api_refuses(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    operator: Any,
    agent: str,
    scope: str,
) -> None:
    """The operator path must enforce the grant rules `validate_grant_request` enforces over HTTP
    (agent ≠ master, agent is 0x + 40 hex, scope non-empty); `broker/cli.py:_create` checks none."""
    broker = await make_broker()
    await login_master(http, broker, tee_key)
    code, _ = await operator(
        "create", "--master-wallet", MASTER, "--agent-wallet", agent, "--scope", scope, "--ttl", "60"
    )
    assert code != 0
    assert await stored_grants(broker) == []
