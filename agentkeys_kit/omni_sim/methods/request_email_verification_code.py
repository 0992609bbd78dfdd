"""`omni_requestEmailVerificationCode`
(`methods/omni/request_email_verification_code.rs@05ff5857`).

Order matters and is the worker's: parse, validate the address, store a fresh 6-digit code
(overwriting any earlier one) *before* the mailer is resolved, then resolve the client's mailer
(-32164 if none is configured) and send (-32162 on failure). Result ``null``.
"""

from __future__ import annotations

import logging
from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.mailer import MailerError, compose
from agentkeys_kit.omni_sim.methods.common import parse_rpc_params
from agentkeys_kit.protocol.email_rules import EmailVerdict, validate_email
from agentkeys_kit.protocol.identity import email_omni_account
from agentkeys_kit.protocol.serde_rules import Field, string
from agentkeys_kit.protocol.web3_message import EMAIL_CODE_DIGITS, generate_otp

log = logging.getLogger(__name__)

PARAMS = (Field("client_id", string), Field("user_email", string))


async def request_email_verification_code(ctx: SimContext, params: Any, ext: object) -> None:
    p = parse_rpc_params(ctx, params, PARAMS, "RequestEmailVerificationCodeParams")
    client_id, email = p["client_id"], p["user_email"]
    verdict = validate_email(email)
    if verdict is EmailVerdict.INVALID:
        raise ctx.errors.invalid_email(email)
    if verdict is EmailVerdict.NO_TLD:
        raise ctx.errors.email_without_tld(email)
    code = generate_otp(EMAIL_CODE_DIGITS)
    ctx.email_code_store.insert(email_omni_account(client_id, email), code)
    mailer = ctx.mailer_for(client_id)
    if mailer is None:
        raise ctx.errors.mailer_not_configured(client_id)
    try:
        await mailer.send(compose(client_id, email, code))
    except MailerError as exc:
        log.warning("verification e-mail for client %s not delivered: %s", client_id, exc)
        raise ctx.errors.email_send_failed(email) from None
