"""A real HTTP OpenID Connect provider that stands in for Google in tests and the conformance harness.

It serves Google's paths on 127.0.0.1 (a free port by default): discovery, JWKS, a non-interactive
authorization endpoint, the token endpoint and userinfo. Login is non-interactive: the user is the
``login_hint`` of the authorization request, who must have been added with `FakeGoogle.add_user`.

What it enforces, as Google and RFC 6749 / RFC 7636 / OpenID Connect Core do:

* the authorization endpoint never redirects to an unregistered (or missing) ``redirect_uri`` nor
  for an unknown client: those are a 400 JSON error; protocol errors found after the redirect URI is
  trusted (``response_type``, ``scope``, PKCE parameters) go back to the client as ``error=…``;
* codes are single-use, bound to the client, the redirect URI and the PKCE challenge, and expire
  after `code_ttl` seconds by the injectable clock `now`; a code is spent by the first exchange that
  authenticates as its client, even when that exchange fails, and presenting a spent code again also
  revokes the access tokens it had been exchanged for (RFC 6749 §4.1.2);
* client authentication is ``client_secret_post`` or ``client_secret_basic`` (never both at once);
* the id_token is RS256 with the instance's ``kid``; ``email``/``email_verified`` are present when the
  ``email`` scope was granted and ``name`` when ``profile`` was (and the user has a name), as Google does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import MultiMapping

from agentkeys_kit.conformance.receiver import Interceptor, intercepting
from agentkeys_kit.omni_sim.server import ServedApp, Service

AUTHORIZATION_PATH = "/o/oauth2/v2/auth"
TOKEN_PATH = "/token"
JWKS_PATH = "/oauth2/v3/certs"
USERINFO_PATH = "/v1/userinfo"
DISCOVERY_PATH = "/.well-known/openid-configuration"

DEFAULT_SCOPE = "openid email profile"
#: What Google's token endpoint reports for a one-hour access token.
ACCESS_TOKEN_EXPIRES_IN = 3599
ID_TOKEN_LIFETIME = 3600
CODE_TTL = 60.0

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PKCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def default_sub(email: str) -> str:
    """A stable 21-digit subject for `email` (case-insensitive), shaped like Google's."""
    digest = hashlib.sha256(email.strip().lower().encode("utf-8")).digest()
    return "1" + str(int.from_bytes(digest[:16], "big") % 10**20).zfill(20)


def pkce_challenge(verifier: str, method: str = "S256") -> str:
    """The RFC 7636 ``code_challenge`` of `verifier` under `method` (``S256`` or ``plain``)."""
    if method == "S256":
        return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    if method == "plain":
        return verifier
    raise ValueError(f"unsupported code_challenge_method {method!r}")


