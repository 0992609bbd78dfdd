"""Bad input against the real simulator over HTTP: every request gets the worker's answer.

The worker is jsonrpsee 0.26 (0.24 in era A; spec heima-protocol.md §2): a request is tried as `Request`, then
as `Notification`, then only its `id` is salvaged (`InvalidRequest`) for a -32600, else -32700
with a null id. Nothing here may produce a traceback, an HTTP 500 or a hang: every request is
bounded by `asyncio.wait_for(..., 10)`.

A few tests pin jsonrpsee behaviour the simulator does not reproduce yet; their names say what
jsonrpsee does and their docstrings cite the jsonrpsee source they follow.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SimFactory, sim_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scalecodec.utils.ss58 import ss58_encode

from agentkeys_kit.omni_sim.config import config_from_env
from agentkeys_kit.omni_sim.server import SimServer
from fixtures.recording_backend import RecordingBackend

TIMEOUT = 10
TEN_MIB = 10 * 1024 * 1024
EMAIL_VECTOR = "0x5a0194d421e69bb2fb2fa9659628258d1d9d4f42d12ca74354819e65a14f8fae"

PARSE_ERROR = {"code": -32700, "message": "Parse error"}
PARAMS_PARSE_ERROR = {
    "code": -32700,
    "message": "Parse error",
    "data": {"reason": "Invalid JSON format or missing required fields"},
}
INVALID_REQUEST = {"code": -32600, "message": "Invalid request"}
METHOD_NOT_FOUND = {"code": -32601, "message": "Method not found"}
INVALID_PARAMS = {"code": -32602, "message": "Invalid params"}
INTERNAL_ERROR = {"code": -32603, "message": "Internal error"}
AUTHENTICATION_FAILED = {"code": -32003, "message": "Authentication failed"}
LOGIN_VERIFICATION_FAILED = {"code": -32003, "message": "Server error"}

#: jsonrpsee's exact bytes for a parse error with a null id (`MethodResponse::error`).
PARSE_ERROR_BYTES = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}'

METHODS = (
    "omni_getHealth",
    "omni_getShieldingKey",
    "omni_listPasskey",
    "omni_getWeb3SignInMessage",
    "omni_requestEmailVerificationCode",
    "omni_userLogin",
    "omni_requestJwt",
    "omni_addWallet",
)
PARAMS_METHODS = (
    "omni_listPasskey",
    "omni_requestPasskeyChallenge",
    "omni_loginWithOAuth2",
    "omni_attachPasskey",
    "omni_removePasskey",
    "omni_renamePasskeyAliasName",
    "omni_submitUserOpWithAuth",
    "omni_getWeb3SignInMessage",
    "omni_requestEmailVerificationCode",
    "omni_userLogin",
    "omni_requestJwt",
)

EVM_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
EVM_SIGNATURE = "0x" + "11" * 65
ACCOUNT_HEX = "ab" * 32

_ABSENT: Any = object()


# --------------------------------------------------------------------------- helpers


class Reply:
    """One HTTP answer: status, content type and body (parsed as JSON when it is JSON)."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.content_type!r}, {self.body[:300]!r})"


async def post_raw(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type

    # without a type of our own, aiohttp would add "application/octet-stream"
    skip = () if content_type is not None else ("Content-Type",)

    # aiohttp warns about large raw-bytes bodies; a BytesIO is sent the same way (with a length)
    data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > 1024 * 1024 else body

    async def go() -> Reply:
        async with http.request(method, url, data=data, headers=all_headers, skip_auto_headers=skip) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""), await response.read())

    reply = await asyncio.wait_for(go(), TIMEOUT)
    assert reply.status != 500, reply
    assert b"Traceback" not in reply.body, reply
    return reply


def request_body(method: str, params: Any = _ABSENT, request_id: Any = 1) -> bytes:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not _ABSENT:
        request["params"] = params
    return json.dumps(request).encode()


def assert_response_shape(response: Any, request_id: Any) -> None:
    """jsonrpsee framing: keys ``jsonrpc, id, result|error`` in that order, id echoed."""
    assert isinstance(response, dict), response
    assert list(response) in (["jsonrpc", "id", "result"], ["jsonrpc", "id", "error"]), response
    assert response["jsonrpc"] == "2.0"
    assert response["id"] == request_id
    if "error" in response:
        error = response["error"]
        assert list(error) in (["code", "message"], ["code", "message", "data"]), error


