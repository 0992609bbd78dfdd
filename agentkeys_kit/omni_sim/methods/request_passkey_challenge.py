"""`omni_requestPasskeyChallenge` (`methods/omni/request_passkey_challenge.rs@60635e7f`).

No authentication. Params ``{user_id, client_id}``; the challenge is 32 random bytes in base64url
without padding, stored for the OmniAccount of `user_id` under `client_id` for 300 s
(`PasskeyChallengeStorage`); result ``{challenge, timeout: 300}``.
"""

from __future__ import annotations

import secrets
from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import omni_account_of, parse_rpc_params
from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.auth import parse_user_id
from agentkeys_kit.protocol.serde_rules import Field, string

CHALLENGE_TIMEOUT_SECONDS = 300
PARAMS = (Field("user_id", parse_user_id), Field("client_id", string))


async def request_passkey_challenge(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, PARAMS, "RequestPasskeyChallengeParams")
    challenge = base64url.encode(secrets.token_bytes(32))
    account = omni_account_of(p["user_id"], p["client_id"])
    ctx.passkey_challenges.store(account, challenge, CHALLENGE_TIMEOUT_SECONDS, ctx.clock.now())
    return {"challenge": challenge, "timeout": CHALLENGE_TIMEOUT_SECONDS}
