"""Grant-scoped agent mints (`broker/agent_mint.py`): an agent wallet mints within a master's
grant. Grant outcomes (consumed, exhausted, expired, revoked, none, out of scope) and the
signature rules (method and path bound, request id single use, issued_at skew, the bearer's own
wallet), on both databases."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest
from broker_client import GRANT_CREATE, GRANT_REVOKE, account_of, assert_refused, call, login
from conftest import BrokerFactory, BrokerHandle
from cryptography.hazmat.primitives.asymmetric import rsa
from mint_support import AWS, OIDC, Agent, MotoSts, aws_env, chain, post

from agentkeys_kit.broker import audit_chain
from agentkeys_kit.broker.storage import store
from agentkeys_kit.protocol.identity import IdentityKind

MASTER = "0x" + "a1" * 20
AGENT = Agent(0x21)
INTRUDER = Agent(0x22)
HOUR = 3600


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


async def setup(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    *,
    max_uses: int | None = 2,
    scope: str = "s3/reports",
    env: dict[str, str] | None = None,
    clock: Clock | None = None,
) -> tuple[BrokerHandle, str, str, str]:
    """A broker, a master's grant to AGENT; returns (broker, master token, agent token, grant id)."""
    clock = clock or Clock()
    broker = await make_broker(env=env, clock=clock)
    _, master = await login(http, broker, tee_key, MASTER)
    _, agent = await login(http, broker, tee_key, AGENT.address)
    body: dict[str, Any] = {"agent_wallet": AGENT.address, "scope": scope, "expires_at": int(clock.now) + HOUR}
    if max_uses is not None:
        body["max_uses"] = max_uses
    reply = await call(http, broker, GRANT_CREATE, token=master, json_body=body)
    assert reply.status == 200, reply
    return broker, master, agent, reply.body["data"]["grant"]["grant_id"]


async def uses(broker: BrokerHandle, grant_id: str) -> int:
    [grant] = [g for g in await broker.state.db.run(store.list_grants, None) if g.grant_id == grant_id]
    return grant.uses