async def call(
    http: aiohttp.ClientSession,
    url: str,
    method: str,
    params: Any = _ABSENT,
    *,
    request_id: Any = 1,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    reply = await post_raw(http, url, request_body(method, params, request_id), headers=headers)
    assert reply.status == 200, reply
    response: dict[str, Any] = reply.json
    assert_response_shape(response, request_id)
    return response


async def error_of(
    http: aiohttp.ClientSession, url: str, method: str, params: Any = _ABSENT, **kwargs: Any
) -> dict[str, Any]:
    response = await call(http, url, method, params, **kwargs)
    assert "error" in response, response
    error: dict[str, Any] = response["error"]
    return error


async def result_of(http: aiohttp.ClientSession, url: str, method: str, params: Any = _ABSENT, **kwargs: Any) -> Any:
    response = await call(http, url, method, params, **kwargs)
    assert "result" in response, response
    return response["result"]


@pytest.fixture
async def sim(make_sim: SimFactory) -> SimServer:
    return await make_sim()


# ============================================================================================
# Framing
# ============================================================================================


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[1,",
        b"{]",
        b'{"jsonrpc":"2.0"',
        b'{"jsonrpc":"2.0","id":1,"method":"omni_getHealth"}}',  # trailing characters
        b'{"jsonrpc":"2.0","id":1,"method":"omni_getHealth"} x',
        b"{'jsonrpc':'2.0'}",
        b'{"a":1}',  # JSON, but no id to salvage
        b'  \n\t{"jsonrpc":"2.0",',
    ],
)
async def test_unparsable_body_is_parse_error_with_null_id(
    sim: SimServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == PARSE_ERROR_BYTES
    assert reply.json == {"jsonrpc": "2.0", "id": None, "error": PARSE_ERROR}
    assert list(reply.json) == ["jsonrpc", "id", "error"]
    assert reply.content_type.startswith("application/json")


@pytest.mark.parametrize("body", [b"xx", b"", b"\xff\xfe"])
async def test_body_not_starting_with_object_or_array_is_http_400_like_jsonrpsee(
    sim: SimServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    """jsonrpsee `http_helpers::read_body` answers `HttpError::Malformed` when the first
    non-whitespace byte is not ``{``/``[`` (or the body is empty), and
    `server/src/transport/http.rs` turns that into `response::malformed()`: HTTP **400** with
    the parse-error object. The JSON body is right either way; the status differs."""
    reply = await post_raw(http, sim.url, body)
    assert reply.body == PARSE_ERROR_BYTES
    assert list(reply.json) == ["jsonrpc", "id", "error"]
    assert reply.status == 400, reply


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"omni_getHealth"\xff}',  # outside any string
        b'{"id":"\xff"}',  # inside the id: nothing can be salvaged
        b'{"id":"\xc3\x28"}',
    ],
)
async def test_invalid_utf8_that_spoils_the_id_is_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == PARSE_ERROR_BYTES


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":5,"method":"omni_getHealth","params":["\xff"]}',
        b'{"jsonrpc":"2.0","id":5,"method":"omni_getHealth\xff"}',
    ],
    ids=["in-params", "in-method"],
)
async def test_invalid_utf8_inside_params_or_method_is_invalid_request_with_id(
    sim: SimServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    """serde_json validates UTF-8 only where a `str` is produced: `Request` fails on the raw
    `params` (`end_raw_buffering` checks UTF-8) or on `method`, `Notification` fails the same way,
    but `InvalidRequest { id }` skips both members with `ignore_str` (no UTF-8 check) and
    salvages the id, so jsonrpsee (`prepare_error`) answers -32600 with id 5."""
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": 5, "error": INVALID_REQUEST}


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"undefined"])
async def test_non_json_number_literals_are_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, literal: bytes
) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"omni_getHealth","params":[' + literal + b"]}"
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == PARSE_ERROR_BYTES


@pytest.mark.parametrize(
    "body",
    [b'{"id":"\\ud800"}', b'{"id":"\\udc00"}', b'{"id":"\\ud800\\u0041"}', b'{"id":"\\uDBFF"}'],
)
async def test_lone_surrogate_in_the_id_is_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == PARSE_ERROR_BYTES


async def test_surrogate_pair_is_a_valid_string(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = b'{"jsonrpc":"2.0","id":"\\ud83d\\ude00","method":"omni_getHealth"}'
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": "\U0001f600", "result": "OK"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"omni_getHealth","params":["\\ud800"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"omni_getHealth","extra":"\\ud800"}',
    ],
    ids=["in-params", "in-unknown-member"],
)
async def test_lone_surrogate_in_params_does_not_break_framing_like_jsonrpsee(
    sim: SimServer, http: aiohttp.ClientSession, body: bytes
) -> None:
    """jsonrpsee keeps `params` as a `RawValue` and skips unknown members; serde_json's
    `ignore_escape` deliberately does not validate ``\\u`` code points ("we don't care if the
    codepoint is valid"), so the `Request` parses and `omni_getHealth` (params ignored) answers
    "OK". The simulator refuses the whole body."""
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": 1, "result": "OK"}


async def test_lone_surrogate_in_typed_params_is_the_params_parse_error(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """The surrogate reaches `parse_rpc_params`, whose `serde_json::from_str` into a `String`
    does validate it: -32700 with the params reason, id kept."""
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"omni_listPasskey",'
        b'"params":{"client_id":"wildmeta","user_id":{"type":"email","value":"a\\ud800@b.com"}}}'
    )
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": 1, "error": PARAMS_PARSE_ERROR}


async def test_id_without_request_is_invalid_request_with_that_id(sim: SimServer, http: aiohttp.ClientSession) -> None:
    reply = await post_raw(http, sim.url, b'{"id":7}')
    assert reply.status == 200, reply
    assert reply.body == b'{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"Invalid request"}}'
    assert list(reply.json) == ["jsonrpc", "id", "error"]


