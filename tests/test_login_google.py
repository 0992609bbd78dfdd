"""Google login (`broker/login/google.py`) against the fake Google provider over loopback, on both
databases: the code flow with state, nonce and PKCE S256, the id token's checks, the poll that
hands the session out once, and a request started on one broker and finished on another."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from broker_client import Reply, assert_refused, call
from conftest import BrokerFactory, BrokerHandle
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.config import BrokerConfigError, GoogleLoginSettings, config_from_env
from agentkeys_kit.broker.login.google import OpenIdProvider, ProviderError
from agentkeys_kit.conformance.fake_google import FakeGoogle, default_sub
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

CLIENT_ID = "agentkeys-broker.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-broker-test-secret"
EMAIL = "alice@gmail.test"
START = "v1/auth/google/start"
CALLBACK = "auth/google/callback"
CONFIRM_PATH = "v1/auth/google/confirm"
CONFIRM = "/" + CONFIRM_PATH


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def google_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def google_clock() -> Clock:
    return Clock()


@pytest.fixture
async def google(google_key: rsa.RSAPrivateKey, google_clock: Clock) -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle(key=google_key, now=google_clock) as provider:
        provider.add_user(EMAIL)
        yield provider


@pytest.fixture
def clock() -> Clock:
    return Clock()


def google_env(google: FakeGoogle) -> dict[str, str]:
    return {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_GOOGLE_CLIENT_ID": CLIENT_ID,
        "BROKER_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
        "BROKER_GOOGLE_ISSUER": google.issuer,
    }


BrokerStarter = Callable[[], Any]


@pytest.fixture
def start_broker(make_broker: BrokerFactory, google: FakeGoogle, clock: Clock) -> BrokerStarter:
    """A broker with Google login whose callback URL the provider knows."""
    redirects: list[str] = []

    async def starter() -> BrokerHandle:
        broker = await make_broker(google_env(google), clock=clock)
        redirects.append(broker.url + CALLBACK)
        google.register_client(CLIENT_ID, CLIENT_SECRET, list(redirects))
        return broker

    return starter


@pytest.fixture
async def broker(start_broker: BrokerStarter) -> BrokerHandle:
    handle: BrokerHandle = await start_broker()
    return handle


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(http: aiohttp.ClientSession, broker: BrokerHandle, hint: str | None = EMAIL) -> dict[str, Any]:
    reply = await call(http, broker, START, json_body={"login_hint": hint} if hint else None)
    assert reply.status == 200, reply
    data: dict[str, Any] = reply.body["data"]
    return data


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


async def browse(http: aiohttp.ClientSession, url: str) -> Reply:
    """What the user's browser does: follow the provider's redirect to the broker's callback."""
    async with http.get(url, allow_redirects=True) as response:
        text = await response.text()
    try:
        return Reply(response.status, json.loads(text))
    except ValueError:
        return Reply(response.status, text)


async def poll(http: aiohttp.ClientSession, broker: BrokerHandle, request_id: str) -> Reply:
    return await call(http, broker, f"v1/auth/google/status/{request_id}", method="GET")


async def confirm(http: aiohttp.ClientSession, broker: BrokerHandle, request_id: str, code: str) -> Reply:
    return await call(http, broker, CONFIRM_PATH, json_body={"request_id": request_id, "code": code})


def page_code(page: Reply) -> str:
    """The confirmation code the signed-in page shows the user."""
    found = re.search(r'id="confirmation-code">([A-Z]{4}-[A-Z]{4})<', page.body)
    assert found, page.body
    return found.group(1)


async def signed_in(http: aiohttp.ClientSession, broker: BrokerHandle) -> tuple[str, str]:
    """A request whose browser came back from the provider: (request id, the page's code)."""
    started = await start(http, broker)
    page = await browse(http, started["authorization_url"])
    assert page.status == 200, page
    return started["request_id"], page_code(page)


async def callback(http: aiohttp.ClientSession, broker: BrokerHandle, **params: str) -> Reply:
    async with http.get(broker.url + CALLBACK + "?" + urlencode(params)) as response:
        text = await response.text()
    try:
        return Reply(response.status, json.loads(text))
    except ValueError:
        return Reply(response.status, text)


