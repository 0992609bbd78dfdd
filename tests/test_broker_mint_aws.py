"""`POST /v1/mint-aws-creds` end to end against moto's STS server (a real HTTP endpoint): the
credentials, the session name, each STS failure mapped, the start-up check, and the audit rows
written before STS is called (R1-F1) and after."""

from __future__ import annotations

import re
import socket
import time

import aiohttp
import boto3
import pytest
from broker_client import account_of, login
from conftest import BrokerFactory
from cryptography.hazmat.primitives.asymmetric import rsa
from mint_support import AWS, ROLE_ARN, MotoSts, aws_env, chain, post

from agentkeys_kit.broker.app import StartupCheckFailed
from agentkeys_kit.broker.sts import session_name
from agentkeys_kit.protocol.identity import IdentityKind

WALLET = "0x" + "5e" * 20


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_mint_aws_creds_returns_sts_credentials_that_work(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    sts: MotoSts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = await make_broker(
        env={**aws_env(sts), "BROKER_SESSION_DURATION_SECONDS": "900"},
    )
    _, token = await login(http, broker, tee_key, WALLET)
    before = len(sts.assumed_roles())
    started = int(time.time())
    reply = await post(http, broker, AWS, token)
    assert reply.status == 200, reply
    body = reply.body
    assert set(body) == {"access_key_id", "secret_access_key", "session_token", "expiration", "wallet"}
    assert body["wallet"] == WALLET
    assert body["access_key_id"].startswith("ASIA") and body["session_token"]
    assert started + 900 - 5 <= body["expiration"] <= int(time.time()) + 900 + 5
    [assumed] = sts.assumed_roles()[before:]
    assert assumed.role_arn == ROLE_ARN and assumed.access_key_id == body["access_key_id"]
    # agentkeys-<40 of the wallet>-<secs>-<micros>, cut to STS's 64 characters (§1.3)
    assert re.fullmatch(rf"agentkeys-{WALLET[:40]}-[0-9]{{10}}-[0-9]{{2}}", assumed.session_name)

    # the credentials are a principal STS knows: what `aws sts get-caller-identity` would show
    client = boto3.client(
        "sts",
        endpoint_url=sts.url,
        region_name="us-east-1",
        aws_access_key_id=body["access_key_id"],
        aws_secret_access_key=body["secret_access_key"],
        aws_session_token=body["session_token"],
    )
    identity = client.get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::123456789012:assumed-role/agentkeys-data-role/{assumed.session_name}"

    rows = await chain(broker)
    assert [(row.entry.event, row.entry.outcome) for row in rows] == [
        ("mint_aws_creds", "requested"),
        ("mint_aws_creds", "ok"),
    ]
    for row in rows:
        assert row.entry.requested_role == ROLE_ARN and row.entry.session_duration_seconds == 900
        assert row.entry.sts_session_name == assumed.session_name
        assert row.entry.requester_wallet == WALLET
        assert row.entry.omni_account == account_of(IdentityKind.EVM, WALLET)
        assert re.fullmatch("[0-9a-f]{64}", row.entry.requester_token) and token not in str(row.to_json())


async def test_sts_unreachable_is_502_and_audited(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, sts: MotoSts
) -> None:
    env = {**aws_env(sts), "BROKER_STS_ENDPOINT_URL": closed_port_url(), "BROKER_SKIP_STARTUP_CHECK": "1"}
    broker = await make_broker(env=env)
    _, token = await login(http, broker, tee_key, WALLET)
    reply = await post(http, broker, AWS, token)
    assert reply.status == 502, reply
    assert reply.body["data"]["error"] == "sts_unreachable" and "access_key_id" not in str(reply.body)
    assert [row.entry.outcome for row in await chain(broker)] == ["requested", "sts_unreachable"]


async def test_an_sts_error_is_502_and_audited(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, sts: MotoSts
) -> None:
    broker = await make_broker(env=aws_env(sts))
    _, token = await login(http, broker, tee_key, WALLET)
    with sts.refusing_unsigned_calls():
        reply = await post(http, broker, AWS, token)
    assert reply.status == 502, reply
    assert reply.body["data"]["error"] == "sts_error"
    rows = await chain(broker)
    assert [row.entry.outcome for row in rows] == ["requested", "sts_error"]
    assert rows[1].entry.outcome_detail


async def test_without_a_role_arn_aws_mints_are_off(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, WALLET)
    reply = await post(http, broker, AWS, token)
    assert reply.status == 503 and reply.body["data"]["error"] == "aws_not_configured"
    # a refused mint like any other: a chain row naming the caller
    refused = [row.entry for row in await chain(broker) if row.entry.event == "mint_aws_creds"]
    assert [row.outcome for row in refused] == ["refused:aws_not_configured"]
    assert refused[0].requester_token and refused[0].omni_account


async def test_a_chain_that_cannot_be_written_means_no_sts_call_and_no_credential(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, sts: MotoSts
) -> None:
    broker = await make_broker(env=aws_env(sts))
    _, token = await login(http, broker, tee_key, WALLET)
    await broker.state.db.run(lambda: _drop_head())
    before = len(sts.assumed_roles())
    for path in (AWS, "/v1/mint-oidc-jwt"):
        reply = await post(http, broker, path, token)
        assert reply.status == 503, reply
        assert reply.body["data"]["error"] == "storage_unavailable"
        assert "jwt" not in reply.body and "access_key_id" not in reply.body
    assert len(sts.assumed_roles()) == before  # R1-F1: STS was never asked


def _drop_head():  # type: ignore[no-untyped-def]
    from agentkeys_kit.broker.storage.base import Query

    yield Query.run("DELETE FROM mint_log_head")


async def test_the_startup_check_asks_sts_and_can_be_skipped(
    make_broker: BrokerFactory, sts: MotoSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_broker(env=aws_env(sts))  # GetCallerIdentity answered
    with sts.refusing_unsigned_calls(), pytest.raises(StartupCheckFailed, match="--skip-startup-check"):
        await make_broker(env=aws_env(sts))  # an unknown access key: InvalidClientTokenId
    with pytest.raises(StartupCheckFailed, match="sts_unreachable"):
        await make_broker(env={**aws_env(sts), "BROKER_STS_ENDPOINT_URL": closed_port_url()})
    # skipped: the broker starts though STS cannot be reached
    await make_broker(
        env={**aws_env(sts), "BROKER_STS_ENDPOINT_URL": closed_port_url(), "BROKER_SKIP_STARTUP_CHECK": "1"}
    )


def test_session_names_follow_the_spec() -> None:
    wallet = "0x" + "ab" * 20
    assert session_name(wallet, 1_700_000_000.000042) == f"agentkeys-{wallet[:40]}-1700000000-000042"[:64]
    assert session_name("0xab", 1_700_000_000.000042) == "agentkeys-0xab-1700000000-000042"
    assert len(session_name(wallet, 1_700_000_000.5)) <= 64
    assert session_name("0x<bad>!chars", 1.25) == "agentkeys-0xbadchars-1-250000"
