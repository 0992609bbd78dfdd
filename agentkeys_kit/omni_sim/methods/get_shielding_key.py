"""`omni_getShieldingKey` (`methods/omni/get_shielding_key.rs@087a35b6`).

``{"n": "0x…", "e": "0x…"}``: the RSA-3072 modulus and exponent as *little-endian* minimal byte
strings (`BigUint::to_bytes_le`), hex via ethers `Bytes` (lowercase, ``0x``). Params ignored.
"""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext


def _le_hex(number: int) -> str:
    return "0x" + number.to_bytes(max(1, (number.bit_length() + 7) // 8), "little").hex()


async def get_shielding_key(ctx: SimContext, params: Any, ext: object) -> dict[str, str]:
    public = ctx.shielding_key.public_key().public_numbers()
    return {"n": _le_hex(public.n), "e": _le_hex(public.e)}
