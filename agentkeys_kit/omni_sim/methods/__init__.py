"""The simulated JSON-RPC methods, one module per `methods/omni/*.rs` of the worker.

`methods_for(era)` is the registration list of that era: the newest worker (`current`) registers
no `omni_getOmniAccount` (`methods/omni/mod.rs@29cca4f9`, `@2e7e5895`), so it answers -32601 there;
era A (`legacy`) still has it (`get_omni_account.rs@beb343ae`).
"""

from __future__ import annotations

from agentkeys_kit.omni_sim.methods.add_wallet import add_wallet
from agentkeys_kit.omni_sim.methods.attach_passkey import attach_passkey
from agentkeys_kit.omni_sim.methods.get_health import get_health
from agentkeys_kit.omni_sim.methods.get_oauth2_authorization_data import get_oauth2_authorization_data
from agentkeys_kit.omni_sim.methods.get_omni_account import get_omni_account
from agentkeys_kit.omni_sim.methods.get_shielding_key import get_shielding_key
from agentkeys_kit.omni_sim.methods.get_web3_sign_in_message import get_web3_sign_in_message
from agentkeys_kit.omni_sim.methods.list_passkey import list_passkey
from agentkeys_kit.omni_sim.methods.login_with_oauth2 import login_with_oauth2
from agentkeys_kit.omni_sim.methods.remove_passkey import remove_passkey
from agentkeys_kit.omni_sim.methods.rename_passkey_alias import rename_passkey_alias
from agentkeys_kit.omni_sim.methods.request_email_verification_code import request_email_verification_code
from agentkeys_kit.omni_sim.methods.request_jwt import request_jwt
from agentkeys_kit.omni_sim.methods.request_passkey_challenge import request_passkey_challenge
from agentkeys_kit.omni_sim.methods.submit_user_op_with_auth import submit_user_op_with_auth
from agentkeys_kit.omni_sim.methods.user_login import user_login
from agentkeys_kit.omni_sim.rpc import Handler
from agentkeys_kit.protocol.errors import ErrorEra

#: The login surface of the newest worker, in `register_omni`'s order.
METHODS: dict[str, Handler] = {
    "omni_getHealth": get_health,
    "omni_getShieldingKey": get_shielding_key,
    "omni_requestEmailVerificationCode": request_email_verification_code,
    "omni_getOAuth2AuthorizationData": get_oauth2_authorization_data,
    "omni_getWeb3SignInMessage": get_web3_sign_in_message,
    "omni_userLogin": user_login,
    "omni_requestPasskeyChallenge": request_passkey_challenge,
    "omni_attachPasskey": attach_passkey,
    "omni_removePasskey": remove_passkey,
    "omni_listPasskey": list_passkey,
    "omni_renamePasskeyAliasName": rename_passkey_alias,
    "omni_loginWithOAuth2": login_with_oauth2,
    "omni_requestJwt": request_jwt,
    "omni_addWallet": add_wallet,
    "omni_submitUserOpWithAuth": submit_user_op_with_auth,
}

#: Era A also registered `omni_getOmniAccount`.
LEGACY_METHODS: dict[str, Handler] = {**METHODS, "omni_getOmniAccount": get_omni_account}


def methods_for(era: ErrorEra | str) -> dict[str, Handler]:
    return LEGACY_METHODS if ErrorEra(era) is ErrorEra.LEGACY else METHODS