@pytest.mark.parametrize(
    "request_obj",
    [
        {"jsonrpc": "1.0", "id": "x", "method": "omni_getHealth"},
        {"jsonrpc": 2.0, "id": "x", "method": "omni_getHealth"},
        {"id": "x", "method": "omni_getHealth"},
        {"jsonrpc": "2.0", "id": "x"},
        {"jsonrpc": "2.0", "id": "x", "method": 5},
        {"jsonrpc": "2.0", "id": "x", "method": None},
        {"jsonrpc": "2.0", "id": "x", "method": ["omni_getHealth"]},
    ],
)
async def test_invalid_request_keeps_a_valid_id(
    sim: SimServer, http: aiohttp.ClientSession, request_obj: dict[str, Any]
) -> None:
    reply = await post_raw(http, sim.url, json.dumps(request_obj).encode())
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": "x", "error": INVALID_REQUEST}
    assert list(reply.json) == ["jsonrpc", "id", "error"]


@pytest.mark.parametrize("bad_id", [1.5, -1, True, False, 1.0, [1], {"a": 1}, 2**64])
@pytest.mark.parametrize(
    "extra",
    [{}, {"jsonrpc": "2.0"}, {"method": "omni_getHealth"}, {"jsonrpc": "1.0", "method": "m"}],
    ids=["bare", "no-method", "no-jsonrpc", "bad-version"],
)
async def test_invalid_id_in_an_invalid_request_is_parse_error_with_null_id(
    sim: SimServer, http: aiohttp.ClientSession, bad_id: Any, extra: dict[str, Any]
) -> None:
    body = json.dumps({**extra, "id": bad_id}).encode()
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == PARSE_ERROR_BYTES


@pytest.mark.parametrize("bad_id", [1.5, -1, True])
async def test_well_formed_call_with_invalid_id_is_a_notification_like_jsonrpsee(
    sim: SimServer, http: aiohttp.ClientSession, bad_id: Any
) -> None:
    """jsonrpsee `handle_rpc_call`: `Request` fails on the id (`Id` is null | u64 | string),
    then `Notification { jsonrpc, method, params }` (no `id` field, unknown members ignored)
    parses, so the call is treated as a notification and HTTP answers 200 with an empty body
    (`response::ok_response("")`). The simulator answers -32700 instead."""
    body = json.dumps({"jsonrpc": "2.0", "id": bad_id, "method": "omni_getHealth"}).encode()
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == b""


@pytest.mark.parametrize("request_id", [0, 2**64 - 1, "", "abc", None, "\u00e9\U0001f600"])
async def test_valid_ids_are_echoed(sim: SimServer, http: aiohttp.ClientSession, request_id: Any) -> None:
    assert await result_of(http, sim.url, "omni_getHealth", request_id=request_id) == "OK"


async def test_unknown_method_is_method_not_found(sim: SimServer, http: aiohttp.ClientSession) -> None:
    reply = await post_raw(http, sim.url, request_body("omni_doesNotExist", [], request_id=3))
    assert reply.status == 200, reply
    assert reply.body == b'{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found"}}'


@pytest.mark.parametrize("method", ["omni_getHealth", "omni_doesNotExist", "omni_addWallet"])
async def test_notification_gets_an_empty_body(sim: SimServer, http: aiohttp.ClientSession, method: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": [1]}).encode()
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.body == b""


async def test_batch_of_two_valid_and_one_invalid_answers_all_three(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "omni_getHealth"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "omni_listPasskey",
            "params": [{"type": "email", "value": "hello.world@test.com"}, "wildmeta"],
        },
        {"id": 9},
    ]
    reply = await post_raw(http, sim.url, json.dumps(batch).encode())
    assert reply.status == 200, reply
    answers = reply.json
    assert isinstance(answers, list)
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": "OK"},
        {"jsonrpc": "2.0", "id": 2, "result": {"passkeys": []}},
        {"jsonrpc": "2.0", "id": 9, "error": INVALID_REQUEST},
    ]
    for answer in answers:
        assert list(answer)[:2] == ["jsonrpc", "id"]


async def test_batch_skips_notifications_and_answers_method_errors(sim: SimServer, http: aiohttp.ClientSession) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "omni_getHealth"},
        {"jsonrpc": "2.0", "id": "a", "method": "omni_nope"},
        {"jsonrpc": "2.0", "id": "b", "method": "omni_listPasskey", "params": 5},
    ]
    reply = await post_raw(http, sim.url, json.dumps(batch).encode())
    assert reply.status == 200, reply
    assert reply.json == [
        {"jsonrpc": "2.0", "id": "a", "error": METHOD_NOT_FOUND},
        {"jsonrpc": "2.0", "id": "b", "error": PARAMS_PARSE_ERROR},
    ]


async def test_batch_of_notifications_only_gets_an_empty_body(sim: SimServer, http: aiohttp.ClientSession) -> None:
    batch = [{"jsonrpc": "2.0", "method": "omni_getHealth"}] * 2
    reply = await post_raw(http, sim.url, json.dumps(batch).encode())
    assert reply.status == 200, reply
    assert reply.body == b""


async def test_empty_batch_is_a_single_invalid_request(sim: SimServer, http: aiohttp.ClientSession) -> None:
    for body in (b"[]", b"  [ ]  "):
        reply = await post_raw(http, sim.url, body)
        assert reply.status == 200, reply
        assert reply.body == (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}')


