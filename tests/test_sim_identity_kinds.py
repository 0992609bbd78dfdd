"""Login through the simulator with every wallet kind the worker verifies, plus WebSocket rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import SimFactory, rpc
from flows import evm_login, sign_in_message

from agentkeys_kit.protocol.hexcodec import encode_base58
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import SignatureScheme, sign_bitcoin, sign_solana, sign_substrate
from fixtures.recording_backend import RecordingBackend
from fixtures.wallets import BITCOIN_KEY, EVM_ALICE_KEY, SOLANA_SEED, SUBSTRATE_SEED

# Each wallet: (user_id, signer(message) -> user_auth)
Wallet = tuple[dict[str, str], Callable[[bytes], dict[str, Any]]]


def substrate_wallet(scheme: SignatureScheme, *, wrap: bool) -> Wallet:
    account, _ = sign_substrate(b"probe", scheme, SUBSTRATE_SEED)

    def sign(message: bytes) -> dict[str, Any]:
        _, signature = sign_substrate(message, scheme, SUBSTRATE_SEED, wrap=wrap)
        return {"type": "substrate", "value": {"type": scheme.value, "value": signature.hex()}}

    return {"type": "substrate", "value": "0x" + account.hex()}, sign


def solana_wallet() -> Wallet:
    pubkey, _ = sign_solana(b"probe", SOLANA_SEED)
    return {"type": "solana", "value": encode_base58(pubkey)}, lambda m: {
        "type": "solana",
        "value": sign_solana(m, SOLANA_SEED)[1].hex(),
    }


def bitcoin_wallet(*, as_hex_text: bool) -> Wallet:
    pubkey, _ = sign_bitcoin(b"probe", BITCOIN_KEY)
    return {"type": "bitcoin", "value": pubkey.hex()}, lambda m: {
        "type": "bitcoin",
        "value": sign_bitcoin(m, BITCOIN_KEY, as_hex_text=as_hex_text)[1].hex(),  # bare hex
    }


WALLETS: dict[str, Callable[[], Wallet]] = {
    "substrate-sr25519-wrapped": lambda: substrate_wallet(SignatureScheme.SR25519, wrap=True),
    "substrate-sr25519-raw": lambda: substrate_wallet(SignatureScheme.SR25519, wrap=False),
    "substrate-ed25519": lambda: substrate_wallet(SignatureScheme.ED25519, wrap=True),
    "substrate-ecdsa": lambda: substrate_wallet(SignatureScheme.ECDSA, wrap=False),
    "solana": solana_wallet,
    "bitcoin-hex-text": lambda: bitcoin_wallet(as_hex_text=True),
    "bitcoin-utf8-text": lambda: bitcoin_wallet(as_hex_text=False),
}


@pytest.mark.parametrize("wallet_name", list(WALLETS))
async def test_wallet_kind_logs_in_and_the_callback_carries_its_user_id(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession, wallet_name: str
) -> None:
    sim = await make_sim(profile="agentkeys-patch")
    user_id, sign = WALLETS[wallet_name]()
    account = omni_account_of(IdentityKind(user_id["type"]), user_id["value"], "agentkeys")
    message = await sign_in_message(http, sim.url, "agentkeys", account)
    params = {
        "user_id": user_id,
        "user_auth": sign(message.signing_bytes()),
        "client_id": "agentkeys",
    }
    answer = await rpc(http, sim.url, "omni_userLogin", params)
    assert "result" in answer, answer
    [call] = backend.calls_of("post_heima_login")
    assert call.json["userId"] == user_id  # echoed exactly as sent


@pytest.mark.parametrize("wallet_name", ["substrate-ecdsa", "solana", "bitcoin-hex-text"])
async def test_signature_over_another_message_is_refused(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession, wallet_name: str
) -> None:
    sim = await make_sim(profile="agentkeys-patch")
    user_id, sign = WALLETS[wallet_name]()
    account = omni_account_of(IdentityKind(user_id["type"]), user_id["value"], "agentkeys")
    message = await sign_in_message(http, sim.url, "agentkeys", account)
    wrong = message.signing_bytes().replace(b"agentkeys", b"wildmeta")
    params = {"user_id": user_id, "user_auth": sign(wrong), "client_id": "agentkeys"}
    assert (await rpc(http, sim.url, "omni_userLogin", params))["error"] == {
        "code": -32003,
        "message": "Server error",
    }
    assert backend.calls == []


async def test_websocket_takes_the_authorization_of_the_upgrade_request(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    login = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    call = {"jsonrpc": "2.0", "id": 1, "method": "omni_addWallet"}
    async with http.ws_connect(sim.ws_url) as ws:
        await ws.send_json(call)
        assert (await ws.receive_json())["error"] == {"code": -32603, "message": "Internal error"}
    async with http.ws_connect(sim.ws_url, headers={"Authorization": "Bearer " + login["id_token"]}) as ws:
        await ws.send_json(call)
        first = await ws.receive_json()
        await ws.send_json({**call, "id": 2})  # the same header serves every call on the socket
        second = await ws.receive_json()
    assert "result" in first and "result" in second


async def test_websocket_batch_and_bad_frames(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    async with http.ws_connect(sim.ws_url) as ws:
        await ws.send_str(
            '[{"jsonrpc":"2.0","id":1,"method":"omni_getHealth"},{"jsonrpc":"2.0","id":2,"method":"nope"}]'
        )
        batch = await ws.receive_json()
        await ws.send_str("not json")
        bad = await ws.receive_json()
    assert sorted(batch, key=lambda a: a["id"]) == [
        {"jsonrpc": "2.0", "id": 1, "result": "OK"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}},
    ]
    assert bad == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error"},
    }
