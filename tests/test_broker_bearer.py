"""The one bearer verifier (`broker/bearer.py`) on `GET /v1/whoami` and the grant endpoints: a
recorded TEE access token or a broker session, each algorithm pinned, and the attack set refused;
the session key file (`broker/sessions.py`) and its JWKS. Both databases."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from broker_client import GRANT_CREATE, GRANT_LIST, LOGIN, assert_refused, call, login_body
from conftest import BrokerFactory, BrokerHandle, mint_tee_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from login_client import SESSION_JWKS, wallet_login, whoami
from test_broker_callbacks import ATTACKS

from agentkeys_kit.broker.sessions import SessionKeyError, load_or_create_session_key, load_session_key
from agentkeys_kit.broker.storage import AuditEvent
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage.login import SessionRow
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from fixtures.wallets import EVM_ALICE_KEY, evm_user_id_value

ALICE = evm_user_id_value(EVM_ALICE_KEY)
ALICE_ACCOUNT = omni_account_of(IdentityKind.EVM, ALICE, "agentkeys")
LOCAL = {"BROKER_LOGIN_BACKEND": "local"}


@pytest.fixture(scope="module")
def other_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def es256(header: dict[str, Any], claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    return jwt.encode(claims, key, algorithm="ES256", headers=header)


# --------------------------------------------------------------------------- TEE access tokens


async def test_a_recorded_tee_access_token_is_a_bearer(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    token = mint_tee_token(tee_key, ALICE_ACCOUNT)
    assert (await call(http, broker, LOGIN, token=token, json_body=login_body("evm", ALICE))).status == 200
    me = await whoami(http, broker, token)
    assert me.status == 200, me
    assert me.body["data"] == {
        "omni_account": ALICE_ACCOUNT,
        "identity_type": "evm",
        "identity_value": ALICE,
        "wallet": ALICE,
        "via": "tee",
        "session_id": None,
        "client_id": "agentkeys",
    }


async def test_a_valid_tee_token_the_broker_never_recorded_is_refused(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    recorded = mint_tee_token(tee_key, ALICE_ACCOUNT)
    assert (await call(http, broker, LOGIN, token=recorded, json_body=login_body("evm", ALICE))).status == 200
    # the same OmniAccount, another token (a later expiry): its callback never reached the broker
    unrecorded = mint_tee_token(tee_key, ALICE_ACCOUNT, exp=int(time.time()) + 3600)
    reply = await whoami(http, broker, unrecorded)
    assert_refused(reply, 401, "invalid_token")
    assert "never recorded" in reply.body["data"]["reason"]


async def test_two_recorded_tee_tokens_of_one_user_both_work(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    tokens = [mint_tee_token(tee_key, ALICE_ACCOUNT, exp=int(time.time()) + 3600 + n) for n in range(2)]
    for token in tokens:  # two machines, two logins
        assert (await call(http, broker, LOGIN, token=token, json_body=login_body("evm", ALICE))).status == 200
    for token in tokens:
        assert (await whoami(http, broker, token)).status == 200


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_the_callbacks_tee_token_attack_set_is_refused_here_too(
    attack: str,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    other_rsa: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
) -> None:
    broker = await make_broker()
    genuine = mint_tee_token(tee_key, ALICE_ACCOUNT)
    assert (await call(http, broker, LOGIN, token=genuine, json_body=login_body("evm", ALICE))).status == 200
    reply = await whoami(http, broker, ATTACKS[attack](tee_key, other_rsa, ALICE_ACCOUNT))
    assert_refused(reply, 401, "invalid_token")


# --------------------------------------------------------------------------- sessions and the attack set


def _claims(broker: BrokerHandle, **changes: Any) -> dict[str, Any]:
    now = broker.state.now()
    claims = {
        "iss": broker.state.sessions.issuer,
        "sub": f"agentkeys:user:{ALICE_ACCOUNT}",
        "aud": "agentkeys:broker",
        "iat": now,
        "exp": now + 600,
        "jti": "ses_forged",
        "agentkeys": {
            "omni_account": ALICE_ACCOUNT,
            "wallet_address": ALICE,
            "identity_type": "evm",
            "identity_value": ALICE,
        },
    }
    claims.update(changes)
    return claims


SessionAttack = Callable[[BrokerHandle, str, rsa.RSAPrivateKey, rsa.RSAPrivateKey], str]


def _with_header(token: str, header: dict[str, Any]) -> str:
    _, payload, signature = token.split(".")
    return f"{segment(header)}.{payload}.{signature}"


def _signed(broker: BrokerHandle, header: dict[str, Any], claims: dict[str, Any]) -> str:
    return es256(header, claims, broker.state.sessions.key.private_key)


def _kid(broker: BrokerHandle) -> str:
    return broker.state.sessions.key.kid


def _genuine_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


SESSION_ATTACKS: dict[str, SessionAttack] = {
    "alg_none": lambda b, t, tee, other: f"{segment({'alg': 'none', 'kid': _kid(b)})}.{t.split('.')[1]}.",
    "hs256_keyed_with_the_session_public_key": lambda b, t, tee, other: _hs256(b, t),
    "es256_by_another_p256_key_same_kid": lambda b, t, tee, other: es256(
        {"kid": _kid(b)}, _genuine_claims(t), ec.generate_private_key(ec.SECP256R1())
    ),
    "unknown_kid": lambda b, t, tee, other: _signed(b, {"kid": "ak-session-1"}, _genuine_claims(t)),
    "no_kid": lambda b, t, tee, other: jwt.encode(_genuine_claims(t), b.state.sessions.key.private_key, "ES256"),
    "jku_header": lambda b, t, tee, other: _signed(
        b, {"kid": _kid(b), "jku": "http://127.0.0.1:1/k"}, _genuine_claims(t)
    ),
    "x5u_header": lambda b, t, tee, other: _signed(
        b, {"kid": _kid(b), "x5u": "http://127.0.0.1:1/c"}, _genuine_claims(t)
    ),
    "jwk_header": lambda b, t, tee, other: _signed(
        b, {"kid": _kid(b), "jwk": b.state.sessions.key.jwk()}, _genuine_claims(t)
    ),
    "x5c_header": lambda b, t, tee, other: _signed(b, {"kid": _kid(b), "x5c": ["MII"]}, _genuine_claims(t)),
    "crit_header": lambda b, t, tee, other: _signed(b, {"kid": _kid(b), "crit": ["exp"]}, _genuine_claims(t)),
    "rs256_header_on_the_session": lambda b, t, tee, other: _with_header(t, {"alg": "RS256", "kid": _kid(b)}),
    "rs256_by_the_tee_key_with_session_claims": lambda b, t, tee, other: jwt.encode(
        _genuine_claims(t), tee, "RS256", headers={"kid": _kid(b)}
    ),
    "es256_header_on_a_tee_token": lambda b, t, tee, other: _with_header(
        mint_tee_token(tee, ALICE_ACCOUNT), {"alg": "ES256", "kid": _kid(b), "typ": "JWT"}
    ),
    "ps256_by_the_tee_key": lambda b, t, tee, other: jwt.encode(_genuine_claims(t), tee, "PS256"),
    "tampered_claims": lambda b, t, tee, other: (
        f"{t.split('.')[0]}.{segment({**_genuine_claims(t), 'exp': _genuine_claims(t)['exp'] + 86400})}."
        f"{t.split('.')[2]}"
    ),
    "truncated_signature": lambda b, t, tee, other: t[:-8],
    "padded_segment": lambda b, t, tee, other: t + "==",
    "expired": lambda b, t, tee, other: _signed(b, {"kid": _kid(b)}, {**_genuine_claims(t), "exp": b.state.now() - 1}),
    "wrong_audience": lambda b, t, tee, other: _signed(b, {"kid": _kid(b)}, {**_genuine_claims(t), "aud": "agentkeys"}),
    "wrong_issuer": lambda b, t, tee, other: _signed(b, {"kid": _kid(b)}, {**_genuine_claims(t), "iss": "https://x"}),
    "issued_in_the_future": lambda b, t, tee, other: _signed(
        b, {"kid": _kid(b)}, {**_genuine_claims(t), "iat": b.state.now() + 3600}
    ),
    "sub_not_the_omni_account": lambda b, t, tee, other: _signed(
        b, {"kid": _kid(b)}, {**_genuine_claims(t), "sub": "agentkeys:user:0x" + "00" * 32}
    ),
    "jti_never_issued": lambda b, t, tee, other: _signed(b, {"kid": _kid(b)}, _claims(b)),
    "no_jti": lambda b, t, tee, other: _signed(
        b, {"kid": _kid(b)}, {k: v for k, v in _genuine_claims(t).items() if k != "jti"}
    ),
    "repeated_header_key": lambda b, t, tee, other: _repeated_alg(b, t),
}


#: the rule each attack must be refused by (so an attack refused for an unrelated reason fails)
SESSION_ATTACK_REASONS: dict[str, str | tuple[str, ...]] = {
    "alg_none": "alg 'none' is not accepted",
    "hs256_keyed_with_the_session_public_key": "alg 'HS256' is not accepted",
    "es256_by_another_p256_key_same_kid": "InvalidSignature",
    "unknown_kid": "unknown kid",
    "no_kid": "unknown kid",
    "jku_header": "offers a key (jku)",
    "x5u_header": "offers a key (x5u)",
    "jwk_header": "offers a key (jwk)",
    "x5c_header": "offers a key (x5c)",
    "crit_header": "crit",
    "rs256_header_on_the_session": "InvalidSignature",
    "rs256_by_the_tee_key_with_session_claims": "InvalidAudience",
    "es256_header_on_a_tee_token": "InvalidSignature",
    "ps256_by_the_tee_key": "alg 'PS256' is not accepted",
    "tampered_claims": "InvalidSignature",
    "truncated_signature": ("InvalidSignature", "canonical base64url"),  # as the cut bits fall
    "padded_segment": "without padding",
    "expired": "expired",
    "wrong_audience": "InvalidAudience",
    "wrong_issuer": "InvalidIssuer",
    "issued_in_the_future": "issued in the future",
    "sub_not_the_omni_account": "sub does not name",
    "jti_never_issued": "never issued",
    "no_jti": "jti",
    "repeated_header_key": "repeated",
}


def _hs256(broker: BrokerHandle, token: str) -> str:
    pem = broker.state.sessions.key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{segment({'alg': 'HS256', 'kid': _kid(broker)})}.{token.split('.')[1]}"
    return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def _repeated_alg(broker: BrokerHandle, token: str) -> str:
    header = b64(f'{{"alg":"HS256","alg":"ES256","kid":"{_kid(broker)}","typ":"JWT"}}'.encode())
    _, payload, signature = token.split(".")
    return f"{header}.{payload}.{signature}"


@pytest.mark.parametrize("attack", list(SESSION_ATTACKS))
async def test_the_session_attack_set_is_refused(
    attack: str,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    other_rsa: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
) -> None:
    broker = await make_broker(env=LOCAL)
    genuine = (await wallet_login(http, broker, EVM_ALICE_KEY, ALICE))["session_token"]
    assert (await whoami(http, broker, genuine)).status == 200
    forged = SESSION_ATTACKS[attack](broker, genuine, tee_key, other_rsa)
    assert forged != genuine
    reply = await whoami(http, broker, forged)
    assert_refused(reply, 401, "invalid_token")
    expected = SESSION_ATTACK_REASONS[attack]
    assert any(
        reason in reply.body["data"]["reason"] for reason in (expected if isinstance(expected, tuple) else (expected,))
    )
    # and the grants endpoints refuse it the same way
    assert_refused(await call(http, broker, GRANT_LIST, method="GET", token=forged), 401, "invalid_token")


@pytest.mark.parametrize("header", [None, "Basic YWxpY2U6cHc=", "Bearer", "Bearer  ", "bearer-token xyz"], ids=str)
async def test_without_a_bearer_it_is_missing_bearer(
    header: str | None, make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    headers = {"Authorization": header} if header is not None else {}
    async with http.get(broker.url + "v1/whoami", headers=headers) as response:
        body = await response.json()
    assert response.status == 401 and body["data"]["error"] == "missing_bearer"


async def test_a_refused_bearer_is_audited_by_its_hash_only(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    from agentkeys_kit.broker.storage import store

    broker = await make_broker(env=LOCAL)
    forged = _signed(broker, {"kid": _kid(broker)}, _claims(broker))
    assert_refused(await whoami(http, broker, forged), 401, "invalid_token")
    await broker.state.refusals.flush()
    rows = [row for row in await broker.state.db.run(store.audit_rows) if row["event"] == "whoami"]
    assert len(rows) == 1 and rows[0]["outcome"] == "refused:invalid_token"
    assert rows[0]["bearer_sha256"] == hashlib.sha256(forged.encode()).hexdigest()
    assert forged not in json.dumps(rows)


# --------------------------------------------------------------------------- grants with a session


async def _email_session(broker: BrokerHandle) -> str:
    """A session for an e-mail identity, as `complete_login` would record it."""
    state = broker.state
    account = omni_account_of(IdentityKind.EMAIL, "carol@example.org", "agentkeys")
    token, claims = state.sessions.issue(
        omni_account=account, identity_type="email", identity_value="carol@example.org", wallet=None, now=state.now()
    )
    row = SessionRow(
        claims.jti, account, "email", "carol@example.org", None, "email", claims.issued_at, claims.expires_at
    )
    audit = AuditEvent(event="login", outcome="ok", occurred_at=state.now())
    await state.db.run(
        lambda: login_store.open_session(
            session=row, client_id="agentkeys", pumpx_omni_for=lambda uid: "0x" + "11" * 32, audit=audit
        )
    )
    return token


async def test_a_wallet_session_makes_grants_and_an_email_session_cannot(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env=LOCAL)
    session = (await wallet_login(http, broker, EVM_ALICE_KEY, ALICE))["session_token"]
    body = {"agent_wallet": "0x" + "c3" * 20, "scope": "trade", "expires_at": broker.state.now() + 3600}
    created = await call(http, broker, GRANT_CREATE, token=session, json_body=body)
    assert created.status == 200, created
    grant = created.body["data"]["grant"]
    assert grant["master_wallet"] == ALICE and grant["master_omni_account"] == ALICE_ACCOUNT
    email = await _email_session(broker)
    assert (await whoami(http, broker, email)).body["data"]["wallet"] is None
    assert_refused(await call(http, broker, GRANT_CREATE, token=email, json_body=body), 403, "not_a_wallet_identity")


# --------------------------------------------------------------------------- the session key


async def test_the_jwks_publishes_the_session_key_that_verifies_a_session(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker(env=LOCAL)
    session = (await wallet_login(http, broker, EVM_ALICE_KEY, ALICE))["session_token"]
    reply = await call(http, broker, SESSION_JWKS, method="GET")
    assert reply.status == 200
    [key] = reply.body["keys"]
    assert {key["kty"], key["crv"], key["alg"], key["use"]} == {"EC", "P-256", "ES256", "sig"}
    assert "d" not in key
    claims = jwt.decode(
        session,
        jwt.PyJWK(key).key,
        algorithms=["ES256"],
        audience="agentkeys:broker",
        issuer=broker.state.sessions.issuer,
    )
    assert claims["agentkeys"]["omni_account"] == ALICE_ACCOUNT


def test_the_session_key_is_created_0600_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "session.json"
    first = load_or_create_session_key(path, 1_700_000_000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert first.kid == "ak-session-1700000000"
    assert json.loads(path.read_text())["purpose"] == "session"
    again = load_or_create_session_key(path, 1_800_000_000)
    assert again.kid == first.kid and again.jwk() == first.jwk()
    assert [p.name for p in path.parent.iterdir()] == ["session.json"]  # no temporary file left


def _key_file(path: Path, **changes: Any) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    document = {"kid": "ak-session-1", "private_key_pem": pem.decode(), "purpose": "session", **changes}
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def _rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


BAD_KEY_FILES: dict[str, Callable[[Path], Path]] = {
    "oidc purpose": lambda p: _key_file(p, purpose="oidc"),
    "no purpose": lambda p: _key_file(p, purpose=None),
    "rsa key": lambda p: _key_file(p, private_key_pem=_rsa_pem()),
    "p384 key": lambda p: _key_file(
        p,
        private_key_pem=ec.generate_private_key(ec.SECP384R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode(),
    ),
    "not json": lambda p: (p.write_text("-----BEGIN PRIVATE KEY-----"), p.chmod(0o600), p)[2],
    "bad kid": lambda p: _key_file(p, kid="a b"),
}


@pytest.mark.parametrize("case", list(BAD_KEY_FILES))
def test_a_file_that_is_not_a_session_key_is_refused(case: str, tmp_path: Path) -> None:
    path = BAD_KEY_FILES[case](tmp_path / "session.json")
    with pytest.raises(SessionKeyError):
        load_session_key(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_session_key_readable_by_others_is_refused(mode: int, tmp_path: Path) -> None:
    path = _key_file(tmp_path / "session.json")
    path.chmod(mode)
    with pytest.raises(SessionKeyError, match="chmod 600"):
        load_session_key(path)


async def test_the_broker_does_not_start_with_a_bad_session_key(make_broker: BrokerFactory, tmp_path: Path) -> None:
    path = _key_file(tmp_path / "oidc.json", purpose="oidc")
    with pytest.raises(SessionKeyError, match="not a session key"):
        await make_broker(env={"BROKER_SESSION_KEYPAIR_PATH": str(path)})
    assert os.access(path, os.R_OK)  # refused, not rewritten
    assert json.loads(path.read_text())["purpose"] == "oidc"


def test_replicas_creating_the_key_at_once_end_up_with_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "shared" / "session.json"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda n: load_or_create_session_key(path, 1_700_000_000 + n), range(16)))
    assert len({json.dumps(key.jwk()) for key in keys}) == 1
    assert [p.name for p in path.parent.iterdir()] == ["session.json"]


async def test_a_tee_token_with_a_jku_header_the_callback_took_is_still_no_bearer(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    # The callbacks ignore header fields (as the worker does) and remember the token as verified;
    # the bearer verifier still refuses a header that offers a key.
    broker = await make_broker()
    claims = {"sub": ALICE_ACCOUNT, "typ": "access", "exp": int(time.time()) + 3600, "aud": "agentkeys"}
    token = jwt.encode(claims, tee_key, "RS256", headers={"jku": "http://127.0.0.1:1/keys"})
    assert (await call(http, broker, LOGIN, token=token, json_body=login_body("evm", ALICE))).status == 200
    reply = await whoami(http, broker, token)
    assert_refused(reply, 401, "invalid_token")
    assert "offers a key (jku)" in reply.body["data"]["reason"]


async def test_a_tee_token_verified_before_still_expires_on_the_clock(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    now = [float(int(time.time()))]
    broker = await make_broker(clock=lambda: now[0])
    token = mint_tee_token(tee_key, ALICE_ACCOUNT, exp=int(now[0]) + 100)
    assert (await call(http, broker, LOGIN, token=token, json_body=login_body("evm", ALICE))).status == 200
    now[0] += 100
    assert (await whoami(http, broker, token)).status == 200  # exp itself is the last valid second
    now[0] += 1
    reply = await whoami(http, broker, token)
    assert_refused(reply, 401, "invalid_token")
    assert "Expired" in reply.body["data"]["reason"]
