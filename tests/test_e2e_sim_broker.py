"""End to end: client → simulator (agentkeys-patch) → broker → simulator → client.

The simulator signs with the same key the broker pins, as a deployment would (the broker is
configured with the worker's public key).
"""

from __future__ import annotations

import aiohttp
from conftest import BrokerFactory, BrokerHandle, SimFactory
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage import store
from agentkeys_kit.conformance.worker_client import WorkerClient
from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of, pumpx_omni_account
from agentkeys_kit.protocol.tee_jwt import unverified_claims
from fixtures.wallets import EVM_ALICE_KEY, evm_user_id_value


async def start_pair(
    make_sim: SimFactory, make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, profile: str = "agentkeys-patch"
) -> tuple[SimServer, BrokerHandle]:
    """A broker, and a simulator that signs with the key the broker pins and calls it back."""
    broker = await make_broker()
    sim = await make_sim(profile=profile, env={"OE_AGENTKEYS_API_BASE_URL": broker.url}, jwt_key=tee_key)
    return sim, broker


async def test_evm_and_email_logins_create_users_with_the_token_omni_account(
    make_sim: SimFactory, make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    sim, broker = await start_pair(make_sim, make_broker, tee_key)
    client = WorkerClient(http, sim.url)

    evm = await client.evm_login(EVM_ALICE_KEY, "agentkeys")
    assert "result" in evm, evm
    evm_user = await broker.state.db.run(store.find_user_by_identity, "evm", evm_user_id_value(EVM_ALICE_KEY))
    assert evm_user is not None
    assert evm_user.omni_account == unverified_claims(evm["result"]["access_token"])["sub"]
    assert evm_user.omni_account == omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "agentkeys")
    assert evm["result"]["backend_response"] == {"code": 10000, "message": "OK", "data": {"user_id": evm_user.user_uid}}

    await client.request_email_code("agentkeys", "Frank@Example.org")
    code = sim.context.outbox.list("Frank@Example.org")[-1].code
    email = await client.email_login("agentkeys", "Frank@Example.org", code)
    assert "result" in email, email
    email_user = await broker.state.db.run(store.find_user_by_identity, "email", "frank@example.org")
    assert email_user is not None
    assert email_user.omni_account == unverified_claims(email["result"]["access_token"])["sub"]


async def test_add_wallet_through_the_worker_records_a_wallet(
    make_sim: SimFactory, make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    sim, broker = await start_pair(make_sim, make_broker, tee_key)
    client = WorkerClient(http, sim.url)
    login = (await client.evm_login(EVM_ALICE_KEY, "agentkeys"))["result"]
    for _ in range(2):
        answer = await client.call("omni_addWallet", token=login["id_token"])
        assert answer["result"] == {"backend_response": {"code": 10000, "message": "OK", "data": {}}}
    user = await broker.state.db.run(store.find_user_by_identity, "evm", evm_user_id_value(EVM_ALICE_KEY))
    assert user is not None
    assert await broker.state.db.run(store.list_wallets, user.id) == [0, 1]


async def test_request_jwt_runs_both_callbacks_against_the_broker(
    make_sim: SimFactory, make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    sim, broker = await start_pair(make_sim, make_broker, tee_key)
    client = WorkerClient(http, sim.url)
    await client.request_email_code("agentkeys", "gina@example.org")
    code = sim.context.outbox.list("gina@example.org")[-1].code
    answer = await client.call(
        "omni_requestJwt",
        {"client_id": "agentkeys", "user_email": "gina@example.org", "google_code": "000000", "email_code": code},
    )
    result = answer["result"]
    user = await broker.state.db.run(store.find_user_by_identity, "email", "gina@example.org")
    assert user is not None
    assert result["backend_response"] == {
        "code": 10000,
        "message": "OK",
        "data": {"userId": user.user_uid, "googleAuthCheck": True},
    }
    assert (
        unverified_claims(result["access_token"])["sub"] == "0x" + pumpx_omni_account("agentkeys", user.user_uid).hex()
    )
    events = [row["event"] for row in reversed(await broker.state.db.run(store.audit_rows))]
    assert events == ["get_account_user_id", "user_connect"]
    # the tokens from omni_requestJwt serve omni_addWallet, which the broker maps to the same user
    assert "result" in await client.call("omni_addWallet", token=result["id_token"])
    assert await broker.state.db.run(store.list_wallets, user.id) == [0]


async def test_upstream_refuses_the_login_and_the_broker_is_untouched(
    make_sim: SimFactory, make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    sim, broker = await start_pair(make_sim, make_broker, tee_key, "upstream")
    answer = await WorkerClient(http, sim.url).evm_login(EVM_ALICE_KEY, "agentkeys")
    assert answer["error"] == {"code": -32602, "message": "Invalid params"}
    assert await broker.state.db.run(store.count_users) == 0
    assert await broker.state.db.run(store.audit_rows) == []


async def test_broker_refusal_reaches_the_client_as_the_workers_transport_error(
    make_sim: SimFactory, make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    # A simulator with a key the broker does not pin: the broker refuses the token with 401,
    # which the worker reports as a pumpx service error for post_heima_login.
    broker = await make_broker()
    sim = await make_sim(profile="agentkeys-patch", env={"OE_AGENTKEYS_API_BASE_URL": broker.url})
    error = (await WorkerClient(http, sim.url).evm_login(EVM_ALICE_KEY, "agentkeys"))["error"]
    assert (error["code"], error["message"]) == (-32161, "Pumpx service error in post_heima_login")
    assert "Status(401)" in error["data"]["reason"]
    assert await broker.state.db.run(store.count_users) == 0