# --------------------------------------------------------------------------- the flow


async def test_google_login_hands_the_session_out_once(
    http: aiohttp.ClientSession, broker: BrokerHandle, google: FakeGoogle
) -> None:
    started = await start(http, broker)
    params = query_of(started["authorization_url"])
    assert started["authorization_url"].startswith(google.authorization_endpoint + "?")
    assert params["client_id"] == CLIENT_ID and params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["redirect_uri"] == broker.url + CALLBACK
    assert set(params["scope"].split()) == {"openid", "email"}
    assert len(params["state"]) >= 43 and len(params["nonce"]) >= 43
    assert started["expires_in_seconds"] == 600
    assert (await poll(http, broker, started["request_id"])).body["data"] == {"status": "pending"}

    page = await browse(http, started["authorization_url"])
    assert page.status == 200 and "Signed in with Google" in page.body and EMAIL in page.body
    code = page_code(page)
    assert set(code.replace("-", "")) <= set("BCDFGHJKLMNPQRSTVWXZ")

    # the poll never hands out the session: the code the browser shows is needed as well
    assert (await poll(http, broker, started["request_id"])).body["data"]["status"] == "confirm"
    reply = await confirm(http, broker, started["request_id"], code.lower().replace("-", " "))
    assert reply.status == 200, reply
    assert reply.body["data"]["omni_account"] == omni_account_of(IdentityKind.GOOGLE, default_sub(EMAIL), "agentkeys")
    assert_refused(await poll(http, broker, started["request_id"]), 404, "unknown_request")
    assert_refused(await confirm(http, broker, started["request_id"], code), 404, "unknown_request")


async def test_whoever_only_holds_the_request_id_gets_no_session(
    http: aiohttp.ClientSession, broker: BrokerHandle
) -> None:
    """The phishing path: a stranger starts a sign-in, a victim finishes it in a browser. Polling
    gives nothing, and guessing the code fails the request after five tries."""
    request_id, code = await signed_in(http, broker)
    assert (await poll(http, broker, request_id)).body["data"] == {"status": "confirm", "confirm_url": CONFIRM}
    wrong = "BBBB-BBBB" if code != "BBBB-BBBB" else "CCCC-CCCC"
    for left in (4, 3, 2, 1):
        reply = await confirm(http, broker, request_id, wrong)
        assert_refused(reply, 401, "wrong_confirmation_code")
        assert reply.body["data"]["attempts_left"] == left
    last = await confirm(http, broker, request_id, wrong)
    assert_refused(last, 401, "google_login_failed")
    assert last.body["data"]["reason"] == "confirmation_failed"
    # the right code after that: the request is failed, for the code and for the poll
    late = await confirm(http, broker, request_id, code)
    assert_refused(late, 401, "google_login_failed")
    assert late.body["data"]["reason"] == "confirmation_failed"
    assert (await poll(http, broker, request_id)).body["data"]["reason"] == "confirmation_failed"


async def test_confirming_before_the_browser_is_back_or_unknown_or_malformed(
    http: aiohttp.ClientSession, broker: BrokerHandle
) -> None:
    started = await start(http, broker)
    assert_refused(await confirm(http, broker, started["request_id"], "BCDF-GHJK"), 409, "not_signed_in_yet")
    assert_refused(await confirm(http, broker, "A" * 43, "BCDF-GHJK"), 404, "unknown_request")
    assert_refused(await confirm(http, broker, "short", "BCDF-GHJK"), 404, "unknown_request")
    for body in ({"request_id": started["request_id"]}, {"request_id": started["request_id"], "code": "é" * 8}):
        assert_refused(await call(http, broker, CONFIRM_PATH, json_body=body), 400, "malformed_body")
    # none of that counted against the request: it still completes
    page = await browse(http, started["authorization_url"])
    assert (await confirm(http, broker, started["request_id"], page_code(page))).status == 200


async def test_the_code_expires_with_the_request(
    http: aiohttp.ClientSession, broker: BrokerHandle, clock: Clock
) -> None:
    request_id, code = await signed_in(http, broker)
    clock.now += 600
    assert_refused(await confirm(http, broker, request_id, code), 401, "request_expired")


