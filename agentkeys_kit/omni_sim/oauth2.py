"""OAuth2 through the worker: authorisation data, the state record and `verify_oauth2_authentication`.

Sources: `get_oauth2_authorization_data.rs@60635e7f`, `oauth2_factory.rs@60635e7f`,
`core/src/verify/web2/oauth2_common.rs@29cca4f9`, `core/src/oauth/client.rs@29cca4f9` and
`verify_auth.rs@c7751f89`. What the worker checks, in order: the state record for
``(client_id, uid)`` exists (and is removed before anything else), its state matches; the
client's ``id_token`` decodes (**no signature check**), its ``aud`` is the OAuth client id and
its ``nonce`` the stored one; the code is exchanged at the provider's token endpoint (form POST,
no redirects followed, **no status check**); the provider's ``id_token`` decodes (again no
signature check) and has the same ``sub``. Not checked: ``iss``, ``exp``, ``iat``,
``email_verified``, ``azp``, the provider token's ``aud`` and ``nonce``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yarl

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.login_config import OAuth2ClientConfig, OAuth2Provider, OAuth2ProviderEndpoints
from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.callbacks import form_urlencode
from agentkeys_kit.protocol.identity import Identity, IdentityKind
from agentkeys_kit.protocol.rust_fmt import debug_list
from agentkeys_kit.protocol.serde_rules import Field, SerdeError, boolean, optional, parse_struct, string, u64

_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"  # the worker's charset


class OAuth2Failed(Exception):
    """`AuthenticationError::OAuth2Error(msg)` or `OAuth2SubClaimMismatch`; the message is the Display."""


def oauth2_error(message: str) -> OAuth2Failed:
    return OAuth2Failed(f"OAuth2 error: {message}")


class ConfigMissing(Exception):
    """`OAuth2ConfigFactory::get_config` failed; the message is the boxed error's Display."""


def provider_named(name: str) -> OAuth2Provider | None:
    """``provider.to_lowercase()`` is ``google`` or ``apple`` (the two OAuth methods)."""
    try:
        return OAuth2Provider(name.lower())
    except ValueError:
        return None


def client_config(ctx: SimContext, client_id: str, provider: OAuth2Provider) -> OAuth2ClientConfig:
    """`OAuth2ConfigFactory::get_config`: by lowercased client id; the error lists the *mailer*
    clients (`list_available_clients`), sorted, as the worker does."""
    config = ctx.config.oauth2_clients.get(client_id.lower(), {}).get(provider)
    if config is None:
        available = sorted(key.lower() for key in ctx.config.mailers)
        raise ConfigMissing(
            f"No {provider.value} OAuth2 configuration found for client '{client_id}'. "
            f"Available clients: {debug_list(available)}"
        )
    return config


def state_key(client_id: str, uid: str) -> bytes:
    """``blake2_256((client_id, uid).encode())``: SCALE of two strings is each one's compact length
    and UTF-8 bytes."""
    return hashlib.blake2b(_scale_str(client_id) + _scale_str(uid), digest_size=32).digest()


def _scale_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    length = len(raw)
    if length < 1 << 6:
        prefix = bytes([length << 2])
    elif length < 1 << 14:
        prefix = ((length << 2) | 1).to_bytes(2, "little")
    elif length < 1 << 30:
        prefix = ((length << 2) | 2).to_bytes(4, "little")
    else:
        size = (length.bit_length() + 7) // 8
        prefix = bytes([((size - 4) << 2) | 3]) + length.to_bytes(size, "little")
    return prefix + raw


def alphanumeric(length: int) -> str:
    """`generate_alphanumeric_otp`."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


@dataclass(frozen=True, slots=True)
class AuthorizeData:
    authorize_url: str
    state: str
    nonce: str


def authorize_data(endpoints: OAuth2ProviderEndpoints, oauth_client_id: str, redirect_uri: str | None) -> AuthorizeData:
    """`get_authorize_data`: the base URL plus form-urlencoded pairs in the worker's order
    (``response_type, client_id, scope, state, nonce, [redirect_uri], [response_mode]``), appended
    to any query the base URL already has, as `Url::query_pairs_mut` does."""
    state, nonce = alphanumeric(32), alphanumeric(32)
    pairs = [
        ("response_type", "code"),
        ("client_id", oauth_client_id),
        ("scope", endpoints.scopes),
        ("state", state),
        ("nonce", nonce),
    ]
    if redirect_uri is not None:
        pairs.append(("redirect_uri", redirect_uri))
    if endpoints.use_response_mode:
        pairs.append(("response_mode", "form_post"))
    parts = urlsplit(endpoints.authorize_url)
    query = "&".join(part for part in (parts.query, form_urlencode(pairs)) if part)
    return AuthorizeData(urlunsplit(parts._replace(query=query)), state, nonce)


GOOGLE_ID_TOKEN = (
    Field("iss", string),
    Field("azp", string),
    Field("aud", string),
    Field("sub", string),
    Field("email", string),
    Field("email_verified", boolean),
    Field("nonce", optional(string), optional=True),
    Field("iat", u64),
    Field("exp", u64),
    Field("hd", optional(string), optional=True),
    Field("at_hash", optional(string), optional=True),
)
APPLE_ID_TOKEN = (
    Field("iss", string),
    Field("aud", string),
    Field("sub", string),
    Field("email", string),
    Field("email_verified", boolean),
    Field("nonce", optional(string), optional=True),
    Field("iat", u64),
    Field("exp", u64),
    Field("is_private_email", optional(boolean), optional=True),
    Field("c_hash", optional(string), optional=True),
    Field("auth_time", optional(u64), optional=True),
)


def decode_id_token(token: str, provider: OAuth2Provider) -> dict[str, Any] | None:
    """`decode_id_token`: three dot-separated parts, the middle one base64url (no padding),
    `from_utf8_lossy`, then serde into the provider's `IdToken`; ``None`` on any failure."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64url.decode(parts[1]).decode("utf-8", errors="replace")
        value = json.loads(payload)
        fields = GOOGLE_ID_TOKEN if provider is OAuth2Provider.GOOGLE else APPLE_ID_TOKEN
        return parse_struct(value, fields, "IdToken")
    except (base64url.Base64Error, ValueError, SerdeError, RecursionError):
        return None


