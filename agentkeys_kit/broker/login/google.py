"""Google login (`local` backend): the OpenID Connect authorization-code flow with PKCE.

* ``POST /v1/auth/google/start`` (body empty or ``{login_hint?}``) → ``{request_id,
  authorization_url, expires_in_seconds, poll_url}``; the URL carries a fresh ``state``, ``nonce``
  and an S256 PKCE challenge (scope ``openid email``, ``prompt=select_account``).
* ``GET /auth/google/callback?code&state`` (the browser, sent back by the provider): the code is
  exchanged at the token endpoint the provider's discovery document names, with the PKCE verifier
  and the client secret; the id token is verified; the request becomes ``verified`` (or
  ``failed``: ``user_denied``, ``code_exchange_failed``, ``id_token_invalid``).
  The page shows a confirmation code (8 letters, RFC 8628's unambiguous alphabet, ``XXXX-XXXX``).
* ``GET /v1/auth/google/status/{request_id}`` (the CLI polls): ``{status: "pending"}`` until the
  callback, then ``{status: "confirm"}``; 401 ``google_login_failed`` with the reason,
  ``request_expired``; 404 ``unknown_request`` (also for a request already handed out).
* ``POST /v1/auth/google/confirm`` ``{request_id, code}`` (the CLI, with the code the user read in
  the browser): the session, once (`broker.login.complete_login`, identity type ``google``, value
  the provider's ``sub``); 401 ``wrong_confirmation_code`` (``attempts_left``), 5 tries in all,
  the last wrong one failing the request (``google_login_failed``, ``confirmation_failed``).

Why the code: without it the session went to whoever held the request id, and whoever starts a
sign-in holds it. A stranger could start one, send its authorization link to a victim ("sign in
to AgentKeys"), and collect the victim's session by polling. Now the session needs both the request
id (the terminal that started the sign-in) and the code (shown only in the browser that finished
it, never returned by any API), so it goes to a terminal whose user saw that browser; the page
says not to type the code anywhere else or give it to anyone.

State: one `oauth_requests` row (migration 9) per request, shared by every replica; only SHA-256s
of the request id and the ``state`` are stored; the ``state`` is single use (the callback takes the
row, and the PKCE verifier leaves the database, before the exchange); everything expires after 10
minutes and is purged. Id token rules: RS256 only (the header's ``alg`` must be RS256 and the key an
RSA key of the provider's JWKS, chosen by ``kid``; ``jku``/``x5u``/``jwk`` headers are refused), ``iss``
is the configured issuer, ``aud`` contains the client id (and ``azp`` is it when there are several
audiences), ``exp``/``iat`` against the broker's clock with 60 s of skew, ``nonce`` is the request's.

The discovery document and the JWKS are fetched over aiohttp and cached for an hour; an unknown
``kid`` refetches the JWKS at most once a minute (a burst of bad tokens cannot make the broker hammer
the provider). Signature and claim checks are PyJWT's (a maintained library, already the broker's
JWT dependency); the flow itself is a few HTTP requests, written here rather than pulling in an
OAuth framework that does not speak aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.config import GoogleLoginSettings
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import _query_pairs, json_body, read_body, require_fields
from agentkeys_kit.broker.login import complete_login
from agentkeys_kit.broker.login.limits import bucket_name, charge, client_source, login_endpoint
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import login_state
from agentkeys_kit.protocol import json_rules

log = logging.getLogger(__name__)

PROVIDER = "google"
START_PATH = "/v1/auth/google/start"
CALLBACK_PATH = "/auth/google/callback"
STATUS_PATH = "/v1/auth/google/status/{request_id}"
CONFIRM_PATH = "/v1/auth/google/confirm"
#: RFC 8628 §6.1: no vowels (no words), no look-alikes; 20^8 codes, 5 tries per request
CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
CODE_LENGTH = 8
REQUEST_TTL = 600  # seconds from start to the session's hand-out
SKEW = 60  # seconds of clock difference allowed on iat/exp
METADATA_TTL = 3600.0
JWKS_REFETCH_INTERVAL = 60.0
HTTP_TIMEOUT = 10.0
START_PER_CLIENT_MINUTELY = 30
CONFIRM_PER_CLIENT_MINUTELY = 30
SCOPE = "openid email"
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{32,64}")
_MAX_RESPONSE = 256 * 1024


# --------------------------------------------------------------------------- errors


def unknown_state() -> BrokerError:
    return BrokerError(400, 40010, "unknown_state", "this sign-in link is unknown, expired or already used")


def unknown_request() -> BrokerError:
    return BrokerError(
        404, 40401, "unknown_request", "no such sign-in request (unknown, or its session was handed out)"
    )


def request_expired() -> BrokerError:
    return BrokerError(401, 40115, "request_expired", "the sign-in request expired; start again")


def wrong_confirmation_code(attempts_left: int) -> BrokerError:
    return BrokerError(
        401,
        40117,
        "wrong_confirmation_code",
        "this is not the code the browser shows",
        attempts_left=attempts_left,
    )


def not_signed_in_yet() -> BrokerError:
    return BrokerError(409, 40903, "not_signed_in_yet", "the browser has not come back from Google yet")


def confirmation_code() -> str:
    letters = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{letters[:4]}-{letters[4:]}"


def confirmation_sha256(request_sha256: str, code: str) -> str:
    """The stored form of a code (the request's hash as salt); spaces, dashes and case ignored."""
    normalised = "".join(code.split()).replace("-", "").upper()
    return _sha256(f"{request_sha256}:{normalised}")


def login_failed(reason: str) -> BrokerError:
    return BrokerError(401, 40116, "google_login_failed", f"Google sign-in failed: {reason}", reason=reason)


class ProviderError(Exception):
    """The provider's answer was unusable; `reason` is one of the failure names."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- the provider


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """RFC 7636: a 64-character verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _trusted_url(url: Any, issuer: str) -> str:
    """An endpoint the discovery document names: https, or http on loopback when the issuer is."""
    if not isinstance(url, str):
        raise ProviderError("provider_unavailable", "the discovery document lacks an endpoint")
    parts = urlsplit(url)
    issuer_parts = urlsplit(issuer)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback and issuer_parts.scheme == "http"):
        return url
    raise ProviderError("provider_unavailable", f"the discovery document names an endpoint that is not https: {url}")


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class VerifiedIdToken:
    subject: str
    email: str | None