async def test_state_is_single_use(http: aiohttp.ClientSession, broker: BrokerHandle) -> None:
    started = await start(http, broker)
    async with http.get(started["authorization_url"], allow_redirects=False) as response:
        callback_url = response.headers["Location"]
    assert (await browse(http, callback_url)).status == 200
    assert_refused(await browse(http, callback_url), 400, "unknown_state")


async def test_unknown_or_missing_state_is_refused(http: aiohttp.ClientSession, broker: BrokerHandle) -> None:
    assert_refused(await callback(http, broker, state="made-up", code="4/0abc"), 400, "unknown_state")
    assert_refused(await callback(http, broker, code="4/0abc"), 400, "malformed_body")
    async with http.get(broker.url + CALLBACK + "?state=a&state=b&code=c") as response:
        assert response.status == 400


async def test_a_code_for_another_pkce_challenge_fails_the_exchange(
    http: aiohttp.ClientSession, broker: BrokerHandle, google: FakeGoogle
) -> None:
    started = await start(http, broker)
    params = query_of(started["authorization_url"])
    # an attacker's code (its own PKCE challenge) injected with the victim's state
    attacker_challenge = "A" * 43
    code = google.issue_code(CLIENT_ID, params["redirect_uri"], EMAIL, params["nonce"], attacker_challenge, "S256")
    reply = await callback(http, broker, state=params["state"], code=code)
    assert_refused(reply, 401, "google_login_failed")
    assert reply.body["data"]["reason"] == "code_exchange_failed"
    polled = await poll(http, broker, started["request_id"])
    assert_refused(polled, 401, "google_login_failed")
    assert polled.body["data"]["reason"] == "code_exchange_failed"


async def test_a_wrong_nonce_is_refused(http: aiohttp.ClientSession, broker: BrokerHandle, google: FakeGoogle) -> None:
    started = await start(http, broker)
    params = query_of(started["authorization_url"])
    code = google.issue_code(
        CLIENT_ID, params["redirect_uri"], EMAIL, "another-nonce", params["code_challenge"], "S256"
    )
    reply = await callback(http, broker, state=params["state"], code=code)
    assert reply.body["data"]["reason"] == "id_token_invalid", reply
    assert_refused(await poll(http, broker, started["request_id"]), 401, "google_login_failed")


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else.apps.googleusercontent.com"},
        {"aud": [CLIENT_ID, "other"], "azp": "other"},
        {"iss": "https://accounts.google.com.evil"},
        {"nonce": None},
        {"sub": "x" * 65},
    ],
    ids=["audience", "azp", "issuer", "no-nonce", "long-sub"],
)
async def test_id_token_claims_are_checked(
    http: aiohttp.ClientSession,
    broker: BrokerHandle,
    google: FakeGoogle,
    monkeypatch: pytest.MonkeyPatch,
    claims: dict[str, Any],
) -> None:
    mint = FakeGoogle.mint_id_token

    def forged(self: FakeGoogle, client_id: str, user: Any, **kwargs: Any) -> str:
        return mint(self, client_id, user, **{**kwargs, "extra_claims": claims})

    monkeypatch.setattr(FakeGoogle, "mint_id_token", forged)
    started = await start(http, broker)
    reply = await browse(http, started["authorization_url"])
    assert_refused(reply, 401, "google_login_failed")
    assert reply.body["data"]["reason"] == "id_token_invalid"


async def test_an_expired_id_token_is_refused_by_the_brokers_clock(
    http: aiohttp.ClientSession, broker: BrokerHandle, google_clock: Clock
) -> None:
    google_clock.now -= 3600 + 61  # the provider signs a token that expired 61 s ago
    started = await start(http, broker)
    reply = await browse(http, started["authorization_url"])
    assert reply.body["data"]["reason"] == "id_token_invalid", reply


async def test_user_denied(http: aiohttp.ClientSession, broker: BrokerHandle) -> None:
    started = await start(http, broker)
    state = query_of(started["authorization_url"])["state"]
    reply = await callback(http, broker, state=state, error="access_denied")
    assert reply.body["data"]["reason"] == "user_denied", reply
    polled = await poll(http, broker, started["request_id"])
    assert polled.body["data"]["reason"] == "user_denied"
    assert_refused(await callback(http, broker, state=state, code="4/0x"), 400, "unknown_state")


