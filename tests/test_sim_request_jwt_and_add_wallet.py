"""E-mail codes, `omni_requestJwt` (two callbacks) and `omni_addWallet` (protected, id token)."""

from __future__ import annotations

import aiohttp
import pytest
from conftest import SimFactory, rpc
from flows import evm_login
from test_sim_login import claims_of

from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of, pumpx_omni_account
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_LIFETIME_SECONDS
from fixtures.recording_backend import RecordingBackend, ScriptedReply
from fixtures.wallets import EVM_ALICE_KEY

EMAIL = "Alice@Example.com"


async def email_code(http: aiohttp.ClientSession, sim: SimServer, client_id: str, email: str = EMAIL) -> str:
    answer = await rpc(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": client_id, "user_email": email},
    )
    assert answer["result"] is None, answer
    async with http.get(sim.url + "_sim/outbox", params={"to": email}) as response:
        mails = (await response.json())["messages"]
    return str(mails[-1]["code"])


def jwt_params(code: str, client_id: str = "wildmeta", **extra: object) -> dict[str, object]:
    return {
        "client_id": client_id,
        "user_email": EMAIL,
        "invite_code": "INV1",
        "google_code": "123456",
        "email_code": code,
        **extra,
    }


async def test_request_jwt_runs_get_account_user_id_then_user_connect(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    code = await email_code(http, sim, "wildmeta")
    assert len(code) == 6 and code.isdigit()
    answer = await rpc(http, sim.url, "omni_requestJwt", jwt_params(code, language="zh"))
    result = answer["result"]
    assert list(result) == ["access_token", "id_token", "backend_response"]
    assert result["backend_response"] == {
        "code": 10000,
        "message": "OK",
        "data": {"userId": "mock_user_123", "googleAuthCheck": True},
    }
    lookup, connect = backend.calls
    assert (lookup.operation, lookup.method, lookup.query) == (
        "get_account_user_id",
        "GET",
        {"email": EMAIL},
    )
    assert "Authorization" not in lookup.headers
    assert connect.operation == "user_connect" and connect.bearer == result["access_token"]
    assert connect.headers["X-Language"] == "zh"
    assert connect.body.decode() == (
        '{"email":"Alice@Example.com","inviteCode":"INV1","googleCode":"123456","userId":"mock_user_123"}'
    )
    account = "0x" + pumpx_omni_account("wildmeta", "mock_user_123").hex()
    assert claims_of(result["access_token"])["sub"] == account
    assert claims_of(result["id_token"])["typ"] == "id"


async def test_email_code_is_kept_after_a_wrong_guess_and_consumed_by_success(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    code = await email_code(http, sim, "wildmeta")
    wrong = "000000" if code != "000000" else "111111"
    error = (await rpc(http, sim.url, "omni_requestJwt", jwt_params(wrong)))["error"]
    assert error == {
        "code": -32003,
        "message": "Authentication verification failed",
        "data": {"suggestion": "Please check your authentication credentials"},
    }
    assert "result" in await rpc(http, sim.url, "omni_requestJwt", jwt_params(code))
    assert (await rpc(http, sim.url, "omni_requestJwt", jwt_params(code)))["error"]["code"] == -32003


async def test_a_new_email_code_overwrites_the_old_one(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    first = await email_code(http, sim, "wildmeta")
    second = await email_code(http, sim, "wildmeta")
    if first != second:
        assert (await rpc(http, sim.url, "omni_requestJwt", jwt_params(first)))["error"]["code"] == -32003
    assert "result" in await rpc(http, sim.url, "omni_requestJwt", jwt_params(second))


async def test_email_login_with_user_login(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(profile="agentkeys-patch")
    code = await email_code(http, sim, "agentkeys", "bob@example.org")
    params = {
        "user_id": {"type": "email", "value": "bob@example.org"},
        "user_auth": {"type": "email", "value": code},
        "client_id": "agentkeys",
    }
    result = (await rpc(http, sim.url, "omni_userLogin", params))["result"]
    [call] = backend.calls_of("post_heima_login")
    assert call.path == "/agentkeys/v3/account/post_heima_login"
    assert call.json["userId"] == {"type": "email", "value": "bob@example.org"}
    assert claims_of(result["access_token"])["sub"] == omni_account_of(
        IdentityKind.EMAIL, "bob@example.org", "agentkeys"
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            ScriptedReply({"code": 10000, "message": "OK", "data": {"userId": None}}),
            {"code": -32603, "message": "Internal error", "data": {"reason": "Empty data.user_id"}},
        ),
        (
            ScriptedReply(status=503, raw=b"down"),
            None,  # no status check for get_account_user_id: the body fails to decode instead
        ),
    ],
    ids=["user-id-null", "503-not-json"],
)
async def test_get_account_user_id_failures(
    make_sim: SimFactory,
    backend: RecordingBackend,
    http: aiohttp.ClientSession,
    reply: ScriptedReply,
    expected: dict[str, object] | None,
) -> None:
    sim = await make_sim()
    backend.script("get_account_user_id", reply)
    error = (await rpc(http, sim.url, "omni_requestJwt", jwt_params(await email_code(http, sim, "wildmeta"))))["error"]
    if expected is not None:
        assert error == expected
    else:
        assert (error["code"], error["message"]) == (
            -32161,
            "Pumpx service error in get_account_user_id",
        )
        assert "kind: Decode" in error["data"]["reason"]
    assert backend.calls_of("user_connect") == []


async def test_get_account_user_id_accepts_an_envelope_with_a_500_status(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    backend.script(
        "get_account_user_id",
        ScriptedReply({"code": 10000, "message": "OK", "data": {"userId": "u9"}}, status=500),
    )
    assert "result" in await rpc(http, sim.url, "omni_requestJwt", jwt_params(await email_code(http, sim, "wildmeta")))


async def test_user_connect_failures_in_both_eras(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    refused = ScriptedReply({"code": 20001, "message": "bad invite", "data": {"googleAuthCheck": False}})
    current = await make_sim(error_era="current")
    backend.script("user_connect", refused)
    error = (
        await rpc(
            http,
            current.url,
            "omni_requestJwt",
            jwt_params(await email_code(http, current, "wildmeta")),
        )
    )["error"]
    assert error == {
        "code": -32000,
        "message": "Invalid backend response",
        "data": {
            "backend_response": {"code": 20001, "message": "bad invite"},
            "field": "user_connect",
        },
    }
    legacy = await make_sim(error_era="legacy")
    backend.script("user_connect", refused)
    error = (
        await rpc(
            http,
            legacy.url,
            "omni_requestJwt",
            jwt_params(await email_code(http, legacy, "wildmeta")),
        )
    )["error"]
    assert error == {  # era A checks googleAuthCheck before the envelope code
        "code": -32031,
        "message": "Google code verification failed",
        "data": {"suggestion": "Please check your Google verification code and try again"},
    }


async def test_google_auth_check_false_is_an_internal_error(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    backend.script(
        "user_connect",
        ScriptedReply({"code": 10000, "message": "OK", "data": {"userId": "u", "googleAuthCheck": False}}),
    )
    error = (await rpc(http, sim.url, "omni_requestJwt", jwt_params(await email_code(http, sim, "wildmeta"))))["error"]
    assert error == {
        "code": -32603,
        "message": "Internal error",
        "data": {"reason": "Failed to verify google auth within RequestJwt"},
    }


# --------------------------------------------------------------------------- omni_addWallet


async def test_add_wallet_with_the_id_token_sends_the_stored_access_token(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    login = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    answer = await rpc(http, sim.url, "omni_addWallet", token=login["id_token"])
    assert answer["result"] == {"backend_response": {"code": 10000, "message": "OK", "data": {}}}
    [call] = backend.calls_of("add_wallet")
    assert call.path == "/v3/account/add_wallet" and call.body == b""
    assert call.headers.get("Content-Length") == "0"
    assert call.bearer == login["access_token"]


async def test_add_wallet_refusals(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    login = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    missing = await rpc(http, sim.url, "omni_addWallet")
    assert missing["error"] == {"code": -32603, "message": "Internal error"}
    with_access = await rpc(http, sim.url, "omni_addWallet", token=login["access_token"])
    assert with_access["error"] == {"code": -32003, "message": "Authentication failed"}
    # "Bearer Bearer <id>" still works: every leading "Bearer " is stripped.
    async with http.post(
        sim.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "omni_addWallet"},
        headers={"Authorization": "Bearer Bearer " + login["id_token"]},
    ) as response:
        assert "result" in await response.json()
    ctx = sim.context
    stranger = ctx.mint_token("0x" + "11" * 32, "id", "wildmeta", ctx.token_expiry())
    never_logged_in = await rpc(http, sim.url, "omni_addWallet", token=stranger)
    assert never_logged_in["error"] == {
        "code": -32163,
        "message": "Storage service error in get access token",
        "data": {},
    }


async def test_add_wallet_rejects_expired_id_tokens(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    login = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    async with http.post(sim.url + "_sim/clock", json={"advance": AUTH_TOKEN_LIFETIME_SECONDS + 61}) as response:
        assert response.status == 200
    answer = await rpc(http, sim.url, "omni_addWallet", token=login["id_token"])
    assert answer["error"] == {"code": -32003, "message": "Authentication failed"}


async def test_agentkeys_id_token_is_refused_upstream_and_served_by_the_patch(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    patch = await make_sim(profile="agentkeys-patch")
    login = (await evm_login(http, patch.url, EVM_ALICE_KEY, "agentkeys"))["result"]
    answer = await rpc(http, patch.url, "omni_addWallet", token=login["id_token"])
    assert "result" in answer
    assert backend.calls[-1].path == "/agentkeys/v3/account/add_wallet"

    upstream = await make_sim(profile="upstream")
    token = upstream.context.mint_token(
        claims_of(login["id_token"])["sub"], "id", "agentkeys", upstream.context.token_expiry()
    )  # type: ignore[arg-type]
    refused = await rpc(http, upstream.url, "omni_addWallet", token=token)
    assert refused["error"] == {"code": -32003, "message": "Authentication failed"}


async def test_add_wallet_backend_failures(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    login = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    backend.script("add_wallet", ScriptedReply({"code": 30001, "message": "limit", "data": {}}))
    error = (await rpc(http, sim.url, "omni_addWallet", token=login["id_token"]))["error"]
    assert error["code"] == -32000 and error["data"]["field"] == "add_wallet"
    backend.script("add_wallet", ScriptedReply({"code": 10000, "message": "OK", "data": None}))
    error = (await rpc(http, sim.url, "omni_addWallet", token=login["id_token"]))["error"]
    assert (error["code"], error["message"]) == (-32161, "Pumpx service error in add_wallet")


async def test_auth_token_login_in_the_patch_must_prove_the_identity(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    patch = await make_sim(profile="agentkeys-patch")
    alice = (await evm_login(http, patch.url, EVM_ALICE_KEY, "agentkeys"))["result"]
    as_alice = {
        "user_id": {"type": "evm", "value": "0x" + "00" * 19 + "01"},
        "user_auth": {"type": "auth_token", "value": alice["id_token"]},
        "client_id": "agentkeys",
    }
    assert (await rpc(http, patch.url, "omni_userLogin", as_alice))["error"] == {
        "code": -32003,
        "message": "Server error",
    }
    from fixtures.wallets import evm_user_id_value

    as_herself = {**as_alice, "user_id": {"type": "evm", "value": evm_user_id_value(EVM_ALICE_KEY)}}
    assert "result" in await rpc(http, patch.url, "omni_userLogin", as_herself)


async def test_upstream_auth_token_login_does_not_compare_the_subject(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(profile="upstream")
    alice = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]
    someone_else = {
        "user_id": {"type": "evm", "value": "0x" + "00" * 19 + "01"},
        "user_auth": {"type": "auth_token", "value": alice["id_token"]},
        "client_id": "wildmeta",
    }
    result = (await rpc(http, sim.url, "omni_userLogin", someone_else))["result"]
    assert claims_of(result["access_token"])["sub"] == omni_account_of(
        IdentityKind.EVM, "0x" + "00" * 19 + "01", "wildmeta"
    )


async def test_upstream_discloses_a_pending_email_code_through_the_sign_in_message(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    # One VerificationCodeStorage under blake2_256(OmniAccount) holds both kinds of code upstream.
    sim = await make_sim(profile="upstream")
    code = await email_code(http, sim, "wildmeta", "victim@example.com")
    account = omni_account_of(IdentityKind.EMAIL, "victim@example.com", "wildmeta")
    leaked = await rpc(http, sim.url, "omni_getWeb3SignInMessage", {"client_id": "wildmeta", "omni_account": account})
    assert leaked["result"]["message_code"] == code
    takeover = {
        "user_id": {"type": "email", "value": "victim@example.com"},
        "user_auth": {"type": "email", "value": leaked["result"]["message_code"]},
        "client_id": "wildmeta",
    }
    assert "result" in await rpc(http, sim.url, "omni_userLogin", takeover)


async def test_the_patch_keeps_email_codes_out_of_the_sign_in_message(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(profile="agentkeys-patch")
    code = await email_code(http, sim, "agentkeys", "victim@example.com")
    account = omni_account_of(IdentityKind.EMAIL, "victim@example.com", "agentkeys")
    answer = await rpc(http, sim.url, "omni_getWeb3SignInMessage", {"client_id": "agentkeys", "omni_account": account})
    assert len(answer["result"]["message_code"]) == 8 and answer["result"]["message_code"] != code
    login = {
        "user_id": {"type": "email", "value": "victim@example.com"},
        "user_auth": {"type": "email", "value": code},
        "client_id": "agentkeys",
    }
    assert "result" in await rpc(http, sim.url, "omni_userLogin", login)  # the mailed code still works