@pytest.mark.parametrize("element", [1, {"foo": 1}])
async def test_batch_element_that_is_not_a_request_is_invalid_request_like_jsonrpsee(
    sim: SimServer, http: aiohttp.ClientSession, element: Any
) -> None:
    """jsonrpsee batch loop (`server.rs`, `handle_rpc_call`): an element that is neither a
    `Request` nor a `Notification` is answered with `ErrorCode::InvalidRequest` and the
    salvaged id or null — never -32700 (that is only for a body that is not a JSON array)."""
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "omni_getHealth"}, element]
    reply = await post_raw(http, sim.url, json.dumps(batch).encode())
    assert reply.status == 200, reply
    assert reply.json == [
        {"jsonrpc": "2.0", "id": 1, "result": "OK"},
        {"jsonrpc": "2.0", "id": None, "error": INVALID_REQUEST},
    ]


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/octet-stream", "application/xml", "json"])
async def test_wrong_content_type_is_415_text(
    sim: SimServer, http: aiohttp.ClientSession, content_type: str | None
) -> None:
    reply = await post_raw(http, sim.url, request_body("omni_getHealth"), content_type=content_type)
    assert reply.status == 415, reply
    assert reply.content_type.startswith("text/plain")
    assert reply.body == (b"Supplied content type is not allowed. Content-Type: application/json is required\n")


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=UTF-8", "application/json-rpc"],
)
async def test_json_content_types_are_accepted(sim: SimServer, http: aiohttp.ClientSession, content_type: str) -> None:
    reply = await post_raw(http, sim.url, request_body("omni_getHealth"), content_type=content_type)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": 1, "result": "OK"}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_non_post_without_upgrade_is_405_text(sim: SimServer, http: aiohttp.ClientSession, method: str) -> None:
    reply = await post_raw(http, sim.url, b"", method=method, content_type=None)
    assert reply.status == 405, reply
    assert reply.content_type.startswith("text/plain")
    assert reply.body == b"Used HTTP Method is not allowed. POST is required\n"


