"""The callback surface the worker calls (`../shared/spec/heima-protocol.md` §1b and §8), served
at the worker's paths and again under `BROKER_CALLBACK_BASE_PATH`.

The broker believes only what a TEE-signed token proves: on `post_heima_login` the token's ``sub``
must be the OmniAccount of ``userId`` under ``clientId`` and its ``aud`` must be ``clientId``, so a
valid token for one identity never creates or touches another's record. The two callbacks the
worker sends without credentials (`get_account_user_id`, `check_hyper_agent_address`) are served
only to `BROKER_CALLBACK_ALLOW_CIDRS`. Each callback is one transaction; every callback, refused
or not, writes an audit row (the bearer only as its SHA-256).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.audit_chain import CHAIN, ChainEntry, alongside
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import (
    authorization_header,
    client_address,
    note_omni_account,
    query_param,
    require_peer_in,
)
from agentkeys_kit.broker.http import json_body as json_body  # the request layer, still importable from here
from agentkeys_kit.broker.http import read_body as read_body
from agentkeys_kit.broker.http import require_fields as require_fields
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import AuditEvent, StorageError, UserRecord, ValueRefused, store
from agentkeys_kit.broker.storage.base import one_line
from agentkeys_kit.broker.tokens import VerifiedBearer, bearer_sha256
from agentkeys_kit.broker.totp import verify_totp
from agentkeys_kit.protocol.auth import (
    AGENTKEYS_BACKEND_VARIANT,
    CLIENT_AUTH_VARIANTS,
    UserId,
    parse_client_auth,
    parse_user_id,
)
from agentkeys_kit.protocol.email_rules import EmailVerdict, validate_email
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import (
    ADDRESS_LENGTHS,
    IDENTITY_STRING_MAX_BYTES,
    Identity,
    IdentityError,
    IdentityKind,
    email_omni_account,
    pumpx_omni_account,
)
from agentkeys_kit.protocol.serde_rules import SerdeError
from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims

log = logging.getLogger(__name__)

CallbackHandler = Callable[[web.Request, BrokerState, "VerifiedBearer | None"], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.Response]]
_EVM_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_CLIENT_AUTH_VARIANTS = {**CLIENT_AUTH_VARIANTS, **AGENTKEYS_BACKEND_VARIANT}

CALLBACK_PATHS = {
    "post_heima_login": ("POST", "/v3/account/post_heima_login"),
    "add_wallet": ("POST", "/v3/account/add_wallet"),
    "get_account_user_id": ("GET", "/v3/account/get_account_user_id"),
    "user_connect": ("POST", "/v3/account/user_connect"),
    "check_hyper_agent_address": ("POST", "/v1/account/check_hyper_agent_address"),
}


def pumpx_account_hex(client_id: str) -> Any:
    return lambda uid: hex_encode(pumpx_omni_account(client_id, uid))


def presented_token_sha256(header: str | None) -> str | None:
    """The SHA-256 of the token a refused request presented (never of the whole header), so its
    audit rows line up with the rows of the same token elsewhere."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return bearer_sha256(token.strip() if scheme.lower() == "bearer" and token.strip() else header)


def canonical_email(email: str) -> str:
    """The e-mail as its OmniAccount hashes it (lowercased); over 64 bytes is refused."""
    try:
        return canonical_identity_value(UserId(IdentityKind.EMAIL, email))
    except IdentityError:
        raise errors.malformed(f"e-mail addresses over {IDENTITY_STRING_MAX_BYTES} bytes are refused") from None


def canonical_identity_value(user_id: UserId, identity: Identity | None = None) -> str:
    """The value the user row is keyed by: what the OmniAccount hashes, rendered canonically
    (lowercase ``0x`` hex or base58 for addresses, the handle, the lowercased e-mail).

    Handles over 64 bytes are refused: the worker cuts them to 64 bytes (an invalid UTF-8 cut
    hashes as ""), so two different long e-mails would share one OmniAccount and one user."""
    identity = identity or user_id.to_identity()
    if identity.kind in ADDRESS_LENGTHS:
        return identity.user_id_value()
    if len(user_id.value.encode("utf-8")) > IDENTITY_STRING_MAX_BYTES:
        raise IdentityError(f"{identity.kind} value over {IDENTITY_STRING_MAX_BYTES} bytes")
    return identity.hashed_value().decode("utf-8")


# --------------------------------------------------------------------------- request helpers


def require_allowed_network(request: web.Request, state: BrokerState) -> None:
    """Credential-less callbacks: only from `BROKER_CALLBACK_ALLOW_CIDRS`, and never through a
    proxy. The worker calls directly; behind a reverse proxy every client would look local."""
    require_peer_in(request, state.config.callback_allow_cidrs, "callbacks are")


