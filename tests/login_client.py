"""Login as a client does it against the broker, for the login, session and bearer tests."""

from __future__ import annotations

from typing import Any

import aiohttp
from broker_client import Reply, call
from conftest import BrokerHandle

from agentkeys_kit.protocol.signatures import sign_evm_personal

WALLET_START = "v1/auth/wallet/start"
WALLET_VERIFY = "v1/auth/wallet/verify"
WHOAMI = "v1/whoami"
LOGOUT = "v1/auth/logout"
AUTH_CONFIG = "v1/auth/config"
SESSION_JWKS = "v1/auth/jwks.json"


async def wallet_start(
    http: aiohttp.ClientSession, broker: BrokerHandle, address: str, chain_id: int = 84532
) -> dict[str, Any]:
    reply = await call(http, broker, WALLET_START, json_body={"address": address, "chain_id": chain_id})
    assert reply.status == 200, reply
    data: dict[str, Any] = reply.body["data"]
    return data


def sign(message: str, key: bytes, v_offset: int = 0) -> str:
    """EIP-191 personal_sign of the message, ``0x`` hex; `v_offset` -27 gives v in 0/1."""
    signature = bytearray(sign_evm_personal(message.encode("utf-8"), key))
    signature[64] += v_offset
    return "0x" + signature.hex()


async def wallet_verify(http: aiohttp.ClientSession, broker: BrokerHandle, request_id: str, signature: str) -> Reply:
    return await call(http, broker, WALLET_VERIFY, json_body={"request_id": request_id, "signature": signature})


async def wallet_login(
    http: aiohttp.ClientSession,
    broker: BrokerHandle,
    key: bytes,
    address: str,
    *,
    finish_at: BrokerHandle | None = None,
) -> dict[str, Any]:
    """start on `broker`, verify on `finish_at` (default the same); the session's data."""
    started = await wallet_start(http, broker, address)
    reply = await wallet_verify(http, finish_at or broker, started["request_id"], sign(started["message"], key))
    assert reply.status == 200, reply
    data: dict[str, Any] = reply.body["data"]
    return data


async def whoami(http: aiohttp.ClientSession, broker: BrokerHandle, token: str | None) -> Reply:
    return await call(http, broker, WHOAMI, method="GET", token=token)