async def _raw_post(port: int, body: bytes) -> Reply:
    """POST over a bare socket: the whole body is sent, the answer read as soon as it comes,
    then the connection is reset. aiohttp's server keeps reading ("lingering") an unread upload
    for up to 10 s after answering; a reset it has had a moment to notice ends that, otherwise
    the server's shutdown at teardown waits the full 10 s (slow, not wrong)."""

    async def go() -> Reply:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            head = (
                b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            writer.write(head + body)
            status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            payload = await reader.readexactly(int(headers["content-length"]))
            return Reply(int(status_line.split()[1]), headers.get("content-type", ""), payload)
        finally:
            writer.transport.abort()

    reply = await asyncio.wait_for(go(), TIMEOUT)
    await asyncio.sleep(0.3)
    return reply


async def test_body_over_ten_mib_is_413_with_oversized_error(sim: SimServer) -> None:
    assert sim.config.max_request_body_size == TEN_MIB
    body = b"[" + b" " * (TEN_MIB - 1) + b"]"
    assert len(body) == TEN_MIB + 1
    reply = await _raw_post(sim.port, body)
    assert reply.status == 413, reply
    assert reply.content_type.startswith("application/json")
    assert reply.body == (
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32007,"message":"Request is too big",'
        b'"data":"Exceeded max limit of 10485760"}}'
    )


async def test_body_of_exactly_ten_mib_is_served(sim: SimServer, http: aiohttp.ClientSession) -> None:
    head = request_body("omni_getHealth", request_id=11)
    body = head + b" " * (TEN_MIB - len(head))
    assert len(body) == TEN_MIB
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": 11, "result": "OK"}


# ============================================================================================
# Params, method by method
# ============================================================================================

WRONG_ARITY: dict[str, list[Any]] = {
    "omni_getHealth": [1, 2, 3],
    "omni_getShieldingKey": ["x"],
    "omni_listPasskey": [{"type": "email", "value": "a@b.com"}],
    "omni_requestPasskeyChallenge": [{"type": "email", "value": "a@b.com"}, "wildmeta", "x"],
    "omni_loginWithOAuth2": ["wildmeta", "google", "code", "state", None, "uid"],
    "omni_attachPasskey": [{"type": "email", "value": "a@b.com"}, {"type": "email", "value": "1"}, "wildmeta"],
    "omni_removePasskey": [{"type": "email", "value": "a@b.com"}],
    "omni_renamePasskeyAliasName": [{"type": "email", "value": "a@b.com"}, None, "wildmeta", "c", "n", "x"],
    "omni_submitUserOpWithAuth": [[], 1, 0],
    "omni_getWeb3SignInMessage": ["wildmeta", "0x" + ACCOUNT_HEX, "extra"],
    "omni_requestEmailVerificationCode": [],
    # client_auth is Option, but a positional array must still carry it (null)
    "omni_userLogin": [
        {"type": "evm", "value": EVM_ADDRESS},
        {"type": "evm", "value": EVM_SIGNATURE},
        "wildmeta",
    ],
    "omni_requestJwt": ["wildmeta", "a@b.com", None, "g", None],
    "omni_addWallet": ["x"],
}

WRONG_TYPES: dict[str, dict[str, Any]] = {
    "omni_getHealth": {"x": "object"},
    "omni_getShieldingKey": {"n": 1},
    "omni_listPasskey": {"user_id": {"type": "email", "value": "a@b.com"}, "client_id": 1},
    "omni_requestPasskeyChallenge": {"user_id": "a@b.com", "client_id": "wildmeta"},
    "omni_loginWithOAuth2": {
        "client_id": "wildmeta",
        "provider": "google",
        "code": 1,
        "state": "s",
        "uid": "u",
        "id_token": "t",
    },
    "omni_attachPasskey": {
        "user_id": {"type": "email", "value": "a@b.com"},
        "user_auth": {"type": "email", "value": "123456"},
        "client_id": "wildmeta",
        "attestation_object": b"x".hex(),
        "client_data_json": None,
    },
    "omni_removePasskey": {
        "user_id": {"type": "email", "value": "a@b.com"},
        "user_auth": {"type": "email", "value": "123456"},
        "client_id": "wildmeta",
        "credential_id": 7,
    },
    "omni_renamePasskeyAliasName": {
        "user_id": {"type": "email", "value": "a@b.com"},
        "user_auth": {"type": "email", "value": "123456"},
        "client_id": "wildmeta",
        "credential_id": "c",
        "new_alias_name": ["n"],
    },
    "omni_submitUserOpWithAuth": {
        "user_operations": [],
        "chain_id": -1,
        "wallet_index": 0,
        "user_id": {"type": "evm", "value": "0x" + "11" * 20},
        "client_id": "wildmeta",
        "client_auth": {"type": "wildmeta_backend", "value": {"signature": "0x"}},
    },
    "omni_getWeb3SignInMessage": {"client_id": "wildmeta", "omni_account": 5},
    "omni_requestEmailVerificationCode": {"client_id": "wildmeta", "user_email": None},
    "omni_userLogin": {
        "user_id": "evm",
        "user_auth": {"type": "evm", "value": EVM_SIGNATURE},
        "client_id": "wildmeta",
    },
    "omni_requestJwt": {
        "client_id": "wildmeta",
        "user_email": "a@b.com",
        "google_code": 1,
        "email_code": "123456",
    },
    "omni_addWallet": {"client_id": []},
}

BAD_PARAMS: dict[str, Any] = {
    "missing": _ABSENT,
    "null": None,
    "string": "wildmeta",
    "number": 42,
    "float": 1.5,
    "bool": True,
    "empty-object": {},
    "wrong-arity": "WRONG_ARITY",
    "wrong-types": "WRONG_TYPES",
}


def _bad_params(method: str, kind: str) -> Any:
    value = BAD_PARAMS[kind]
    if value == "WRONG_ARITY":
        return WRONG_ARITY[method]
    if value == "WRONG_TYPES":
        return WRONG_TYPES[method]
    return value


@pytest.mark.parametrize("kind", list(BAD_PARAMS))
async def test_get_health_ignores_params(sim: SimServer, http: aiohttp.ClientSession, kind: str) -> None:
    params = _bad_params("omni_getHealth", kind)
    assert await result_of(http, sim.url, "omni_getHealth", params) == "OK"


@pytest.mark.parametrize("kind", list(BAD_PARAMS))
async def test_get_shielding_key_ignores_params(sim: SimServer, http: aiohttp.ClientSession, kind: str) -> None:
    params = _bad_params("omni_getShieldingKey", kind)
    result = await result_of(http, sim.url, "omni_getShieldingKey", params)
    assert list(result) == ["n", "e"]
    assert result["e"] == "0x010001"
    assert re.fullmatch(r"0x[0-9a-f]{768}", result["n"])


@pytest.mark.parametrize("kind", list(BAD_PARAMS))
@pytest.mark.parametrize("method", PARAMS_METHODS)
async def test_bad_params_are_the_params_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, method: str, kind: str
) -> None:
    error = await error_of(http, sim.url, method, _bad_params(method, kind))
    assert error == PARAMS_PARSE_ERROR
    assert list(error["data"]) == ["reason"]


@pytest.mark.parametrize("kind", list(BAD_PARAMS))
async def test_add_wallet_without_authorization_is_internal_error(
    sim: SimServer, http: aiohttp.ClientSession, kind: str
) -> None:
    error = await error_of(http, sim.url, "omni_addWallet", _bad_params("omni_addWallet", kind))
    assert error == INTERNAL_ERROR


@pytest.mark.parametrize("kind", list(BAD_PARAMS))
@pytest.mark.parametrize("authorization", ["Bearer garbage", "garbage", "Bearer ", "Bearer a.b.c", ""])
async def test_add_wallet_with_a_bad_token_is_authentication_failed(
    sim: SimServer, http: aiohttp.ClientSession, kind: str, authorization: str
) -> None:
    error = await error_of(
        http,
        sim.url,
        "omni_addWallet",
        _bad_params("omni_addWallet", kind),
        headers={"Authorization": authorization},
    )
    assert error == AUTHENTICATION_FAILED


