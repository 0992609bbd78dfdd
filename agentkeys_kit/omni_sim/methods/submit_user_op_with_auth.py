"""`omni_submitUserOpWithAuth` (`methods/omni/submit_user_op_with_auth.rs@29cca4f9`).

Params ``{user_operations, chain_id, wallet_index, user_id, _user_auth (ignored), client_id,
client_auth}``. Order of checks:

1. ``chain_id as u32`` (truncating) in `SUPPORTED_EVM_CHAINS`; ``wallet_index <= 100``;
   operations non-empty with valid ``sender`` addresses (all -32602);
2. ``wildmeta_hl``: the agent's EVM signature (EIP-191, then raw keccak) over the raw
   ``business_json``; its JSON ``timestamp`` (u64) must be above the last one stored for
   ``main_address`` and is **stored at once**, before ``check_hyper_agent_address`` asks the
   wildmeta API whether agent and main are linked (`isBound`, the envelope ``code`` unchecked);
3. ``wildmeta_backend``: wallet index 0 or 1, the call-data rules for wallet 0
   (`backend_calldata`), ``client_id == "wildmeta"``, an EntryPoint on the chain, then an ECDSA
   signature (recovery id 0–3, no EIP-191 prefix) by `OE_WILDMETA_BACKEND_ECDSA_PUBKEY` over
   keccak256 of the operations' userOpHashes; no main-address check;
4. any other ``client_auth`` is -32700 ``Invalid client auth type``;
5. with a main address: an EVM `user_id` must be it (case-insensitively), any other `user_id`'s
   signer wallet ``(OmniAccount, wallet_index)`` must be it;
6. the simulated bundler (`user_op_bundler`) signs and "submits": ``{transaction_hash}``.

The agentkeys patch (`profiles.py`): ``agentkeys_backend`` mirrors ``wildmeta_backend`` for client
``agentkeys`` with `OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY`; ``check_hyper_agent_address`` for
``agentkeys`` goes to the agentkeys API; for ``agentkeys`` the timestamp is stored only after the
link is confirmed, under the lowercased main address.
"""

from __future__ import annotations

import json
from typing import Any

from coincurve import PublicKey

from agentkeys_kit.omni_sim.backend_api import CallbackFailed
from agentkeys_kit.omni_sim.backend_calldata import validate_backend_calldata
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.methods.common import omni_account_of, parse_rpc_params
from agentkeys_kit.omni_sim.profiles import BackendSigner
from agentkeys_kit.omni_sim.user_op_bundler import ENTRY_POINT_CHAINS
from agentkeys_kit.protocol.auth import ClientAuth, parse_client_auth, parse_user_auth, parse_user_id
from agentkeys_kit.protocol.errors import (
    AUTH_VERIFICATION_FAILED_CODE,
    PARSE_ERROR,
    SUPPORTED_EVM_CHAINS,
    DetailedError,
    RpcError,
    internal_error,
    invalid_chain_id,
    invalid_params,
    parse_error,
)
from agentkeys_kit.protocol.hexcodec import HexError, decode_hex
from agentkeys_kit.protocol.identity import Identity, IdentityKind
from agentkeys_kit.protocol.serde_rules import Field, SerdeError, optional, string, u32, u64
from agentkeys_kit.protocol.signatures import SignatureScheme, Web3Signature, verify_web3
from agentkeys_kit.protocol.user_operation import (
    AddressError,
    UserOperationError,
    backend_digest,
    parse_evm_address,
    parse_user_operation,
    to_packed_user_operation,
    user_operation_hash,
)

MAX_WALLET_INDEX = 100
_U64_MAX = 2**64 - 1


