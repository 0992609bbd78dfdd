"""`omni_userLogin` end to end: client → simulator → real aiohttp backend → simulator → client."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
from conftest import SimFactory, rpc
from flows import evm_login, evm_login_params, sign_in_message

from agentkeys_kit.omni_sim.clock import SimClock
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_LIFETIME_SECONDS
from fixtures.recording_backend import RecordingBackend, ScriptedReply
from fixtures.wallets import EVM_ALICE_KEY, EVM_BOB_KEY, evm_user_id_value

NOW = 1_767_225_600
WILDMETA_AUTH = {"type": "wildmeta", "value": {"google_code": "", "invite_code": ""}}


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


async def test_wildmeta_evm_login_over_http_calls_post_heima_login(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(clock=SimClock(frozen_at=NOW))
    answer = await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta", WILDMETA_AUTH)

    result = answer["result"]
    assert list(result) == ["access_token", "id_token", "backend_response"]
    assert result["backend_response"] == {"code": 10000, "message": "OK", "data": {"user_id": None}}
    [call] = backend.calls_of("post_heima_login")
    assert call.method == "POST" and call.path == "/v3/account/post_heima_login"
    assert call.headers["Authorization"] == "Bearer " + result["access_token"]
    assert call.headers["X-Language"] == "en"
    address = evm_user_id_value(EVM_ALICE_KEY)
    assert call.body.decode() == (
        '{"userId":{"type":"evm","value":"' + address + '"},"clientId":"wildmeta",'
        '"clientAuth":{"type":"wildmeta","value":{"google_code":"","invite_code":""}},'
        '"heimaLoginSuccess":true}'
    )
    account = omni_account_of(IdentityKind.EVM, address, "wildmeta")
    expiry = NOW + AUTH_TOKEN_LIFETIME_SECONDS
    assert claims_of(result["access_token"]) == {
        "sub": account,
        "typ": "access",
        "exp": expiry,
        "aud": "wildmeta",
    }
    assert claims_of(result["id_token"]) == {
        "sub": account,
        "typ": "id",
        "exp": expiry,
        "aud": "wildmeta",
    }


async def test_login_over_websocket_produces_the_same_callback(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    address = evm_user_id_value(EVM_BOB_KEY)
    account = omni_account_of(IdentityKind.EVM, address, "wildmeta")
    async with http.ws_connect(sim.ws_url) as ws:
        await ws.send_json(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "omni_getWeb3SignInMessage",
                "params": ["wildmeta", account],  # positional, as the TS web client sends it
            }
        )
        message = (await ws.receive_json())["result"]
        from agentkeys_kit.protocol.web3_message import HeimaMessagePayload

        params = evm_login_params(EVM_BOB_KEY, "wildmeta", HeimaMessagePayload(**message))
        await ws.send_json({"jsonrpc": "2.0", "id": "login", "method": "omni_userLogin", "params": params})
        answer = await ws.receive_json()
    assert answer["id"] == "login"
    assert set(answer["result"]) == {"access_token", "id_token", "backend_response"}
    [call] = backend.calls_of("post_heima_login")
    assert call.json == {
        "userId": {"type": "evm", "value": address},
        "clientId": "wildmeta",
        "clientAuth": None,
        "heimaLoginSuccess": True,
    }
    assert call.bearer == answer["result"]["access_token"]


async def test_sign_in_code_is_reused_until_a_login_consumes_it(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    account = omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "wildmeta")
    first = await sign_in_message(http, sim.url, "wildmeta", account)
    again = await sign_in_message(http, sim.url, "wildmeta", account.upper().replace("0X", ""))
    assert again == first and len(first.message_code) == 8 and first.message_code.isdigit()
    assert (
        first.signing_bytes()
        == (
            '{"client_id":"wildmeta","omni_account":"' + account + '","message_code":"' + first.message_code + '"}'
        ).encode()
    )
    params = evm_login_params(EVM_ALICE_KEY, "wildmeta", first)
    assert "result" in await rpc(http, sim.url, "omni_userLogin", params)
    replay = await rpc(http, sim.url, "omni_userLogin", params)
    assert replay["error"] == {"code": -32003, "message": "Server error"}


async def test_web3_code_is_consumed_even_by_a_bad_signature(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    account = omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "wildmeta")
    message = await sign_in_message(http, sim.url, "wildmeta", account)
    forged = evm_login_params(EVM_BOB_KEY, "wildmeta", message)
    forged["user_id"] = {"type": "evm", "value": evm_user_id_value(EVM_ALICE_KEY)}
    assert (await rpc(http, sim.url, "omni_userLogin", forged))["error"]["code"] == -32003
    honest = evm_login_params(EVM_ALICE_KEY, "wildmeta", message)
    assert (await rpc(http, sim.url, "omni_userLogin", honest))["error"]["code"] == -32003
    assert backend.calls == []


async def test_agentkeys_login_is_refused_upstream_after_authentication(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(profile="upstream")
    answer = await evm_login(http, sim.url, EVM_ALICE_KEY, "agentkeys")
    assert answer["error"] == {"code": -32602, "message": "Invalid params"}
    assert backend.calls == []
    account = omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "agentkeys")
    assert sim.context.codes.get(bytes.fromhex(account[2:])) is None  # consumed before the refusal


async def test_agentkeys_login_is_dispatched_to_the_agentkeys_api_in_the_patch(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(profile="agentkeys-patch")
    answer = await evm_login(
        http,
        sim.url,
        EVM_ALICE_KEY,
        "agentkeys",
        {"type": "agentkeys_backend", "value": {"signature": "0x12"}},
    )
    assert "result" in answer, answer
    [call] = backend.calls_of("post_heima_login")
    assert call.path == "/agentkeys/v3/account/post_heima_login"
    assert call.json["clientId"] == "agentkeys"
    assert call.json["clientAuth"] == {"type": "agentkeys_backend", "value": {"signature": "0x12"}}
    account = omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "agentkeys")
    assert claims_of(call.bearer or "")["sub"] == account
    assert claims_of(call.bearer or "")["aud"] == "agentkeys"


async def test_agentkeys_backend_client_auth_is_unknown_upstream(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(profile="upstream")
    answer = await evm_login(
        http,
        sim.url,
        EVM_ALICE_KEY,
        "wildmeta",
        {"type": "agentkeys_backend", "value": {"signature": "0x"}},
    )
    assert answer["error"]["code"] == -32700
    assert answer["error"]["data"] == {"reason": "Invalid JSON format or missing required fields"}


async def test_wildmeta_login_is_byte_identical_in_both_profiles(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    bodies = []
    for profile in ("upstream", "agentkeys-patch"):
        sim = await make_sim(profile=profile, clock=SimClock(frozen_at=NOW))
        answer = await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta", WILDMETA_AUTH)
        bodies.append((answer["result"], backend.calls[-1].body, backend.calls[-1].path))
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(
    ("base", "path"),
    [
        ("pumpx", "/v3/account/post_heima_login"),  # no trailing slash: the last segment goes
        ("pumpx/", "/pumpx/v3/account/post_heima_login"),  # trailing slash keeps the prefix
    ],
)
async def test_callback_url_follows_the_trailing_slash_rule(
    make_sim: SimFactory,
    backend: RecordingBackend,
    http: aiohttp.ClientSession,
    base: str,
    path: str,
) -> None:
    sim = await make_sim(env={"OE_PUMPX_API_BASE_URL": backend.url + base})
    assert "result" in await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta")
    assert backend.calls[-1].path == path


async def test_backend_code_other_than_10000_gives_invalid_backend_response(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    backend.script(
        "post_heima_login",
        ScriptedReply({"code": 40001, "message": "user banned", "data": {"user_id": None}}),
    )
    answer = await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta")
    assert answer["error"] == {
        "code": -32000,
        "message": "Invalid backend response",
        "data": {
            "backend_response": {"code": 40001, "message": "user banned"},
            "field": "post_heima_login",
        },
    }
    assert list(answer["error"]["data"]) == ["backend_response", "field"]


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (ScriptedReply(status=500, body={"error": "boom"}), "Status(500)"),
        (ScriptedReply(drop=True), "kind: Request"),
        (ScriptedReply(raw=b"<html>"), "kind: Decode"),
        (ScriptedReply(body={"code": 10000, "message": "OK", "data": None}), "kind: Decode"),
        (ScriptedReply(body={"code": -1, "message": "OK", "data": {}}), "kind: Decode"),
        (ScriptedReply(delay=5, body={}), "kind: Request"),
    ],
    ids=["http-500", "dropped", "not-json", "data-null", "negative-code", "timeout"],
)
async def test_backend_failures_give_pumpx_service_error(
    make_sim: SimFactory,
    backend: RecordingBackend,
    http: aiohttp.ClientSession,
    reply: ScriptedReply,
    kind: str,
) -> None:
    sim = await make_sim()
    backend.script("post_heima_login", reply)
    error = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["error"]
    assert (error["code"], error["message"]) == (-32161, "Pumpx service error in post_heima_login")
    assert list(error["data"]) == ["reason"] and kind in error["data"]["reason"]


async def test_legacy_era_maps_backend_failures_like_era_a(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(error_era="legacy")
    backend.script("post_heima_login", ScriptedReply(status=502, body={}))
    assert (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["error"] == {
        "code": -32041,
        "message": "Server error",
    }
    backend.script("post_heima_login", ScriptedReply({"code": 50000, "message": "db down", "data": {}}))
    assert (await evm_login(http, sim.url, EVM_BOB_KEY, "wildmeta"))["error"] == {
        "code": -32603,
        "message": "Internal error",
        "data": {"backend_response": {"code": 50000, "message": "db down"}},
    }


async def test_backend_response_is_reserialized_like_serde(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    backend.script(
        "post_heima_login",
        ScriptedReply({"code": 10000, "message": "OK", "data": {"extra": 1}, "more": 2}),
    )
    result = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    assert result["backend_response"] == {"code": 10000, "message": "OK", "data": {"user_id": None}}
