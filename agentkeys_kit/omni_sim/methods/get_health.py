"""`omni_getHealth` (`methods/omni/get_health.rs@11408256`): ``"OK"``, params ignored."""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext


async def get_health(ctx: SimContext, params: Any, ext: object) -> str:
    return "OK"
