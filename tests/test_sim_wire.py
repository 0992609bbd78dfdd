"""The newest worker's wire (§0 #3–#9 of `heima-login-surface.md`): jsonrpsee 0.26 batches, an
unreadable Authorization header, ``X-Language`` as given, the bodiless ``add_wallet`` callback,
the ``get_account_user_id`` query as reqwest encodes it, SS58 prefixes and the worker's ``exp`` rules."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import aiohttp
import base58
import pytest
from conftest import SimFactory, rpc
from flows import evm_login
from scalecodec.utils.ss58 import ss58_encode
from test_sim_request_jwt_and_add_wallet import email_code, jwt_params

from agentkeys_kit.omni_sim.methods.get_web3_sign_in_message import from_ss58check
from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol.callbacks import GET_ACCOUNT_USER_ID_PATH
from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, TokenRejected, encode_auth_token, verify_auth_token
from fixtures.recording_backend import DEFAULT_REPLIES, RecordingBackend, ScriptedReply
from fixtures.wallets import EVM_ALICE_KEY

INVALID_RPC_EXTENSION = {"code": -32002, "message": "Invalid rpc extension", "data": {}}
INTERNAL_ERROR = {"code": -32603, "message": "Internal error"}
LOOKUP = DEFAULT_REPLIES["get_account_user_id"]


async def post_raw(http: aiohttp.ClientSession, sim: SimServer, body: Any, headers: dict[str, str]) -> Any:
    async with http.post(sim.url, data=json.dumps(body), headers={"Content-Type": "application/json", **headers}) as r:
        assert r.status == 200
        return await r.json()


def call(ident: int, method: str, params: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        request["params"] = params
    return request


# ------------------------------------------------------------------------------------------ batches


async def test_current_batch_skips_the_auth_middleware(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    """`AuthRpcService::batch` only forwards (`rpc_middleware.rs@677675c8:113-117`): a batched
    protected call finds no `RpcExtensions`, whatever the header (`utils/omni.rs@677675c8:19-24`)."""
    sim = await make_sim()
    token = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]["id_token"]
    backend.reset()
    for headers in ({"Authorization": "Bearer " + token}, {"Authorization": "Bearer junk"}, {}):
        answers = await post_raw(http, sim, [call(1, "omni_addWallet"), call(2, "omni_getHealth")], headers)
        assert answers == [
            {"jsonrpc": "2.0", "id": 1, "error": INVALID_RPC_EXTENSION},
            {"jsonrpc": "2.0", "id": 2, "result": "OK"},
        ]
    assert backend.calls == []
    # the same call alone goes through the middleware
    single = await rpc(http, sim.url, "omni_addWallet", token=token)
    assert "result" in single and backend.calls_of("add_wallet")


async def test_legacy_batch_authenticates_every_call(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    """jsonrpsee 0.24 (era A) ran the middleware's `call` for each batch entry."""
    sim = await make_sim(error_era="legacy")
    token = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]["id_token"]
    backend.reset()
    ok = await post_raw(http, sim, [call(1, "omni_addWallet")], {"Authorization": "Bearer " + token})
    assert "result" in ok[0] and len(backend.calls_of("add_wallet")) == 1
    bad = await post_raw(http, sim, [call(1, "omni_addWallet")], {"Authorization": "Bearer junk"})
    assert bad[0]["error"]["code"] == -32003
    absent = await post_raw(http, sim, [call(1, "omni_addWallet")], {})
    assert absent[0]["error"] == INTERNAL_ERROR


