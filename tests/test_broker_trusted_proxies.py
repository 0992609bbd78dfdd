"""Behind a load balancer (`BROKER_TRUSTED_PROXY_CIDRS`): the client is the address the trusted
proxy wrote into ``X-Forwarded-For``, for rate limits, refusal audit, audit rows and the access
log; from anyone else the header is ignored, and the credential-less callbacks still refuse any
request that came through a proxy."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import aiohttp
import pytest
from broker_client import GET_USER_ID
from conftest import BrokerFactory, BrokerHandle
from login_client import WALLET_START, sign

from agentkeys_kit.broker.config import BrokerConfigError
from agentkeys_kit.broker.config import config_from_env as broker_config_from_env
from agentkeys_kit.broker.http import forwarded_client
from agentkeys_kit.broker.storage import store
from fixtures.wallets import EVM_ALICE_KEY, evm_user_id_value

ALICE = evm_user_id_value(EVM_ALICE_KEY)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # the peer is not a trusted proxy: its header is anyone's words
        ("198.51.100.9", ["203.0.113.7"], "198.51.100.9"),
        # one trusted proxy: the address it appended
        ("10.0.0.2", ["203.0.113.7"], "203.0.113.7"),
        # a client that sends its own header first cannot choose its address: the walk stops at
        # the first untrusted hop from the right
        ("10.0.0.2", ["1.1.1.1, 203.0.113.7"], "203.0.113.7"),
        # two trusted proxies in a row, and the header split over two lines
        ("10.0.0.2", ["1.1.1.1, 203.0.113.7", "10.0.0.3"], "203.0.113.7"),
        # every hop a trusted proxy: the leftmost one is all anyone knows
        ("10.0.0.2", ["10.0.0.4, 10.0.0.3"], "10.0.0.4"),
        # a hop that is not an address ends the walk: the last trusted hop is the client
        ("10.0.0.2", ["203.0.113.7, not-an-address"], "10.0.0.2"),
        ("10.0.0.2", ["203.0.113.7, 10.0.0.3, 203.0.113.7:4711"], "10.0.0.2"),
        # no header from a trusted proxy: the proxy itself
        ("10.0.0.2", [], "10.0.0.2"),
        # IPv6 proxies, and an IPv4-mapped peer counted as its IPv4 address
        ("fd00::2", ["2001:db8::7"], "2001:db8::7"),
        ("::ffff:10.0.0.2", ["203.0.113.7"], "203.0.113.7"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(peer: str, forwarded_for: list[str], client: str) -> None:
    assert forwarded_client(peer, forwarded_for, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert forwarded_client("10.0.0.2", ["203.0.113.7"], ()) == "10.0.0.2"
    assert forwarded_client(None, ["203.0.113.7"], PROXIES) is None


def test_a_bad_network_is_one_line_naming_the_variable() -> None:
    env = {"BROKER_TEE_JWT_PUBLIC_KEY": "/dev/null", "BROKER_TRUSTED_PROXY_CIDRS": "10.0.0.0/8, bogus"}
    with pytest.raises(BrokerConfigError, match=r"^BROKER_TRUSTED_PROXY_CIDRS: .*bogus"):
        broker_config_from_env(env)


async def start(http: aiohttp.ClientSession, broker: BrokerHandle, forwarded_for: str | None) -> tuple[int, Any]:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"address": ALICE, "chain_id": 1}
    async with http.post(broker.url + WALLET_START, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_rate_limits_and_audit_count_the_forwarded_client(
    make_broker: BrokerFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker(
        env={
            "BROKER_LOGIN_BACKEND": "local",
            "BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY": "2",
            "BROKER_TRUSTED_PROXY_CIDRS": "127.0.0.0/8",  # the test plays the load balancer
        }
    )
    caplog.set_level(logging.INFO, logger="agentkeys_kit.broker.access")
    assert [(await start(http, broker, "203.0.113.7"))[0] for _ in range(2)] == [200, 200]
    status, refused = await start(http, broker, "203.0.113.7")
    assert status == 429 and refused["data"]["error"] == "rate_limited"
    # another client behind the same proxy has a budget of its own
    status, started = await start(http, broker, "198.51.100.1, 203.0.113.8")
    assert status == 200
    headers = {"X-Forwarded-For": "203.0.113.8"}
    proof = {"request_id": started["data"]["request_id"], "signature": sign(started["data"]["message"], EVM_ALICE_KEY)}
    async with http.post(broker.url + "v1/auth/wallet/verify", json=proof, headers=headers) as response:
        assert response.status == 200

    rows = await broker.state.db.run(store.audit_rows)
    by_event = {(row["event"], row["outcome"]): row["remote_addr"] for row in rows}
    assert by_event[("login", "ok")] == "203.0.113.8"
    assert by_event[("wallet_start", "refused:rate_limited")] == "203.0.113.7"
    # the access log names the client too, never the proxy
    remotes = {record.fields["remote"] for record in caplog.records if record.name == "agentkeys_kit.broker.access"}
    assert remotes == {"203.0.113.7", "203.0.113.8"}


async def test_without_trusted_proxies_a_forwarded_header_buys_no_budget(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(
        env={"BROKER_LOGIN_BACKEND": "local", "BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY": "2"}
    )
    statuses = [(await start(http, broker, f"203.0.113.{n}"))[0] for n in range(1, 4)]
    assert statuses == [200, 200, 429]
    rows = await broker.state.db.run(store.audit_rows)
    assert {row["remote_addr"] for row in rows if row["outcome"] == "refused:rate_limited"} == {"127.0.0.1"}


async def test_callbacks_through_a_trusted_proxy_are_still_refused(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    """The worker calls the credential-less callbacks directly; trusting a proxy for client
    addresses does not let requests through it reach them."""
    broker = await make_broker(env={"BROKER_TRUSTED_PROXY_CIDRS": "127.0.0.0/8"})
    headers = {"X-Forwarded-For": "127.0.0.1"}
    url = broker.url + GET_USER_ID
    async with http.get(url, params={"email": "dave@example.com"}, headers=headers) as response:
        reply = await response.json()
    assert response.status == 403 and reply["data"]["error"] == "network_refused"
    assert reply["message"].endswith("(through a proxy)")


async def test_metrics_through_a_proxy_are_refused_naming_metrics(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env={"BROKER_TRUSTED_PROXY_CIDRS": "127.0.0.0/8"})
    async with http.get(broker.url + "metrics", headers={"X-Forwarded-For": "127.0.0.1"}) as response:
        reply = await response.json()
    assert response.status == 403 and reply["data"]["error"] == "network_refused"
    assert reply["message"] == "/metrics is not served to 127.0.0.1 (through a proxy)"
    async with http.get(broker.url + "metrics") as response:
        assert response.status == 200


def test_trusting_every_address_is_a_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from agentkeys_kit.broker.observability import log_start

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    env = {"BROKER_TEE_JWT_PUBLIC_KEY": "/dev/null"}
    caplog.set_level(logging.INFO, logger="agentkeys_kit.broker")
    log_start(broker_config_from_env({**env, "BROKER_TRUSTED_PROXY_CIDRS": "10.0.0.0/8"}), key, 11)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "X-Forwarded-For believed from 10.0.0.0/8" in caplog.text
    log_start(broker_config_from_env({**env, "BROKER_TRUSTED_PROXY_CIDRS": "10.0.0.0/8,0.0.0.0/0"}), key, 11)
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "0.0.0.0/0" in warning.getMessage() and "every client" in warning.getMessage()
