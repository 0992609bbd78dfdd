"""The request layer (`broker/http.py`, `broker/server.py`) pinned over real sockets, on SQLite and
PostgreSQL: every error is the envelope, a malformed request is one log line without a traceback
or a credential, and bad bytes are 4xx, never 5xx (issue 11, findings 5, 7, 8, 9, 12)."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterator
from urllib.parse import quote

import aiohttp
import pytest
from broker_client import (
    ADD_WALLET,
    GET_USER_ID,
    GRANT_CREATE,
    GRANT_REVOKE,
    LOGIN,
    USER_CONNECT,
    assert_refused,
    call,
    count_users,
    evm_account,
    login,
    login_body,
)
from conftest import BrokerFactory, BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa
from raw_http import RawReply, exchange, request_bytes, sign_jws

from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.observability import JsonLinesFormatter, redact
from agentkeys_kit.broker.storage import StorageError

MASTER = "0x" + "c3" * 20
AGENT = "0x" + "d4" * 20
# Shaped like a real bearer, so a leak is found by a plain substring search.
SECRET_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJsZWFrIn0.c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw"


def assert_envelope(reply: RawReply, status: int, error: str) -> None:
    assert reply.status == status, reply.raw[:400]
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    assert isinstance(reply.body, dict) and set(reply.body) == {"code", "message", "data"}, reply.raw[:400]
    assert reply.body["data"]["error"] == error, reply.body


@pytest.fixture
def broker_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def log_text(records: list[logging.LogRecord]) -> str:
    """Everything a record carries before any redaction: message, fields and traceback."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(json.dumps(getattr(record, "fields", {}), default=str))
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


def access_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [record for record in records if record.name == "agentkeys_kit.broker.access"]


# --------------------------------------------------------------------------- malformed requests