async def test_requests_expire_after_ten_minutes(
    http: aiohttp.ClientSession, broker: BrokerHandle, clock: Clock
) -> None:
    started = await start(http, broker)
    clock.now += 600
    assert_refused(await poll(http, broker, started["request_id"]), 401, "request_expired")
    assert_refused(await browse(http, started["authorization_url"]), 400, "unknown_state")


async def test_unknown_request_ids(http: aiohttp.ClientSession, broker: BrokerHandle) -> None:
    for request_id in ("short", "A" * 43, "A" * 70, "A" * 42 + "!"):
        assert_refused(await poll(http, broker, request_id), 404, "unknown_request")


async def test_start_refuses_unknown_fields(http: aiohttp.ClientSession, broker: BrokerHandle) -> None:
    for body in ({"provider": "evil"}, {"login_hint": 5}, [1]):
        assert_refused(await call(http, broker, START, json_body=body), 400, "malformed_body")
    assert (await call(http, broker, START)).status == 200  # an empty body is fine


async def test_started_on_one_broker_finished_on_another(
    http: aiohttp.ClientSession, start_broker: BrokerStarter
) -> None:
    first, second = await start_broker(), await start_broker()
    started = await start(http, first)
    async with http.get(started["authorization_url"], allow_redirects=False) as response:
        location = response.headers["Location"]
    # the callback reaches the other replica (a load balancer's choice)
    assert location.startswith(first.url)
    other = second.url + location[len(first.url) :]
    page = await browse(http, other)
    assert page.status == 200
    assert_refused(await browse(http, location), 400, "unknown_state")
    # the code shown by one replica is confirmed at the other, and the session handed out once
    code = page_code(page)
    assert (await confirm(http, first, started["request_id"], code)).status == 200
    assert_refused(await confirm(http, second, started["request_id"], code), 404, "unknown_request")
    assert_refused(await poll(http, second, started["request_id"]), 404, "unknown_request")


