"""Simulator-only endpoints under /_sim/, and omni_getShieldingKey's little-endian encoding."""

from __future__ import annotations

import json

import aiohttp
import jwt
from conftest import SimFactory, rpc
from cryptography.hazmat.primitives import serialization

from agentkeys_kit.conformance.worker_client import WorkerClient
from fixtures.recording_backend import RecordingBackend
from fixtures.wallets import EVM_ALICE_KEY


async def test_shielding_key_is_the_rsa_3072_public_key_little_endian(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    result = (await rpc(http, sim.url, "omni_getShieldingKey"))["result"]
    numbers = sim.context.shielding_key.public_key().public_numbers()
    assert list(result) == ["n", "e"] and result["e"] == "0x010001"
    assert int.from_bytes(bytes.fromhex(result["n"][2:]), "little") == numbers.n
    assert numbers.n.bit_length() == 3072


async def test_the_published_jwt_key_verifies_the_workers_tokens(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    login = (await WorkerClient(http, sim.url).evm_login(EVM_ALICE_KEY, "wildmeta"))["result"]
    async with http.get(sim.url + "_sim/jwt-public-key") as response:
        pem = await response.read()
    async with http.get(sim.url + "_sim/jwt-public-key.jwk") as response:
        jwk = await response.json()
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    from_pem = serialization.load_pem_public_key(pem)
    from_jwk = jwt.PyJWK(jwk).key
    for key in (from_pem, from_jwk):
        claims = jwt.decode(login["id_token"], key, algorithms=["RS256"], audience="wildmeta")  # type: ignore[arg-type]
        assert claims["typ"] == "id"


async def test_the_callback_journal_records_each_exchange(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    await WorkerClient(http, sim.url).evm_login(EVM_ALICE_KEY, "wildmeta")
    async with http.get(sim.url + "_sim/callbacks") as response:
        [entry] = (await response.json())["callbacks"]
    assert entry["operation"] == "post_heima_login" and entry["status"] == 200
    assert entry["url"] == backend.url + "v3/account/post_heima_login"
    assert entry["request_body"]["clientId"] == "wildmeta"
    async with http.get(sim.url + "_sim/callbacks", params={"since": str(entry["seq"])}) as response:
        assert (await response.json())["callbacks"] == []
    async with http.delete(sim.url + "_sim/callbacks") as response:
        assert response.status == 200
    assert sim.context.journal.entries == []


async def test_bad_requests_to_the_sim_endpoints_are_json_4xx(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    for body in ("not json", json.dumps({"advance": -5}), json.dumps({"rewind": 5}), json.dumps([])):
        async with http.post(sim.url + "_sim/clock", data=body) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "bad_request"
    async with http.get(sim.url + "_sim/callbacks", params={"since": "x"}) as response:
        assert response.status == 400
    async with http.get(sim.url + "_sim/nothing-here") as response:
        assert response.status == 404 and (await response.json())["error"] == "not_found"
    async with http.post(sim.url + "_sim/clock", json={"freeze": 1_800_000_000}) as response:
        assert (await response.json())["now"] == 1_800_000_000