MALFORMED = {
    "token in the request line": f"GET /v1/grant/list?{SECRET_TOKEN} HTTP/1.1 extra\r\n".encode()
    + f"Authorization: Bearer {SECRET_TOKEN}\r\n\r\n".encode(),
    "control byte in the Authorization value": b"POST /v3/account/add_wallet HTTP/1.1\r\nHost: b\r\n"
    + f"Authorization: Bearer {SECRET_TOKEN}".encode()
    + b"\x01\r\nContent-Length: 0\r\n\r\n",
    "Authorization header too long": b"GET /v1/grant/list HTTP/1.1\r\nHost: b\r\n"
    + f"Authorization: Bearer {SECRET_TOKEN}{'A' * 9000}\r\n\r\n".encode(),
    "space before the colon": b"GET /v1/grant/list HTTP/1.1\r\nHost: b\r\n"
    + f"Authorization : Bearer {SECRET_TOKEN}\r\n\r\n".encode(),
    "bad Content-Length": f"POST /v3/account/add_wallet HTTP/1.1\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n".encode()
    + b"Content-Length: 12x\r\n\r\n",
    "two Content-Lengths": f"POST {'/' + LOGIN} HTTP/1.1\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n".encode()
    + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "chunked and Content-Length": f"POST /{LOGIN} HTTP/1.1\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n".encode()
    + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "bad chunk size": f"POST /{LOGIN} HTTP/1.1\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n".encode()
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "not a method": f"G\x00T / HTTP/1.1\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n\r\n".encode(),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS client hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40 + b"\r\n\r\n",
    "version 9.9": f"GET /healthz HTTP/9.9\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n\r\n".encode(),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_a_malformed_request_is_an_envelope_and_one_log_line_without_the_bearer(
    make_broker: BrokerFactory, broker_logs: pytest.LogCaptureFixture, name: str
) -> None:
    broker = await make_broker()
    broker_logs.clear()
    reply = await exchange(broker.url, MALFORMED[name])
    assert 400 <= reply.status < 500, reply.raw[:300]
    assert isinstance(reply.body, dict) and set(reply.body) == {"code", "message", "data"}, reply.raw[:300]
    assert SECRET_TOKEN.encode() not in reply.raw and b"c2VjcmV0" not in reply.raw
    records = broker_logs.records
    assert SECRET_TOKEN not in log_text(records) and "c2VjcmV0" not in log_text(records)
    assert not [record for record in records if record.exc_info], "no traceback for a malformed request"
    assert not [record for record in records if record.levelno >= logging.ERROR]
    assert len(access_records(records)) == 1, [record.getMessage() for record in records]


async def test_a_malformed_request_line_names_the_parser_rule_not_the_bytes(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    reply = await exchange(broker.url, MALFORMED["token in the request line"])
    assert_envelope(reply, 400, "malformed_request")
    assert reply.body["code"] == 40001 and reply.body["data"]["reason"].isidentifier()


# --------------------------------------------------------------------------- Authorization bytes


@pytest.mark.parametrize(
    "value", [b"Bearer \xff\xfe", b"Bearer caf\xc3\xa9", b"Bearer \x80abc", b"Bearer a\tb", b"\xe2\x82\xac"]
)
async def test_an_authorization_that_is_not_visible_ascii_is_401_on_every_route(
    make_broker: BrokerFactory, value: bytes
) -> None:
    broker = await make_broker()
    routes = sorted(
        {(route.method, route.resource.canonical) for route in broker.app.router.routes() if route.method != "HEAD"}
    )
    assert ("POST", "/" + LOGIN) in routes and ("GET", "/v1/grant/list") in routes
    for method, path in routes:
        reply = await exchange(broker.url, request_bytes(method, path, headers={"Authorization": value}))
        assert_envelope(reply, 401, "invalid_token")


async def test_two_authorization_headers_are_refused(make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, evm_account(MASTER))
    raw = request_bytes("GET", "/v1/grant/list", headers={"Authorization": f"Bearer {token}"})
    raw = raw.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode(), 1)
    assert_envelope(await exchange(broker.url, raw), 401, "invalid_token")


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip, identity"])
async def test_a_content_encoding_on_a_plain_body_is_415(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, encoding: str
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, evm_account(MASTER))
    body = json.dumps(login_body("evm", MASTER)).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Encoding": encoding}
    reply = await exchange(broker.url, request_bytes("POST", "/" + LOGIN, headers=headers, body=body))
    assert_envelope(reply, 415, "unsupported_content_encoding")
    assert await count_users(broker) == 0


async def test_identity_content_encoding_is_read_as_sent(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, evm_account(MASTER))
    body = json.dumps(login_body("evm", MASTER)).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Encoding": "identity"}
    reply = await exchange(broker.url, request_bytes("POST", "/" + LOGIN, headers=headers, body=body))
    assert reply.status == 200, reply.body


BAD_STRINGS = {"lone surrogate": "\\ud800", "low surrogate": "x\\udc00y", "NUL": "a\\u0000b"}


def _json_text(template: str, bad: str) -> bytes:
    return template.replace("BAD", bad).encode()


@pytest.mark.parametrize("bad", sorted(BAD_STRINGS))
async def test_a_lone_surrogate_or_nul_in_a_field_is_400(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, bad: str
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    text = BAD_STRINGS[bad]
    expires = int(time.time()) + 3600
    cases = [
        (GRANT_REVOKE, token, '{"grant_id": "grn_BAD"}'),
        (GRANT_CREATE, token, f'{{"agent_wallet": "{AGENT}", "scope": "tradeBAD", "expires_at": {expires}}}'),
        (USER_CONNECT, token, '{"email": "a@b.com", "inviteCode": null, "googleCode": "1", "userId": "usr_BAD"}'),
        (USER_CONNECT, token, '{"email": "aBAD@b.com", "inviteCode": null, "googleCode": "1", "userId": "usr_1"}'),
        (
            LOGIN,
            token,
            '{"userId": {"type": "email", "value": "mBAD@b.com"}, "clientId": "agentkeys",'
            ' "clientAuth": null, "heimaLoginSuccess": true}',
        ),
        (
            LOGIN,
            token,
            '{"userId": {"type": "evm", "value": "BAD"}, "clientId": "agentkeys",'
            ' "clientAuth": null, "heimaLoginSuccess": true}',
        ),
    ]
    for path, bearer_token, template in cases:
        reply = await call(http, broker, path, token=bearer_token, data=_json_text(template, text))
        assert_refused(reply, 400, "malformed_body")
    nul_email = await call(http, broker, GET_USER_ID, method="GET", params={"email": "a\x00b@example.com"})
    assert_refused(nul_email, 400, "malformed_body")


async def test_a_repeated_json_key_is_400(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    victim = "0x" + "e5" * 20
    token = mint_tee_token(tee_key, evm_account(MASTER))
    # Two readers could take either identity; the broker takes neither.
    body = (
        f'{{"userId": {{"type": "evm", "value": "{MASTER}", "value": "{victim}"}}, "clientId": "agentkeys", '
        '"clientAuth": null, "heimaLoginSuccess": true}'
    )
    assert_refused(await call(http, broker, LOGIN, token=token, data=body), 400, "malformed_body")
    for text in ('{"a": NaN}', '{"a": 1e999}', '\ufeff{"a": 1}'):
        assert_refused(await call(http, broker, LOGIN, token=token, data=text.encode()), 400, "malformed_body")
    utf16 = json.dumps(login_body("evm", MASTER)).encode("utf-16")
    assert_refused(await call(http, broker, LOGIN, token=token, data=utf16), 400, "malformed_body")
    assert await count_users(broker) == 0


# --------------------------------------------------------------------------- TEE token strictness


def _claims(sub: str, **extra: object) -> dict[str, object]:
    return {"sub": sub, "typ": "access", "exp": int(time.time()) + 3600, "aud": "agentkeys", **extra}


async def _login_with(http: aiohttp.ClientSession, broker: BrokerHandle, token: str) -> int:
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", MASTER))
    if reply.status != 200:
        assert_refused(reply, 401, "invalid_token")
    return reply.status


async def test_a_tee_signed_exp_beyond_i64_is_401_not_500(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    header = '{"typ":"JWT","alg":"RS256"}'
    sub = evm_account(MASTER)
    for exp in (2**63, 2**64 + 5, 10**30):
        token = sign_jws(tee_key, header, json.dumps({**_claims(sub), "exp": exp}))
        assert await _login_with(http, broker, token) == 401
    largest = sign_jws(tee_key, header, json.dumps({**_claims(sub), "exp": 2**63 - 1}))
    assert await _login_with(http, broker, largest) == 200


async def test_token_strictness(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    sub = evm_account(MASTER)
    header = '{"typ":"JWT","alg":"RS256"}'
    good = sign_jws(tee_key, header, json.dumps(_claims(sub)))
    assert await _login_with(http, broker, good) == 200
    refused = {
        "padded signature": good + "==",
        "padded claims": good.split(".")[0] + "." + good.split(".")[1] + "=." + good.split(".")[2],
        "repeated claim": sign_jws(tee_key, header, json.dumps(_claims(sub))[:-1] + ', "aud": "agentkeys"}'),
        "repeated unknown claim": sign_jws(tee_key, header, json.dumps(_claims(sub, x=1))[:-1] + ', "x": 2}'),
        "repeated header field": sign_jws(
            tee_key, '{"typ":"JWT","alg":"RS256","alg":"RS256"}', json.dumps(_claims(sub))
        ),
        "crit": sign_jws(tee_key, '{"typ":"JWT","alg":"RS256","crit":["exp"]}', json.dumps(_claims(sub))),
        "nbf in the future": sign_jws(tee_key, header, json.dumps(_claims(sub, nbf=int(time.time()) + 600))),
        "nbf not an integer": sign_jws(tee_key, header, json.dumps(_claims(sub, nbf="0"))),
    }
    for name, token in refused.items():
        assert await _login_with(http, broker, token) == 401, name
    accepted = {
        "nbf in the past": sign_jws(tee_key, header, json.dumps(_claims(sub, nbf=int(time.time()) - 5))),
        "kid and unknown header fields": sign_jws(
            tee_key, '{"typ":"JWT","alg":"RS256","kid":"k1","x-note":"y"}', json.dumps(_claims(sub))
        ),
        "unknown claim": sign_jws(tee_key, header, json.dumps(_claims(sub, iat=1))),
    }
    for name, token in accepted.items():
        assert await _login_with(http, broker, token) == 200, name


# --------------------------------------------------------------------------- get_account_user_id's query


def serde_urlencoded(value: str) -> str:
    """What the worker's reqwest `.query(&{email})` writes (form_urlencoded byte_serialize)."""
    return quote(value, safe="*-._").replace("%20", "+")


async def _user_id_reply(broker: BrokerHandle, raw_query: str) -> RawReply:
    return await exchange(broker.url, request_bytes("GET", f"/{GET_USER_ID}?{raw_query}"))


async def test_get_account_user_id_decodes_the_query_as_the_worker_encodes_it(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    encoded = await _user_id_reply(broker, "email=" + serde_urlencoded("a+b@example.com"))
    assert encoded.status == 200, encoded.body
    raw_at = await _user_id_reply(broker, "email=a%2Bb@example.com")  # aiohttp clients leave @ as is
    assert raw_at.body["data"]["userId"] == encoded.body["data"]["userId"]
    assert await count_users(broker) == 1


@pytest.mark.parametrize(
    "raw_query",
    [
        "email=a+b@example.com",  # a raw + is a space: "a b@example.com" is no address
        "email=%ff@example.com",
        "email=%fe@example.com",
        "email=%c3@example.com",
        "email=%ed%a0%80@example.com",  # a UTF-8-encoded surrogate
        "email=a%@example.com",
        "email=a%4@example.com",
        "email=a%00@example.com",
        "email=a@example.com&email=b@example.com",
        "mail=a@example.com",
    ],
)
async def test_get_account_user_id_refuses_what_is_not_one_valid_address(
    make_broker: BrokerFactory, raw_query: str
) -> None:
    broker = await make_broker()
    assert_envelope(await _user_id_reply(broker, raw_query), 400, "malformed_body")
    assert await count_users(broker) == 0


# --------------------------------------------------------------------------- the envelope for every error


async def test_unknown_path_and_wrong_method_are_envelopes(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    assert_envelope(await exchange(broker.url, request_bytes("GET", "/nope")), 404, "not_found")
    wrong = await exchange(broker.url, request_bytes("DELETE", "/" + LOGIN))
    assert_envelope(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers.get("allow", "")


async def test_a_bug_is_a_500_envelope_with_its_traceback_in_the_log_only(
    make_broker: BrokerFactory, broker_logs: pytest.LogCaptureFixture, http: aiohttp.ClientSession
) -> None:
    async def bug(request: object) -> None:
        raise KeyError("internal detail")

    async def outage(request: object) -> None:
        raise StorageError("connection refused to 10.0.0.9")

    broker = await make_broker(routes=[("GET", "/_test/bug", bug), ("GET", "/_test/outage", outage)])
    broker_logs.clear()
    reply = await call(http, broker, "_test/bug", method="GET")
    assert_refused_5xx(reply.status, reply.body, 500, "internal_error")
    assert "internal detail" not in json.dumps(reply.body)
    assert [record for record in broker_logs.records if record.exc_info], "a bug keeps its traceback in the log"
    broker_logs.clear()
    reply = await call(http, broker, "_test/outage", method="GET")
    assert_refused_5xx(reply.status, reply.body, 503, "storage_unavailable")
    assert "10.0.0.9" not in json.dumps(reply.body)
    assert not [record for record in broker_logs.records if record.exc_info], "an outage is one line"


def assert_refused_5xx(status: int, body: object, expected: int, error: str) -> None:
    assert status == expected
    assert isinstance(body, dict) and set(body) == {"code", "message", "data"}
    assert body["data"]["error"] == error


async def test_a_refused_body_read_does_not_write(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    reply = await call(http, broker, ADD_WALLET, token=token, data=b'{"x": 1}')
    assert_refused(reply, 400, "malformed_body")


# --------------------------------------------------------------------------- the log line itself


def test_redact_replaces_bearers_and_jwts() -> None:
    line = f'Authorization: Bearer {SECRET_TOKEN} then "bearer abc.def" and {SECRET_TOKEN[:-3]}'
    redacted = redact(line)
    assert SECRET_TOKEN[:30] not in redacted and "abc.def" not in redacted
    assert redacted.count("[redacted") >= 3


def test_the_json_formatter_writes_one_redacted_object_per_record() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "saw %s", (f"Bearer {SECRET_TOKEN}",), None)
    record.fields = {"path": "/v1", "status": 401}
    line = JsonLinesFormatter().format(record)
    assert "\n" not in line and SECRET_TOKEN not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["path"] == "/v1" and entry["status"] == 401
    assert entry["ts"].endswith("Z")


def test_broker_errors_carry_their_refusal_to_the_access_log() -> None:
    error = BrokerError(403, 40300, "identity_mismatch", "no", reason="r")
    response = error.response()
    assert json.loads(response.body)["data"] == {"error": "identity_mismatch", "reason": "r"}  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/%ED%A0%80", "/%FF%FE", "/%00", "/v1/%2e%2e/grant", "/" + "a" * 5000, "/\u00e9"])
async def test_odd_bytes_in_the_path_are_a_404_envelope_and_one_line(
    make_broker: BrokerFactory, broker_logs: pytest.LogCaptureFixture, path: str
) -> None:
    broker = await make_broker()
    broker_logs.clear()
    reply = await exchange(broker.url, request_bytes("GET", path))  # a non-ASCII path goes as UTF-8
    assert 400 <= reply.status < 500 and isinstance(reply.body, dict), reply.raw[:300]
    assert not [record for record in broker_logs.records if record.levelno >= logging.WARNING]
    [access] = access_records(broker_logs.records)
    JsonLinesFormatter().format(access)  # a lone surrogate in the path is escaped, not a crash
