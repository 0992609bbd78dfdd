"""`omni_getWeb3SignInMessage` (`methods/omni/get_web3_sign_in_message.rs@05ff5857`).

The stored code for the account is returned again until a login consumes it; otherwise a new
8-digit code is stored. `omni_account` is parsed as sp-core `AccountId32::from_str`: after
stripping leading ``0x``s, 64 hex digits, else an SS58 address (`from_ss58check`); failure is a bare
-32602. The echoed account is re-encoded as ``0x`` + lowercase hex.

`from_ss58check` (sp-core 35, `Cargo.toml@701b0755`) refuses a *custom* address format, i.e. a
prefix the SS58 registry does not list (unless it is the default, 42), and the reserved 46/47;
the simulator's table is the registry's list of prefixes (`ss58-registry.json@00356b18`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import base58

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import parse_rpc_params
from agentkeys_kit.protocol.hexcodec import HexError, decode_bare_hex, hex_encode
from agentkeys_kit.protocol.serde_rules import Field, string
from agentkeys_kit.protocol.web3_message import WEB3_MESSAGE_CODE_DIGITS, HeimaMessagePayload, generate_otp

PARAMS = (Field("client_id", string), Field("omni_account", string))


#: Registered SS58 prefixes (`ss58-registry.json@00356b18`); 46 and 47 are reserved, not formats.
SS58_REGISTRY = frozenset(
    (
        *range(0, 46), *range(48, 59), 63, 64, 65, 66, 67, 68, 69, 71, 72, 73, 77, 78, 81, 88, 89, 90, 92, 93, 98, 99,
        100, 101, 105, 110, 113, 117, 126, 128, 129, 131, 136, 137, 172, 252, 255, 268, 420, 440, 666, 777, 789,
        995, 1110, 1221, 1222, 1284, 1285, 1328, 1337, 1516, 1985, 2007, 2009, 2021, 2032, 2092, 2106, 2112, 2199,
        2206, 2207, 2254, 3333, 4450, 5234, 5845, 6094, 7007, 7013, 7306, 7391, 8866, 8883, 8886, 9072, 9807, 9935,
        10041, 11330, 11331, 11486, 11820, 12155, 12191, 13116, 14697,
    )
)  # fmt: skip
DEFAULT_SS58_VERSION = 42


def parse_account_id32(text: str) -> bytes | None:
    body = text
    while body.startswith("0x"):
        body = body[2:]
    if len(body) == 64:
        try:
            return decode_bare_hex(body)
        except HexError:
            return None
    return from_ss58check(text)


def from_ss58check(text: str) -> bytes | None:
    """sp-core `Ss58Codec::from_ss58check` for a 32-byte account: prefix (1 or 2 bytes), body,
    2-byte blake2b-512 checksum over ``"SS58PRE" ‖ prefix ‖ body``, registered format only."""
    try:
        data = base58.b58decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    if len(data) < 2:
        return None
    if data[0] < 64:
        prefix_len, ident = 1, data[0]
    elif data[0] < 128:
        lower = ((data[0] << 2) | (data[1] >> 6)) & 0xFF
        prefix_len, ident = 2, lower | ((data[1] & 0b0011_1111) << 8)
    else:
        return None  # InvalidPrefix
    if len(data) != prefix_len + 32 + 2 or ident in (46, 47):
        return None  # BadLength / FormatNotAllowed
    checksum = hashlib.blake2b(b"SS58PRE" + data[: prefix_len + 32], digest_size=64).digest()[:2]
    if data[prefix_len + 32 :] != checksum:
        return None
    if ident not in SS58_REGISTRY and ident != DEFAULT_SS58_VERSION:
        return None  # UnknownSs58AddressFormat: a custom prefix
    return data[prefix_len : prefix_len + 32]


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