async def audit_refusal(
    state: BrokerState, event: str, error: BrokerError, request: web.Request, **fields: Any
) -> None:
    """Refusals are audited within a per-source budget, the rest counted (`broker/audit.py`)."""
    await state.refusals.record(
        AuditEvent(
            event=event,
            outcome=f"refused:{error.error}",
            occurred_at=state.now(),
            remote_addr=client_address(request),
            detail=error.details.get("reason") or error.message,
            **fields,
        )
    )


async def refuse_unstorable(pending: Awaitable[web.Response]) -> web.Response:
    """A value the database cannot store is the request's fault: a 400, never a 5xx."""
    try:
        return await pending
    except ValueRefused:
        raise errors.malformed(
            "a value cannot be stored (a NUL byte, a lone surrogate, a number out of range)"
        ) from None


def callback(*, bearer: bool) -> Callable[[CallbackHandler], Handler]:
    """Wrap a callback handler: TEE-token check or network allow-list, refusal audit, envelope
    (`serve_callback`). The handler's name is the callback's, and its refusals' audit event."""

    def decorate(handler: CallbackHandler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            return await serve_callback(request, handler, bearer=bearer)

        handle.__name__ = handler.__name__
        return handle

    return decorate


async def serve_callback(request: web.Request, handler: CallbackHandler, *, bearer: bool) -> web.Response:
    """One callback request through `handler`. A function of its own, which takes everything it
    varies on per request, rather than the body of `callback`'s closure: the decorator runs once,
    at import, so `dev.py mutate` (mutmut) would credit what it holds to the first case that
    imports the broker only; this runs, and is credited, per request."""
    event = handler.__name__
    state = request.app[STATE]
    verified: VerifiedBearer | None = None
    header = authorization_header(request)
    try:
        if bearer:
            verified = state.verifier.verify(header)
            note_omni_account(request, verified.claims.sub)
        else:
            require_allowed_network(request, state)
        result: web.Response = await refuse_unstorable(handler(request, state, verified))
        return result
    except BrokerError as error:
        sha = verified.sha256 if verified else presented_token_sha256(header)
        await audit_refusal(
            state,
            event,
            error,
            request,
            bearer_sha256=sha,
            omni_account=verified.claims.sub if verified else None,
            client_id=verified.claims.aud if verified else None,
        )
        return error.response()
    except StorageError as exc:  # one line; the storage log summarises an outage
        log.warning("storage failed while serving %s: %s", event, one_line(exc))
        return errors.storage_unavailable().response()


def _audit(
    state: BrokerState, request: web.Request, event: str, verified: VerifiedBearer | None, **fields: Any
) -> AuditEvent:
    return AuditEvent(
        event=event,
        outcome=fields.pop("outcome", "ok"),
        occurred_at=state.now(),
        client_id=fields.pop("client_id", verified.claims.aud if verified else None),
        omni_account=fields.pop("omni_account", verified.claims.sub if verified else None),
        bearer_sha256=verified.sha256 if verified else None,
        remote_addr=client_address(request),
        detail=fields.pop("detail", None),
    )


# --------------------------------------------------------------------------- the callbacks


def require_token_proves_identity(claims: AuthTokenClaims, account: str, client_id: str) -> None:
    """The rule that keeps one identity's token from creating or touching another's record."""
    if claims.aud != client_id:
        raise errors.identity_mismatch(f"token aud {claims.aud!r} is not clientId {client_id!r}")
    if claims.sub != account:
        raise errors.identity_mismatch("token sub is not the OmniAccount of userId under clientId")


@callback(bearer=True)
async def post_heima_login(request: web.Request, state: BrokerState, verified: VerifiedBearer | None) -> web.Response:
    assert verified is not None
    body = require_fields(
        await json_body(request),
        {"userId": dict, "clientId": str, "heimaLoginSuccess": bool},
        "PostHeimaLoginBody",
    )
    if body["heimaLoginSuccess"] is not True:
        raise errors.malformed("heimaLoginSuccess must be true")
    try:
        user_id = parse_user_id(body["userId"])
        client_auth = body.get("clientAuth")
        if client_auth is not None:
            parse_client_auth(client_auth, _CLIENT_AUTH_VARIANTS)
    except SerdeError as exc:
        raise errors.malformed(f"PostHeimaLoginBody: {exc}") from None
    client_id = body["clientId"]
    if client_id not in state.config.accepted_client_ids:
        raise errors.client_not_accepted(client_id)
    try:
        identity = user_id.to_identity()
        account = hex_encode(identity.omni_account(client_id))
        identity_value = canonical_identity_value(user_id, identity)
    except IdentityError as exc:
        raise errors.malformed(f"userId: {exc}") from None
    claims = verified.claims
    require_token_proves_identity(claims, account, client_id)
    # the login's audit-chain row (the worker authenticated; `broker/audit_chain.py`)
    chained = ChainEntry(
        event="login",
        outcome="ok",
        minted_at=state.now(),
        requester_token=verified.sha256,
        requester_wallet=identity_value if user_id.kind is IdentityKind.EVM else "unknown",
        omni_account=account,
        sts_session_name=f"tee:{client_id}",
        outcome_detail=f"post_heima_login {user_id.kind.value} {identity_value}"[:500],
    )
    user: UserRecord = await request.app[CHAIN].run(
        alongside(
            lambda: store.record_login(
                dialect=state.db.dialect,
                client_id=client_id,
                identity_type=user_id.kind.value,
                identity_value=identity_value,
                omni_account=account,
                pumpx_omni_for=pumpx_account_hex(client_id),
                token_sha256=verified.sha256,
                token_expires_at=claims.exp,
                audit=_audit(state, request, "post_heima_login", verified),
            ),
            [chained],
        )
    )
    return errors.ok({"user_id": user.user_uid})


@callback(bearer=True)
async def add_wallet(request: web.Request, state: BrokerState, verified: VerifiedBearer | None) -> web.Response:
    assert verified is not None
    if await read_body(request):
        raise errors.malformed("add_wallet carries no body")
    user = await state.db.run(store.find_user_by_account, verified.claims.sub)
    if user is None or user.client_id != verified.claims.aud:
        raise errors.unknown_user()
    wallet = await state.db.run(
        lambda: store.add_wallet(user=user, audit=_audit(state, request, "add_wallet", verified, detail=None))
    )
    log.info("user %s: wallet slot %d recorded", user.user_uid, wallet.wallet_index)
    return errors.ok({})


@callback(bearer=False)
async def get_account_user_id(
    request: web.Request, state: BrokerState, verified: VerifiedBearer | None
) -> web.Response:
    email = query_param(request, "email")  # strict: what the worker's serde_urlencoded writes
    if validate_email(email) is not EmailVerdict.VALID:
        raise errors.malformed("query parameter email must be one valid e-mail address")
    client_id = state.config.primary_client_id
    email = canonical_email(email)
    account = hex_encode(email_omni_account(client_id, email))
    note_omni_account(request, account)
    user, _created = await state.db.run(
        lambda: store.ensure_email_user(
            client_id=client_id,
            email=email,
            omni_account=account,
            pumpx_omni_for=pumpx_account_hex(client_id),
            audit=_audit(
                state,
                request,
                "get_account_user_id",
                None,
                client_id=client_id,
                omni_account=account,
            ),
        )
    )
    return errors.ok({"userId": user.user_uid})


@callback(bearer=True)
async def user_connect(request: web.Request, state: BrokerState, verified: VerifiedBearer | None) -> web.Response:
    assert verified is not None
    body = require_fields(
        await json_body(request),
        {"email": str, "inviteCode": (str, type(None)), "googleCode": str, "userId": str},
        "UserConnectBody",
    )
    user = await state.db.run(store.find_user_by_uid, body["userId"])
    if user is None:
        raise errors.unknown_user()
    if verified.claims.aud != user.client_id or verified.claims.sub != user.pumpx_omni_account:
        raise errors.identity_mismatch("token sub is not the Pumpx identity of userId under the token's client")
    if user.identity_type == IdentityKind.EMAIL and canonical_email(body["email"]) != user.identity_value:
        raise errors.identity_mismatch("email is not the e-mail of userId")
    check = user.totp_secret is None or verify_totp(user.totp_secret, body["googleCode"], state.now())
    await state.db.run(
        store.write_audit,
        _audit(state, request, "user_connect", verified, detail=f"googleAuthCheck={str(check).lower()}"),
    )
    return errors.ok({"userId": user.user_uid, "googleAuthCheck": check})


@callback(bearer=False)
async def check_hyper_agent_address(
    request: web.Request, state: BrokerState, verified: VerifiedBearer | None
) -> web.Response:
    body = require_fields(
        await json_body(request),
        {"main_address": str, "agent_address": str, "login_type": int},
        "CheckHyperAgentAddressBody",
    )
    for key in ("main_address", "agent_address"):
        if not _EVM_ADDRESS.fullmatch(body[key]):
            raise errors.malformed(f"{key} must be 0x + 40 hex digits")
    bound = await state.db.run(
        lambda: store.is_bound(
            main_address=body["main_address"],
            agent_address=body["agent_address"],
            now=state.now(),
            audit=_audit(
                state,
                request,
                "check_hyper_agent_address",
                None,
                detail=f"{body['main_address'].lower()}->{body['agent_address'].lower()}",
            ),
        )
    )
    return errors.ok({"isBound": bound})


HANDLERS = {
    "post_heima_login": post_heima_login,
    "add_wallet": add_wallet,
    "get_account_user_id": get_account_user_id,
    "user_connect": user_connect,
    "check_hyper_agent_address": check_hyper_agent_address,
}


def add_callback_routes(app: web.Application, base_path: str) -> None:
    prefixes = [""] + ([base_path] if base_path else [])
    for name, (method, path) in CALLBACK_PATHS.items():
        for prefix in prefixes:
            app.router.add_route(method, prefix + path, HANDLERS[name])
