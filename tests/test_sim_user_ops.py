"""`omni_submitUserOpWithAuth` on the simulator: the paths the suites do not reach, with the
worker's exact error objects, and the simulated bundler."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from coincurve import PrivateKey, PublicKey
from conftest import SimFactory, rpc
from eth_abi.abi import encode as abi_encode
from eth_hash.auto import keccak

from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import evm_address, sign_evm_personal
from agentkeys_kit.protocol.user_operation import (
    DEFAULT_ENTRY_POINT_ADDRESS,
    backend_digest,
    parse_user_operation,
    to_packed_user_operation,
    user_operation_hash,
)
from fixtures.recording_backend import RecordingBackend, ScriptedReply

BACKEND_KEY = PrivateKey(keccak(b"test backend key"))
ENV = {"OE_WILDMETA_BACKEND_ECDSA_PUBKEY": BACKEND_KEY.public_key.format(compressed=True).hex()}
ENTRY_POINT = bytes.fromhex(DEFAULT_ENTRY_POINT_ADDRESS[2:])
OP: dict[str, Any] = {
    "sender": "0x1111111111111111111111111111111111111111",
    "nonce": 0,
    "init_code": "0x",
    "call_data": "0x",
    "account_gas_limits": "0x" + "00" * 31 + "01",
    "pre_verification_gas": 1,
    "gas_fees": "0x" + "00" * 31 + "02",
    "paymaster_and_data": "0x",
    "signature": None,
}
AGENT_KEY = keccak(b"agent")
MAIN_KEY = keccak(b"main")


def backend_signature(operations: list[dict[str, Any]], chain_id: int) -> str:
    hashes = [
        user_operation_hash(to_packed_user_operation(parse_user_operation(op)), ENTRY_POINT, chain_id)
        for op in operations
    ]
    return "0x" + BACKEND_KEY.sign_recoverable(backend_digest(hashes), hasher=None).hex()


def backend_params(operations: list[dict[str, Any]], chain_id: int = 42161, wallet_index: int = 1) -> dict[str, Any]:
    return {
        "user_operations": operations,
        "chain_id": chain_id,
        "wallet_index": wallet_index,
        "user_id": {"type": "email", "value": "someone@example.org"},
        "client_id": "wildmeta",
        "client_auth": {"type": "wildmeta_backend", "value": {"signature": backend_signature(operations, chain_id)}},
    }


def hl_auth(business: str, main: str | None = None, key: bytes = AGENT_KEY) -> dict[str, Any]:
    return {
        "type": "wildmeta_hl",
        "value": {
            "agent_address": "0x" + evm_address(AGENT_KEY).hex(),
            "business_json": business,
            "main_address": main or "0x" + evm_address(MAIN_KEY).hex(),
            "signature": "0x" + sign_evm_personal(business.encode(), key).hex(),
            "login_type": 0,
        },
    }


def execute(target: str, data: bytes) -> str:
    return (
        "0x"
        + (
            keccak(b"execute(address,uint256,bytes)")[:4]
            + abi_encode(["address", "uint256", "bytes"], [target, 0, data])
        ).hex()
    )


def core_writer_call(payload: bytes) -> bytes:
    return bytes.fromhex("17938e13") + abi_encode(["bytes"], [payload])


async def submit(http: aiohttp.ClientSession, sim: SimServer, params: dict[str, Any]) -> dict[str, Any]:
    return await rpc(http, sim.url, "omni_submitUserOpWithAuth", params)


async def test_backend_submission_is_recorded_and_its_hash_deterministic(
    make_sim: SimFactory, http: aiohttp.ClientSession, backend: RecordingBackend
) -> None:
    sim = await make_sim(env=ENV)
    params = backend_params([OP, {**OP, "nonce": 1}])
    first = await submit(http, sim, params)
    second = await submit(http, sim, params)
    assert first["result"]["transaction_hash"] == second["result"]["transaction_hash"]
    async with http.get(sim.url + "_sim/user-operations") as response:
        batches = (await response.json())["batches"]
    assert len(batches) == 2
    batch = batches[0]
    account = omni_account_of(IdentityKind.EMAIL, "someone@example.org", "wildmeta")
    assert (
        batch["omni_account"] == account and batch["chain_id"] == 42161 and batch["client_auth"] == "wildmeta_backend"
    )
    signed = batch["user_operations"][0]["signature"]
    # the signer's `0x01 ‖ r ‖ s ‖ v(27/28)` over the userOpHash, by the wallet (account, 1)
    assert signed.startswith("0x01") and len(signed) == 2 + 2 * 66 and int(signed[-2:], 16) in (27, 28)
    digest = bytes.fromhex(batch["user_operation_hashes"][0][2:])
    sig = bytes.fromhex(signed[4:])
    recovered = PublicKey.from_signature_and_message(sig[:64] + bytes([sig[64] - 27]), digest, hasher=None)
    async with http.get(
        sim.url + "_sim/signer-wallet", params={"omni_account": account, "wallet_index": "1"}
    ) as response:
        wallet = await response.json()
    assert "0x" + keccak(recovered.format(compressed=False)[1:])[-20:].hex() == wallet["address"].lower()
    assert backend.calls == []


async def test_chain_id_is_truncated_to_u32_for_the_supported_list_only(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """`validate_chain_id(chain_id as u32)`: 2³² + 42161 passes, then the EntryPoint lookup with the
    full u64 fails with the same error object for the full value."""
    sim = await make_sim(env=ENV)
    answer = await submit(http, sim, backend_params([OP], chain_id=2**32 + 42161))
    assert answer["error"]["code"] == -32602
    assert answer["error"]["data"]["reason"].startswith(f"invalid chain_id: {2**32 + 42161}, expected one of [1, ")


async def test_signed_operation_with_paymaster_and_unlisted_paymaster_are_invalid_userops(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(env=ENV)
    signed = {**OP, "signature": "0x1234", "paymaster_and_data": "0x" + "ab" * 20}
    answer = await submit(http, sim, backend_params([signed]))
    assert answer["error"] == {
        "code": -32001,
        "message": "Invalid UserOp",
        "data": {"received": "UserOp[0] is signed but specifies a paymaster"},
    }
    unlisted = {**OP, "paymaster_and_data": "0x" + "ab" * 20}
    answer = await submit(http, sim, backend_params([OP, unlisted]))
    assert answer["error"]["data"] == {
        "received": "UserOp[1] uses non-whitelisted paymaster 0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"
    }
    listed = {**OP, "paymaster_and_data": "0xD4dCB31763CBA7295bA4023E9411CB6db607DE07"}
    assert "result" in await submit(http, sim, backend_params([listed]))


async def test_conversion_failure_is_a_parse_error_for_the_signature_check(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """`verify_wildmeta_backend_signature` maps a conversion failure to -32700; the bundler's own
    conversion error (-32001 with the text) is only reached by wildmeta_hl."""
    sim = await make_sim(env=ENV)
    bad = {**OP, "gas_fees": "0x00"}
    params = backend_params([OP])
    params["user_operations"] = [bad]
    answer = await submit(http, sim, params)
    assert answer["error"] == {
        "code": -32700,
        "message": "Backend signature verification failed",
        "data": {"field": "signature", "suggestion": "Ensure the backend signature is valid for the given operations"},
    }


@pytest.mark.parametrize("era", ["current", "legacy"])
async def test_wildmeta_hl_conversion_failure_reaches_the_bundler(
    make_sim: SimFactory, http: aiohttp.ClientSession, era: str
) -> None:
    sim = await make_sim(env=ENV, error_era=era)
    business = json.dumps({"timestamp": int(time.time())})
    answer = await submit(
        http,
        sim,
        {
            "user_operations": [{**OP, "gas_fees": "0x00"}],
            "chain_id": 42161,
            "wallet_index": 0,
            "user_id": {"type": "evm", "value": "0x" + evm_address(MAIN_KEY).hex()},
            "client_id": "wildmeta",
            "client_auth": hl_auth(business),
        },
    )
    assert answer["error"] == {
        "code": -32001 if era == "current" else -32201,
        "message": "Invalid UserOp",
        "data": {"received": "Failed to convert UserOp[0]: Expected 32 bytes, got 1 for '0x00'"},
    }


async def test_wildmeta_hl_for_a_non_evm_user_id_checks_the_signer_derived_address(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(env=ENV)
    user_id = {"type": "email", "value": "owner@example.org"}
    account = omni_account_of(IdentityKind.EMAIL, "owner@example.org", "wildmeta")
    async with http.get(sim.url + "_sim/signer-wallet", params={"omni_account": account, "wallet_index": "3"}) as resp:
        derived = (await resp.json())["address"]
    params = {
        "user_operations": [OP],
        "chain_id": 42161,
        "wallet_index": 3,
        "user_id": user_id,
        "client_id": "wildmeta",
    }
    business = json.dumps({"timestamp": int(time.time())})
    answer = await submit(http, sim, {**params, "client_auth": hl_auth(business)})
    main = "0x" + evm_address(MAIN_KEY).hex()
    assert answer["error"] == {
        "code": -32003,
        "message": "Derived address does not match authenticated address",
        "data": {
            "field": "derived_address",
            "expected": main,
            "received": derived,
            "suggestion": "The derived EVM address must match the authenticated main address",
        },
    }
    business = json.dumps({"timestamp": int(time.time()) + 1})
    answer = await submit(http, sim, {**params, "client_auth": hl_auth(business, main=derived.lower())})
    assert answer["result"]["transaction_hash"].startswith("0x")


async def test_business_json_that_is_not_json_is_an_internal_error(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(env=ENV)
    answer = await submit(
        http,
        sim,
        {
            "user_operations": [OP],
            "chain_id": 42161,
            "wallet_index": 0,
            "user_id": {"type": "evm", "value": "0x" + evm_address(MAIN_KEY).hex()},
            "client_id": "wildmeta",
            "client_auth": hl_auth("not json"),
        },
    )
    assert answer["error"]["code"] == -32603
    assert answer["error"]["message"] == "Internal error"
    assert answer["error"]["data"]["reason"].startswith('Failed to parse business_json: Error("')


@pytest.mark.parametrize(("era", "code"), [("current", -32165), ("legacy", 32165)])
async def test_undecodable_link_reply_is_the_wildmeta_service_error_of_the_era(
    make_sim: SimFactory, http: aiohttp.ClientSession, backend: RecordingBackend, era: str, code: int
) -> None:
    sim = await make_sim(env=ENV, error_era=era)
    backend.script("check_hyper_agent_address", ScriptedReply({"code": 10000, "message": "OK", "data": {}}))
    answer = await submit(
        http,
        sim,
        {
            "user_operations": [OP],
            "chain_id": 42161,
            "wallet_index": 0,
            "user_id": {"type": "evm", "value": "0x" + evm_address(MAIN_KEY).hex()},
            "client_id": "wildmeta",
            "client_auth": hl_auth(json.dumps({"timestamp": int(time.time())})),
        },
    )
    assert answer["error"] == {"code": code, "message": "Wildmeta service error in verify_hyperliquid_link", "data": {}}
    [call] = backend.calls_of("check_hyper_agent_address")
    assert call.path == "/v1/account/check_hyper_agent_address"
    assert "X-Language" not in call.headers and "Authorization" not in call.headers
    assert call.body.decode().startswith('{"main_address":"0x')


@pytest.mark.parametrize(
    ("payload", "field", "received", "expected"),
    [
        (bytes.fromhex("02000002"), "version", "0x02", "0x01"),
        (
            bytes.fromhex("01000006"),
            "action_id",
            "0x000006",
            "One of: 0x000002, 0x000003, 0x000004, 0x000005, 0x000007",
        ),
        (bytes.fromhex("0100"), "payload_length", "2", "4 bytes minimum (1 version + 3 action_id)"),
    ],
)
@pytest.mark.parametrize(("era", "code"), [("current", -32001), ("legacy", -32201)])
async def test_hyperevm_core_writer_payload_rules(
    make_sim: SimFactory,
    http: aiohttp.ClientSession,
    payload: bytes,
    field: str,
    received: str,
    expected: str,
    era: str,
    code: int,
) -> None:
    sim = await make_sim(env=ENV, error_era=era)
    op = {**OP, "call_data": execute("0x3333333333333333333333333333333333333333", core_writer_call(payload))}
    answer = await submit(http, sim, backend_params([op], chain_id=999, wallet_index=0))
    assert answer["error"]["code"] == code
    assert answer["error"]["data"] == {"field": field, "expected": expected, "received": received}
    good = {
        **OP,
        "call_data": execute(
            "0x3333333333333333333333333333333333333333", core_writer_call(bytes.fromhex("01000002ff"))
        ),
    }
    assert "result" in await submit(http, sim, backend_params([good], chain_id=999, wallet_index=0))


async def test_execute_batch_is_parsed_with_the_workers_inline_layout(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """`parse_execute_batch` reads tuples inline after the array length; standard ABI puts offsets
    there, so a standard-encoded batch reads its first target from the offset word (0x…0020)."""
    sim = await make_sim(env=ENV)
    transfer = bytes.fromhex("a9059cbb") + abi_encode(
        ["address", "uint256"], ["0x2df1c51e09aecf9cacb7bc98cb1742757f163df7", 5]
    )
    usdc = "0xaf88d065e77c8cC2239327C5EDb3A432268e5831"
    standard = "0x18dfeb3c" + abi_encode(["(address,uint256,bytes)[]"], [[(usdc, 0, transfer)]]).hex()
    answer = await submit(http, sim, backend_params([{**OP, "call_data": standard}], wallet_index=0))
    assert answer["error"]["message"] == "For Arbitrum backend requests, target contract must be USDC"
    assert answer["error"]["data"]["received"] == "0x0000000000000000000000000000000000000020"
    padded = transfer + bytes(-len(transfer) % 32)
    inline = (
        bytes.fromhex("18dfeb3c")
        + (32).to_bytes(32, "big")
        + (1).to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(usdc[2:])
        + bytes(32)
        + (96).to_bytes(32, "big")
        + len(transfer).to_bytes(32, "big")
        + padded
    )
    answer = await submit(http, sim, backend_params([{**OP, "call_data": "0x" + inline.hex()}], wallet_index=0))
    assert "result" in answer, answer


async def test_recovery_ids_two_and_three_and_high_v_values(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(env=ENV)
    params = backend_params([OP])
    signature = bytes.fromhex(params["client_auth"]["value"]["signature"][2:])
    for v in (signature[64] + 2, 27, 28, 255):
        params["client_auth"]["value"]["signature"] = "0x" + (signature[:64] + bytes([v])).hex()
        answer = await submit(http, sim, params)
        assert answer["error"]["code"] == -32003, v
