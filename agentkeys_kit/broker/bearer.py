"""The one bearer verifier every protected endpoint uses (Phase 3, spec §6 and §1.5).

`require_principal(request)` returns the `Principal` the request's ``Authorization: Bearer``
proves, or raises the broker's 401 envelope (``missing_bearer`` / ``invalid_token``). Nothing is
forwarded anywhere and no request can name its own identity: the identity comes from the token
and the database only. Two kinds of bearer are accepted, chosen by the JWS header and each with
its algorithm pinned:

* ``alg: RS256`` — a **TEE access token**: verified as the callbacks verify it (`tokens.py`: the
  pinned RSA key, ``aud`` among `BROKER_ACCEPTED_CLIENT_IDS`, ``typ == "access"``, ``exp`` without
  leeway, canonical base64url, no repeated key, no ``crit``, ``nbf`` honoured) **and** recorded by
  `post_heima_login` for that OmniAccount and client id (`tee_access_tokens`), not logged out. A
  token whose callback never reached this broker is refused: the broker never heard of that login.
* ``alg: ES256`` — a **broker session** (`sessions.py`): ``kid`` is the session key's, ES256 with
  that key only, ``iss``, ``aud = agentkeys:broker``, ``exp`` without leeway, and its ``jti`` is a
  session this broker issued and nobody revoked (`broker_sessions`, shared by all replicas).

Any other ``alg`` (``none``, ``HS256`` keyed with a public key, ``ES256`` signed by the RSA key,
``RS256`` naming the session ``kid``, …) is refused, and so is a header carrying ``jku``, ``x5u``,
``jwk`` or ``x5c``: the keys are pinned, so a header that offers a key is an attack, not a hint;
``crit`` and a repeated header or claim key are refused too.

`protected(event)` wraps a handler ``(request, state, principal)``: refusals are audited within the
refusal budget (`audit.py`) and answered in the envelope, a database failure is a 503.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.callbacks import audit_refusal, presented_token_sha256, refuse_unstorable
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import authorization_header, client_address, note_omni_account
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import AuditEvent, StorageError
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage.base import one_line
from agentkeys_kit.broker.tokens import bearer_sha256
from agentkeys_kit.protocol.json_rules import duplicated_keys
from agentkeys_kit.protocol.tee_jwt import TokenRejected, parse_compact

log = logging.getLogger(__name__)

#: Header fields that offer a key or a place to fetch one: refused outright.
KEY_OFFERING_HEADERS = ("jku", "x5u", "jwk", "x5c")
#: The client id of the broker's own logins (the OmniAccount every login method computes).
AGENTKEYS_CLIENT_ID = "agentkeys"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified bearer is: the user, never what the request says it is."""

    omni_account: str  # 0x + 64 lowercase hex, the user's OmniAccount under its client id
    identity_type: str  # "evm", "email", "google", …
    identity_value: str  # canonical: lowercase 0x address, lowercased e-mail, Google sub, …
    wallet: str | None  # the user's EVM address (lowercase) when the identity is a wallet
    via: Literal["tee", "session"]
    token_sha256: str  # hex SHA-256 of the presented bearer (what the audit keeps)
    session_id: str | None  # the session's jti (None for a TEE token)
    client_id: str = AGENTKEYS_CLIENT_ID