def _name(provider: OAuth2Provider) -> str:
    return provider.value.capitalize()


async def verify_oauth2_authentication(ctx: SimContext, client_id: str, data: Mapping[str, Any]) -> Identity:
    """`verify_oauth2_authentication`; raises `OAuth2Failed` with the worker's Display."""
    provider = OAuth2Provider(str(data["provider"]).lower())
    key = state_key(client_id, data["uid"])
    record = ctx.oauth2_states.get(key)
    if record is None:
        raise oauth2_error("State verifier not found")
    ctx.oauth2_states.remove(key)  # one attempt per authorisation, whatever follows
    stored_state, stored_nonce = record
    if stored_state != data["state"]:
        raise oauth2_error("State verifier mismatch")
    try:
        config = client_config(ctx, client_id, provider)
    except ConfigMissing as exc:
        raise oauth2_error(f"Failed to get {provider.value} OAuth2 config for client '{client_id}': {exc}") from None
    client_token = decode_id_token(data["id_token"], provider)
    if client_token is None:
        raise oauth2_error(f"Could not decode {_name(provider)} id token")
    if client_token["aud"] != config.client_id:
        raise oauth2_error("ID token audience does not match client_id")
    if client_token["nonce"] is None:
        raise oauth2_error("ID token missing nonce")
    if client_token["nonce"] != stored_nonce:
        raise oauth2_error("ID token nonce mismatch")
    endpoints = ctx.config.oauth2_providers[provider]
    provider_id_token = await exchange_code(ctx, endpoints.token_url, config, data["code"], data.get("redirect_uri"))
    provider_token = decode_id_token(provider_id_token, provider)
    if provider_token is None:
        raise oauth2_error(f"Could not decode {_name(provider)} id token from provider")
    if client_token["sub"] != provider_token["sub"]:
        raise OAuth2Failed("OAuth2 sub claim mismatch between client and provider tokens")
    kind = IdentityKind.GOOGLE if provider is OAuth2Provider.GOOGLE else IdentityKind.APPLE
    return Identity.handle(kind, provider_token["sub"])


TOKEN_RESPONSE = (
    Field("access_token", string),
    Field("expires_in", u64),
    Field("id_token", string),
    Field("refresh_token", optional(string), optional=True),
    Field("scope", optional(string), optional=True),
    Field("token_type", string),
)


async def exchange_code(
    ctx: SimContext, token_url: str, config: OAuth2ClientConfig, code: str, redirect_uri: str | None
) -> str:
    """`OAuth2Client::exchange_code_for_token`: the form ``code, client_id, client_secret,
    grant_type[, redirect_uri]``; the reply is decoded whatever its status. Error texts are
    reqwest 0.12's Display (``error sending request for url (…)``, ``error decoding response
    body``). The exchange is journaled (`/_sim/callbacks`, backend ``oauth2``) without the secret."""
    pairs = [
        ("code", code),
        ("client_id", config.client_id),
        ("client_secret", config.client_secret),
        ("grant_type", "authorization_code"),
    ]
    if redirect_uri is not None:
        pairs.append(("redirect_uri", redirect_uri))
    shown = [(name, "<redacted>" if name == "client_secret" else value) for name, value in pairs]
    entry = ctx.journal.open(
        backend="oauth2",
        operation="exchange_code_for_token",
        method="POST",
        url=token_url,
        request_headers={"Content-Type": "application/x-www-form-urlencoded"},
        request_body=form_urlencode(shown),
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*"}
    try:
        async with ctx.http.post(
            yarl.URL(token_url, encoded=True),
            data=form_urlencode(pairs).encode("ascii"),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=ctx.config.callback_timeout),
        ) as response:
            entry.status = response.status
            raw = await response.read()
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        entry.error = f"error sending request for url ({token_url})"
        raise oauth2_error(f"Could not exchange code for token: {entry.error}") from None
    try:
        body = parse_struct(json.loads(raw), TOKEN_RESPONSE, "OAuth2TokenResponse")
    except (ValueError, SerdeError, RecursionError):
        entry.error = "error decoding response body"
        entry.response_body = raw.decode("utf-8", errors="replace")
        raise oauth2_error(f"Could not exchange code for token: {entry.error}") from None
    entry.response_body = {name: ("<redacted>" if name.endswith("token") else value) for name, value in body.items()}
    return str(body["id_token"])