def make_pkce(method: str = "S256") -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` pair."""
    verifier = secrets.token_urlsafe(48)
    return verifier, pkce_challenge(verifier, method)


def at_hash(access_token: str) -> str:
    """OpenID Connect Core §3.1.3.6 ``at_hash`` for an RS256 id_token."""
    return _b64url(hashlib.sha256(access_token.encode("ascii")).digest()[:16])


def _valid_pkce_string(value: str) -> bool:
    # RFC 7636 §4.1: 43..128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
    return 43 <= len(value) <= 128 and set(value) <= _PKCE_CHARS


@dataclass(frozen=True, slots=True)
class FakeGoogleClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FakeGoogleUser:
    email: str
    sub: str
    email_verified: bool = True
    name: str | None = None


@dataclass(slots=True)
class _CodeGrant:
    client_id: str
    redirect_uri: str
    user: FakeGoogleUser
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float


@dataclass(slots=True)
class _AccessGrant:
    client_id: str
    user: FakeGoogleUser
    scope: str
    expires_at: float


class OAuthError(Exception):
    """An RFC 6749 error reply: ``{"error", "error_description"}`` with `status`."""

    def __init__(self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers={**_NO_STORE, **self.headers},
        )


class _RedirectError(Exception):
    """An authorization error to report to the (already validated) redirect URI."""

    def __init__(self, error: str, description: str):
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


@dataclass(slots=True)
class FakeGoogle(Service):
    host: str = "127.0.0.1"
    port: int = 0
    #: The clock for code expiry, token lifetimes and ``iat``/``exp``; inject one to move time.
    now: Callable[[], float] = time.time
    #: The signing key; a fresh RSA-2048 key is generated at `start` when none is given.
    key: rsa.RSAPrivateKey | None = None
    #: Defaults to the RFC 7638 thumbprint of the public key.
    kid: str | None = None
    #: Defaults to the base URL without its trailing slash (Google's would be https://accounts.google.com).
    issuer_override: str | None = None
    code_ttl: float = CODE_TTL
    clients: dict[str, FakeGoogleClient] = field(default_factory=dict)
    users: dict[str, FakeGoogleUser] = field(default_factory=dict)
    _codes: dict[str, _CodeGrant] = field(default_factory=dict)
    _spent_codes: dict[str, list[str]] = field(default_factory=dict)
    _access_tokens: dict[str, _AccessGrant] = field(default_factory=dict)
    _served: ServedApp | None = None
    #: set by the parties: the receiver may answer a token exchange as a step scripted
    interceptor: Interceptor | None = None

    # ------------------------------------------------------------------ setup

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> FakeGoogleClient:
        client = FakeGoogleClient(client_id, client_secret, tuple(redirect_uris))
        self.clients[client_id] = client
        return client

    def add_user(
        self,
        email: str,
        sub: str | None = None,
        email_verified: bool = True,
        name: str | None = None,
    ) -> FakeGoogleUser:
        user = FakeGoogleUser(email, sub if sub is not None else default_sub(email), email_verified, name)
        self.users[email.strip().lower()] = user
        return user

    def find_user(self, hint: str) -> FakeGoogleUser | None:
        """The user whose email (case-insensitive) or sub is `hint`, as Google reads ``login_hint``."""
        user = self.users.get(hint.strip().lower())
        if user is not None:
            return user
        return next((u for u in self.users.values() if u.sub == hint), None)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def issuer(self) -> str:
        return self.issuer_override if self.issuer_override is not None else self.url.rstrip("/")

    @property
    def authorization_endpoint(self) -> str:
        return self.url.rstrip("/") + AUTHORIZATION_PATH

    @property
    def token_endpoint(self) -> str:
        return self.url.rstrip("/") + TOKEN_PATH

    @property
    def jwks_uri(self) -> str:
        return self.url.rstrip("/") + JWKS_PATH

    @property
    def userinfo_endpoint(self) -> str:
        return self.url.rstrip("/") + USERINFO_PATH

    @property
    def discovery_url(self) -> str:
        return self.url.rstrip("/") + DISCOVERY_PATH

    async def start(self) -> None:
        if self.key is None:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if self.kid is None:
            self.kid = self._thumbprint()
        app = web.Application(middlewares=[intercepting(self, "google", "token", TOKEN_PATH)])
        app.router.add_get(DISCOVERY_PATH, self._discovery)
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_get(AUTHORIZATION_PATH, self._authorize)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_get(USERINFO_PATH, self._userinfo)
        app.router.add_post(USERINFO_PATH, self._userinfo)
        self._served = ServedApp(self.host, self.port)
        self.port = await self._served.start(app)

    async def close(self) -> None:
        if self._served is not None:
            await self._served.close()

    # ------------------------------------------------------------------ documents

    def discovery_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "userinfo_endpoint": self.userinfo_endpoint,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "form_post"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud",
                "azp",
                "email",
                "email_verified",
                "exp",
                "iat",
                "iss",
                "name",
                "nonce",
                "sub",
                "at_hash",
            ],
            "code_challenge_methods_supported": ["S256", "plain"],
        }

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._signing_key().public_key()

    def jwk(self) -> dict[str, str]:
        numbers = self.public_key.public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self._kid(),
            "n": _uint_b64url(numbers.n),
            "e": _uint_b64url(numbers.e),
        }

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.jwk()]}

    # ------------------------------------------------------------------ test helpers

    def authorize_url(
        self,
        client_id: str,
        redirect_uri: str,
        *,
        login_hint: str | None = None,
        scope: str = DEFAULT_SCOPE,
        state: str | None = None,
        nonce: str | None = None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        response_mode: str | None = None,
        response_type: str = "code",
    ) -> str:
        """The authorization request URL a client would send the browser to."""
        params: dict[str, str] = {
            "response_type": response_type,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
        }
        optional = {
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": code_challenge_method,
            "login_hint": login_hint,
            "response_mode": response_mode,
        }
        params.update({name: value for name, value in optional.items() if value is not None})
        return self.authorization_endpoint + "?" + urlencode(params)

    def issue_code(
        self,
        client_id: str,
        redirect_uri: str,
        email: str,
        nonce: str | None = None,
        code_challenge: str | None = None,
        method: str | None = None,
        *,
        scope: str = DEFAULT_SCOPE,
    ) -> str:
        """A code as the authorization endpoint would issue it, skipping the browser step.

        The client, redirect URI and user must be known (`ValueError` otherwise). `method` defaults
        to ``plain`` when a challenge is given (RFC 7636 §4.3).
        """
        client = self.clients.get(client_id)
        if client is None:
            raise ValueError(f"unknown client {client_id!r}")
        if redirect_uri not in client.redirect_uris:
            raise ValueError(f"redirect_uri {redirect_uri!r} is not registered for {client_id!r}")
        user = self.find_user(email)
        if user is None:
            raise ValueError(f"unknown user {email!r}")
        if code_challenge is not None and method is None:
            method = "plain"
        if method is not None and method not in ("S256", "plain"):
            raise ValueError(f"unsupported code_challenge_method {method!r}")
        return self._new_code(client_id, redirect_uri, user, scope, nonce, code_challenge, method)

    def mint_id_token(
        self,
        client_id: str,
        user: FakeGoogleUser | str,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
        scope: str = DEFAULT_SCOPE,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An id_token as the token endpoint would sign it; `extra_claims` override or add claims
        (a value of ``None`` removes the claim), e.g. to forge a wrong ``aud`` or an expired token."""
        if isinstance(user, str):
            found = self.find_user(user)
            if found is None:
                raise ValueError(f"unknown user {user!r}")
            user = found
        issued_at = int(self.now())
        scopes = scope.split()
        claims: dict[str, Any] = {"iss": self.issuer, "azp": client_id, "aud": client_id, "sub": user.sub}
        if "email" in scopes:
            claims["email"] = user.email
            claims["email_verified"] = user.email_verified
        if access_token is not None:
            claims["at_hash"] = at_hash(access_token)
        if "profile" in scopes and user.name is not None:
            claims["name"] = user.name
        if nonce is not None:
            claims["nonce"] = nonce
        claims["iat"] = issued_at
        claims["exp"] = issued_at + ID_TOKEN_LIFETIME
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(claims, self._signing_key(), algorithm="RS256", headers={"kid": self._kid()})

    # ------------------------------------------------------------------ internals

    def _signing_key(self) -> rsa.RSAPrivateKey:
        if self.key is None:
            raise RuntimeError("FakeGoogle has no signing key before start() (or pass key=)")
        return self.key

    def _kid(self) -> str:
        if self.kid is None:
            self.kid = self._thumbprint()
        return self.kid

    def _thumbprint(self) -> str:
        # RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
        numbers = self._signing_key().public_key().public_numbers()
        members = {"e": _uint_b64url(numbers.e), "kty": "RSA", "n": _uint_b64url(numbers.n)}
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
        return _b64url(hashlib.sha256(canonical).digest())

    def _new_code(
        self,
        client_id: str,
        redirect_uri: str,
        user: FakeGoogleUser,
        scope: str,
        nonce: str | None,
        code_challenge: str | None,
        method: str | None,
    ) -> str:
        code = "4/0" + secrets.token_urlsafe(32)
        self._codes[code] = _CodeGrant(
            client_id=client_id,
            redirect_uri=redirect_uri,
            user=user,
            scope=scope,
            nonce=nonce,
            code_challenge=code_challenge,
            code_challenge_method=method,
            issued_at=self.now(),
        )
        return code

    @staticmethod
    def _single(params: MultiMapping[str], name: str) -> str | None:
        values = params.getall(name, [])
        if len(values) > 1:
            raise OAuthError("invalid_request", f"Parameter {name} was included more than once")
        return values[0] if values else None

    # ------------------------------------------------------------------ handlers

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(self.discovery_document())

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _authorize(self, request: web.Request) -> web.Response:
        try:
            return self._authorize_checked(request.query)
        except OAuthError as error:
            return error.response()

    def _authorize_checked(self, query: MultiMapping[str]) -> web.Response:
        # Until the client and its redirect URI are known good, errors go to the user agent only.
        client_id = self._single(query, "client_id")
        if not client_id:
            raise OAuthError("invalid_request", "Missing required parameter: client_id")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_request", "The OAuth client was not found.")
        redirect_uri = self._single(query, "redirect_uri")
        if not redirect_uri:
            raise OAuthError("invalid_request", "Missing required parameter: redirect_uri")
        if redirect_uri not in client.redirect_uris:
            raise OAuthError("redirect_uri_mismatch", f"The redirect URI {redirect_uri} is not registered.")
        state = self._single(query, "state")
        response_mode = self._single(query, "response_mode") or "query"
        if response_mode not in ("query", "form_post"):
            return self._redirect(
                redirect_uri,
                "query",
                {"error": "invalid_request", "error_description": "Unsupported response_mode"},
                state,
            )
        try:
            user, scope, nonce, challenge, method = self._authorization_parameters(query)
        except _RedirectError as error:
            params = {"error": error.error, "error_description": error.description}
            return self._redirect(redirect_uri, response_mode, params, state)
        code = self._new_code(client_id, redirect_uri, user, scope, nonce, challenge, method)
        return self._redirect(redirect_uri, response_mode, {"code": code, "scope": scope}, state)

    def _authorization_parameters(
        self, query: MultiMapping[str]
    ) -> tuple[FakeGoogleUser, str, str | None, str | None, str | None]:
        response_type = self._single(query, "response_type")
        if not response_type:
            raise _RedirectError("invalid_request", "Missing required parameter: response_type")
        if response_type != "code":
            raise _RedirectError("unsupported_response_type", f"Unsupported response_type {response_type}")
        scope_text = self._single(query, "scope")
        if not scope_text:
            raise _RedirectError("invalid_request", "Missing required parameter: scope")
        scopes = scope_text.split()
        unknown = [s for s in scopes if s not in ("openid", "email", "profile")]
        if unknown or "openid" not in scopes:
            raise _RedirectError("invalid_scope", f"Invalid scope: {scope_text}")
        challenge = self._single(query, "code_challenge")
        method = self._single(query, "code_challenge_method")
        if challenge is None and method is not None:
            raise _RedirectError("invalid_request", "code_challenge_method without code_challenge")
        if challenge is not None:
            method = method or "plain"
            if method not in ("S256", "plain"):
                raise _RedirectError("invalid_request", f"Unsupported code_challenge_method {method}")
            if not _valid_pkce_string(challenge):
                raise _RedirectError("invalid_request", "Invalid code_challenge")
        nonce = self._single(query, "nonce")
        # Non-interactive login: a missing or unknown user is a fixture misuse, not a client error.
        hint = self._single(query, "login_hint")
        if not hint:
            raise OAuthError("invalid_request", "FakeGoogle needs login_hint naming a known user")
        user = self.find_user(hint)
        if user is None:
            raise OAuthError("invalid_request", f"Unknown user {hint}")
        return user, " ".join(dict.fromkeys(scopes)), nonce, challenge, method

    @staticmethod
    def _redirect(redirect_uri: str, response_mode: str, params: dict[str, str], state: str | None) -> web.Response:
        if state is not None:
            params = {"state": state, **params}
        if response_mode == "form_post":
            inputs = "\n".join(
                f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}"/>'
                for name, value in params.items()
            )
            page = (
                "<!DOCTYPE html>\n<html><head><title>Submit This Form</title></head>"
                '<body onload="javascript:document.forms[0].submit()">\n'
                f'<form method="post" action="{html.escape(redirect_uri)}">\n{inputs}\n'
                '<noscript><button type="submit">Continue</button></noscript>\n</form></body></html>\n'
            )
            return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})
        separator = "&" if "?" in redirect_uri else "?"
        location = redirect_uri + separator + urlencode(params)
        return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            fields = self._token_fields(form, request.headers.get("Authorization"))
            return self._exchange(*fields)
        except OAuthError as error:
            return error.response()

    def _token_fields(
        self, form: MultiMapping[object], authorization: str | None
    ) -> tuple[FakeGoogleClient, str, str, str | None]:
        texts: dict[str, str] = {}
        for name in ("grant_type", "code", "redirect_uri", "client_id", "client_secret", "code_verifier"):
            values = form.getall(name, [])
            if len(values) > 1:
                raise OAuthError("invalid_request", f"Parameter {name} was included more than once")
            if values:
                if not isinstance(values[0], str):
                    raise OAuthError("invalid_request", f"Parameter {name} must be a form field")
                texts[name] = values[0]
        grant_type = texts.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "Missing required parameter: grant_type")
        if grant_type != "authorization_code":
            raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client = self._authenticate(texts.get("client_id"), texts.get("client_secret"), authorization)
        code = texts.get("code")
        if not code:
            raise OAuthError("invalid_request", "Missing required parameter: code")
        redirect_uri = texts.get("redirect_uri")
        if not redirect_uri:
            raise OAuthError("invalid_request", "Missing required parameter: redirect_uri")
        return client, code, redirect_uri, texts.get("code_verifier")

    def _authenticate(
        self, client_id: str | None, client_secret: str | None, authorization: str | None
    ) -> FakeGoogleClient:
        basic = authorization if authorization is not None and authorization[:6].lower() == "basic " else None
        challenge = {"WWW-Authenticate": 'Basic realm="fake-google"'} if basic is not None else {}
        if basic is not None:
            if client_secret is not None:
                raise OAuthError("invalid_request", "Use one client authentication method, not Basic and a form secret")
            try:
                decoded = base64.b64decode(basic[6:].strip(), validate=True).decode("utf-8")
            except ValueError:
                raise OAuthError("invalid_client", "Malformed Basic credentials", 401, challenge) from None
            basic_id, colon, basic_secret = decoded.partition(":")
            if not colon:
                raise OAuthError("invalid_client", "Malformed Basic credentials", 401, challenge)
            # RFC 6749 §2.3.1: both halves are form-urlencoded before being joined.
            basic_id, basic_secret = unquote_plus(basic_id), unquote_plus(basic_secret)
            if client_id is not None and client_id != basic_id:
                raise OAuthError("invalid_client", "client_id does not match the Basic credentials", 401, challenge)
            client_id, client_secret = basic_id, basic_secret
        if not client_id:
            raise OAuthError("invalid_client", "Missing required parameter: client_id", 401, challenge)
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "The OAuth client was not found.", 401, challenge)
        if client_secret is None or not hmac.compare_digest(
            client_secret.encode("utf-8"), client.client_secret.encode("utf-8")
        ):
            raise OAuthError("invalid_client", "Unauthorized", 401, challenge)
        return client

    def _exchange(self, client: FakeGoogleClient, code: str, redirect_uri: str, verifier: str | None) -> web.Response:
        if code in self._spent_codes:
            # RFC 6749 §4.1.2: a replayed code revokes what it was exchanged for.
            for token in self._spent_codes[code]:
                self._access_tokens.pop(token, None)
            raise OAuthError("invalid_grant", "Bad Request: the code has already been redeemed")
        grant = self._codes.get(code)
        if grant is None or grant.client_id != client.client_id:
            # Another client's code is left alone: only its own client can spend it.
            raise OAuthError("invalid_grant", "Malformed auth code.")
        del self._codes[code]
        self._spent_codes[code] = []
        now = self.now()
        if now >= grant.issued_at + self.code_ttl:
            raise OAuthError("invalid_grant", "Bad Request: the code has expired")
        if redirect_uri != grant.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
        self._check_pkce(grant, verifier)
        access_token = "ya29." + secrets.token_urlsafe(48)
        self._access_tokens[access_token] = _AccessGrant(
            client.client_id, grant.user, grant.scope, now + ACCESS_TOKEN_EXPIRES_IN
        )
        self._spent_codes[code].append(access_token)
        id_token = self.mint_id_token(
            client.client_id, grant.user, nonce=grant.nonce, access_token=access_token, scope=grant.scope
        )
        body = {
            "access_token": access_token,
            "expires_in": ACCESS_TOKEN_EXPIRES_IN,
            "scope": grant.scope,
            "token_type": "Bearer",
            "id_token": id_token,
        }
        return web.json_response(body, headers=_NO_STORE)

    @staticmethod
    def _check_pkce(grant: _CodeGrant, verifier: str | None) -> None:
        if grant.code_challenge is None:
            if verifier is not None:
                raise OAuthError("invalid_grant", "code_verifier given but the authorization had no code_challenge")
            return
        if verifier is None:
            raise OAuthError("invalid_grant", "Missing code verifier.")
        if not _valid_pkce_string(verifier):
            raise OAuthError("invalid_grant", "Invalid code verifier.")
        expected = pkce_challenge(verifier, grant.code_challenge_method or "plain")
        if not hmac.compare_digest(expected.encode("ascii"), grant.code_challenge.encode("ascii")):
            raise OAuthError("invalid_grant", "Invalid code verifier.")

    async def _userinfo(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        grant = self._access_tokens.get(token) if token else None
        if grant is not None and self.now() >= grant.expires_at:
            del self._access_tokens[token]
            grant = None
        if grant is None:
            challenge = 'Bearer realm="fake-google", error="invalid_token"' if token else 'Bearer realm="fake-google"'
            return web.json_response(
                {"error": "invalid_request", "error_description": "Invalid Credentials"},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        scopes = grant.scope.split()
        body: dict[str, Any] = {"sub": grant.user.sub}
        if "email" in scopes:
            body["email"] = grant.user.email
            body["email_verified"] = grant.user.email_verified
        if "profile" in scopes and grant.user.name is not None:
            body["name"] = grant.user.name
        return web.json_response(body)
