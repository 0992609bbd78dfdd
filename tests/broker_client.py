"""The broker as its callers see it, for the broker tests: callback and grant paths, one HTTP call
returning status and JSON, the refusal envelope check, a worker-style login, and reads of what the
broker stored (users, wallet slots, audit rows)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import aiohttp
from conftest import BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage import store
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

CLIENT = "agentkeys"
LOGIN = "v3/account/post_heima_login"
ADD_WALLET = "v3/account/add_wallet"
GET_USER_ID = "v3/account/get_account_user_id"
USER_CONNECT = "v3/account/user_connect"
CHECK_AGENT = "v1/account/check_hyper_agent_address"
GRANT_CREATE = "v1/grant/create"
GRANT_REVOKE = "v1/grant/revoke"
GRANT_LIST = "v1/grant/list"


class Reply(NamedTuple):
    """A broker answer: the HTTP status and the body, parsed as JSON where it is JSON, else the text."""

    status: int
    body: Any


# --------------------------------------------------------------------------- identities


def evm_address(n: int) -> str:
    return f"0x{n:040x}"


def account_of(kind: IdentityKind, value: str, client_id: str = CLIENT) -> str:
    return omni_account_of(kind, value, client_id)


def evm_account(address: str, client_id: str = CLIENT) -> str:
    return account_of(IdentityKind.EVM, address, client_id)


def login_body(kind: str, value: str, client_id: str = CLIENT) -> dict[str, Any]:
    """A `post_heima_login` body as the worker sends it after a successful login."""
    return {
        "userId": {"type": kind, "value": value},
        "clientId": client_id,
        "clientAuth": None,
        "heimaLoginSuccess": True,
    }


# --------------------------------------------------------------------------- HTTP


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: aiohttp.ClientSession,
    broker: BrokerHandle,
    path: str,
    *,
    method: str = "POST",
    token: str | None = None,
    json_body: Any = None,
    data: bytes | str | None = None,
    params: dict[str, str] | None = None,
) -> Reply:
    headers = bearer(token) if token is not None else {}
    async with http.request(
        method, broker.url + path, headers=headers, json=json_body, data=data, params=params
    ) as response:
        text = await response.text()
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return Reply(response.status, body)


def assert_refused(reply: Reply, status: int, error: str) -> None:
    """`reply` is the broker's refusal envelope with this 4xx status and ``data.error``."""
    assert 400 <= status < 500
    assert reply.status == status, reply
    assert isinstance(reply.body, dict), reply
    assert set(reply.body) == {"code", "message", "data"}, reply.body
    assert isinstance(reply.body["code"], int) and reply.body["code"] != 10000
    assert isinstance(reply.body["message"], str) and reply.body["message"]
    assert reply.body["data"]["error"] == error, reply.body


async def login(
    http: aiohttp.ClientSession,
    broker: BrokerHandle,
    key: rsa.RSAPrivateKey,
    value: str,
    kind: IdentityKind = IdentityKind.EVM,
) -> tuple[str, str]:
    """A login of `value` as the worker reports it; returns (user_id, access token)."""
    token = mint_tee_token(key, account_of(kind, value))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body(kind.value, value))
    assert reply.status == 200, reply
    user_id: str = reply.body["data"]["user_id"]
    return user_id, token


async def check_agent(
    http: aiohttp.ClientSession, broker: BrokerHandle, main: str, agent: str, login_type: int = 0
) -> Reply:
    body = {"main_address": main, "agent_address": agent, "login_type": login_type}
    return await call(http, broker, CHECK_AGENT, json_body=body)


async def is_bound(
    http: aiohttp.ClientSession, broker: BrokerHandle, main: str, agent: str, login_type: int = 1
) -> bool:
    """`check_hyper_agent_address`'s ``isBound`` for the pair, after checking the reply's shape."""
    reply = await check_agent(http, broker, main, agent, login_type)
    assert reply.status == 200, reply
    assert list(reply.body) == ["code", "message", "data"] and reply.body["code"] == 10000
    assert list(reply.body["data"]) == ["isBound"]
    bound = reply.body["data"]["isBound"]
    assert isinstance(bound, bool)
    return bound


# --------------------------------------------------------------------------- stored state


async def count_users(broker: BrokerHandle) -> int:
    count: int = await broker.state.db.run(store.count_users)
    return count


async def wallet_slots(broker: BrokerHandle, user_uid: str) -> list[int]:
    user = await broker.state.db.run(store.find_user_by_uid, user_uid)
    assert user is not None
    slots: list[int] = await broker.state.db.run(store.list_wallets, user.id)
    return slots


async def audit(broker: BrokerHandle) -> list[dict[str, Any]]:
    """Audit rows, oldest first."""
    rows: list[dict[str, Any]] = await broker.state.db.run(store.audit_rows)
    return rows[::-1]