def _user_operations(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise SerdeError("expected a sequence of SerializablePackedUserOperation")
    return [parse_user_operation(item) for item in value]


def params_fields(ctx: SimContext) -> tuple[Field, ...]:
    variants = ctx.profile.client_auth_variants
    return (
        Field("user_operations", _user_operations),
        Field("chain_id", u64),
        Field("wallet_index", u32),
        Field("user_id", parse_user_id),
        Field("_user_auth", optional(parse_user_auth), optional=True),
        Field("client_id", string),
        Field("client_auth", lambda value: parse_client_auth(value, variants)),
    )


async def submit_user_op_with_auth(ctx: SimContext, params: Any, ext: object) -> dict[str, Any]:
    p = parse_rpc_params(ctx, params, params_fields(ctx), "SubmitUserOpWithAuthParams")
    operations, chain_id, wallet_index = p["user_operations"], p["chain_id"], p["wallet_index"]
    _validate_common(operations, chain_id, wallet_index)
    client_auth: ClientAuth = p["client_auth"]
    signer = ctx.profile.backend_signers.get(client_auth.kind)
    if client_auth.kind == "wildmeta_hl":
        main_address: str | None = await _verify_wildmeta_hl(ctx, client_auth.fields, p["client_id"])
    elif signer is not None:
        _verify_backend(ctx, signer, client_auth, p["client_id"], operations, chain_id, wallet_index)
        main_address = None
    else:
        raise parse_error("Invalid client auth type")
    if main_address is not None:
        _check_main_address(ctx, p["user_id"], p["client_id"], wallet_index, main_address)
    account = omni_account_of(p["user_id"], p["client_id"])
    transaction_hash = ctx.user_op_bundler.submit(
        ctx.errors,
        operations,
        chain_id,
        wallet_index,
        account,
        client_id=p["client_id"],
        client_auth=client_auth.kind,
    )
    return {"transaction_hash": transaction_hash}


def _validate_common(operations: list[dict[str, Any]], chain_id: int, wallet_index: int) -> None:
    truncated = chain_id & 0xFFFFFFFF  # `validate_chain_id(params.chain_id as u32)`
    if truncated not in SUPPORTED_EVM_CHAINS:
        raise invalid_chain_id(truncated)
    if wallet_index > MAX_WALLET_INDEX:
        raise invalid_params("wallet_index", f"exceed {MAX_WALLET_INDEX}")
    if not operations:
        raise invalid_params("user_operations", "expect non-empty")
    for index, operation in enumerate(operations):
        try:
            parse_evm_address(operation["sender"])
        except AddressError as exc:
            raise invalid_params(f"user_operations[{index}].sender", f"invalid evm address: {exc.debug}") from None


# ---------------------------------------------------------------------------------- wildmeta_hl


def _wildmeta_signature_failed(code: int, agent_address: str) -> RpcError:
    return (
        DetailedError(code, "Wildmeta signature verification failed")
        .with_field("agent_address")
        .with_received(agent_address)
        .with_suggestion("Ensure the signature is valid and matches the agent address")
        .to_rpc_error()
    )


def verify_wildmeta_signature(agent_address: str, business_json: str, signature: str) -> int | None:
    """`verify_wildmeta_signature` (`utils/auth.rs@3f4c9bad`): ``None`` when valid, else the
    error code (-32700 for a malformed signature or address, -32003 for a mismatch)."""
    try:
        signature_bytes = decode_hex(signature)
        agent = decode_hex(agent_address)
    except HexError:
        return PARSE_ERROR
    if len(signature_bytes) != 65 or len(agent) != 20:
        return PARSE_ERROR
    identity = Identity.address(IdentityKind.EVM, agent)
    if not verify_web3(
        business_json.encode("utf-8"), identity, Web3Signature(SignatureScheme.ETHEREUM, signature_bytes)
    ):
        return AUTH_VERIFICATION_FAILED_CODE
    return None


def _business_timestamp(business_json: str) -> int:
    try:
        business = json.loads(business_json)
    except (ValueError, RecursionError) as exc:
        raise internal_error(f"Failed to parse business_json: {_serde_json_debug(exc)}") from None
    timestamp = business.get("timestamp") if isinstance(business, dict) else None
    # `Value::as_u64`: a JSON integer in 0..=u64::MAX; floats and other types give None.
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= _U64_MAX:
        raise invalid_params("business_json", "missing timestamp")
    return timestamp


def _serde_json_debug(exc: Exception) -> str:
    """serde_json's `Error` Debug, ``Error("<message>", line: L, column: C)``; the message text is
    an approximation of serde_json's, the position is the decoder's."""
    line, column = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
    message = "expected value" if "Expecting value" in str(exc) else "invalid JSON"
    return f'Error("{message}", line: {line}, column: {column})'


def _timestamp_failed(code: int, timestamp: int) -> RpcError:
    return (
        DetailedError(code, "Timestamp verification failed")
        .with_field("timestamp")
        .with_received(str(timestamp))
        .with_suggestion("Timestamp must be greater than the previously used timestamp")
        .to_rpc_error()
    )


async def _verify_wildmeta_hl(ctx: SimContext, fields: dict[str, Any], client_id: str) -> str:
    agent, main = fields["agent_address"], fields["main_address"]
    code = verify_wildmeta_signature(agent, fields["business_json"], fields["signature"])
    if code is not None:
        raise _wildmeta_signature_failed(code, agent)
    timestamp = _business_timestamp(fields["business_json"])
    after_link = client_id in ctx.profile.link_checked_timestamp_clients
    key = main.lower() if after_link else main
    last = ctx.wildmeta_timestamps.get(key) or 0
    if timestamp <= last:
        raise _timestamp_failed(AUTH_VERIFICATION_FAILED_CODE, timestamp)
    if not after_link:
        ctx.wildmeta_timestamps.insert(key, timestamp)  # upstream: stored before the link check
    backend = ctx.backend(ctx.profile.hyper_agent_backend_for(client_id))
    try:
        response = await backend.check_hyper_agent_address(main, agent, fields["login_type"])
    except CallbackFailed:
        raise ctx.errors.wildmeta_service_error("verify_hyperliquid_link") from None
    if response.data.get("isBound") is not True:
        raise (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, "Agent and main addresses are not linked")
            .with_field("agent_address")
            .with_received(agent)
            .with_suggestion("Ensure the agent address is properly linked to the main address")
            .to_rpc_error()
        )
    if after_link:
        ctx.wildmeta_timestamps.insert(key, timestamp)
    return str(main)


