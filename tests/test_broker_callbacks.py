"""The broker's callback surface, as the TEE worker calls it: every success and every refusal, on
SQLite and PostgreSQL (spec heima-protocol.md §1b/§8, agentkeys-broker.md §4–§6, `broker/errors.py`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from broker_client import (
    ADD_WALLET,
    CHECK_AGENT,
    CLIENT,
    GET_USER_ID,
    GRANT_CREATE,
    GRANT_REVOKE,
    LOGIN,
    USER_CONNECT,
    Reply,
    account_of,
    assert_refused,
    audit,
    bearer,
    call,
    check_agent,
    count_users,
    evm_account,
    evm_address,
    login,
    login_body,
    wallet_slots,
)
from conftest import BrokerFactory, BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage import store
from agentkeys_kit.broker.storage.base import Operation, Query
from agentkeys_kit.broker.storage.migrations import LATEST_SCHEMA_VERSION
from agentkeys_kit.broker.totp import totp
from agentkeys_kit.protocol.identity import IdentityKind, pumpx_omni_account
from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, encode_auth_token

TOTP_SECRET = "JBSWY3DPEHPK3PXP"
NOT_LOOPBACK = {"BROKER_CALLBACK_ALLOW_CIDRS": "10.0.0.0/8"}


# --------------------------------------------------------------------------- helpers


def email_account(email: str, client_id: str = CLIENT) -> str:
    return account_of(IdentityKind.EMAIL, email, client_id)


def pumpx_account(user_uid: str, client_id: str = CLIENT) -> str:
    return "0x" + pumpx_omni_account(client_id, user_uid).hex()


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def header_segment(alg: str) -> str:
    return b64url(json.dumps({"typ": "JWT", "alg": alg}, separators=(",", ":")).encode())


def claims_json(sub: str, aud: str = CLIENT, typ: str = "access", exp: int | None = None) -> bytes:
    expires = exp if exp is not None else int(time.time()) + 3600
    return json.dumps({"sub": sub, "typ": typ, "exp": expires, "aud": aud}, separators=(",", ":")).encode()


def assert_ok(reply: Reply, data: Any) -> None:
    assert reply.status == 200, reply
    assert reply.body == {"code": 10000, "message": "OK", "data": data}
    assert list(reply.body) == ["code", "message", "data"]


async def email_user(http: aiohttp.ClientSession, broker: BrokerHandle, email: str) -> str:
    reply = await call(http, broker, GET_USER_ID, method="GET", params={"email": email})
    assert reply.status == 200, reply
    user_id: str = reply.body["data"]["userId"]
    return user_id


TABLES = ("users", "wallets", "tee_tokens", "grants", "audit_log")


def table_counts() -> Operation[dict[str, int]]:
    counts: dict[str, int] = {}
    for table in TABLES:
        row = yield Query.one(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608 - fixed table names
        counts[table] = int(row["n"])
    return counts


async def counts(broker: BrokerHandle) -> dict[str, int]:
    result: dict[str, int] = await broker.state.db.run(table_counts)
    return result


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --------------------------------------------------------------------------- post_heima_login


async def test_login_success_reply_is_exactly_the_envelope_with_a_user_id(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address = evm_address(1)
    reply = await call(
        http, broker, LOGIN, token=mint_tee_token(tee_key, evm_account(address)), json_body=login_body("evm", address)
    )
    assert reply.status == 200
    assert list(reply.body) == ["code", "message", "data"]
    assert reply.body["code"] == 10000 and reply.body["message"] == "OK"
    assert list(reply.body["data"]) == ["user_id"]
    user_id = reply.body["data"]["user_id"]
    assert isinstance(user_id, str) and user_id.startswith("usr_") and len(user_id) > 4
    assert_ok(reply, {"user_id": user_id})
    assert await count_users(broker) == 1


async def test_second_login_of_the_same_identity_returns_the_same_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    first, _ = await login(http, broker, tee_key, evm_address(2))
    second, _ = await login(http, broker, tee_key, evm_address(2))
    other, _ = await login(http, broker, tee_key, evm_address(3))
    assert first == second
    assert other != first
    assert await count_users(broker) == 2


async def test_evm_address_case_does_not_create_a_second_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    lower = "0x" + "abcdef0123" * 4
    upper = "0x" + lower[2:].upper()
    mixed = "0x" + "AbCdEf0123" * 4
    assert evm_account(lower) == evm_account(upper) == evm_account(mixed)
    ids = {(await login(http, broker, tee_key, address))[0] for address in (lower, upper, mixed)}
    assert len(ids) == 1
    assert await count_users(broker) == 1
    user = await broker.state.db.run(store.find_user_by_uid, ids.pop())
    assert user.identity_type == "evm" and user.identity_value == lower


async def test_login_is_also_served_under_the_callback_base_path(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address = evm_address(4)
    token = mint_tee_token(tee_key, evm_account(address))
    based = await call(http, broker, "agentkeys/" + LOGIN, token=token, json_body=login_body("evm", address))
    plain = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", address))
    assert_ok(based, {"user_id": plain.body["data"]["user_id"]})


async def test_email_login_keys_the_user_by_the_lowercased_email(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    email = "Alice@Example.COM"
    token = mint_tee_token(tee_key, email_account(email))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("email", email))
    assert reply.status == 200, reply
    assert await email_user(http, broker, "alice@example.com") == reply.body["data"]["user_id"]
    assert await count_users(broker) == 1


async def test_login_without_authorization_is_missing_bearer(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    reply = await call(http, broker, LOGIN, json_body=login_body("evm", evm_address(5)))
    assert_refused(reply, 401, "missing_bearer")
    async with http.post(
        broker.url + LOGIN, json=login_body("evm", evm_address(5)), headers={"Authorization": "Basic abc"}
    ) as response:
        assert response.status == 401
        assert (await response.json())["data"]["error"] == "missing_bearer"
    assert await count_users(broker) == 0


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9..", "...."])
async def test_login_with_a_garbage_token_is_invalid_token(
    make_broker: BrokerFactory, http: aiohttp.ClientSession, garbage: str
) -> None:
    broker = await make_broker()
    reply = await call(http, broker, LOGIN, token=garbage, json_body=login_body("evm", evm_address(6)))
    assert_refused(reply, 401, "invalid_token")


def _alg_none(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return f"{header_segment('none')}.{b64url(claims_json(sub))}."


def _hs256_with_public_pem(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{header_segment('HS256')}.{b64url(claims_json(sub))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _hs256_with_pkcs1_pem(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    signing_input = f"{header_segment('HS256')}.{b64url(claims_json(sub))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _other_rsa_key(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return mint_tee_token(other, sub)


def _expired(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return mint_tee_token(key, sub, exp=int(time.time()) - 5)


def _aud_wildmeta(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return mint_tee_token(key, sub, aud="wildmeta")


def _typ_id(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return mint_tee_token(key, sub, typ="id")


def _truncated(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return mint_tee_token(key, sub)[:-20]


def _tampered_payload(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    header, _payload, signature = mint_tee_token(key, evm_account(evm_address(999))).split(".")
    return f"{header}.{b64url(claims_json(sub))}.{signature}"


def _sub_uppercase_hex(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return encode_auth_token(AuthTokenClaims("0x" + sub[2:].upper(), "access", int(time.time()) + 60, CLIENT), key)


def _sub_without_prefix(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return encode_auth_token(AuthTokenClaims(sub[2:], "access", int(time.time()) + 60, CLIENT), key)


def _sub_too_short(key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, sub: str) -> str:
    return encode_auth_token(AuthTokenClaims(sub[:-2], "access", int(time.time()) + 60, CLIENT), key)


TokenBuilder = Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey, str], str]
ATTACKS: dict[str, TokenBuilder] = {
    "alg_none": _alg_none,
    "hs256_keyed_with_spki_pem": _hs256_with_public_pem,
    "hs256_keyed_with_pkcs1_pem": _hs256_with_pkcs1_pem,
    "rs256_by_another_key": _other_rsa_key,
    "expired": _expired,
    "aud_wildmeta": _aud_wildmeta,
    "typ_id": _typ_id,
    "truncated": _truncated,
    "tampered_payload": _tampered_payload,
    "sub_uppercase_hex": _sub_uppercase_hex,
    "sub_without_0x": _sub_without_prefix,
    "sub_too_short": _sub_too_short,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_login_refuses_the_tee_token_attack_set(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    attack: str,
) -> None:
    broker = await make_broker()
    address = evm_address(7)
    token = ATTACKS[attack](tee_key, other_key, evm_account(address))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", address))
    assert_refused(reply, 401, "invalid_token")
    assert reply.body["code"] == 40101
    assert await count_users(broker) == 0


async def test_valid_token_for_another_identity_is_identity_mismatch_and_creates_nothing(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    victim, attacker = evm_address(8), evm_address(9)
    token = mint_tee_token(tee_key, evm_account(attacker))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", victim))
    assert_refused(reply, 403, "identity_mismatch")
    assert await count_users(broker) == 0
    assert await broker.state.db.run(store.find_user_by_identity, "evm", victim) is None


async def test_token_of_the_same_address_under_another_client_is_identity_mismatch(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address = evm_address(10)
    token = mint_tee_token(tee_key, evm_account(address, "wildmeta"))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", address))
    assert_refused(reply, 403, "identity_mismatch")
    assert await count_users(broker) == 0


async def test_body_client_id_wildmeta_is_client_not_accepted(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """Pinned: the clientId allow-list check comes before the token/body comparison."""
    broker = await make_broker()
    address = evm_address(11)
    token = mint_tee_token(tee_key, evm_account(address))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", address, "wildmeta"))
    assert_refused(reply, 403, "client_not_accepted")
    assert reply.body["code"] == 40302
    assert await count_users(broker) == 0


async def test_body_client_id_accepted_but_not_the_token_aud_is_identity_mismatch(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env={"BROKER_ACCEPTED_CLIENT_IDS": "agentkeys,wildmeta"})
    address = evm_address(12)
    token = mint_tee_token(tee_key, evm_account(address))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("evm", address, "wildmeta"))
    assert_refused(reply, 403, "identity_mismatch")
    assert await count_users(broker) == 0


async def test_snake_case_login_body_is_malformed(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address = evm_address(13)
    body = {
        "user_id": {"type": "evm", "value": address},
        "client_id": CLIENT,
        "client_auth": None,
        "heima_login_success": True,
    }
    reply = await call(http, broker, LOGIN, token=mint_tee_token(tee_key, evm_account(address)), json_body=body)
    assert_refused(reply, 400, "malformed_body")
    assert await count_users(broker) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"heimaLoginSuccess": False},
        {"heimaLoginSuccess": "true"},
        {"heimaLoginSuccess": 1},
        {"userId": {"type": "evm"}},
        {"userId": {"type": "nope", "value": "x"}},
        {"userId": {"type": "evm", "value": "0x1234"}},
        {"clientId": 7},
        {"clientAuth": {"type": "nope", "value": {}}},
    ],
    ids=[
        "success_false",
        "success_string",
        "success_int",
        "no_value",
        "bad_tag",
        "short_address",
        "client_int",
        "bad_auth",
    ],
)
async def test_login_body_with_a_wrong_field_is_malformed(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, change: dict[str, Any]
) -> None:
    broker = await make_broker()
    address = evm_address(14)
    body = {**login_body("evm", address), **change}
    reply = await call(http, broker, LOGIN, token=mint_tee_token(tee_key, evm_account(address)), json_body=body)
    assert_refused(reply, 400, "malformed_body")
    assert await count_users(broker) == 0


@pytest.mark.parametrize("raw", [b"not json", b"", b"{", b"[1,2]", b"null", b"\xff\xfe"])
async def test_login_with_a_non_json_or_non_object_body_is_malformed(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, raw: bytes
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, evm_account(evm_address(15)))
    reply = await call(http, broker, LOGIN, token=token, data=raw)
    assert_refused(reply, 400, "malformed_body")


async def test_login_body_above_64_kib_is_413(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address = evm_address(16)
    body = {**login_body("evm", address), "padding": "x" * (64 * 1024)}
    token = mint_tee_token(tee_key, evm_account(address))
    reply = await call(http, broker, LOGIN, token=token, json_body=body)
    assert_refused(reply, 413, "body_too_large")

    async def chunks() -> Any:  # no Content-Length: the limit must hold on the bytes read
        payload = json.dumps(body).encode()
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    async with http.post(broker.url + LOGIN, data=chunks(), headers=bearer(token)) as response:
        assert response.status == 413
        assert (await response.json())["data"]["error"] == "body_too_large"
    assert await count_users(broker) == 0


async def test_body_just_under_64_kib_is_accepted(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address = evm_address(17)
    body: dict[str, Any] = {**login_body("evm", address), "padding": ""}
    body["padding"] = "x" * (64 * 1024 - len(json.dumps(body)))
    assert len(json.dumps(body)) == 64 * 1024
    reply = await call(http, broker, LOGIN, token=mint_tee_token(tee_key, evm_account(address)), json_body=body)
    assert reply.status == 200, reply


# --------------------------------------------------------------------------- audit


async def test_audit_rows_for_a_success_and_a_refusal_hold_only_the_token_hash(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    address, other = evm_address(20), evm_address(21)
    good = mint_tee_token(tee_key, evm_account(address))
    wrong = mint_tee_token(tee_key, evm_account(other), exp=int(time.time()) + 1000)
    ok_reply = await call(http, broker, LOGIN, token=good, json_body=login_body("evm", address))
    assert_ok(ok_reply, {"user_id": ok_reply.body["data"]["user_id"]})
    refused = await call(http, broker, LOGIN, token=wrong, json_body=login_body("evm", address))
    assert_refused(refused, 403, "identity_mismatch")

    rows = await audit(broker)
    assert [(row["event"], row["outcome"]) for row in rows] == [
        ("post_heima_login", "ok"),
        ("post_heima_login", "refused:identity_mismatch"),
    ]
    assert rows[0]["bearer_sha256"] == hashlib.sha256(good.encode()).hexdigest()
    assert rows[0]["omni_account"] == evm_account(address) and rows[0]["client_id"] == CLIENT
    assert rows[0]["remote_addr"] == "127.0.0.1"
    assert rows[1]["bearer_sha256"] == hashlib.sha256(wrong.encode()).hexdigest()
    assert rows[1]["omni_account"] == evm_account(other)
    for row in rows:
        for column, value in row.items():
            for token in (good, wrong):
                assert token not in str(value), column
                assert token.split(".")[2] not in str(value), column


async def test_refused_invalid_token_audit_row_hashes_the_token_not_the_authorization_header(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """An expired token's refusal row must carry sha256(token), the same hash a successful login
    of that token recorded, so the two can be correlated (`broker/callbacks.py` hashes the whole
    ``Authorization`` header, ``"Bearer " + token``, when the token does not verify)."""
    broker = await make_broker()
    address = evm_address(22)
    expired = mint_tee_token(tee_key, evm_account(address), exp=int(time.time()) - 5)
    reply = await call(http, broker, LOGIN, token=expired, json_body=login_body("evm", address))
    assert_refused(reply, 401, "invalid_token")
    [row] = await audit(broker)
    assert row["outcome"] == "refused:invalid_token"
    for value in row.values():
        assert expired not in str(value)
    assert row["bearer_sha256"] == hashlib.sha256(expired.encode()).hexdigest()


async def test_missing_bearer_refusal_is_audited_without_a_hash(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    assert_refused(await call(http, broker, LOGIN, json_body=login_body("evm", evm_address(23))), 401, "missing_bearer")
    [row] = await audit(broker)
    assert row["event"] == "post_heima_login" and row["outcome"] == "refused:missing_bearer"
    assert row["bearer_sha256"] is None and row["omni_account"] is None


# --------------------------------------------------------------------------- add_wallet


async def test_add_wallet_records_consecutive_slots(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    user_id, token = await login(http, broker, tee_key, evm_address(30))
    for expected in ([0], [0, 1], [0, 1, 2]):
        reply = await call(http, broker, ADD_WALLET, token=token)
        assert_ok(reply, {})
        assert await wallet_slots(broker, user_id) == expected
    rows = [row for row in await audit(broker) if row["event"] == "add_wallet"]
    assert [row["outcome"] for row in rows] == ["ok"] * 3
    assert {row["bearer_sha256"] for row in rows} == {hashlib.sha256(token.encode()).hexdigest()}


async def test_add_wallet_slots_are_per_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    first, first_token = await login(http, broker, tee_key, evm_address(31))
    second, second_token = await login(http, broker, tee_key, evm_address(32))
    assert_ok(await call(http, broker, ADD_WALLET, token=first_token), {})
    assert_ok(await call(http, broker, ADD_WALLET, token=first_token), {})
    assert_ok(await call(http, broker, ADD_WALLET, token=second_token), {})
    assert await wallet_slots(broker, first) == [0, 1]
    assert await wallet_slots(broker, second) == [0]


async def test_add_wallet_for_an_account_that_never_logged_in_is_unknown_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    reply = await call(http, broker, ADD_WALLET, token=mint_tee_token(tee_key, evm_account(evm_address(33))))
    assert_refused(reply, 404, "unknown_user")
    assert (await counts(broker))["wallets"] == 0


async def test_add_wallet_with_a_body_is_malformed(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    user_id, token = await login(http, broker, tee_key, evm_address(34))
    reply = await call(http, broker, ADD_WALLET, token=token, json_body={"wallet_index": 0})
    assert_refused(reply, 400, "malformed_body")
    assert await wallet_slots(broker, user_id) == []


async def test_add_wallet_refuses_bad_tokens(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
) -> None:
    broker = await make_broker()
    address = evm_address(35)
    user_id, _ = await login(http, broker, tee_key, address)
    assert_refused(await call(http, broker, ADD_WALLET), 401, "missing_bearer")
    forged = mint_tee_token(other_key, evm_account(address))
    assert_refused(await call(http, broker, ADD_WALLET, token=forged), 401, "invalid_token")
    id_token = mint_tee_token(tee_key, evm_account(address), typ="id")
    assert_refused(await call(http, broker, ADD_WALLET, token=id_token), 401, "invalid_token")
    assert await wallet_slots(broker, user_id) == []


# --------------------------------------------------------------------------- get_account_user_id


async def test_get_account_user_id_creates_the_email_user_once(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    first = await call(http, broker, GET_USER_ID, method="GET", params={"email": "bob@example.com"})
    assert first.status == 200
    user_id = first.body["data"]["userId"]
    assert isinstance(user_id, str) and user_id.startswith("usr_")
    assert_ok(first, {"userId": user_id})
    for variant in ("bob@example.com", "BOB@Example.Com", "Bob@EXAMPLE.com"):
        again = await call(http, broker, GET_USER_ID, method="GET", params={"email": variant})
        assert_ok(again, {"userId": user_id})
    assert await count_users(broker) == 1
    user = await broker.state.db.run(store.find_user_by_uid, user_id)
    assert (user.identity_type, user.identity_value) == ("email", "bob@example.com")
    assert user.omni_account == email_account("bob@example.com")
    assert user.pumpx_omni_account == pumpx_account(user_id)
    details = [row["detail"] for row in await audit(broker) if row["event"] == "get_account_user_id"]
    assert details == ["created", "existing", "existing", "existing"]


async def test_get_account_user_id_is_also_served_under_the_base_path(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    user_id = await email_user(http, broker, "carol@example.com")
    reply = await call(http, broker, "agentkeys/" + GET_USER_ID, method="GET", params={"email": "carol@example.com"})
    assert_ok(reply, {"userId": user_id})


@pytest.mark.parametrize(
    "query",
    ["", "?email=", "?email=not-an-email", "?email=a@nodot", "?email=a@b.com&email=c@d.com", "?mail=a@b.com"],
    ids=["missing", "empty", "no_at", "no_tld", "twice", "wrong_name"],
)
async def test_get_account_user_id_with_a_missing_or_invalid_email_is_malformed(
    make_broker: BrokerFactory, http: aiohttp.ClientSession, query: str
) -> None:
    broker = await make_broker()
    reply = await call(http, broker, GET_USER_ID + query, method="GET")
    assert_refused(reply, 400, "malformed_body")
    assert await count_users(broker) == 0


async def test_get_account_user_id_from_outside_the_allow_list_is_network_refused(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env=NOT_LOOPBACK)
    reply = await call(http, broker, GET_USER_ID, method="GET", params={"email": "dave@example.com"})
    assert_refused(reply, 403, "network_refused")
    assert await count_users(broker) == 0
    [row] = await audit(broker)
    assert row["outcome"] == "refused:network_refused" and row["remote_addr"] == "127.0.0.1"


# --------------------------------------------------------------------------- user_connect


def connect_body(user_id: str, email: str, google_code: str = "123456") -> dict[str, Any]:
    return {"email": email, "inviteCode": None, "googleCode": google_code, "userId": user_id}


async def test_user_connect_succeeds_for_the_pumpx_identity_of_the_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    email = "erin@example.com"
    user_id = await email_user(http, broker, email)
    token = mint_tee_token(tee_key, pumpx_account(user_id))
    reply = await call(http, broker, USER_CONNECT, token=token, json_body=connect_body(user_id, "Erin@Example.com"))
    assert_ok(reply, {"userId": user_id, "googleAuthCheck": True})
    based = await call(http, broker, "agentkeys/" + USER_CONNECT, token=token, json_body=connect_body(user_id, email))
    assert_ok(based, {"userId": user_id, "googleAuthCheck": True})
    with_invite = {**connect_body(user_id, email), "inviteCode": "INV1"}
    assert_ok(
        await call(http, broker, USER_CONNECT, token=token, json_body=with_invite),
        {"userId": user_id, "googleAuthCheck": True},
    )


async def test_user_connect_checks_the_totp_code_when_a_secret_is_set(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    email = "frank@example.com"
    user_id = await email_user(http, broker, email)
    assert await broker.state.db.run(store.set_totp_secret, user_id, TOTP_SECRET) is True
    token = mint_tee_token(tee_key, pumpx_account(user_id))
    now = int(time.time())
    near = {totp(TOTP_SECRET, now + delta) for delta in (-60, -30, 0, 30, 60)}
    wrong = next(code for code in (f"{n:06d}" for n in range(1000)) if code not in near)
    refused = await call(http, broker, USER_CONNECT, token=token, json_body=connect_body(user_id, email, wrong))
    assert_ok(refused, {"userId": user_id, "googleAuthCheck": False})
    right = totp(TOTP_SECRET, int(time.time()))
    accepted = await call(http, broker, USER_CONNECT, token=token, json_body=connect_body(user_id, email, right))
    assert_ok(accepted, {"userId": user_id, "googleAuthCheck": True})
    details = [row["detail"] for row in await audit(broker) if row["event"] == "user_connect"]
    assert details == ["googleAuthCheck=false", "googleAuthCheck=true"]


async def test_user_connect_with_a_token_for_another_subject_is_identity_mismatch(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    email = "gina@example.com"
    user_id = await email_user(http, broker, email)
    other_id = await email_user(http, broker, "henry@example.com")
    for sub in (email_account(email), pumpx_account(other_id), pumpx_account(user_id, "wildmeta")):
        token = mint_tee_token(tee_key, sub)
        reply = await call(http, broker, USER_CONNECT, token=token, json_body=connect_body(user_id, email))
        assert_refused(reply, 403, "identity_mismatch")
    pumpx_token_wrong_aud = mint_tee_token(tee_key, pumpx_account(user_id), aud="wildmeta")
    reply = await call(http, broker, USER_CONNECT, token=pumpx_token_wrong_aud, json_body=connect_body(user_id, email))
    assert_refused(reply, 401, "invalid_token")


async def test_user_connect_for_an_unknown_user_id_is_unknown_user(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, pumpx_account("usr_missing"))
    reply = await call(http, broker, USER_CONNECT, token=token, json_body=connect_body("usr_missing", "a@b.com"))
    assert_refused(reply, 404, "unknown_user")


async def test_user_connect_with_an_email_that_is_not_the_users_is_identity_mismatch(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    user_id = await email_user(http, broker, "ivan@example.com")
    token = mint_tee_token(tee_key, pumpx_account(user_id))
    reply = await call(http, broker, USER_CONNECT, token=token, json_body=connect_body(user_id, "mallory@example.com"))
    assert_refused(reply, 403, "identity_mismatch")


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a@b.com", "googleCode": "1", "userId": "usr_x"},
        {"email": "a@b.com", "inviteCode": None, "googleCode": 123456, "userId": "usr_x"},
        {"email": "a@b.com", "invite_code": None, "google_code": "1", "user_id": "usr_x"},
        ["a@b.com"],
    ],
    ids=["no_invite_code", "code_as_number", "snake_case", "array"],
)
async def test_user_connect_with_a_malformed_body_is_400(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, body: Any
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, pumpx_account("usr_x"))
    assert_refused(await call(http, broker, USER_CONNECT, token=token, json_body=body), 400, "malformed_body")


async def test_user_connect_without_a_bearer_is_401(make_broker: BrokerFactory, http: aiohttp.ClientSession) -> None:
    broker = await make_broker()
    reply = await call(http, broker, USER_CONNECT, json_body=connect_body("usr_x", "a@b.com"))
    assert_refused(reply, 401, "missing_bearer")


# --------------------------------------------------------------------------- check_hyper_agent_address


async def test_check_hyper_agent_address_answers_false_without_a_grant(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    reply = await check_agent(http, broker, evm_address(40), evm_address(41))
    assert_ok(reply, {"isBound": False})
    [row] = await audit(broker)
    assert row["event"] == "check_hyper_agent_address" and row["outcome"] == "ok"
    assert row["detail"] == f"{evm_address(40)}->{evm_address(41)}"


async def test_check_hyper_agent_address_truth_table_over_a_grant(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    master = "0x" + "aa" * 20
    agent = "0x" + "bc" * 20
    _, token = await login(http, broker, tee_key, master)
    created = await call(
        http,
        broker,
        GRANT_CREATE,
        token=token,
        json_body={"agent_wallet": agent, "scope": "trade", "expires_at": int(time.time()) + 3600},
    )
    assert created.status == 200, created
    cases = {
        (master, agent): True,
        (master.upper().replace("0X", "0x"), agent.upper().replace("0X", "0x")): True,
        ("0x" + "aA" * 20, "0x" + "Bc" * 20): True,
        (agent, master): False,
        (master, evm_address(42)): False,
        (evm_address(43), agent): False,
    }
    for (main, agent_address), expected in cases.items():
        for login_type in (0, 1, 7):
            assert_ok(await check_agent(http, broker, main, agent_address, login_type), {"isBound": expected})
    revoked = await call(
        http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": created.body["data"]["grant"]["grant_id"]}
    )
    assert revoked.status == 200
    assert_ok(await check_agent(http, broker, master, agent), {"isBound": False})


@pytest.mark.parametrize(
    "body",
    [
        {"main_address": "0x1234", "agent_address": evm_address(1), "login_type": 0},
        {"main_address": evm_address(1), "agent_address": "0x" + "zz" * 20, "login_type": 0},
        {"main_address": "aa" * 20, "agent_address": evm_address(2), "login_type": 0},
        {"main_address": evm_address(1), "agent_address": evm_address(2) + "00", "login_type": 0},
        {"main_address": evm_address(1), "agent_address": evm_address(2)},
        {"main_address": evm_address(1), "agent_address": evm_address(2), "login_type": "0"},
        {"main_address": evm_address(1), "agent_address": evm_address(2), "login_type": True},
        {"mainAddress": evm_address(1), "agentAddress": evm_address(2), "loginType": 0},
    ],
    ids=["short_main", "non_hex_agent", "no_0x", "long_agent", "no_login_type", "type_str", "type_bool", "camel"],
)
async def test_check_hyper_agent_address_with_bad_input_is_malformed(
    make_broker: BrokerFactory, http: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    broker = await make_broker()
    assert_refused(await call(http, broker, CHECK_AGENT, json_body=body), 400, "malformed_body")


async def test_check_hyper_agent_address_from_outside_the_allow_list_is_network_refused(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env=NOT_LOOPBACK)
    reply = await check_agent(http, broker, evm_address(44), evm_address(45))
    assert_refused(reply, 403, "network_refused")
    assert reply.body["code"] == 40301


# --------------------------------------------------------------------------- routing and health


async def test_unknown_path_and_wrong_method_answer_in_the_envelope(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    missing = await call(http, broker, "v3/account/nope", json_body={})
    assert_refused(missing, 404, "not_found")
    assert missing.body["code"] == 40400
    wrong_method = await call(http, broker, LOGIN, method="GET")
    assert_refused(wrong_method, 405, "method_not_allowed")
    assert wrong_method.body["code"] == 40500
    wrong_method_get = await call(http, broker, GET_USER_ID, method="POST", json_body={})
    assert_refused(wrong_method_get, 405, "method_not_allowed")


async def test_healthz_and_readyz(make_broker: BrokerFactory, http: aiohttp.ClientSession) -> None:
    broker = await make_broker()
    async with http.get(broker.url + "healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok"
    async with http.get(broker.url + "readyz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["database"] is True
    assert body["schema_version"] == LATEST_SCHEMA_VERSION
    assert body["db"] == broker.state.db.dialect


# --------------------------------------------------------------------------- transactions


async def _refused_login(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, recorded: str
) -> Reply:
    token = mint_tee_token(key, evm_account(evm_address(51)))
    return await call(http, broker, LOGIN, token=token, json_body=login_body("evm", evm_address(50)))


async def _refused_wallet_body(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, recorded: str
) -> Reply:
    return await call(http, broker, ADD_WALLET, token=mint_tee_token(key, evm_account(evm_address(50))), data=b"{}")


async def _refused_wallet_unknown(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, recorded: str
) -> Reply:
    return await call(http, broker, ADD_WALLET, token=mint_tee_token(key, evm_account(evm_address(52))))


async def _refused_connect(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, recorded: str
) -> Reply:
    user = await broker.state.db.run(store.find_user_by_identity, "evm", evm_address(50))
    token = mint_tee_token(key, evm_account(evm_address(50)))
    return await call(http, broker, USER_CONNECT, token=token, json_body=connect_body(user.user_uid, "a@b.com"))


async def _refused_grant(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, recorded: str
) -> Reply:
    body = {"agent_wallet": evm_address(53), "scope": "trade", "expires_at": int(time.time()) - 1}
    # the grant endpoints take only a TEE token post_heima_login recorded: the login's own
    return await call(http, broker, GRANT_CREATE, token=recorded, json_body=body)


async def _refused_get_user_id(
    http: aiohttp.ClientSession, broker: BrokerHandle, key: rsa.RSAPrivateKey, recorded: str
) -> Reply:
    return await call(http, broker, GET_USER_ID, method="GET", params={"email": "no-tld@localhost"})


Refusal = Callable[[aiohttp.ClientSession, BrokerHandle, rsa.RSAPrivateKey, str], Any]
REFUSALS: dict[str, tuple[Refusal, int, str]] = {
    "login_identity_mismatch": (_refused_login, 403, "identity_mismatch"),
    "add_wallet_with_body": (_refused_wallet_body, 400, "malformed_body"),
    "add_wallet_unknown_user": (_refused_wallet_unknown, 404, "unknown_user"),
    "user_connect_wrong_sub": (_refused_connect, 403, "identity_mismatch"),
    "grant_in_the_past": (_refused_grant, 400, "malformed_body"),
    "get_account_user_id_bad_email": (_refused_get_user_id, 400, "malformed_body"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
async def test_a_refused_callback_writes_nothing_but_its_audit_row(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, name: str
) -> None:
    broker = await make_broker()
    user_id, token = await login(http, broker, tee_key, evm_address(50))
    assert_ok(await call(http, broker, ADD_WALLET, token=token), {})
    before = await counts(broker)
    action, status, error = REFUSALS[name]
    assert_refused(await action(http, broker, tee_key, token), status, error)
    after = await counts(broker)
    assert after == {**before, "audit_log": before["audit_log"] + 1}
    newest = (await audit(broker))[-1]
    assert newest["outcome"] == f"refused:{error}"
    assert await wallet_slots(broker, user_id) == [0]


async def test_identities_over_64_bytes_are_refused_so_two_cannot_share_one_account(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """The worker cuts a handle to 64 bytes before hashing (`IdentityString::new`), so two e-mails
    that share their first 64 bytes have ONE OmniAccount: whoever controls either inbox would log
    in as both. The broker refuses such values on every callback instead of merging them."""
    broker = await make_broker()
    victim = "a" * 40 + "@victim-corporation-international.com"
    attacker = "a" * 40 + "@victim-corporation-internationa1.evil"
    assert victim.encode()[:64] == attacker.encode()[:64] and len(victim.encode()) > 64
    token = mint_tee_token(tee_key, email_account(victim))
    reply = await call(http, broker, LOGIN, token=token, json_body=login_body("email", victim))
    assert_refused(reply, 400, "malformed_body")
    for email in (victim, attacker):
        lookup = await call(http, broker, GET_USER_ID, method="GET", params={"email": email})
        assert_refused(lookup, 400, "malformed_body")
    assert await count_users(broker) == 0