async def test_an_agent_mints_within_its_grant_until_it_is_exhausted(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker, _, agent, grant_id = await setup(make_broker, tee_key, http, max_uses=2)
    for expected_uses in (1, 2):
        reply = await post(http, broker, OIDC, agent, AGENT.body(grant_id, path=OIDC))
        assert reply.status == 200, reply
        assert reply.body["wallet"] == MASTER and reply.body["grant_id"] == grant_id
        claims = jwt.decode(reply.body["jwt"], options={"verify_signature": False})
        assert claims["sub"] == f"agentkeys:agent:{AGENT.address}"
        assert claims["agentkeys_user_wallet"] == MASTER
        assert claims["agentkeys_actor_omni"] == account_of(IdentityKind.EVM, AGENT.address)
        assert claims["agentkeys_grant_id"] == grant_id
        tags = claims["https://aws.amazon.com/tags"]
        assert tags["principal_tags"] == {
            "agentkeys_user_wallet": [MASTER],
            "agentkeys_actor_omni": [claims["agentkeys_actor_omni"]],
            "agentkeys_grant_id": [grant_id],
            "agentkeys_service": ["s3"],
            "agentkeys_scope_path": ["reports/2026"],  # what the agent asked for, inside the grant
        }
        assert tags["transitive_tag_keys"] == sorted(tags["principal_tags"])
        assert (claims["agentkeys_service"], claims["agentkeys_scope_path"]) == ("s3", "reports/2026")
        assert await uses(broker, grant_id) == expected_uses
    reply = await post(http, broker, OIDC, agent, AGENT.body(grant_id, path=OIDC))
    assert_refused(reply, 403, "grant_refused")
    assert reply.body["data"]["reason"] == "exhausted"
    assert await uses(broker, grant_id) == 2
    outcomes = [(row.entry.outcome, row.entry.outcome_detail or "") for row in await chain(broker)]
    assert [outcome for outcome, _ in outcomes] == ["ok", "ok", "refused"]
    assert outcomes[2][1].startswith("grant_refused: exhausted")


async def test_concurrent_mints_never_exceed_max_uses(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker, _, agent, grant_id = await setup(make_broker, tee_key, http, max_uses=5)
    replies = await asyncio.gather(
        *(post(http, broker, OIDC, agent, AGENT.body(grant_id, path=OIDC)) for _ in range(20))
    )
    assert sorted(reply.status for reply in replies) == [200] * 5 + [403] * 15
    assert await uses(broker, grant_id) == 5
    verdict = await audit_chain.verify(broker.state.db)
    assert verdict.intact and verdict.rows == 22  # two logins, 20 mints


@pytest.mark.parametrize("case", ["expired", "revoked", "no_grant", "another_agents_grant", "out_of_scope"])
async def test_no_usable_grant_is_403_with_the_reason(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, case: str
) -> None:
    clock = Clock()
    broker, master, agent, grant_id = await setup(make_broker, tee_key, http, clock=clock)
    body_kwargs: dict[str, Any] = {"path": OIDC}
    expected = case
    if case == "expired":
        clock.now += HOUR
        body_kwargs["issued_at"] = int(clock.now)
    elif case == "revoked":
        assert (await call(http, broker, GRANT_REVOKE, token=master, json_body={"grant_id": grant_id})).status == 200
    elif case == "no_grant":
        grant_id = "grn_" + "0" * 24
    elif case == "another_agents_grant":  # the intruder logs in and presents AGENT's grant id
        _, agent = await login(http, broker, tee_key, INTRUDER.address)
        reply = await post(http, broker, OIDC, agent, INTRUDER.body(grant_id, path=OIDC))
        assert_refused(reply, 403, "grant_refused")
        assert reply.body["data"]["reason"] == "no_grant"
        return
    else:
        body_kwargs["scope_path"] = "secrets/keys"
    reply = await post(http, broker, OIDC, agent, AGENT.body(grant_id, **body_kwargs))
    assert_refused(reply, 403, "grant_refused")
    assert reply.body["data"]["reason"] == expected
    assert await broker.state.db.run(store.list_grants, None)  # nothing was deleted
    assert "jwt" not in str(reply.body)


@pytest.mark.parametrize(
    ("scope", "service", "path", "allowed"),
    [
        ("s3", "s3", "anything/at/all", True),
        ("s3/reports", "s3", "reports", True),
        ("s3/reports", "s3", "reports/2026/q1", True),
        ("s3/reports", "s3", "reports-private", False),
        ("s3/reports", "sqs", "reports", False),
    ],
)
def test_scope_rules(scope: str, service: str, path: str, allowed: bool) -> None:
    from agentkeys_kit.broker.agent_mint import scope_allows

    assert scope_allows(scope, service, path) is allowed


@pytest.mark.parametrize(
    "scope_path",
    [
        "reports/../payroll",
        "reports/..",
        "reports/%2e%2E/payroll",
        "./reports",
        "reports//2026",
        "reports\\x",
        "r\tx",
        "a!b",
    ],
)
async def test_a_scope_path_that_could_leave_its_prefix_is_refused_and_uses_nothing(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, scope_path: str
) -> None:
    """The prefix check is textual: ``reports/../payroll`` starts with ``reports/`` but a consumer
    that resolves it leaves the grant's prefix. Refused before any grant is looked at."""
    broker, _, agent, grant_id = await setup(make_broker, tee_key, http)
    reply = await post(http, broker, OIDC, agent, AGENT.body(grant_id, path=OIDC, scope_path=scope_path))
    assert_refused(reply, 400, "malformed_body")
    assert "scope_path" in reply.body["message"]
    assert await uses(broker, grant_id) == 0
    ok = await post(http, broker, OIDC, agent, AGENT.body(grant_id, path=OIDC, scope_path="/reports/2026/"))
    assert ok.status == 200, ok


async def test_signature_rules(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker, _, agent, grant_id = await setup(make_broker, tee_key, http, max_uses=None, clock=clock)

    async def refused(body: dict[str, Any], status: int, error: str, reason: str | None, path: str = OIDC) -> None:
        reply = await post(http, broker, path, agent, body)
        assert_refused(reply, status, error)
        assert reply.body["data"].get("reason") == reason

    # signed for mint-aws-creds, sent to mint-oidc-jwt (R1-F4); and signed for GET
    await refused(AGENT.body(grant_id, path=AWS), 401, "invalid_mint_signature", "signature_mismatch")
    await refused(AGENT.body(grant_id, path=OIDC, method="GET"), 401, "invalid_mint_signature", "signature_mismatch")
    # stale and future issued_at
    now = int(clock.now)
    await refused(
        AGENT.body(grant_id, path=OIDC, issued_at=now - 121), 401, "invalid_mint_signature", "stale_issued_at"
    )
    await refused(
        AGENT.body(grant_id, path=OIDC, issued_at=now + 121), 401, "invalid_mint_signature", "stale_issued_at"
    )
    assert (await post(http, broker, OIDC, agent, AGENT.body(grant_id, path=OIDC, issued_at=now - 120))).status == 200
    # another wallet's valid signature, with the bearer of AGENT
    await refused(INTRUDER.body(grant_id, path=OIDC), 401, "invalid_mint_signature", "another_wallet")
    # the address says AGENT, the signature is the intruder's
    await refused(AGENT.body(grant_id, path=OIDC, signer=INTRUDER), 401, "invalid_mint_signature", "signature_mismatch")
    # a changed field after signing
    body = AGENT.body(grant_id, path=OIDC)
    body["intent"]["scope_path"] = "reports/other"
    await refused(body, 401, "invalid_mint_signature", "signature_mismatch")
    # replayed request id, also with a fresh signature over the same id
    body = AGENT.body(grant_id, path=OIDC, request_id="replay-me-0001")
    assert (await post(http, broker, OIDC, agent, body)).status == 200
    await refused(body, 409, "request_replayed", None)
    await refused(AGENT.body(grant_id, path=OIDC, request_id="replay-me-0001"), 409, "request_replayed", None)
    # malformed bodies
    bad_v = AGENT.body(grant_id, path=OIDC)
    bad_v["auth"]["signature"] = bad_v["auth"]["signature"][:-2] + "1d"
    await refused(bad_v, 401, "invalid_mint_signature", "bad_v")
    for broken in ({"request_id": "x"}, {**AGENT.body(grant_id), "extra": 1}, [1, 2]):
        reply = await post(http, broker, OIDC, agent, broken)
        assert_refused(reply, 400, "malformed_body")
    assert await uses(broker, grant_id) == 2


async def test_an_agent_aws_mint_consumes_and_sts_failure_gives_the_use_back(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, sts: MotoSts
) -> None:
    broker, _, agent, grant_id = await setup(make_broker, tee_key, http, max_uses=3, env=aws_env(sts))
    reply = await post(http, broker, AWS, agent, AGENT.body(grant_id, path=AWS))
    assert reply.status == 200, reply
    assert reply.body["wallet"] == MASTER and reply.body["grant_id"] == grant_id
    assert await uses(broker, grant_id) == 1
    with sts.refusing_unsigned_calls():
        reply = await post(http, broker, AWS, agent, AGENT.body(grant_id, path=AWS))
    assert reply.status == 502 and reply.body["data"]["error"] == "sts_error"
    assert await uses(broker, grant_id) == 1
    rows = [row.entry for row in await chain(broker)]
    assert [row.outcome for row in rows] == ["requested", "ok", "requested", "sts_error"]
    # the requester is the agent (as in its refused rows); whose credential it is, the detail says
    assert all(row.requester_wallet == AGENT.address for row in rows)
    assert all(
        f"grant {grant_id} of {MASTER}" in (row.outcome_detail or "") for row in rows if row.outcome != "sts_error"
    )