# ---------------------------------------------------------------------------------- *_backend


def _backend_name(kind: str) -> str:
    """``wildmeta_backend`` → ``WildmetaBackend``, as the worker's messages name the variant."""
    return "".join(part.capitalize() for part in kind.split("_"))


def _verify_backend(
    ctx: SimContext,
    signer: BackendSigner,
    client_auth: ClientAuth,
    client_id: str,
    operations: list[dict[str, Any]],
    chain_id: int,
    wallet_index: int,
) -> None:
    name = _backend_name(client_auth.kind)
    if wallet_index not in (0, 1):
        raise (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, f"Invalid wallet index for {name} authentication")
            .with_field("wallet_index")
            .with_received(str(wallet_index))
            .with_expected("0 or 1")
            .with_suggestion(f"{name} authentication requires wallet_index to be 0 or 1")
            .to_rpc_error()
        )
    if wallet_index == 0:
        validate_backend_calldata(operations, chain_id, ctx.errors.invalid_userop_code)
    if client_id != signer.client_id:
        raise (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, f"Invalid client ID for {name} authentication")
            .with_field("client_id")
            .with_received(client_id)
            .with_expected(signer.client_id)
            .with_suggestion(f"{name} authentication requires client_id to be '{signer.client_id}'")
            .to_rpc_error()
        )
    if chain_id not in ENTRY_POINT_CHAINS:
        raise invalid_chain_id(chain_id)
    pubkey: bytes = getattr(ctx.config, signer.pubkey_setting)
    code = verify_backend_signature(client_auth.fields["signature"], operations, chain_id, ctx, pubkey)
    if code is not None:
        raise (
            DetailedError(code, "Backend signature verification failed")
            .with_field("signature")
            .with_suggestion("Ensure the backend signature is valid for the given operations")
            .to_rpc_error()
        )


def verify_backend_signature(
    signature: str, operations: list[dict[str, Any]], chain_id: int, ctx: SimContext, pubkey: bytes
) -> int | None:
    """`verify_wildmeta_backend_signature` (`utils/auth.rs@3f4c9bad`); ``None`` when valid, else
    the code: -32700 for a malformed signature or operation, -32003 for a wrong key."""
    try:
        raw = decode_hex(signature)
    except HexError:
        return PARSE_ERROR
    if len(raw) != 65:
        return PARSE_ERROR
    entry_point = ctx.user_op_bundler.entry_point
    try:
        hashes = [user_operation_hash(to_packed_user_operation(op), entry_point, chain_id) for op in operations]
    except UserOperationError:
        return PARSE_ERROR
    # sp-core `verify_prehashed`: recover with recovery id 0..=3 (27/28 are refused), compare keys.
    if raw[64] > 3:
        return AUTH_VERIFICATION_FAILED_CODE
    try:
        recovered = PublicKey.from_signature_and_message(raw, backend_digest(hashes), hasher=None)
    except ValueError:
        return AUTH_VERIFICATION_FAILED_CODE
    return None if recovered.format(compressed=True) == pubkey else AUTH_VERIFICATION_FAILED_CODE


# ---------------------------------------------------------------------------------- main address


def _check_main_address(ctx: SimContext, user_id: Any, client_id: str, wallet_index: int, main: str) -> None:
    if user_id.kind is IdentityKind.EVM:
        if user_id.value.lower() != main.lower():
            raise (
                DetailedError(
                    AUTH_VERIFICATION_FAILED_CODE,
                    "User address does not match authenticated main address for EVM identity",
                )
                .with_field("user_address")
                .with_received(user_id.value)
                .with_expected(main)
                .with_suggestion("For EVM identity, the user_id must match the authenticated main address")
                .to_rpc_error()
            )
        return
    account = omni_account_of(user_id, client_id)
    derived = ctx.user_op_bundler.wallet_address(account, wallet_index)
    if derived.lower() != main.lower():
        raise (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, "Derived address does not match authenticated address")
            .with_field("derived_address")
            .with_received(derived)
            .with_expected(main)
            .with_suggestion("The derived EVM address must match the authenticated main address")
            .to_rpc_error()
        )
