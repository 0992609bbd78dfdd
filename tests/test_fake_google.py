"""FakeGoogle over real loopback HTTP: discovery, JWKS, the code flow with state/nonce/PKCE, errors."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDictProxy

from agentkeys_kit.conformance.fake_google import FakeGoogle, at_hash, default_sub, make_pkce, pkce_challenge

CLIENT_ID = "heima-test.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-test-secret"
REDIRECT_URI = "http://127.0.0.1:9/callback"
OTHER_REDIRECT_URI = "http://127.0.0.1:9/other"
EMAIL = "alice@example.com"


class Clock:
    """A settable clock starting at the real time, so tokens it stamps verify with PyJWT."""

    def __init__(self) -> None:
        self.value = time.time()

    def __call__(self) -> float:
        return self.value


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def google(signing_key: rsa.RSAPrivateKey, clock: Clock) -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle(key=signing_key, now=clock) as provider:
        provider.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI, OTHER_REDIRECT_URI])
        provider.add_user(EMAIL, name="Alice Example")
        yield provider


async def exchange(
    http: aiohttp.ClientSession,
    google: FakeGoogle,
    code: str,
    *,
    redirect_uri: str = REDIRECT_URI,
    client_secret: str | None = CLIENT_SECRET,
    basic: bool = False,
    **extra: str,
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, **extra}
    headers: dict[str, str] = {}
    if basic:
        credentials = base64.b64encode(f"{CLIENT_ID}:{client_secret}".encode()).decode()
        headers["Authorization"] = "Basic " + credentials
    else:
        form["client_id"] = CLIENT_ID
        if client_secret is not None:
            form["client_secret"] = client_secret
    async with http.post(google.token_endpoint, data=form, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def authorize(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    async with http.get(url, allow_redirects=False) as response:
        await response.read()
        return response


def verify(google: FakeGoogle, jwks: dict[str, Any], id_token: str, **options: Any) -> dict[str, Any]:
    header = jwt.get_unverified_header(id_token)
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    key = jwt.PyJWK(jwk, algorithm="RS256")
    claims: dict[str, Any] = jwt.decode(
        id_token, key=key, algorithms=["RS256"], audience=CLIENT_ID, issuer=google.issuer, **options
    )
    return claims


async def fetch_jwks(http: aiohttp.ClientSession, google: FakeGoogle) -> dict[str, Any]:
    async with http.get(google.jwks_uri) as response:
        assert response.status == 200
        jwks: dict[str, Any] = await response.json()
    return jwks


# --------------------------------------------------------------------------- discovery and keys


async def test_discovery_document_points_at_the_provider(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    async with http.get(google.url + ".well-known/openid-configuration") as response:
        assert response.status == 200
        doc = await response.json()
    base = google.url.rstrip("/")
    assert doc["issuer"] == base == google.issuer and not doc["issuer"].endswith("/")
    assert doc["authorization_endpoint"] == base + "/o/oauth2/v2/auth"
    assert doc["token_endpoint"] == base + "/token"
    assert doc["jwks_uri"] == base + "/oauth2/v3/certs"
    assert doc["userinfo_endpoint"] == base + "/v1/userinfo"
    assert doc["response_types_supported"] == ["code"]
    assert doc["subject_types_supported"] == ["public"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["scopes_supported"] == ["openid", "email", "profile"]
    assert doc["code_challenge_methods_supported"] == ["S256", "plain"]
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_post", "client_secret_basic"]


async def test_jwks_publishes_the_signing_key(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    jwks = await fetch_jwks(http, google)
    (jwk,) = jwks["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert jwk["kid"] == google.kid
    public = jwt.PyJWK(jwk).key
    assert public.public_numbers() == google.public_key.public_numbers()


async def test_generated_key_and_kid_are_stable_for_the_instance(http: aiohttp.ClientSession) -> None:
    async with FakeGoogle() as provider:
        provider.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
        provider.add_user(EMAIL)
        first = await fetch_jwks(http, provider)
        status, tokens, _ = await exchange(http, provider, provider.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL))
        assert status == 200
        assert await fetch_jwks(http, provider) == first
        assert jwt.get_unverified_header(tokens["id_token"])["kid"] == first["keys"][0]["kid"]
        assert verify(provider, first, tokens["id_token"])["sub"] == default_sub(EMAIL)


# --------------------------------------------------------------------------- the code flow


async def test_full_code_flow_via_the_authorize_redirect(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    url = google.authorize_url(CLIENT_ID, REDIRECT_URI, login_hint=EMAIL, state="st-123", nonce="n-456")
    response = await authorize(http, url)
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == ["st-123"]
    (code,) = query["code"]

    status, tokens, headers = await exchange(http, google, code)
    assert status == 200, tokens
    assert headers["Cache-Control"] == "no-store"
    assert set(tokens) == {"access_token", "id_token", "expires_in", "token_type", "scope"}
    assert tokens["expires_in"] == 3599 and tokens["token_type"] == "Bearer"
    assert tokens["scope"] == "openid email profile"

    assert jwt.get_unverified_header(tokens["id_token"]) == {"alg": "RS256", "kid": google.kid, "typ": "JWT"}
    claims = verify(google, await fetch_jwks(http, google), tokens["id_token"])
    assert claims["aud"] == CLIENT_ID and claims["azp"] == CLIENT_ID
    assert claims["nonce"] == "n-456"
    assert claims["iss"] == google.issuer
    assert claims["sub"] == default_sub(EMAIL) and len(claims["sub"]) == 21 and claims["sub"].isdigit()
    assert claims["email"] == EMAIL and claims["email_verified"] is True
    assert claims["at_hash"] == at_hash(tokens["access_token"])
    assert claims["exp"] - claims["iat"] == 3600


async def test_id_token_is_rejected_under_another_algorithm_or_audience(
    google: FakeGoogle, http: aiohttp.ClientSession
) -> None:
    _, tokens, _ = await exchange(http, google, google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL))
    jwks = await fetch_jwks(http, google)
    key = jwt.PyJWK(jwks["keys"][0], algorithm="RS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(tokens["id_token"], key=key, algorithms=["RS512"], audience=CLIENT_ID)
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(tokens["id_token"], key=key, algorithms=["RS256"], audience="someone-else")


async def test_nonce_is_absent_when_not_requested(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    _, tokens, _ = await exchange(http, google, google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL))
    assert "nonce" not in verify(google, await fetch_jwks(http, google), tokens["id_token"])


async def test_form_post_response_mode_auto_submits_code_and_state(
    google: FakeGoogle, http: aiohttp.ClientSession
) -> None:
    url = google.authorize_url(
        CLIENT_ID, REDIRECT_URI, login_hint=EMAIL, state="a<b&c", nonce="n", response_mode="form_post"
    )
    async with http.get(url, allow_redirects=False) as response:
        assert response.status == 200 and "Location" not in response.headers
        assert response.content_type == "text/html"
        page = await response.text()
    assert f'action="{REDIRECT_URI}"' in page and "document.forms[0].submit()" in page
    assert 'name="state" value="a&lt;b&amp;c"' in page
    code = page.split('name="code" value="', 1)[1].split('"', 1)[0]
    status, tokens, _ = await exchange(http, google, code)
    assert status == 200, tokens


async def test_client_secret_basic_is_accepted(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    status, tokens, _ = await exchange(http, google, google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL), basic=True)
    assert status == 200, tokens


async def test_scope_limits_the_claims(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL, scope="openid")
    _, tokens, _ = await exchange(http, google, code)
    claims = verify(google, await fetch_jwks(http, google), tokens["id_token"])
    assert claims["sub"] == default_sub(EMAIL) and "email" not in claims and "name" not in claims


# --------------------------------------------------------------------------- token endpoint errors


async def test_a_code_is_single_use_and_replay_revokes_its_tokens(
    google: FakeGoogle, http: aiohttp.ClientSession
) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    status, tokens, _ = await exchange(http, google, code)
    assert status == 200
    status, error, _ = await exchange(http, google, code)
    assert (status, error["error"]) == (400, "invalid_grant") and error["error_description"]
    async with http.get(google.userinfo_endpoint, headers={"Authorization": "Bearer " + tokens["access_token"]}) as r:
        assert r.status == 401


@pytest.mark.parametrize("basic", [False, True])
async def test_wrong_secret_is_invalid_client(google: FakeGoogle, http: aiohttp.ClientSession, basic: bool) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    status, error, headers = await exchange(http, google, code, client_secret="wrong", basic=basic)
    assert (status, error["error"]) == (401, "invalid_client")
    assert ("WWW-Authenticate" in headers) is basic
    # A failed client authentication does not spend the code.
    status, _, _ = await exchange(http, google, code)
    assert status == 200


async def test_missing_secret_is_invalid_client(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    status, error, _ = await exchange(http, google, code, client_secret=None)
    assert (status, error["error"]) == (401, "invalid_client")


async def test_another_clients_code_is_invalid_grant(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    google.register_client("other-client", "other-secret", [REDIRECT_URI])
    code = google.issue_code("other-client", REDIRECT_URI, EMAIL)
    status, error, _ = await exchange(http, google, code)
    assert (status, error["error"]) == (400, "invalid_grant")


async def test_wrong_redirect_uri_at_token_is_invalid_grant(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    status, error, _ = await exchange(http, google, code, redirect_uri=OTHER_REDIRECT_URI)
    assert (status, error["error"]) == (400, "invalid_grant")
    # The failed attempt spent the code.
    status, error, _ = await exchange(http, google, code)
    assert (status, error["error"]) == (400, "invalid_grant")


async def test_unknown_code_is_invalid_grant(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    status, error, _ = await exchange(http, google, "4/0not-a-code")
    assert (status, error["error"]) == (400, "invalid_grant")


async def test_unsupported_grant_type_and_missing_parameters(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    base = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT_URI}
    cases: list[tuple[dict[str, str], str]] = [
        ({**base, "grant_type": "refresh_token", "refresh_token": "x"}, "unsupported_grant_type"),
        ({**base, "code": "x"}, "invalid_request"),
        ({**base, "grant_type": "authorization_code"}, "invalid_request"),
    ]
    for form, expected in cases:
        async with http.post(google.token_endpoint, data=form) as response:
            assert response.status == 400
            assert (await response.json())["error"] == expected


async def test_both_client_authentication_methods_at_once_is_invalid_request(
    google: FakeGoogle, http: aiohttp.ClientSession
) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    credentials = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    form["client_secret"] = CLIENT_SECRET
    async with http.post(google.token_endpoint, data=form, headers={"Authorization": "Basic " + credentials}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_request"


async def test_expired_code_is_invalid_grant(google: FakeGoogle, clock: Clock, http: aiohttp.ClientSession) -> None:
    fresh = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    stale = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    clock.value += 59
    status, _, _ = await exchange(http, google, fresh)
    assert status == 200
    clock.value += 2
    status, error, _ = await exchange(http, google, stale)
    assert (status, error["error"]) == (400, "invalid_grant")


# --------------------------------------------------------------------------- PKCE


async def test_pkce_s256_through_the_authorize_endpoint(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    verifier, challenge = make_pkce("S256")
    url = google.authorize_url(
        CLIENT_ID,
        REDIRECT_URI,
        login_hint=EMAIL,
        state="s",
        nonce="n",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    response = await authorize(http, url)
    (code,) = parse_qs(urlsplit(response.headers["Location"]).query)["code"]
    status, tokens, _ = await exchange(http, google, code, code_verifier=verifier)
    assert status == 200, tokens
    assert verify(google, await fetch_jwks(http, google), tokens["id_token"])["nonce"] == "n"


@pytest.mark.parametrize("method", ["S256", "plain"])
async def test_pkce_wrong_or_missing_verifier_is_invalid_grant(
    google: FakeGoogle, http: aiohttp.ClientSession, method: str
) -> None:
    verifier, challenge = make_pkce(method)
    wrong = make_pkce(method)[0]
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL, code_challenge=challenge, method=method)
    status, error, _ = await exchange(http, google, code, code_verifier=wrong)
    assert (status, error["error"]) == (400, "invalid_grant")
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL, code_challenge=challenge, method=method)
    status, error, _ = await exchange(http, google, code)
    assert (status, error["error"]) == (400, "invalid_grant")
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL, code_challenge=challenge, method=method)
    status, tokens, _ = await exchange(http, google, code, code_verifier=verifier)
    assert status == 200, tokens


async def test_verifier_without_a_challenge_is_invalid_grant(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    code = google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL)
    status, error, _ = await exchange(http, google, code, code_verifier=make_pkce()[0])
    assert (status, error["error"]) == (400, "invalid_grant")


def test_pkce_challenge_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_challenge(verifier, "plain") == verifier


# --------------------------------------------------------------------------- authorize errors


async def test_unregistered_redirect_uri_is_never_redirected_to(
    google: FakeGoogle, http: aiohttp.ClientSession
) -> None:
    url = google.authorize_url(CLIENT_ID, "http://127.0.0.1:9/evil", login_hint=EMAIL, state="s")
    response = await authorize(http, url)
    assert response.status == 400 and "Location" not in response.headers
    async with http.get(url, allow_redirects=False) as again:
        assert (await again.json())["error"] == "redirect_uri_mismatch"


@pytest.mark.parametrize(
    "change",
    [
        lambda g: g.authorize_url("unknown-client", REDIRECT_URI, login_hint=EMAIL),
        lambda g: g.authorize_url(CLIENT_ID, REDIRECT_URI, login_hint="nobody@example.com"),
        lambda g: g.authorize_url(CLIENT_ID, REDIRECT_URI),
    ],
    ids=["unknown-client", "unknown-user", "no-login-hint"],
)
async def test_authorize_fixture_errors_are_400_json(
    google: FakeGoogle, http: aiohttp.ClientSession, change: Callable[[FakeGoogle], str]
) -> None:
    async with http.get(change(google), allow_redirects=False) as response:
        assert response.status == 400 and "Location" not in response.headers
        assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "email"}, "invalid_scope"),
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "S512"}, "invalid_request"),
    ],
)
async def test_protocol_errors_go_back_to_a_registered_redirect_uri(
    google: FakeGoogle, http: aiohttp.ClientSession, params: dict[str, str], expected: str
) -> None:
    url = google.authorize_url(CLIENT_ID, REDIRECT_URI, login_hint=EMAIL, state="keep", **params)
    response = await authorize(http, url)
    assert response.status == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == [expected] and query["state"] == ["keep"] and "code" not in query


# --------------------------------------------------------------------------- userinfo


async def test_userinfo_with_and_without_a_token(google: FakeGoogle, http: aiohttp.ClientSession) -> None:
    _, tokens, _ = await exchange(http, google, google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL))
    headers = {"Authorization": "Bearer " + tokens["access_token"]}
    async with http.get(google.userinfo_endpoint, headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {
            "sub": default_sub(EMAIL),
            "email": EMAIL,
            "email_verified": True,
            "name": "Alice Example",
        }
    async with http.get(google.userinfo_endpoint) as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(google.userinfo_endpoint, headers={"Authorization": "Bearer ya29.bogus"}) as response:
        assert response.status == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_userinfo_token_expires(google: FakeGoogle, clock: Clock, http: aiohttp.ClientSession) -> None:
    _, tokens, _ = await exchange(http, google, google.issue_code(CLIENT_ID, REDIRECT_URI, EMAIL))
    clock.value += 3600
    headers = {"Authorization": "Bearer " + tokens["access_token"]}
    async with http.get(google.userinfo_endpoint, headers=headers) as response:
        assert response.status == 401


# --------------------------------------------------------------------------- users


def test_default_sub_is_a_stable_21_digit_string() -> None:
    sub = default_sub(EMAIL)
    assert len(sub) == 21 and sub.isdigit() and sub == default_sub(" Alice@Example.COM ")
    assert sub != default_sub("bob@example.com")
    provider = FakeGoogle()
    assert provider.add_user(EMAIL).sub == sub
    assert provider.add_user("carol@example.com", sub="42").sub == "42"
    assert provider.find_user("42") is not None and provider.find_user("ALICE@example.com") is not None
