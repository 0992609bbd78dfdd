"""Placeholder until login-core's `broker.login` lands (merged over this file): `complete_login`
answers with the identity it would log in, so the e-mail and Google flows can be built first."""

from __future__ import annotations

from aiohttp import web

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.state import BrokerState
from agentkeys_kit.protocol.identity import Identity, IdentityKind


async def complete_login(
    state: BrokerState, request: web.Request, *, identity_type: str, identity_value: str, method: str
) -> web.Response:
    account = Identity.handle(IdentityKind(identity_type), identity_value).omni_account_hex("agentkeys")
    return errors.ok({"omni_account": account, "identity_type": identity_type, "method": method})