@pytest.mark.parametrize("params", [[{"user_id": {"type": "email", "value": "a@b.com"}, "client_id": "wildmeta"}]])
async def test_array_holding_one_object_is_not_struct_params(
    sim: SimServer, http: aiohttp.ClientSession, params: Any
) -> None:
    error = await error_of(http, sim.url, "omni_listPasskey", params)
    assert error == PARAMS_PARSE_ERROR


async def test_duplicate_param_key_is_params_parse_error_like_serde(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """A `#[derive(Deserialize)]` struct refuses a repeated field (`duplicate field
    `client_id``), so `parse_rpc_params` answers -32700 with its reason. Python's `json.loads`
    keeps the last value instead, and the simulator computes an account."""
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"omni_listPasskey","params":'
        b'{"client_id":"wildmeta","client_id":"other","user_id":{"type":"email","value":"a@b.com"}}}'
    )
    reply = await post_raw(http, sim.url, body)
    assert reply.status == 200, reply
    assert reply.json == {"jsonrpc": "2.0", "id": 1, "error": PARAMS_PARSE_ERROR}


# --------------------------------------------------------------------------- omni_getOmniAccount


async def test_get_omni_account_is_not_a_method_of_the_newest_worker(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """`methods/omni/mod.rs@29cca4f9` registers no `get_omni_account` (era A only)."""
    error = await error_of(http, sim.url, "omni_getOmniAccount", ["wildmeta", "hello.world@test.com"])
    assert error == METHOD_NOT_FOUND
    async with http.get(
        sim.url + "_sim/omni-account", params={"client_id": "wildmeta", "user_email": "HELLO.world@test.com"}
    ) as response:
        assert response.status == 200
        assert await response.json() == {"omni_account": EMAIL_VECTOR}
    async with http.get(sim.url + "_sim/omni-account", params={"client_id": "wildmeta"}) as response:
        assert response.status == 400


async def test_get_omni_account_positional_equals_object_form_in_the_legacy_era(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(error_era="legacy")
    positional = await result_of(http, sim.url, "omni_getOmniAccount", ["wildmeta", "Hello.World@test.com"])
    by_name = await result_of(
        http,
        sim.url,
        "omni_getOmniAccount",
        {"user_email": "Hello.World@test.com", "client_id": "wildmeta", "ignored": [1]},
    )
    lower = await result_of(http, sim.url, "omni_getOmniAccount", ["wildmeta", "hello.world@test.com"])
    assert positional == by_name == lower == EMAIL_VECTOR
    # no validation of the address
    result = await result_of(http, sim.url, "omni_getOmniAccount", ["", ""])
    assert re.fullmatch(r"0x[0-9a-f]{64}", result)


# ----------------------------------------------------------------- omni_getWeb3SignInMessage


@pytest.mark.parametrize(
    "account",
    [
        "0x1234",
        "zz" * 32,  # 64 non-hex characters
        "0x" + "zz" * 32,
        "",
        "0x",
        "0X" + ACCOUNT_HEX,  # only lowercase 0x prefixes are trimmed
        ACCOUNT_HEX + "00",
        "not-an-ss58-address",
        "5Fwo3QRR77JrxbjWi12sbWdZvJgM9ETUBM8imfFk1wAKouXx",  # bad SS58 checksum
    ],
)
async def test_web3_sign_in_message_bad_account_is_bare_invalid_params(
    sim: SimServer, http: aiohttp.ClientSession, account: str
) -> None:
    error = await error_of(
        http,
        sim.url,
        "omni_getWeb3SignInMessage",
        {"client_id": "wildmeta", "omni_account": account},
    )
    assert error == INVALID_PARAMS
    assert "data" not in error


async def test_web3_sign_in_message_shape_and_stable_code(sim: SimServer, http: aiohttp.ClientSession) -> None:
    first = await result_of(
        http,
        sim.url,
        "omni_getWeb3SignInMessage",
        {"client_id": "wildmeta", "omni_account": "0x" + ACCOUNT_HEX},
    )
    assert list(first) == ["client_id", "omni_account", "message_code"]
    assert first["client_id"] == "wildmeta"
    assert first["omni_account"] == "0x" + ACCOUNT_HEX
    assert re.fullmatch(r"[0-9]{8}", first["message_code"])

    # positional, uppercase, no prefix: same account, same stored code, echoed canonically
    second = await result_of(http, sim.url, "omni_getWeb3SignInMessage", ["wildmeta", ACCOUNT_HEX.upper()])
    assert second == first

    # several leading "0x" are trimmed (`trim_start_matches`), SS58 decodes to the same bytes
    third = await result_of(http, sim.url, "omni_getWeb3SignInMessage", ["wildmeta", "0x0x" + ACCOUNT_HEX])
    ss58 = await result_of(
        http,
        sim.url,
        "omni_getWeb3SignInMessage",
        ["wildmeta", ss58_encode("0x" + ACCOUNT_HEX, 42)],
    )
    assert third == ss58 == first


# --------------------------------------------------------------------------- omni_userLogin


def _login(user_id: Any, user_auth: Any, client_id: str = "wildmeta") -> dict[str, Any]:
    return {"user_id": user_id, "user_auth": user_auth, "client_id": client_id}


async def test_user_login_email_auth_with_evm_user_id_is_bare_parse_error(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    params = _login({"type": "evm", "value": EVM_ADDRESS}, {"type": "email", "value": "123456"})
    error = await error_of(http, sim.url, "omni_userLogin", params)
    assert error == PARSE_ERROR
    assert "data" not in error


@pytest.mark.parametrize("address", ["0x" + "zz" * 20, "0x" + "00" * 19, "0X" + "00" * 20, ""])
async def test_user_login_bad_evm_user_id_is_bare_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, address: str
) -> None:
    params = _login({"type": "evm", "value": address}, {"type": "evm", "value": EVM_SIGNATURE})
    error = await error_of(http, sim.url, "omni_userLogin", params)
    assert error == PARSE_ERROR


@pytest.mark.parametrize("signature", ["0x" + "zz" * 65, "0x" + "11" * 64, "0X" + "11" * 65, 5])
async def test_user_login_bad_evm_signature_fails_in_params_parsing(
    sim: SimServer, http: aiohttp.ClientSession, signature: Any
) -> None:
    params = _login({"type": "evm", "value": EVM_ADDRESS}, {"type": "evm", "value": signature})
    error = await error_of(http, sim.url, "omni_userLogin", params)
    assert error == PARAMS_PARSE_ERROR


@pytest.mark.parametrize(
    ("user_id", "user_auth"),
    [
        ({"type": "evm", "value": EVM_ADDRESS}, {"type": "evm", "value": EVM_SIGNATURE}),
        ({"type": "email", "value": "a@b.com"}, {"type": "email", "value": "123456"}),
        ({"type": "email", "value": "a@b.com"}, {"type": "auth_token", "value": "not-a-jwt"}),
        (
            {"type": "substrate", "value": "0x" + "22" * 32},
            {"type": "substrate", "value": {"type": "sr25519", "value": "33" * 64}},
        ),
    ],
)
async def test_user_login_valid_pairing_without_a_code_is_server_error(
    sim: SimServer, http: aiohttp.ClientSession, user_id: Any, user_auth: Any
) -> None:
    error = await error_of(http, sim.url, "omni_userLogin", _login(user_id, user_auth))
    assert error == LOGIN_VERIFICATION_FAILED


async def test_user_login_positional_params_reach_verification(sim: SimServer, http: aiohttp.ClientSession) -> None:
    params = [
        {"type": "evm", "value": EVM_ADDRESS},
        {"type": "evm", "value": EVM_SIGNATURE},
        "wildmeta",
        None,
    ]
    error = await error_of(http, sim.url, "omni_userLogin", params)
    assert error == LOGIN_VERIFICATION_FAILED


@pytest.mark.parametrize(
    "client_auth",
    [
        {"type": "agentkeys_backend", "value": {"signature": "0x12"}},  # upstream: unknown
        {"type": "wildmeta_hl", "value": {"login_type": -1}},
        {"type": "wildmeta", "value": {"google_code": 1}},
        "wildmeta",
    ],
)
async def test_user_login_bad_client_auth_is_params_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, client_auth: Any
) -> None:
    params = {
        **_login({"type": "evm", "value": EVM_ADDRESS}, {"type": "evm", "value": EVM_SIGNATURE}),
        "client_auth": client_auth,
    }
    error = await error_of(http, sim.url, "omni_userLogin", params)
    assert error == PARAMS_PARSE_ERROR


@pytest.mark.parametrize("tag", ["oauth2", "OAuth2"])
async def test_user_login_oauth2_spelling_is_params_parse_error(
    sim: SimServer, http: aiohttp.ClientSession, tag: str
) -> None:
    user_auth = {
        "type": tag,
        "value": {
            "provider": "Google",
            "code": "c",
            "state": "s",
            "redirect_uri": None,
            "uid": "u",
            "id_token": "t",
        },
    }
    params = _login({"type": "google", "value": "sub"}, user_auth)
    assert await error_of(http, sim.url, "omni_userLogin", params) == PARAMS_PARSE_ERROR
    user_auth["type"] = "o_auth2"
    # parses, then fails verification: the simulator holds no OAuth2 state
    assert await error_of(http, sim.url, "omni_userLogin", params) == LOGIN_VERIFICATION_FAILED


# --------------------------------------------------------- omni_requestEmailVerificationCode

DETAIL_KEY_ORDER = ("backend_response", "field", "expected", "received", "reason", "suggestion")


def _assert_detail_order(data: dict[str, Any]) -> None:
    keys = list(data)
    assert keys == [key for key in DETAIL_KEY_ORDER if key in data]


async def test_request_email_code_invalid_email(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """The newest `validate_email` (`utils/validation.rs@c7751f89:81-92`): -32602 with field/reason."""
    error = await error_of(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": "wildmeta", "user_email": "notanemail"},
    )
    assert error == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"field": "email", "reason": "invalid email address: notanemail"},
    }
    _assert_detail_order(error["data"])


