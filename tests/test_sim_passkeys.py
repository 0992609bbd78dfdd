"""Passkeys on the simulator: the paths the tee-passkey suite does not reach, with the worker's
exact error objects, driven by the fido2-based software authenticator."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import cbor2
import pytest
from conftest import SimFactory, rpc
from flows import sign_in_message

from agentkeys_kit.conformance.soft_authenticator import SoftCredential
from agentkeys_kit.omni_sim.clock import SimClock
from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import sign_evm_personal
from fixtures.wallets import EVM_ALICE_KEY, evm_user_id_value

ORIGIN, RP_ID = "http://localhost:3000", "localhost"
CLIENT = "heima"  # any client but wildmeta gets the localhost defaults
USER_ID = {"type": "evm", "value": evm_user_id_value(EVM_ALICE_KEY)}


async def web3_auth(http: aiohttp.ClientSession, sim: SimServer) -> dict[str, str]:
    account = omni_account_of(IdentityKind.EVM, USER_ID["value"], CLIENT)
    message = await sign_in_message(http, sim.url, CLIENT, account)
    return {"type": "evm", "value": "0x" + sign_evm_personal(message.signing_bytes(), EVM_ALICE_KEY).hex()}


async def challenge(http: aiohttp.ClientSession, sim: SimServer, user_id: dict[str, str] = USER_ID) -> str:
    answer = await rpc(http, sim.url, "omni_requestPasskeyChallenge", {"user_id": user_id, "client_id": CLIENT})
    return str(answer["result"]["challenge"])


async def attach(
    http: aiohttp.ClientSession, sim: SimServer, attestation_object: str, client_data_json: str
) -> dict[str, Any]:
    params = {
        "user_id": USER_ID,
        "user_auth": await web3_auth(http, sim),
        "client_id": CLIENT,
        "attestation_object": attestation_object,
        "client_data_json": client_data_json,
        "alias_name": "Phone",
    }
    return await rpc(http, sim.url, "omni_attachPasskey", params)


async def registered(http: aiohttp.ClientSession, sim: SimServer) -> SoftCredential:
    credential = SoftCredential.generate()
    created = credential.attestation(await challenge(http, sim), ORIGIN, RP_ID)
    answer = await attach(http, sim, created["attestation_object"], created["client_data_json"])
    assert answer["result"]["success"] is True, answer
    return credential


async def rename_with(http: aiohttp.ClientSession, sim: SimServer, signed: dict[str, str]) -> dict[str, Any]:
    auth = {"type": "passkey", "value": {"user_id": USER_ID, "client_id": CLIENT, **signed}}
    params = {"user_id": USER_ID, "user_auth": auth, "client_id": CLIENT, "credential_id": "x", "new_alias_name": "y"}
    answer = await rpc(http, sim.url, "omni_renamePasskeyAliasName", params)
    return answer["error"]  # type: ignore[no-any-return]


def failed(reason: str) -> dict[str, Any]:
    return {"code": -32003, "message": "Authentication verification failed", "data": {"reason": reason}}


def attestation_object(value: Any) -> str:
    return base64url.encode(cbor2.dumps(value))


async def test_alias_is_kept_and_list_shows_it(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    credential = await registered(http, sim)
    answer = await rpc(http, sim.url, "omni_listPasskey", [USER_ID, CLIENT])
    [entry] = answer["result"]["passkeys"]
    assert entry["credential_id"] == base64url.encode(credential.credential_id)
    assert entry["alias_name"] == "Phone"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "!!!",
            "Attestation verification failed: "
            'AttestationParseError("Base64 decode error: Invalid symbol 33, offset 0.")',
        ),
        (
            attestation_object([1, 2]),
            'Attestation verification failed: AttestationParseError("Attestation object must be a CBOR map")',
        ),
        (
            attestation_object({"fmt": "none"}),
            "Attestation verification failed: "
            "AttestationParseError(\"Required field 'authData' not found in attestation object\")",
        ),
        (
            attestation_object({"authData": "text", "fmt": "none"}),
            'Attestation verification failed: AttestationParseError("authData must be bytes")',
        ),
        (
            attestation_object({"authData": b"\0" * 60, "fmt": 1}),
            'Attestation verification failed: AttestationParseError("fmt must be text")',
        ),
        (
            attestation_object({"authData": b"\0" * 54, "fmt": "none"}),
            'Attestation verification failed: AttestationParseError("Auth data too short to contain credential data")',
        ),
        (
            attestation_object(
                {"authData": b"\0" * 32 + b"\x45" + b"\0" * 20 + b"\x00\x40" + b"\0" * 10, "fmt": "none"}
            ),
            'Attestation verification failed: AttestationParseError("Auth data too short for credential ID")',
        ),
        (
            attestation_object(
                {
                    "authData": b"\0" * 32
                    + b"\x45"
                    + b"\0" * 20
                    + b"\x00\x01"
                    + b"\x07"
                    + cbor2.dumps({1: 2, -3: b"y"}),
                    "fmt": "none",
                }
            ),
            'Attestation verification failed: AttestationParseError("COSE key parameter -2 not found or invalid")',
        ),
        (
            attestation_object(
                {
                    "authData": b"\0" * 32
                    + b"\x45"
                    + b"\0" * 20
                    + b"\x00\x01"
                    + b"\x07"
                    + cbor2.dumps({-2: b"x" * 32, -3: b"y" * 32}),
                    "fmt": "none",
                }
            ),
            "Attestation verification failed: InvalidPublicKeyFormat",
        ),
    ],
)
async def test_attestation_refusals_are_parse_errors_with_the_debug_text(
    make_sim: SimFactory, http: aiohttp.ClientSession, value: str, reason: str
) -> None:
    sim = await make_sim()
    client_data = base64url.encode(
        json.dumps({"type": "webauthn.create", "challenge": await challenge(http, sim), "origin": ORIGIN}).encode()
    )
    answer = await attach(http, sim, value, client_data)
    assert answer["error"] == {"code": -32700, "message": "Parse error", "data": {"reason": reason}}


@pytest.mark.parametrize(
    ("client_data", "reason"),
    [
        ("e30=", 'AttestationParseError("Base64 decode error: Invalid padding")'),
        (
            base64url.encode(b"\xff"),
            'AttestationParseError("UTF-8 error: invalid utf-8 sequence of 1 bytes from index 0")',
        ),
        (base64url.encode(b'{"type":"webauthn.create"}'), 'AttestationParseError("Missing challenge field")'),
        (
            base64url.encode(b'{"type":"webauthn.create","challenge":1}'),
            'AttestationParseError("Missing challenge field")',
        ),
    ],
)
async def test_client_data_refusals_at_attach(
    make_sim: SimFactory, http: aiohttp.ClientSession, client_data: str, reason: str
) -> None:
    sim = await make_sim()
    answer = await attach(http, sim, "x", client_data)
    assert answer["error"] == {
        "code": -32603,
        "message": "Internal error",
        "data": {"reason": f"Client data verification failed: {reason}"},
    }


async def test_attach_passkey_user_id_refusal_differs_by_era(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    params = {
        "user_id": {"type": "passkey", "value": "p"},
        "user_auth": {"type": "email", "value": "1"},
        "client_id": CLIENT,
        "attestation_object": "x",
        "client_data_json": "y",
    }
    current = await rpc(http, (await make_sim()).url, "omni_attachPasskey", params)
    assert current["error"] == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"field": "user_id", "reason": "Cannot attach passkey to a Passkey user_id type"},
    }
    legacy = await rpc(http, (await make_sim(error_era="legacy")).url, "omni_attachPasskey", params)
    assert legacy["error"] == {
        "code": -32602,
        "message": "Invalid params",
        "data": {
            "field": "user_id",
            "reason": "Passkeys can only be attached to non-passkey identity types",
            "suggestion": "Use a different identity type (e.g. Email) as user_id",
        },
    }


async def test_bad_user_id_and_mismatched_user_auth_are_parse_errors(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    bad = {"type": "evm", "value": "0x12"}
    answer = await rpc(http, sim.url, "omni_listPasskey", {"user_id": bad, "client_id": CLIENT})
    assert answer["error"] == {
        "code": -32700,
        "message": "Parse error",
        "data": {"reason": 'Failed to convert to omni_account: "Invalid address"'},
    }
    answer = await rpc(
        http,
        sim.url,
        "omni_requestPasskeyChallenge",
        {"user_id": {"type": "solana", "value": "0OIl"}, "client_id": CLIENT},
    )
    assert answer["error"]["data"] == {"reason": 'Failed to convert to omni_account: "Invalid base58 encoding"'}
    params = {
        "user_id": USER_ID,
        "user_auth": {"type": "email", "value": "1"},
        "client_id": CLIENT,
        "credential_id": "c",
    }
    answer = await rpc(http, sim.url, "omni_removePasskey", params)
    assert answer["error"] == {
        "code": -32700,
        "message": "Parse error",
        "data": {"reason": 'Failed to convert to OmniAuth: "User ID must be an email for Email authentication"'},
    }
    params["user_auth"] = {"type": "bitcoin", "value": "00" * 65}
    answer = await rpc(http, sim.url, "omni_removePasskey", params)
    assert answer["error"]["data"] == {
        "reason": 'Failed to convert to OmniAuth: "User ID must be a Bitcoin identity for Bitcoin authentication"'
    }


async def test_login_side_refusals(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    credential = await registered(http, sim)
    signed = credential.assertion(await challenge(http, sim), ORIGIN, RP_ID)
    assert await rename_with(http, sim, {**signed, "client_data_json": "%%"}) == failed(
        "Passkey error: Failed to parse client data: "
        "Attestation parse error: Base64 decode error: Invalid symbol 37, offset 0."
    )
    assert await rename_with(http, sim, {**signed, "auth_data": "%%"}) == failed(
        "Passkey error: Invalid auth data base64 format"
    )
    signed = credential.assertion(await challenge(http, sim), ORIGIN, RP_ID)
    assert await rename_with(http, sim, {**signed, "auth_data": base64url.encode(b"\0" * 36)}) == failed(
        "Passkey error: Auth data too short"
    )
    signed = credential.assertion(await challenge(http, sim), ORIGIN, RP_ID, signature_format="raw")
    raw = base64url.decode(signed["signature"])
    zero_r = base64url.encode(bytes(32) + raw[32:])
    assert await rename_with(http, sim, {**signed, "signature": zero_r}) == failed(
        "Passkey error: Passkey signature verification failed: Invalid signature format"
    )
    auth = {"type": "passkey", "value": {"user_id": {"type": "evm", "value": "0x12"}, "client_id": CLIENT, **signed}}
    answer = await rpc(
        http,
        sim.url,
        "omni_renamePasskeyAliasName",
        {"user_id": USER_ID, "user_auth": auth, "client_id": CLIENT, "credential_id": "x", "new_alias_name": "y"},
    )
    assert answer["error"] == failed("Passkey error: Invalid user ID format")


async def test_login_accepts_the_assertion_once_and_updates_last_used(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    clock = SimClock(frozen_at=1_800_000_000)
    sim = await make_sim(clock=clock)
    credential = await registered(http, sim)
    clock.advance(100)
    signed = credential.assertion(await challenge(http, sim), ORIGIN, RP_ID)
    auth = {"type": "passkey", "value": {"user_id": USER_ID, "client_id": CLIENT, **signed}}
    params = {
        "user_id": USER_ID,
        "user_auth": auth,
        "client_id": CLIENT,
        "credential_id": base64url.encode(credential.credential_id),
        "new_alias_name": "Laptop",
    }
    answer = await rpc(http, sim.url, "omni_renamePasskeyAliasName", params)
    assert answer["result"]["success"] is True
    listed = (await rpc(http, sim.url, "omni_listPasskey", [USER_ID, CLIENT]))["result"]["passkeys"]
    assert listed == [
        {
            "credential_id": base64url.encode(credential.credential_id),
            "alias_name": "Laptop",
            "created_at": 1_800_000_000,
            "last_used": 1_800_000_100,
        }
    ]
    again = await rpc(http, sim.url, "omni_renamePasskeyAliasName", params)
    assert again["error"] == failed("Passkey error: Challenge not found")


async def test_simulator_only_passkey_config_overrides_the_login_check(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(
        env={
            "OE_SIM_PASSKEY_RP_ID_HEIMA": "login.example",
            "OE_SIM_PASSKEY_ORIGINS_HEIMA": "https://a.example, https://login.example",
        }
    )
    credential = await registered(http, sim)  # attach keeps get_origin_for_client (localhost:3000)
    signed = credential.assertion(await challenge(http, sim), "https://login.example", "login.example")
    auth = {"type": "passkey", "value": {"user_id": USER_ID, "client_id": CLIENT, **signed}}
    params = {
        "user_id": USER_ID,
        "user_auth": auth,
        "client_id": CLIENT,
        "credential_id": base64url.encode(credential.credential_id),
        "new_alias_name": "Laptop",
    }
    assert (await rpc(http, sim.url, "omni_renamePasskeyAliasName", params))["result"]["success"] is True
    signed = credential.assertion(await challenge(http, sim), ORIGIN, RP_ID)
    assert await rename_with(http, sim, signed) == failed("Passkey error: Origin verification failed")
