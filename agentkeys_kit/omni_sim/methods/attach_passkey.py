"""`omni_attachPasskey` (`methods/omni/attach_passkey.rs@60635e7f`), in the worker's order:

1. a `user_id` of type passkey is refused (-32602, field ``user_id``);
2. `to_omni_auth` (-32700 ``Failed to convert to OmniAuth: "…"``);
3. `verify_auth` (-32003 "Authentication verification failed" with the reason); e-mail and web3
   codes are consumed here as by a login;
4. the OmniAccount of `user_id` (-32700);
5. the client data: origin ``get_origin_for_client`` (era B's compiled map), type
   ``webauthn.create``, then the challenge is consumed for this account; any failure is -32603
   ``Client data verification failed: <PasskeyError Debug>``;
6. the attestation (-32700 ``Attestation verification failed: <Debug>``): see `passkey.py` for
   what is and is not checked;
7. stored under ``(account, credential id)`` with the alias (default: the credential id);
   a second attach of the same credential is -32603 ``Failed to attach passkey: DuplicatePasskey``.

Era A (`attach_passkey.rs@53b177df`, the `legacy` era) converted `user_id` first and worded the
passkey `user_id` refusal differently; both are reproduced there.
"""

from __future__ import annotations

from typing import Any

from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.login_config import origin_for_client
from agentkeys_kit.omni_sim.methods.common import omni_account_of, omni_auth_of, parse_rpc_params
from agentkeys_kit.omni_sim.passkey import PasskeyVerifierError, parse_client_data_json, verify_attestation
from agentkeys_kit.omni_sim.stores import ChallengeError, PasskeyError
from agentkeys_kit.omni_sim.verify_auth import AuthFailed, verify_auth
from agentkeys_kit.protocol.auth import parse_user_auth, parse_user_id
from agentkeys_kit.protocol.errors import INVALID_PARAMS, DetailedError, ErrorEra, internal_error, parse_error
from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import IdentityKind
from agentkeys_kit.protocol.serde_rules import Field, string

PARAMS = (
    Field("user_id", parse_user_id),
    Field("user_auth", parse_user_auth),
    Field("client_id", string),
    Field("attestation_object", string),
    Field("client_data_json", string),
    Field("alias_name", string, optional=True),
)


def _passkey_user_id_refused(ctx: SimContext) -> DetailedError:
    if ctx.errors.era is ErrorEra.LEGACY:
        return (
            DetailedError(INVALID_PARAMS, "Invalid params")
            .with_field("user_id")
            .with_reason("Passkeys can only be attached to non-passkey identity types")
            .with_suggestion("Use a different identity type (e.g. Email) as user_id")
        )
    return (
        DetailedError(INVALID_PARAMS, "Invalid params")
        .with_field("user_id")
        .with_reason("Cannot attach passkey to a Passkey user_id type")
    )


async def attach_passkey(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, PARAMS, "AttachPasskeyParams")
    user_id, client_id = p["user_id"], p["client_id"]
    if user_id.kind is IdentityKind.PASSKEY:
        raise _passkey_user_id_refused(ctx).to_rpc_error()
    if ctx.errors.era is ErrorEra.LEGACY:
        omni_account_of(user_id, client_id, "Invalid user ID format")
    auth = omni_auth_of(p["user_auth"], user_id, client_id)
    try:
        await verify_auth(ctx, auth)
    except AuthFailed as exc:
        raise exc.to_detailed_error() from None
    account = omni_account_of(user_id, client_id)
    _verify_client_data(ctx, p["client_data_json"], account, origin_for_client(client_id))
    try:
        attestation = verify_attestation(p["attestation_object"])
    except PasskeyVerifierError as exc:
        raise parse_error(f"Attestation verification failed: {exc.debug}") from None
    try:
        ctx.passkeys.add(
            account, attestation.credential_id, attestation.public_key_sec1, p["alias_name"], ctx.clock.now()
        )
    except PasskeyError as exc:
        raise internal_error(f"Failed to attach passkey: {exc}") from None
    return {
        "success": True,
        "message": f"Passkey ({attestation.credential_id}) successfully attached to account {hex_encode(account)}",
    }


def _verify_client_data(ctx: SimContext, client_data_json: str, account: bytes, origin: str) -> None:
    """`PasskeyVerifier::verify_client_data_json` with ``webauthn.create``."""
    try:
        client_data = parse_client_data_json(client_data_json)
        if client_data.origin != origin:
            raise PasskeyVerifierError("OriginVerificationFailed")
        if client_data.type != "webauthn.create":
            raise PasskeyVerifierError("AttestationParseError", "Invalid type, expected webauthn.create")
        try:
            ctx.passkey_challenges.verify_and_consume(client_data.challenge, account, ctx.clock.now())
        except ChallengeError:
            raise PasskeyVerifierError("ChallengeVerificationFailed") from None
    except PasskeyVerifierError as exc:
        raise internal_error(f"Client data verification failed: {exc.debug}") from None