class OpenIdProvider:
    """Discovery, JWKS and the code exchange at one issuer, cached per broker process."""

    def __init__(
        self,
        settings: GoogleLoginSettings,
        http: aiohttp.ClientSession,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.http = http
        self.clock = clock
        self.monotonic = monotonic
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._keys_at = -1e18
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str) -> Any:
        try:
            async with self.http.get(url, allow_redirects=False) as response:
                raw = await response.content.read(_MAX_RESPONSE + 1)
                if response.status != 200 or len(raw) > _MAX_RESPONSE:
                    raise ProviderError("provider_unavailable", f"{url} answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError("provider_unavailable", f"{url}: {type(exc).__name__}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderError("provider_unavailable", f"{url} did not answer JSON") from None

    async def metadata(self) -> ProviderMetadata:
        now = self.monotonic()
        if self._metadata is not None and now - self._metadata[0] < METADATA_TTL:
            return self._metadata[1]
        issuer = self.settings.issuer
        document = await self._get_json(issuer + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            raise ProviderError("provider_unavailable", "the discovery document names another issuer")
        metadata = ProviderMetadata(
            authorization_endpoint=_trusted_url(document.get("authorization_endpoint"), issuer),
            token_endpoint=_trusted_url(document.get("token_endpoint"), issuer),
            jwks_uri=_trusted_url(document.get("jwks_uri"), issuer),
        )
        self._metadata = (now, metadata)
        return metadata

    async def _refresh_keys(self) -> None:
        metadata = await self.metadata()
        document = await self._get_json(metadata.jwks_uri)
        keys: dict[str, rsa.RSAPublicKey] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            # fail closed: only RSA signing keys for RS256 (or with no alg/use stated)
            if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not isinstance(entry.get("kid"), str):
                continue
            if entry.get("alg", "RS256") != "RS256" or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry, algorithm="RS256").key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
            if isinstance(key, rsa.RSAPublicKey):
                keys[entry["kid"]] = key
        self._keys = keys
        self._keys_at = self.monotonic()

    async def key(self, kid: str) -> rsa.RSAPublicKey:
        async with self._lock:
            age = self.monotonic() - self._keys_at
            if age >= METADATA_TTL or (kid not in self._keys and age >= JWKS_REFETCH_INTERVAL):
                await self._refresh_keys()
        key = self._keys.get(kid)
        if key is None:
            raise ProviderError("id_token_invalid", "the id token's kid is not in the provider's JWKS")
        return key

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> str:
        """The authorization code for an id token (client_secret_post, with the PKCE verifier)."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
            "code_verifier": verifier,
        }
        try:
            async with self.http.post(metadata.token_endpoint, data=form, allow_redirects=False) as response:
                raw = await response.content.read(_MAX_RESPONSE + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError("code_exchange_failed", type(exc).__name__) from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise ProviderError("code_exchange_failed", f"HTTP {status} {error or ''}".strip())
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError("code_exchange_failed", "the token response has no id_token")
        return id_token

    async def verify_id_token(self, token: str, nonce: str) -> VerifiedIdToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ProviderError("id_token_invalid", "not a JWT") from None
        if header.get("alg") != "RS256":
            raise ProviderError("id_token_invalid", f"alg {header.get('alg')!r} is not RS256")
        if any(name in header for name in ("jku", "x5u", "jwk", "x5c")):
            raise ProviderError("id_token_invalid", "the header names its own key")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise ProviderError("id_token_invalid", "the header has no kid")
        key = await self.key(kid)
        settings = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=settings.client_id,
                issuer=settings.issuer,
                options={
                    "require": ["iss", "aud", "sub", "exp", "iat", "nonce"],
                    "verify_exp": False,  # against the broker's clock, below
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise ProviderError("id_token_invalid", str(exc)) from None
        now = self.clock()
        if not isinstance(claims["exp"], int | float) or claims["exp"] + SKEW <= now:
            raise ProviderError("id_token_invalid", "the id token has expired")
        if not isinstance(claims["iat"], int | float) or claims["iat"] - SKEW > now:
            raise ProviderError("id_token_invalid", "the id token was issued in the future")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != settings.client_id:
            raise ProviderError("id_token_invalid", "several audiences and azp is not this client")
        if not isinstance(claims["nonce"], str) or not hmac.compare_digest(
            claims["nonce"].encode("utf-8"), nonce.encode("utf-8")
        ):
            raise ProviderError("id_token_invalid", "the nonce is not this request's")
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject.encode("utf-8")) <= 64:
            raise ProviderError("id_token_invalid", "sub must be a string of 1 to 64 bytes")
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        return VerifiedIdToken(subject, email)


PROVIDER_KEY = web.AppKey("broker_google_provider", OpenIdProvider)


# --------------------------------------------------------------------------- endpoints


def _redirect_uri(request: web.Request, settings: GoogleLoginSettings, public_url: str | None) -> str:
    """`BROKER_GOOGLE_REDIRECT_URI`, else under `BROKER_PUBLIC_URL`, else the request's own host
    (development: the provider refuses a redirect URI it does not know, so a forged Host header
    only breaks the forger's own sign-in)."""
    if settings.redirect_uri is not None:
        return settings.redirect_uri
    if public_url is not None:
        return public_url.rstrip("/") + CALLBACK_PATH
    return f"{request.scheme}://{request.host}{CALLBACK_PATH}"


async def _start_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        body = json_rules.loads(raw)
    except json_rules.JsonRefused as exc:
        raise errors.malformed(f"the body is not strict JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) - {"login_hint"}:
        raise errors.malformed("GoogleStart must be an object with at most login_hint")
    hint = body.get("login_hint")
    if hint is not None and (not isinstance(hint, str) or not 0 < len(hint) <= 254):
        raise errors.malformed("login_hint must be a string of 1 to 254 characters")
    return body


@login_endpoint("google_start")
async def start(request: web.Request, state: BrokerState) -> web.Response:
    body = await _start_body(request)
    source = bucket_name("google-ip", client_source(request))
    await charge(state, "client address", source, START_PER_CLIENT_MINUTELY, 60)
    provider = request.app[PROVIDER_KEY]
    try:
        metadata = await provider.metadata()
    except ProviderError as exc:
        log.warning("Google discovery failed: %s", exc)
        raise BrokerError(502, 50201, "provider_unavailable", "the OpenID provider is unavailable") from None
    request_id = secrets.token_urlsafe(32)
    oauth_state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    redirect_uri = _redirect_uri(request, provider.settings, state.config.public_url)
    await state.db.run(
        partial(
            login_state.create_oauth_request,
            request_sha256=_sha256(request_id),
            state_sha256=_sha256(oauth_state),
            provider=PROVIDER,
            nonce=nonce,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
            now=state.now(),
            ttl=REQUEST_TTL,
        )
    )
    params = {
        "response_type": "code",
        "client_id": provider.settings.client_id,
        "redirect_uri": redirect_uri,
        "scope": SCOPE,
        "state": oauth_state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "prompt": "select_account",
    }
    if body.get("login_hint"):
        params["login_hint"] = body["login_hint"]
    return errors.ok(
        {
            "request_id": request_id,
            "authorization_url": metadata.authorization_endpoint + "?" + urlencode(params),
            "expires_in_seconds": REQUEST_TTL,
            "poll_url": STATUS_PATH.format(request_id=request_id),
        }
    )


def _callback_params(request: web.Request) -> dict[str, str]:
    pairs = _query_pairs(request.rel_url.raw_query_string)
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise errors.malformed(f"query parameter {key} must be given once")
        params[key] = value
    if "state" not in params:
        raise errors.malformed("query parameter state is required")
    return params


def signed_in_page(code: str, email: str | None) -> str:
    who = f" as {html.escape(email)}" if email else ""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>AgentKeys</title></head><body>'
        f"<p>Signed in with Google{who}.</p>"
        f"<p>To finish, type this code in the terminal where you ran <code>agentkeys init google</code>:</p>"
        f'<p style="font-size:2em;font-family:monospace" id="confirmation-code">{code}</p>'
        "<p>If you did not start this sign-in yourself, close this tab and do not give the code to anyone: "
        "whoever sent you the link would get access to your AgentKeys account.</p></body></html>"
    )


@login_endpoint("google_callback")
async def google_callback(request: web.Request, state: BrokerState) -> web.Response:
    params = _callback_params(request)
    state_sha = _sha256(params["state"]) if params["state"].isascii() else ""
    if "error" in params:
        failed = await state.db.run(login_state.fail_oauth_state, state_sha, "user_denied", state.now())
        if not failed:
            raise unknown_state()
        raise login_failed("user_denied")
    if not params.get("code"):
        raise errors.malformed("query parameter code is required")
    pending: login_state.OAuthRequest | None = await state.db.run(login_state.claim_oauth_state, state_sha, state.now())
    if pending is None or pending.code_verifier is None:
        raise unknown_state()
    provider = request.app[PROVIDER_KEY]
    try:
        id_token = await provider.exchange(params["code"], pending.code_verifier, pending.redirect_uri)
        verified = await provider.verify_id_token(id_token, pending.nonce)
    except ProviderError as exc:
        log.warning("Google sign-in failed: %s", exc)
        await state.db.run(
            partial(login_state.finish_oauth_request, subject=None, email=None, failure=exc.reason),
            pending.request_sha256,
        )
        raise login_failed(exc.reason) from None
    code = confirmation_code()
    await state.db.run(
        partial(
            login_state.finish_oauth_request,
            subject=verified.subject,
            email=verified.email,
            failure=None,
            confirm_sha256=confirmation_sha256(pending.request_sha256, code),
        ),
        pending.request_sha256,
    )
    page = signed_in_page(code, verified.email)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    return web.Response(text=page, content_type="text/html", headers=headers)


@login_endpoint("google_status")
async def status(request: web.Request, state: BrokerState) -> web.Response:
    request_id = request.match_info["request_id"]
    if not _REQUEST_ID.fullmatch(request_id):
        raise unknown_request()
    request_sha = _sha256(request_id)
    now = state.now()
    found: login_state.OAuthRequest | None = await state.db.run(login_state.find_oauth_request, request_sha)
    if found is None or found.status == "delivered":
        raise unknown_request()
    if found.expires_at <= now:
        raise request_expired()
    if found.status == "failed":
        raise login_failed(found.failure or "unknown")
    if found.status in ("pending", "exchanging"):
        return errors.ok({"status": "pending"})
    return errors.ok({"status": "confirm", "confirm_url": CONFIRM_PATH})


async def _confirm_body(request: web.Request) -> tuple[str, str]:
    body = require_fields(await json_body(request), {"request_id": str, "code": str}, "GoogleConfirm")
    if not _REQUEST_ID.fullmatch(body["request_id"]):
        raise unknown_request()
    if not body["code"].isascii() or not 0 < len(body["code"]) <= 32:
        raise errors.malformed("code must be the 8 letters the browser shows")
    return body["request_id"], body["code"]


@login_endpoint("google_confirm")
async def confirm(request: web.Request, state: BrokerState) -> web.Response:
    request_id, code = await _confirm_body(request)
    await charge(
        state,
        "client address",
        bucket_name("google-confirm-ip", client_source(request)),
        CONFIRM_PER_CLIENT_MINUTELY,
        60,
    )
    request_sha = _sha256(request_id)
    now = state.now()
    check: login_state.CodeCheck = await state.db.run(
        login_state.try_oauth_confirmation, request_sha, confirmation_sha256(request_sha, code), now
    )
    if check.outcome == "wrong":
        raise wrong_confirmation_code(check.attempts_left)
    if check.outcome == "locked":
        raise login_failed("confirmation_failed")
    if check.outcome == "expired":
        raise request_expired()
    if check.outcome in ("used", "failed"):
        found = await state.db.run(login_state.find_oauth_request, request_sha)
        if check.outcome == "failed" and found is not None:
            raise login_failed(found.failure or "unknown")
        raise unknown_request()
    if check.outcome == "none":
        found = await state.db.run(login_state.find_oauth_request, request_sha)
        raise unknown_request() if found is None else not_signed_in_yet()
    found = await state.db.run(login_state.find_oauth_request, request_sha)
    if found is None or found.subject is None:
        raise unknown_request()
    # handed out in the session's transaction: once, and never lost to a failed session write
    return await complete_login(
        state,
        request,
        identity_type="google",
        identity_value=found.subject,
        method="google",
        consume=lambda: login_state.deliver_oauth_request(request_sha, now),
    )


def _configured_redirect(settings: GoogleLoginSettings, public_url: str | None) -> str:
    if settings.redirect_uri is not None:
        return settings.redirect_uri
    return public_url.rstrip("/") + CALLBACK_PATH if public_url else "from the request's host"


def add_routes(app: web.Application) -> None:
    """Serve the Google login (`broker.login.add_login_routes` calls this when a Google client is
    configured); one HTTP client per broker for the provider."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        settings = state.config.google_login
        assert settings is not None, "Google login is served only with a Google client"
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            app[PROVIDER_KEY] = OpenIdProvider(settings, http, state.clock)
            log.info(
                "Google login: issuer %s, client id %s, redirect URI %s",
                settings.issuer,
                settings.client_id,
                _configured_redirect(settings, state.config.public_url),
            )
            yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(START_PATH, start)
    app.router.add_get(CALLBACK_PATH, google_callback)
    app.router.add_get(STATUS_PATH, status)
    app.router.add_post(CONFIRM_PATH, confirm)