def _bearer(header: str | None) -> str:
    if not header:
        raise errors.BrokerError(
            401, 40100, "missing_bearer", "Authorization: Bearer <session token or TEE access token> is required"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.BrokerError(401, 40100, "missing_bearer", "the Authorization scheme must be Bearer")
    return token.strip()


async def require_principal(request: web.Request) -> Principal:
    """The identity the request's bearer proves; 401 in the envelope for every failure."""
    state = request.app[STATE]
    header = authorization_header(request)
    token = _bearer(header)
    # a bearer verified before passed every header rule below: straight to its time rules and row
    if state.sessions.knows(token):
        principal = await _session_principal(state, token, {})
    elif state.verifier.knows(token):
        principal = await _tee_principal(state, header, token)
    else:
        principal = await _verify_new(state, header, token)
    note_omni_account(request, principal.omni_account)
    return principal


async def _verify_new(state: BrokerState, header: str | None, token: str) -> Principal:
    try:
        compact = parse_compact(token)
    except TokenRejected as exc:
        raise errors.invalid_bearer(str(exc)) from None
    jose = compact.header
    offered = [name for name in KEY_OFFERING_HEADERS if name in jose]
    if offered:
        raise errors.invalid_bearer(f"the header offers a key ({offered[0]}); keys are pinned")
    if duplicated_keys(jose) or duplicated_keys(compact.claims):
        raise errors.invalid_bearer("a key is repeated in the token")
    if "crit" in jose:
        raise errors.invalid_bearer("crit names an extension the broker does not understand (RFC 7515 §4.1.11)")
    alg = jose.get("alg")
    if alg == "RS256":
        return await _tee_principal(state, header, token)
    if alg == "ES256":
        return await _session_principal(state, token, jose)
    raise errors.invalid_bearer(f"alg {alg!r} is not accepted (RS256 TEE access token or ES256 session)")


async def _tee_principal(state: BrokerState, header: str | None, token: str) -> Principal:
    try:
        verified = state.verifier.verify(header)
    except BrokerError as error:
        raise errors.invalid_bearer(str(error.details.get("reason") or error.message)) from None
    offered = sorted(verified.header_fields.intersection(KEY_OFFERING_HEADERS))
    if offered:  # checked here too: a token the callbacks verified skips `_verify_new`
        raise errors.invalid_bearer(f"the header offers a key ({offered[0]}); keys are pinned")
    recorded = await state.db.run(login_store.find_access_token, verified.sha256)
    claims = verified.claims
    if recorded is None or recorded.omni_account != claims.sub or recorded.client_id != claims.aud:
        raise errors.invalid_bearer("post_heima_login never recorded this TEE access token")
    if recorded.revoked_at is not None:
        raise errors.invalid_bearer("this TEE access token was logged out")
    user = recorded.user
    if user is None:
        raise errors.invalid_bearer("no user is stored for this TEE access token")
    return Principal(
        omni_account=user.omni_account,
        identity_type=user.identity_type,
        identity_value=user.identity_value,
        wallet=user.identity_value if user.identity_type == "evm" else None,
        via="tee",
        token_sha256=verified.sha256,
        session_id=None,
        client_id=user.client_id,
    )


async def _session_principal(state: BrokerState, token: str, jose: dict[str, Any]) -> Principal:
    now = state.now()
    try:
        claims = state.sessions.verify(token, jose, now)
    except TokenRejected as exc:
        raise errors.invalid_bearer(str(exc)) from None
    row = await state.db.run(login_store.find_session, claims.jti)
    if row is None or row.omni_account != claims.omni_account:
        raise errors.invalid_bearer("this broker never issued that session")
    if row.revoked_at is not None:
        raise errors.invalid_bearer("the session was revoked")
    return Principal(
        omni_account=claims.omni_account,
        identity_type=claims.identity_type,
        identity_value=claims.identity_value,
        wallet=claims.wallet,
        via="session",
        token_sha256=bearer_sha256(token),
        session_id=claims.jti,
    )


def audit_event(
    state: BrokerState, request: web.Request, principal: Principal, event: str, **fields: Any
) -> AuditEvent:
    """An audit row of something `principal` did (the bearer only as its SHA-256)."""
    return AuditEvent(
        event=event,
        outcome=fields.pop("outcome", "ok"),
        occurred_at=state.now(),
        client_id=principal.client_id,
        omni_account=principal.omni_account,
        bearer_sha256=principal.token_sha256,
        remote_addr=client_address(request),
        detail=fields.pop("detail", None),
    )


ProtectedHandler = Callable[[web.Request, BrokerState, Principal], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


def protected(event: str) -> Callable[[ProtectedHandler], Handler]:
    """Wrap a handler of a protected endpoint: `require_principal`, refusal audit, envelope."""

    def decorate(handler: ProtectedHandler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            state = request.app[STATE]
            principal: Principal | None = None
            try:
                principal = await require_principal(request)
                result: web.Response = await refuse_unstorable(handler(request, state, principal))
                return result
            except BrokerError as error:
                presented = request.headers.get("Authorization")
                sha = principal.token_sha256 if principal else presented_token_sha256(presented)
                await audit_refusal(
                    state,
                    event,
                    error,
                    request,
                    bearer_sha256=sha,
                    omni_account=principal.omni_account if principal else None,
                    client_id=principal.client_id if principal else None,
                )
                return error.response()
            except StorageError as exc:
                log.warning("storage failed while serving %s: %s", event, one_line(exc))
                return errors.storage_unavailable().response()

        handle.__name__ = handler.__name__
        return handle

    return decorate


# --------------------------------------------------------------------------- GET /v1/whoami


@protected("whoami")
async def whoami(request: web.Request, state: BrokerState, principal: Principal) -> web.Response:
    """Who the bearer is; reads nothing but what the verifier read."""
    return errors.ok(
        {
            "omni_account": principal.omni_account,
            "identity_type": principal.identity_type,
            "identity_value": principal.identity_value,
            "wallet": principal.wallet,
            "via": principal.via,
            "session_id": principal.session_id,
            "client_id": principal.client_id,
        }
    )


def add_bearer_routes(app: web.Application) -> None:
    app.router.add_get("/v1/whoami", whoami)