async def test_request_email_code_email_without_tld(sim: SimServer, http: aiohttp.ClientSession) -> None:
    error = await error_of(http, sim.url, "omni_requestEmailVerificationCode", ["wildmeta", "test@example"])
    assert error == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"field": "email", "reason": "expect TLD in email address: test@example"},
    }


@pytest.mark.parametrize("email", ["@example.com", "test@", "test@.com", ""])
async def test_request_email_code_other_invalid_vectors(
    sim: SimServer, http: aiohttp.ClientSession, email: str
) -> None:
    error = await error_of(http, sim.url, "omni_requestEmailVerificationCode", ["wildmeta", email])
    assert error == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"field": "email", "reason": f"invalid email address: {email}"},
    }


async def test_request_email_code_invalid_email_in_the_legacy_era(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Era A (`utils/validation.rs@2afa2455`): -32107 with field, expected, received, suggestion."""
    sim = await make_sim(error_era="legacy")
    error = await error_of(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": "wildmeta", "user_email": "notanemail"},
    )
    assert error == {
        "code": -32107,
        "message": "Invalid email format",
        "data": {
            "field": "email",
            "expected": "Valid email address (e.g., user@example.com)",
            "received": "notanemail",
            "suggestion": "Please provide a valid email address",
        },
    }
    assert list(error["data"]) == ["field", "expected", "received", "suggestion"]
    error = await error_of(http, sim.url, "omni_requestEmailVerificationCode", ["wildmeta", "test@example"])
    assert error == {
        "code": -32107,
        "message": "Invalid email format",
        "data": {
            "field": "email",
            "expected": "Email address with a valid domain (e.g., user@example.com)",
            "received": "test@example",
            "suggestion": "Email domain must include a top-level domain (TLD)",
        },
    }


async def test_request_email_code_client_without_mailer(sim: SimServer, http: aiohttp.ClientSession) -> None:
    error = await error_of(
        http,
        sim.url,
        "omni_requestEmailVerificationCode",
        {"client_id": "nomailer", "user_email": "a@b.com"},
    )
    assert error["code"] == -32164
    assert error["message"] == "Failed to initialize email service"
    assert error["data"]["field"] == "client_id"
    assert error["data"]["received"] == "nomailer"
    assert list(error["data"]) == ["field", "received", "reason"]
    _assert_detail_order(error["data"])


async def test_request_email_code_success_is_null(sim: SimServer, http: aiohttp.ClientSession) -> None:
    assert await result_of(http, sim.url, "omni_requestEmailVerificationCode", ["wildmeta", "a@b.com"]) is None


# --------------------------------------------------------------------------- omni_requestJwt


async def test_request_jwt_without_code_is_verification_failure(sim: SimServer, http: aiohttp.ClientSession) -> None:
    error = await error_of(
        http,
        sim.url,
        "omni_requestJwt",
        ["wildmeta", "a@b.com", None, "g", None, "000000"],
    )
    assert error == {
        "code": -32003,
        "message": "Authentication verification failed",
        "data": {"suggestion": "Please check your authentication credentials"},
    }


# ============================================================================================
# Hypothesis: arbitrary JSON params never break the framing
# ============================================================================================

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    [
        "client_id",
        "user_email",
        "omni_account",
        "user_id",
        "user_auth",
        "client_auth",
        "invite_code",
        "google_code",
        "language",
        "email_code",
        "type",
        "value",
    ]
)
PARAMS = (
    JSON_VALUES | st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6) | st.lists(JSON_VALUES, min_size=2, max_size=4)
)
REQUEST_IDS = st.none() | st.integers(min_value=0, max_value=2**64 - 1) | st.text(max_size=12)


@pytest.fixture(scope="module")
def threaded_sim_url(sim_local_dir: Path) -> Iterator[str]:
    """One simulator for the whole module, on its own event loop in a background thread, so the
    synchronous Hypothesis tests can talk to it with blocking HTTP."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="sim-loop", daemon=True)
    thread.start()
    backend = RecordingBackend()
    server: list[SimServer] = []

    async def start() -> str:
        await backend.start()
        config = config_from_env(sim_env(backend.url), host="127.0.0.1", port=0, local_dir=sim_local_dir)
        sim_server = SimServer(config)
        await sim_server.start()
        server.append(sim_server)
        return sim_server.url

    async def stop() -> None:
        for sim_server in server:
            await sim_server.close()
        await backend.close()

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _post_blocking(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - loopback URL built by the fixture
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("method", METHODS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(params=PARAMS, request_id=REQUEST_IDS)
def test_arbitrary_params_get_a_well_formed_answer(
    threaded_sim_url: str, method: str, params: Any, request_id: Any
) -> None:
    status, body = _post_blocking(threaded_sim_url, request_body(method, params, request_id))
    assert status == 200, body
    assert b"Traceback" not in body
    response = json.loads(body)
    assert_response_shape(response, request_id)
    assert ("result" in response) != ("error" in response)
    if method in ("omni_getHealth", "omni_getShieldingKey"):
        assert "result" in response, response
        return
    if "error" in response:
        code = response["error"]["code"]
        assert isinstance(code, int) and not isinstance(code, bool)
        assert -32768 <= code <= -32000, response
        assert isinstance(response["error"]["message"], str)
        if method == "omni_addWallet":
            assert response["error"] == INTERNAL_ERROR
        else:
            # -32603 without data is what the simulator answers for an unexpected exception
            assert response["error"] != INTERNAL_ERROR, response