async def test_the_access_log_never_shows_the_request_id(
    http: aiohttp.ClientSession, broker: BrokerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentkeys_kit.broker.access")
    started = await start(http, broker)
    await poll(http, broker, started["request_id"])
    await asyncio.sleep(0.05)  # the access line is written after the response
    paths = [record.getMessage() for record in caplog.records if record.name == "agentkeys_kit.broker.access"]
    assert "GET /v1/auth/google/status/{request_id} 200" in paths, paths
    assert started["request_id"] not in caplog.text


# --------------------------------------------------------------------------- the verifier alone


@pytest.fixture
async def provider(google: FakeGoogle, clock: Clock) -> AsyncIterator[OpenIdProvider]:
    google.register_client(CLIENT_ID, CLIENT_SECRET, ["http://127.0.0.1:9/cb"])
    settings = GoogleLoginSettings(CLIENT_ID, CLIENT_SECRET, google.issuer)
    async with aiohttp.ClientSession() as session:
        yield OpenIdProvider(settings, session, clock)


def _header_forgeries(google: FakeGoogle, key: rsa.RSAPrivateKey) -> Iterator[tuple[str, str]]:
    claims = {"iss": google.issuer, "aud": CLIENT_ID, "sub": "1", "nonce": "n", "iat": int(time.time())}
    claims["exp"] = claims["iat"] + 600
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = google.jwk()["kid"]
    yield "HS256 with the public key", _hs256(claims, public_pem, kid)
    yield "alg none", jwt.encode(claims, None, algorithm="none", headers={"kid": kid})
    yield "jku header", jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "jku": "http://x/"})
    yield "unknown kid", jwt.encode(claims, key, algorithm="RS256", headers={"kid": "nope"})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    yield "another key", jwt.encode(claims, other, algorithm="RS256", headers={"kid": kid})
    yield "not a JWT", "not.a.jwt"


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """What PyJWT refuses to make: an HS256 token keyed with the RSA public key's PEM."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def test_forged_id_tokens_are_refused(
    provider: OpenIdProvider, google: FakeGoogle, google_key: rsa.RSAPrivateKey
) -> None:
    good = google.mint_id_token(CLIENT_ID, EMAIL, nonce="n")
    assert (await provider.verify_id_token(good, "n")).subject == default_sub(EMAIL)
    for name, token in _header_forgeries(google, google_key):
        with pytest.raises(ProviderError) as refused:
            await provider.verify_id_token(token, "n")
        assert refused.value.reason == "id_token_invalid", name


async def test_discovery_naming_another_issuer_is_refused(google: FakeGoogle, clock: Clock) -> None:
    google.issuer_override = "https://accounts.google.com"
    settings = GoogleLoginSettings(CLIENT_ID, CLIENT_SECRET, google.url.rstrip("/"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderError, match="another issuer"):
            await OpenIdProvider(settings, session, clock).metadata()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_GOOGLE_CLIENT_SECRET": ""}, "needs BROKER_GOOGLE_CLIENT_SECRET"),
        ({"BROKER_GOOGLE_ISSUER": "http://accounts.example.com"}, "must be https"),
        ({"BROKER_GOOGLE_REDIRECT_URI": "/relative"}, "absolute"),
    ],
)
def test_google_configuration_refused(env: dict[str, str], message: str, tmp_path: Path) -> None:
    base = {
        "BROKER_TEE_JWT_PUBLIC_KEY": str(tmp_path / "k.pem"),
        "BROKER_DB_URL": f"sqlite:///{tmp_path}/db",
        "BROKER_GOOGLE_CLIENT_ID": "id",
        "BROKER_GOOGLE_CLIENT_SECRET": "secret",
    }
    with pytest.raises(BrokerConfigError, match=message):
        config_from_env({**base, **env})
    assert "secret" not in repr(config_from_env(base).google_login)


async def test_jwks_is_refetched_for_a_new_kid_at_most_once_a_minute(
    google: FakeGoogle, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches: list[str] = []
    get_json = OpenIdProvider._get_json

    async def counted(self: OpenIdProvider, url: str) -> Any:
        if url == google.jwks_uri:
            fetches.append(url)
        return await get_json(self, url)

    monkeypatch.setattr(OpenIdProvider, "_get_json", counted)
    ticks = Clock()
    settings = GoogleLoginSettings(CLIENT_ID, CLIENT_SECRET, google.issuer)
    async with aiohttp.ClientSession() as session:
        provider = OpenIdProvider(settings, session, clock, monotonic=ticks)
        assert (await provider.verify_id_token(google.mint_id_token(CLIENT_ID, EMAIL, nonce="n"), "n")).subject
        # the provider rotates its key: tokens name a kid the broker has not seen
        google.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        google.kid = None
        rotated = google.mint_id_token(CLIENT_ID, EMAIL, nonce="n")
        for _ in range(3):  # a burst of unknown kids within the minute: no refetch
            with pytest.raises(ProviderError, match="kid"):
                await provider.verify_id_token(rotated, "n")
        assert len(fetches) == 1
        ticks.now += 61
        assert (await provider.verify_id_token(rotated, "n")).subject == default_sub(EMAIL)
        assert len(fetches) == 2


async def test_expired_sign_in_requests_are_purged(
    http: aiohttp.ClientSession, broker: BrokerHandle, clock: Clock
) -> None:
    from agentkeys_kit.broker.storage import login as login_store

    await start(http, broker)
    assert (await broker.state.db.run(login_store.purge_expired, broker.state.now()))["oauth_requests"] == 0
    clock.now += 601
    assert (await broker.state.db.run(login_store.purge_expired, broker.state.now()))["oauth_requests"] == 1


async def test_redirect_uri_from_the_public_url(
    make_broker: BrokerFactory, google: FakeGoogle, http: aiohttp.ClientSession
) -> None:
    env = {**google_env(google), "BROKER_PUBLIC_URL": "https://broker.example.com/"}
    broker = await make_broker(env)
    params = query_of((await start(http, broker))["authorization_url"])
    assert params["redirect_uri"] == "https://broker.example.com/auth/google/callback"
    explicit = await make_broker({**env, "BROKER_GOOGLE_REDIRECT_URI": "https://login.example.com/cb"})
    params = query_of((await start(http, explicit))["authorization_url"])
    assert params["redirect_uri"] == "https://login.example.com/cb"
