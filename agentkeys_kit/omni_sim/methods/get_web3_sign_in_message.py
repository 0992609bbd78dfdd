"""`omni_getWeb3SignInMessage` (`methods/omni/get_web3_sign_in_message.rs@05ff5857`).

The stored code for the account is returned again until a login consumes it; otherwise a new
8-digit code is stored. `omni_account` is parsed as sp-core `AccountId32::from_str`: after
stripping leading ``0x``s, 64 hex digits, else an SS58 address; failure is a bare -32602. The
echoed account is re-encoded as ``0x`` + lowercase hex.
"""

from __future__ import annotations

from typing import Any

from scalecodec.utils.ss58 import ss58_decode

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import parse_rpc_params
from agentkeys_kit.protocol.hexcodec import HexError, decode_bare_hex, hex_encode
from agentkeys_kit.protocol.serde_rules import Field, string
from agentkeys_kit.protocol.web3_message import WEB3_MESSAGE_CODE_DIGITS, HeimaMessagePayload, generate_otp

PARAMS = (Field("client_id", string), Field("omni_account", string))


def parse_account_id32(text: str) -> bytes | None:
    body = text
    while body.startswith("0x"):
        body = body[2:]
    if len(body) == 64:
        try:
            return decode_bare_hex(body)
        except HexError:
            return None
    try:
        raw = bytes.fromhex(ss58_decode(text))
    except (ValueError, TypeError, IndexError):
        return None
    return raw if len(raw) == 32 else None


async def get_web3_sign_in_message(ctx: SimContext, params: Any, ext: object) -> dict[str, str]:
    p = parse_rpc_params(ctx, params, PARAMS, "GetWeb3SignInMessageParams")
    account = parse_account_id32(p["omni_account"])
    if account is None:
        raise ctx.errors.plain_invalid_params()
    code = ctx.codes.get(account)
    if code is None:
        code = generate_otp(WEB3_MESSAGE_CODE_DIGITS)
        ctx.codes.insert(account, code)
    return HeimaMessagePayload(p["client_id"], hex_encode(account), code).to_json()