async def test_current_batch_runs_its_entries_one_after_another(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    """jsonrpsee 0.26 `RpcService::batch`: ``for … { service.call(req).await }``. The first entry's
    slow lookup delays the second entry's callbacks; concurrent entries would interleave."""
    sim = await make_sim()
    first = await email_code(http, sim, "wildmeta", "Alice@Example.com")
    second = await email_code(http, sim, "wildmeta", "bob@example.com")
    backend.reset()
    backend.script("get_account_user_id", ScriptedReply(body=LOOKUP, delay=0.3))
    backend.script("get_account_user_id", ScriptedReply(body=LOOKUP))
    body = [
        call(1, "omni_requestJwt", jwt_params(first)),
        call(2, "omni_requestJwt", {**jwt_params(second), "user_email": "bob@example.com"}),
    ]
    answers = await post_raw(http, sim, body, {})
    assert [answer["id"] for answer in answers] == [1, 2]
    assert [(c.operation, c.query.get("email")) for c in backend.calls] == [
        ("get_account_user_id", "Alice@Example.com"),
        ("user_connect", None),
        ("get_account_user_id", "bob@example.com"),
        ("user_connect", None),
    ]


async def test_legacy_batch_runs_its_entries_concurrently(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(error_era="legacy")
    first = await email_code(http, sim, "wildmeta", "Alice@Example.com")
    second = await email_code(http, sim, "wildmeta", "bob@example.com")
    backend.reset()
    backend.script("get_account_user_id", ScriptedReply(body=LOOKUP, delay=0.3))
    backend.script("get_account_user_id", ScriptedReply(body=LOOKUP))
    body = [
        call(1, "omni_requestJwt", jwt_params(first)),
        call(2, "omni_requestJwt", {**jwt_params(second), "user_email": "bob@example.com"}),
    ]
    await post_raw(http, sim, body, {})
    assert [c.operation for c in backend.calls][:2] == ["get_account_user_id", "get_account_user_id"]


# ------------------------------------------------------------------------------ Authorization header


# Control bytes other than tab (and DEL) never get this far: httparse refuses them and hyper answers
# 400, as aiohttp's parser does. Bytes 0x80-0xff pass the parser and fail `to_str`.
@pytest.mark.parametrize("value", ["Bearer \x80abc", "Bearer é", "Bearer \xff"])
async def test_authorization_outside_visible_ascii_is_absent(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession, value: str
) -> None:
    """`hv.to_str().ok()` (`http_middleware.rs@d403b4df:60-68`): no header, so -32603, not -32003."""
    sim = await make_sim()
    raw = value.encode("utf-8") if value == "Bearer é" else value.encode("latin-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    request = json.dumps(call(7, "omni_addWallet")).encode()
    writer.write(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
        + raw
        + b"\r\nContent-Length: "
        + str(len(request)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + request
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload) == {"jsonrpc": "2.0", "id": 7, "error": INTERNAL_ERROR}
    assert backend.calls == []


async def test_authorization_with_a_tab_is_read(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    """Tab is the one byte below 32 that `HeaderValue::to_str` accepts: the value is read and refused."""
    sim = await make_sim()
    answer = await post_raw(http, sim, call(1, "omni_addWallet"), {"Authorization": "Bearer\ta"})
    assert answer["error"]["code"] == -32003


# --------------------------------------------------------------------------------------- callbacks


async def test_empty_language_goes_out_as_an_empty_header(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    """`language.unwrap_or("en")` (`user_connect.rs@701b0755`): ``""`` stays ``""``; absent is ``en``."""
    sim = await make_sim()
    code = await email_code(http, sim, "wildmeta")
    assert "result" in await rpc(http, sim.url, "omni_requestJwt", jwt_params(code, language=""))
    code = await email_code(http, sim, "wildmeta")
    assert "result" in await rpc(http, sim.url, "omni_requestJwt", jwt_params(code))
    empty, absent = backend.calls_of("user_connect")
    assert empty.headers["X-Language"] == "" and absent.headers["X-Language"] == "en"


@pytest.mark.parametrize(
    ("email", "query"),
    [
        ("Alice@Example.com", "email=Alice%40Example.com"),
        ("a+b.c_d-e*f~g@x.io", "email=a%2Bb.c_d-e*f%7Eg%40x.io"),
    ],
)
async def test_get_account_user_id_query_is_form_urlencoded(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession, email: str, query: str
) -> None:
    """serde_urlencoded escapes everything but ``A-Za-z0-9*-._``; the journal keeps the query."""
    sim = await make_sim()
    code = await email_code(http, sim, "wildmeta", email)
    answer = await rpc(http, sim.url, "omni_requestJwt", {**jwt_params(code), "user_email": email})
    assert "result" in answer, answer
    (lookup,) = backend.calls_of("get_account_user_id")
    assert lookup.raw_query == query and lookup.query == {"email": email}
    async with http.get(sim.url + "_sim/callbacks") as response:
        journal = (await response.json())["callbacks"]
    entry = next(e for e in journal if e["operation"] == "get_account_user_id")
    assert entry["url"] == f"{backend.url}{GET_ACCOUNT_USER_ID_PATH}?{query}"


async def test_bodiless_add_wallet_has_no_content_type(
    make_sim: SimFactory, backend: RecordingBackend, http: aiohttp.ClientSession
) -> None:
    """reqwest sends a POST without a body with ``Content-Length: 0`` and no ``Content-Type``."""
    sim = await make_sim()
    token = (await evm_login(http, sim.url, EVM_ALICE_KEY, "wildmeta"))["result"]["id_token"]
    assert "result" in await rpc(http, sim.url, "omni_addWallet", token=token)
    (add,) = backend.calls_of("add_wallet")
    assert "Content-Type" not in add.headers
    assert add.headers["Content-Length"] == "0" and add.body == b""
    assert add.headers["X-Language"] == "en" and add.bearer


# ------------------------------------------------------------------------------------------- SS58

ACCOUNT = bytes(range(32))


@pytest.mark.parametrize("prefix", [0, 2, 31, 42, 63, 64, 131, 1284, 14697])
def test_registered_ss58_prefixes_decode(prefix: int) -> None:
    assert from_ss58check(ss58_encode(ACCOUNT.hex(), prefix)) == ACCOUNT


@pytest.mark.parametrize("prefix", [62, 70, 200, 12345, 16383])
def test_custom_ss58_prefixes_are_refused(prefix: int) -> None:
    """sp-core `from_ss58check`: an unregistered prefix is `UnknownSs58AddressFormat`."""
    assert from_ss58check(ss58_encode(ACCOUNT.hex(), prefix)) is None


@pytest.mark.parametrize("prefix", [46, 47])
def test_reserved_ss58_prefixes_are_refused(prefix: int) -> None:
    """46 and 47 are reserved (`FormatNotAllowed`); scalecodec will not even encode them."""
    data = bytes([prefix]) + ACCOUNT
    checksum = hashlib.blake2b(b"SS58PRE" + data, digest_size=64).digest()[:2]
    assert from_ss58check(base58.b58encode(data + checksum).decode()) is None


def test_well_known_ss58_addresses() -> None:
    alice = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
    assert from_ss58check("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY") == alice  # generic 42
    assert from_ss58check("15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5") == alice  # Polkadot 0
    assert from_ss58check("HNZata7iMYWmk5RvZRTiAsSDhV8366zq2YGb3tLH5Upf74F") == alice  # Kusama 2


async def test_custom_prefix_is_a_bare_invalid_params(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    answer = await rpc(
        http,
        sim.url,
        "omni_getWeb3SignInMessage",
        {"client_id": "wildmeta", "omni_account": ss58_encode(ACCOUNT.hex(), 12345)},
    )
    assert answer["error"] == {"code": -32602, "message": "Invalid params"}


# -------------------------------------------------------------------------------------- exp rules


CHECK: dict[str, Any] = {"expected_type": "id", "audiences": ["wildmeta"]}


def token_with_exp(key: Any, exp: int) -> str:
    claims = AuthTokenClaims(sub="0x" + "11" * 32, typ="id", exp=exp, aud="wildmeta")
    return encode_auth_token(claims, key)


@pytest.mark.parametrize(
    ("exp", "worker", "accepted"),
    [
        (-1, True, True),  # jsonwebtoken cannot read a negative exp, so never checks it
        (-1, False, False),
        (2**63 - 1, True, True),
        (2**63, True, False),  # does not fit `AuthTokenClaims.exp: i64`
        (2**63, False, False),  # nor for the broker, which keeps the worker's i64 rule
        (0, True, False),
    ],
)
def test_worker_exp_rules(tee_key: Any, exp: int, worker: bool, accepted: bool) -> None:
    token = token_with_exp(tee_key, exp)
    now = int(time.time())
    if accepted:
        claims = verify_auth_token(token, tee_key.public_key(), worker_exp_rules=worker, **CHECK, now=now)
        assert claims.exp == exp
    else:
        with pytest.raises(TokenRejected):
            verify_auth_token(token, tee_key.public_key(), worker_exp_rules=worker, **CHECK, now=now)
