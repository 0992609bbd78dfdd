"""The simulated JSON-RPC methods, one module per `methods/omni/*.rs` of the worker."""

from __future__ import annotations

from agentkeys_kit.omni_sim.methods.add_wallet import add_wallet
from agentkeys_kit.omni_sim.methods.get_health import get_health
from agentkeys_kit.omni_sim.methods.get_omni_account import get_omni_account
from agentkeys_kit.omni_sim.methods.get_shielding_key import get_shielding_key
from agentkeys_kit.omni_sim.methods.get_web3_sign_in_message import get_web3_sign_in_message
from agentkeys_kit.omni_sim.methods.request_email_verification_code import request_email_verification_code
from agentkeys_kit.omni_sim.methods.request_jwt import request_jwt
from agentkeys_kit.omni_sim.methods.user_login import user_login
from agentkeys_kit.omni_sim.rpc import Handler

METHODS: dict[str, Handler] = {
    "omni_getHealth": get_health,
    "omni_getShieldingKey": get_shielding_key,
    "omni_getOmniAccount": get_omni_account,
    "omni_getWeb3SignInMessage": get_web3_sign_in_message,
    "omni_requestEmailVerificationCode": request_email_verification_code,
    "omni_userLogin": user_login,
    "omni_requestJwt": request_jwt,
    "omni_addWallet": add_wallet,
}
