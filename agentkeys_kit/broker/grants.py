"""Grants: a master wallet lets an agent wallet act for it in a scope until an expiry.

`check_hyper_agent_address` answers ``isBound`` from this table: true only for an active grant
(not revoked, not superseded, ``expires_at`` in the future) whose master and agent match,
case-insensitively. Revocation is one row update and takes effect on the next callback. A pair
holds at most one open grant (a unique index, `storage/migrations.py` v5): creating a grant for a
pair whose grant has expired closes that one (its ``superseded_by`` names the new grant).

HTTP (authenticated by `bearer.require_principal`: the master's recorded TEE *access* token or
broker session; the master is the user that bearer names, and it must be a wallet identity):

* ``POST /v1/grant/create`` ``{agent_wallet, scope, expires_at, max_uses?}`` → ``data.grant`` (409 if
  the pair already has an active grant); ``max_uses`` (1 to 10^9, absent or null: no limit) bounds
  the agent's mints under it (`broker/agent_mint.py`);
* ``POST /v1/grant/revoke`` ``{grant_id}`` → ``data.grant`` (404 for an unknown *or another
  master's* grant, so ownership is not leaked; 409 if already revoked); revoking unbinds the pair,
  whatever other grant it may have;
* ``GET /v1/grant/list`` → ``data.grants`` (only the caller's).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.agent_mint import path_problem
from agentkeys_kit.broker.bearer import Principal, audit_event, protected
from agentkeys_kit.broker.http import json_body, require_fields
from agentkeys_kit.broker.state import BrokerState
from agentkeys_kit.broker.storage import GrantRecord, store

_EVM_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
MAX_SCOPE = 256
MAX_GRANT_SECONDS = 10 * 365 * 24 * 3600


def master_wallet_of(principal: Principal) -> str:
    """The master's wallet: grants are made by a wallet identity only."""
    if principal.identity_type != "evm" or principal.wallet is None:
        raise errors.not_a_wallet_identity()
    return principal.wallet


def validate_grant_request(body: Any, master_wallet: str, now: int) -> tuple[str, str, int]:
    fields = require_fields(body, {"agent_wallet": str, "scope": str, "expires_at": int}, "GrantCreate")
    agent = fields["agent_wallet"]
    if not _EVM_ADDRESS.fullmatch(agent):
        raise errors.malformed("agent_wallet must be 0x + 40 hex digits")
    if agent.lower() == master_wallet.lower():
        raise errors.malformed("a wallet cannot be its own agent")
    scope = fields["scope"].strip()
    if not scope or len(scope) > MAX_SCOPE:
        raise errors.malformed(f"scope must be 1 to {MAX_SCOPE} characters")
    service, _, prefix = scope.partition("/")
    if not service.strip():
        raise errors.malformed("scope must start with a service: SERVICE or SERVICE/PATH-PREFIX")
    problem = path_problem(prefix)
    if problem is not None:
        raise errors.malformed(f"scope has {problem} in its path prefix")
    if fields["expires_at"] <= now:
        raise errors.malformed("expires_at must be in the future (unix seconds)")
    if fields["expires_at"] > now + MAX_GRANT_SECONDS:
        raise errors.malformed("expires_at may be at most ten years ahead")
    return agent.lower(), scope, fields["expires_at"]


MAX_USES = 10**9


def validate_max_uses(body: Any) -> int | None:
    value = body.get("max_uses") if isinstance(body, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_USES:
        raise errors.malformed(f"max_uses must be an integer from 1 to {MAX_USES}, or null")
    return value


@protected("grant_create")
async def grant_create(request: web.Request, state: BrokerState, principal: Principal) -> web.Response:
    wallet = master_wallet_of(principal)
    body = await json_body(request)
    agent, scope, expires_at = validate_grant_request(body, wallet, state.now())
    max_uses = validate_max_uses(body)
    grant: GrantRecord | None = await state.db.run(
        lambda: store.create_grant(
            master_omni_account=principal.omni_account,
            master_wallet=wallet,
            agent_wallet=agent,
            scope=scope,
            expires_at=expires_at,
            max_uses=max_uses,
            audit=audit_event(state, request, principal, "grant_create", detail=f"{wallet}->{agent}"),
        )
    )
    if grant is None:
        raise errors.grant_exists()
    return errors.ok({"grant": grant.to_json(state.now())})


@protected("grant_revoke")
async def grant_revoke(request: web.Request, state: BrokerState, principal: Principal) -> web.Response:
    master_wallet_of(principal)
    grant_id = require_fields(await json_body(request), {"grant_id": str}, "GrantRevoke")["grant_id"]
    outcome = await state.db.run(
        lambda: store.revoke_grant(
            grant_id=grant_id,
            master_omni_account=principal.omni_account,
            audit=audit_event(state, request, principal, "grant_revoke", detail=grant_id),
        )
    )
    if outcome == "not_found":
        raise errors.unknown_grant()
    if outcome == "already_revoked":
        raise errors.already_revoked()
    grants = await state.db.run(store.list_grants, principal.omni_account)
    [grant] = [g for g in grants if g.grant_id == grant_id]
    return errors.ok({"grant": grant.to_json(state.now())})


@protected("grant_list")
async def grant_list(request: web.Request, state: BrokerState, principal: Principal) -> web.Response:
    master_wallet_of(principal)
    grants = await state.db.run(store.list_grants, principal.omni_account)
    now = state.now()
    return errors.ok({"grants": [grant.to_json(now) for grant in grants]})


def add_grant_routes(app: web.Application) -> None:
    app.router.add_post("/v1/grant/create", grant_create)
    app.router.add_post("/v1/grant/revoke", grant_revoke)
    app.router.add_get("/v1/grant/list", grant_list)
