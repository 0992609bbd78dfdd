"""Helpers shared by the method modules (each mirrors one `methods/omni/*.rs`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentkeys_kit.omni_sim.backend_api import CallbackFailed
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.rpc import ABSENT
from agentkeys_kit.protocol.auth import OmniAuth, OmniAuthError, UserAuth, UserId, to_omni_auth
from agentkeys_kit.protocol.callbacks import ApiResponse
from agentkeys_kit.protocol.errors import RpcError, parse_error
from agentkeys_kit.protocol.identity import IdentityError
from agentkeys_kit.protocol.rust_fmt import debug_str
from agentkeys_kit.protocol.serde_rules import Field, SerdeError, parse_struct


def parse_rpc_params(ctx: SimContext, params: Any, fields: Sequence[Field], struct: str) -> dict[str, Any]:
    """`parse_rpc_params::<T>(params)`: any deserialization failure is the one -32700 object."""
    try:
        return parse_struct(None if params is ABSENT else params, fields, struct)
    except SerdeError:
        raise ctx.errors.params_parse() from None


async def call_backend(
    call: Awaitable[ApiResponse],
    on_transport: Callable[[str], RpcError],
    on_code: Callable[[int, str], RpcError] | None,
) -> ApiResponse:
    """Run a callback; map transport/decode failures and (optionally) ``code != 10000``."""
    try:
        response = await call
    except CallbackFailed as failed:
        raise on_transport(failed.reason) from None
    if on_code is not None and not response.ok:
        raise on_code(response.code, response.message)
    return response


def omni_account_of(user_id: UserId, client_id: str, context: str = "Failed to convert to omni_account") -> bytes:
    """``user_id.to_omni_account(client_id).map_err_parse(context)``: -32700 with the worker's
    `&str` error in Debug form (``Failed to convert to omni_account: "Invalid hex encoding"``)."""
    try:
        return user_id.omni_account(client_id)
    except IdentityError as exc:
        raise parse_error(f"{context}: {debug_str(exc.reason)}") from None


def omni_auth_of(user_auth: UserAuth, user_id: UserId, client_id: str) -> OmniAuth:
    """``to_omni_auth(..).map_err_parse("Failed to convert to OmniAuth")``."""
    try:
        return to_omni_auth(user_auth, user_id, client_id)
    except OmniAuthError as exc:
        raise parse_error(f"Failed to convert to OmniAuth: {debug_str(str(exc))}") from None
