"""Login, front of house: the discovery document and the one way a proven identity becomes a session.

`BROKER_LOGIN_BACKEND` chooses who authenticates the user (`../shared/DESIGN.md`, "Login"):

* ``heima`` (`login/heima.py`): the worker does. The client logs in at `BROKER_HEIMA_WORKER_URL`
  with client id ``agentkeys``; the worker calls `post_heima_login` here and hands the client its
  TEE tokens; the client presents the TEE access token, which `bearer.require_principal` accepts
  because that callback recorded it. The broker issues no session of its own.
* ``local``: the broker does, with the methods of `LOCAL_METHODS` (``wallet``: `login/wallet.py`,
  Sign-In with Ethereum). Each method proves an identity its own way and then calls
  `complete_login`, which computes the identity's OmniAccount under client id ``agentkeys`` exactly
  as the worker does (`protocol.identity`), upserts the user row `post_heima_login` would, records
  and signs a broker session (`sessions.py`) and answers with it.

``GET /v1/auth/config`` tells a client (the `agentkeys` CLI) all it needs from the broker's URL
alone: the backend, its methods, the client id, and for ``heima`` the worker's JSON-RPC URL.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.audit_chain import CHAIN, ChainEntry
from agentkeys_kit.broker.bearer import AGENTKEYS_CLIENT_ID
from agentkeys_kit.broker.callbacks import canonical_identity_value, pumpx_account_hex
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.http import client_address
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import AuditEvent, UserRecord
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage.base import Operation
from agentkeys_kit.broker.storage.login import SessionRow
from agentkeys_kit.protocol.auth import UserId
from agentkeys_kit.protocol.identity import Identity, IdentityError, IdentityKind

log = logging.getLogger(__name__)

#: The local backend's login methods: name → module with ``add_routes(app)``. Each method is a
#: module of its own (`login/wallet.py`, and e-mail and Google beside it).
LOCAL_METHODS: dict[str, str] = {
    "wallet": "agentkeys_kit.broker.login.wallet",
    "email": "agentkeys_kit.broker.login.email",
    "google": "agentkeys_kit.broker.login.google",
}
#: What the worker offers a client of the ``heima`` backend (`omni_userLogin` user_auth kinds used).
HEIMA_METHODS = ("wallet", "email")


def offered_methods(config: BrokerConfig) -> list[str]:
    """What this broker offers: the worker's methods (``heima``), or of `LOCAL_METHODS` the wallet
    always, e-mail when a mailer is configured and Google when a Google client is (``local``)."""
    if config.login_backend == "heima":
        return list(HEIMA_METHODS)
    configured = {"wallet": True, "email": config.email_login is not None, "google": config.google_login is not None}
    return [name for name in LOCAL_METHODS if configured[name]]


def login_config(state: BrokerState) -> dict[str, Any]:
    config = state.config
    document: dict[str, Any] = {
        "backend": config.login_backend,
        "client_id": AGENTKEYS_CLIENT_ID,
        "methods": offered_methods(config),
        "session": {
            "jwks_uri": "/v1/auth/jwks.json",
            "kid": state.sessions.key.kid,
            "ttl_seconds": config.session_ttl,
            "audience": "agentkeys:broker",
        },
        "whoami": "/v1/whoami",
        "logout": "/v1/auth/logout",
    }
    if config.login_backend == "heima":
        document["heima"] = {"worker_url": config.heima_worker_url, "client_id": AGENTKEYS_CLIENT_ID}
    return document


async def auth_config(request: web.Request) -> web.Response:
    """``GET /v1/auth/config``: the login discovery document (no credentials, no secrets)."""
    return errors.ok(login_config(request.app[STATE]))


async def complete_login(
    state: BrokerState,
    request: web.Request,
    *,
    identity_type: str,
    identity_value: str,
    method: str,
    consume: Callable[[], Operation[bool]] | None = None,
) -> web.Response:
    """An identity is proven (by `method`): upsert its user, issue a session, answer with it.

    Call this only once the proof is checked; whatever it is given, it believes. `consume`, when
    given, uses the proof up (one conditional UPDATE answering whether it was still unused) in the
    same transaction as the session: a proof already used is 401 ``login_refused`` and makes
    nothing, and a session is never made without its proof being used up."""
    try:
        kind = IdentityKind(identity_type)
        user_id = UserId(kind, identity_value)
        identity = Identity.from_user_id(kind, identity_value)
        canonical = canonical_identity_value(user_id, identity)
    except (ValueError, IdentityError) as exc:
        raise errors.malformed(f"identity: {exc}") from None
    omni_account = identity.omni_account_hex(AGENTKEYS_CLIENT_ID)
    wallet = canonical if kind is IdentityKind.EVM else None
    now = state.now()
    token, claims = state.sessions.issue(
        omni_account=omni_account, identity_type=kind.value, identity_value=canonical, wallet=wallet, now=now
    )
    session = SessionRow(
        jti=claims.jti,
        omni_account=omni_account,
        identity_type=kind.value,
        identity_value=canonical,
        wallet=wallet,
        method=method,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
    )
    audit = AuditEvent(
        event="login",
        outcome="ok",
        occurred_at=now,
        client_id=AGENTKEYS_CLIENT_ID,
        omni_account=omni_account,
        remote_addr=client_address(request),
        detail=f"{method} session {claims.jti}",
    )
    # the login's audit-chain row, in the session's transaction (`broker/audit_chain.py`)
    chained = ChainEntry(
        event="login",
        outcome="ok",
        minted_at=now,
        requester_wallet=wallet or "unknown",
        omni_account=omni_account,
        sts_session_name=claims.jti,
        outcome_detail=f"{method} {kind.value} {canonical}"[:500],
    )

    def opened() -> Operation[tuple[list[ChainEntry], UserRecord | None]]:
        user = yield from login_store.open_session(
            session=session,
            client_id=AGENTKEYS_CLIENT_ID,
            pumpx_omni_for=pumpx_account_hex(AGENTKEYS_CLIENT_ID),
            audit=audit,
            consume=consume,
        )
        if user is None:  # the proof was used meanwhile: no session, and the chain says so
            used = dataclasses.replace(chained, outcome="refused:login_refused", outcome_detail="proof already used")
            return [used], None
        return [chained], user

    user = await request.app[CHAIN].run(opened)
    if user is None:
        raise errors.login_refused(f"this {method} login proof was already used")
    return errors.ok(
        {
            "session_token": token,
            "token_type": "Bearer",
            "expires_at": claims.expires_at,
            "session_id": claims.jti,
            "kid": state.sessions.key.kid,
            "omni_account": omni_account,
            "identity_type": kind.value,
            "identity_value": canonical,
            "wallet_address": wallet,
            "user_id": user.user_uid,
            "method": method,
        }
    )


def add_login_routes(app: web.Application, config: BrokerConfig) -> None:
    app.router.add_get("/v1/auth/config", auth_config)
    if config.login_backend == "heima" and (config.email_login or config.google_login):
        log.warning(
            "the e-mail and Google login settings are ignored with BROKER_LOGIN_BACKEND=heima: the worker "
            "authenticates (its own mailer sends the codes)"
        )
    if config.login_backend == "local":
        for name in offered_methods(config):
            importlib.import_module(LOCAL_METHODS[name]).add_routes(app)
