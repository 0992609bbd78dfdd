"""OAuth2 through the simulator: configuration as the worker reads it, the token exchange against
the fake Google and against misbehaving providers, and what never leaks (the client secret)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import SimFactory, rpc

from agentkeys_kit.conformance.fake_google import FakeGoogle
from agentkeys_kit.omni_sim.login_config import OAuth2Provider, oauth2_clients_from_env
from agentkeys_kit.omni_sim.oauth2 import state_key
from agentkeys_kit.omni_sim.server import ServedApp, SimServer
from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

REDIRECT = "https://app.example/callback"
SECRET = "s3cret-value"
SUGGESTION = "Please check your OAuth2 credentials and try again"


@pytest.fixture
async def google() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle() as provider:
        provider.register_client("oauth-client", SECRET, [REDIRECT])
        yield provider


def oauth_env(token_url: str) -> dict[str, str]:
    return {
        "OE_GOOGLE_CLIENT_ID_WILDMETA": "oauth-client",
        "OE_GOOGLE_CLIENT_SECRET_WILDMETA": SECRET,
        "OE_APPLE_CLIENT_ID_WILDMETA": "oauth-client",
        "OE_APPLE_CLIENT_SECRET_WILDMETA": SECRET,
        "OE_SIM_GOOGLE_TOKEN_URL": token_url,
        "OE_SIM_APPLE_TOKEN_URL": token_url,
    }


async def authorize(http: aiohttp.ClientSession, sim: SimServer, provider: str = "google") -> dict[str, Any]:
    params = {"provider": provider, "uid": "u-1", "redirect_uri": REDIRECT, "client_id": "wildmeta"}
    answer = await rpc(http, sim.url, "omni_getOAuth2AuthorizationData", params)
    return answer["result"]  # type: ignore[no-any-return]


def login_params(auth: dict[str, Any], code: str, id_token: str, provider: str = "google") -> dict[str, Any]:
    return {
        "client_id": "wildmeta",
        "provider": provider,
        "code": code,
        "state": auth["state"],
        "redirect_uri": REDIRECT,
        "uid": "u-1",
        "id_token": id_token,
    }


def oauth_failed(reason: str) -> dict[str, Any]:
    return {
        "code": -32003,
        "message": "OAuth2 authentication failed",
        "data": {"reason": reason, "suggestion": SUGGESTION},
    }


def test_oauth2_configs_are_read_as_the_worker_reads_them() -> None:
    env = {
        "OE_GOOGLE_CLIENT_ID_WILDMETA": "g-id",
        "OE_GOOGLE_CLIENT_SECRET_WILDMETA": "g-secret",
        "OE_GOOGLE_CLIENT_ID_HALF": "only-an-id",
        "OE_APPLE_CLIENT_ID_AgentKeys": "a-id",
        "OE_APPLE_CLIENT_SECRET_AGENTKEYS": "a-secret",
        "OE_APPLE_CLIENT_ID_HEIMA": "h-id",
        "OE_APPLE_CLIENT_SECRET_HEIMA": "h-secret",
    }
    configs = oauth2_clients_from_env(env)
    # A client is found by its key's suffix, lowercased, then read back under the UPPER-case name:
    # "AgentKeys" is found but OE_APPLE_CLIENT_ID_AGENTKEYS is unset, so it is skipped like HALF.
    assert set(configs) == {"wildmeta", "heima"}
    assert configs["wildmeta"][OAuth2Provider.GOOGLE].client_id == "g-id"
    assert configs["heima"][OAuth2Provider.APPLE].client_secret == "h-secret"
    assert OAuth2Provider.APPLE not in configs["wildmeta"]


def test_state_key_is_blake2_of_the_scale_tuple() -> None:
    # SCALE("wildmeta") = 0x20 ‖ b"wildmeta"; SCALE("u") = 0x04 ‖ b"u"
    expected = hashlib.blake2b(b"\x20wildmeta\x04u", digest_size=32).digest()
    assert state_key("wildmeta", "u") == expected
    long_uid = "x" * 100  # two-byte compact length
    assert (
        state_key("c", long_uid)
        == hashlib.blake2b(b"\x04c" + (401).to_bytes(2, "little") + b"x" * 100, digest_size=32).digest()
    )


async def test_login_with_google_and_the_journal_never_holds_the_secret(
    make_sim: SimFactory, http: aiohttp.ClientSession, google: FakeGoogle
) -> None:
    sim = await make_sim(env=oauth_env(google.token_endpoint))
    auth = await authorize(http, sim)
    user = google.add_user("user@example.org")
    code = google.issue_code("oauth-client", REDIRECT, user.email, auth["nonce"])
    id_token = google.mint_id_token("oauth-client", user, nonce=auth["nonce"])
    answer = await rpc(http, sim.url, "omni_loginWithOAuth2", login_params(auth, code, id_token))
    assert answer["result"]["user_id"] == user.sub
    async with http.get(sim.url + "_sim/callbacks") as response:
        journal = json.dumps(await response.json())
    assert "exchange_code_for_token" in journal
    assert "client_secret=%3Credacted%3E" in journal
    assert SECRET not in journal


async def test_apple_tokens_are_decoded_with_apples_fields(
    make_sim: SimFactory, http: aiohttp.ClientSession, google: FakeGoogle
) -> None:
    sim = await make_sim(env=oauth_env(google.token_endpoint))
    auth = await authorize(http, sim, "apple")
    user = google.add_user("apple-user@example.org")
    code = google.issue_code("oauth-client", REDIRECT, user.email, auth["nonce"])
    id_token = google.mint_id_token("oauth-client", user, nonce=auth["nonce"])
    answer = await rpc(http, sim.url, "omni_loginWithOAuth2", login_params(auth, code, id_token, "Apple"))
    account = omni_account_of(IdentityKind.APPLE, user.sub, "wildmeta")
    assert answer["result"]["user_id"] == user.sub
    claims = json.loads(base64url.decode(answer["result"]["access_token"].split(".")[1]))
    assert claims == {"sub": account, "typ": "id", "exp": claims["exp"], "aud": "wildmeta"}
    auth = await authorize(http, sim, "apple")
    bad = google.mint_id_token("oauth-client", user, nonce=auth["nonce"], extra_claims={"email_verified": "yes"})
    answer = await rpc(http, sim.url, "omni_loginWithOAuth2", login_params(auth, "c", bad, "apple"))
    assert answer["error"] == oauth_failed("OAuth2 error: Could not decode Apple id token")


async def misbehaving_provider(reply: dict[str, Any]) -> ServedApp:
    async def token(request: web.Request) -> web.Response:
        return web.json_response(reply, status=500)  # the worker does not look at the status

    app = web.Application()
    app.router.add_post("/token", token)
    served = ServedApp()
    await served.start(app)
    return served


async def test_provider_token_that_does_not_decode(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    served = await misbehaving_provider(
        {"access_token": "a", "expires_in": 1, "id_token": "x.e30.y", "token_type": "B"}
    )
    try:
        sim = await make_sim(env=oauth_env(served.url + "token"))
        auth = await authorize(http, sim)
        claims = {"iss": "i", "azp": "a", "aud": "oauth-client", "sub": "1", "email": "e", "email_verified": True}
        unsigned = unsigned_jwt({**claims, "iat": 1, "exp": 2, "nonce": auth["nonce"]})
        answer = await rpc(http, sim.url, "omni_loginWithOAuth2", login_params(auth, "c", unsigned))
        assert answer["error"] == oauth_failed("OAuth2 error: Could not decode Google id token from provider")
    finally:
        await served.close()


async def test_unreachable_token_endpoint(
    make_sim: SimFactory, http: aiohttp.ClientSession, google: FakeGoogle
) -> None:
    url = "http://127.0.0.1:9/token"
    sim = await make_sim(env=oauth_env(url))
    auth = await authorize(http, sim)
    user = google.add_user("who@example.org")
    id_token = google.mint_id_token("oauth-client", user, nonce=auth["nonce"])
    answer = await rpc(http, sim.url, "omni_loginWithOAuth2", login_params(auth, "c", id_token))
    assert answer["error"] == oauth_failed(
        f"OAuth2 error: Could not exchange code for token: error sending request for url ({url})"
    )


async def test_authorization_data_overwrites_the_earlier_state(
    make_sim: SimFactory, http: aiohttp.ClientSession, google: FakeGoogle
) -> None:
    sim = await make_sim(env=oauth_env(google.token_endpoint))
    first = await authorize(http, sim)
    second = await authorize(http, sim)
    assert first["state"] != second["state"]
    assert sim.context.oauth2_states.get(state_key("wildmeta", "u-1")) == (second["state"], second["nonce"])
    answer = await rpc(http, sim.url, "omni_loginWithOAuth2", login_params(first, "c", "x.y.z"))
    assert answer["error"] == oauth_failed("OAuth2 error: State verifier mismatch")


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A client id_token with ``alg: none``: the worker never checks its signature."""
    header = base64url.encode(b'{"alg":"none"}')
    return f"{header}.{base64url.encode(json.dumps(claims).encode())}."
