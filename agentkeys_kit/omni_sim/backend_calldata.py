"""`validate_backend_calldata` of `omni_submitUserOpWithAuth` (`submit_user_op_with_auth.rs@29cca4f9`):
what a backend-signed (``wildmeta_backend``) operation on wallet 0 may do.

Each operation's ``call_data`` must be OmniAccount ``execute(address,uint256,bytes)`` (0xb61d27f6)
or ``executeBatch((address,uint256,bytes)[])`` (0x18dfeb3c). Every inner call must be, on Arbitrum
(42161/421614), USDC ``transfer`` to the Arbitrum→Hyperliquid bridge, or on HyperEVM (999/998) a
call to the CoreWriter with payload version 0x01 and an allowed action id. The parser is the
worker's, quirks included: ``executeBatch`` is read as if its tuples were laid out inline right
after the array length (standard ABI encoding puts offsets there, so a standard-encoded batch reads
its first "target" from an offset word and is refused); lengths are read from the last 4 bytes of
their 32-byte words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentkeys_kit.protocol.errors import AUTH_VERIFICATION_FAILED_CODE, DetailedError, RpcError
from agentkeys_kit.protocol.hexcodec import HexError, decode_bare_hex
from agentkeys_kit.protocol.user_operation import checksum_address

ARBITRUM_MAINNET, ARBITRUM_SEPOLIA, HYPEREVM_MAINNET, HYPEREVM_TESTNET = 42161, 421614, 999, 998
USDC = {
    ARBITRUM_MAINNET: "0xaf88d065e77c8cC2239327C5EDb3A432268e5831",
    ARBITRUM_SEPOLIA: "0x75faf114eafb1BDbe2F0316DF893fd58CE46AA4d",
}
ARB_TO_HYPER_BRIDGE = "0x2df1c51e09aecf9cacb7bc98cb1742757f163df7"
HYPEREVM_CORE_WRITER = "0x3333333333333333333333333333333333333333"
ERC20_TRANSFER = bytes.fromhex("a9059cbb")
EXECUTE = bytes.fromhex("b61d27f6")
EXECUTE_BATCH = bytes.fromhex("18dfeb3c")
ALLOWED_ACTIONS = (0x000002, 0x000003, 0x000004, 0x000005, 0x000007)


def _fail(code: int, message: str, *, field: str, received: str | None = None, expected: str | None = None) -> RpcError:
    error = DetailedError(code, message).with_field(field)
    if expected is not None:
        error.with_expected(expected)
    if received is not None:
        error.with_received(received)
    return error.to_rpc_error()


def _auth_fail(message: str, **details: Any) -> RpcError:
    return _fail(AUTH_VERIFICATION_FAILED_CODE, message, **details)


def _u32_tail(word: bytes) -> int:
    """`u32::from_be_bytes(word[28..32])`: only the last four bytes of a 32-byte word count."""
    return int.from_bytes(word[28:32], "big")


def _decode(call_data: str) -> bytes:
    """`hex::decode(call_data.strip_prefix("0x").unwrap_or(call_data))` with alloy's const-hex,
    which strips one more ``0x`` itself."""
    body = call_data.removeprefix("0x").removeprefix("0x")
    return decode_bare_hex(body)


def extract_execute_params(call_data: str) -> list[tuple[bytes, bytes]]:
    """`extract_execute_params_from_calldata`: ``(target, inner call data)`` per call; any failure
    is reported by the caller as one error, so the details here are not on the wire."""
    try:
        raw = _decode(call_data)
    except HexError:
        raise ValueError("bad hex") from None
    if len(raw) < 4:
        raise ValueError("too short")
    if raw[:4] == EXECUTE:
        if len(raw) < 132:
            raise ValueError("execute too short")
        length = _u32_tail(raw[100:132])
        if len(raw) < 132 + length:
            raise ValueError("execute data too short")
        return [(raw[16:36], raw[132 : 132 + length])]
    if raw[:4] == EXECUTE_BATCH:
        return _parse_execute_batch(raw)
    raise ValueError("not execute")


def _parse_execute_batch(raw: bytes) -> list[tuple[bytes, bytes]]:
    if len(raw) < 68:
        raise ValueError("batch too short")
    calls = []
    position = 68
    for _ in range(_u32_tail(raw[36:68])):
        if position + 96 > len(raw):
            raise ValueError("entry too short")
        target = raw[position + 12 : position + 32]
        length_at = position + _u32_tail(raw[position + 64 : position + 96])
        if length_at + 32 > len(raw):
            raise ValueError("length too short")
        length = _u32_tail(raw[length_at : length_at + 32])
        start = length_at + 32
        if start + length > len(raw):
            raise ValueError("data too short")
        calls.append((target, raw[start : start + length]))
        position += 96 + (length + 31) // 32 * 32
    return calls


def validate_backend_calldata(operations: Sequence[dict[str, Any]], chain_id: int, invalid_userop_code: int) -> None:
    for index, operation in enumerate(operations):
        try:
            calls = extract_execute_params(operation["call_data"])
        except ValueError:
            raise (
                DetailedError(AUTH_VERIFICATION_FAILED_CODE, "Failed to parse OmniAccount execute calldata")
                .with_field(f"user_operations[{index}].call_data")
                .to_rpc_error()
            ) from None
        for call_index, (target, inner) in enumerate(calls):
            field = f"user_operations[{index}].call[{call_index}] target address"
            if chain_id in USDC:
                if target != bytes.fromhex(USDC[chain_id][2:]):
                    raise _auth_fail(
                        "For Arbitrum backend requests, target contract must be USDC",
                        field=field,
                        received=checksum_address(target),
                        expected=USDC[chain_id],
                    )
                _validate_arbitrum_usdc_transfer(inner)
            elif chain_id in (HYPEREVM_MAINNET, HYPEREVM_TESTNET):
                if target != bytes.fromhex(HYPEREVM_CORE_WRITER[2:]):
                    raise _auth_fail(
                        "For HyperEVM backend requests, target contract must be core writer",
                        field=field,
                        received=checksum_address(target),
                        expected=HYPEREVM_CORE_WRITER,
                    )
                _validate_hyperevm_core_writer(inner, invalid_userop_code)
            else:
                raise _auth_fail(
                    "Chain ID not supported for backend wallet_index validation",
                    field="chain_id",
                    received=str(chain_id),
                    expected="42161, 421614, 999, or 998",
                )


def _validate_arbitrum_usdc_transfer(call: bytes) -> None:
    """`validate_arbitrum_usdc_transfer` (the chain is already known to be Arbitrum, and the inner
    call data is always valid hex because the worker re-encoded it)."""
    if len(call) < 4 or call[:4] != ERC20_TRANSFER:
        received = "0x" + call[:4].hex() if len(call) >= 4 else "<insufficient data>"
        raise _auth_fail(
            "Call data is not an ERC20 transfer function call",
            field="method_signature",
            received=received,
            expected="0xa9059cbb (ERC20.transfer)",
        )
    if len(call) < 68:
        raise _auth_fail(
            "Call data too short for ERC20 transfer",
            field="call_data_length",
            received=str(len(call)),
            expected="68 bytes minimum",
        )
    recipient = "0x" + call[16:36].hex()
    if recipient != ARB_TO_HYPER_BRIDGE:
        raise _auth_fail(
            "USDC transfer recipient is not the official Arbitrum to Hyperliquid bridge",
            field="recipient",
            received=recipient,
            expected=ARB_TO_HYPER_BRIDGE,
        )


def _validate_hyperevm_core_writer(call: bytes, code: int) -> None:
    """`validate_hyperevm_core_writer`: ``[4 selector][32 offset][32 length][payload]``, payload
    ``[1 version = 0x01][3 action id]…``."""
    if len(call) < 4:
        raise _auth_fail(
            "Call data too short to contain method signature",
            field="call_data_length",
            received=str(len(call)),
            expected="4 bytes minimum",
        )
    if len(call) < 68:
        raise _fail(
            code,
            "Call data too short for payload parameter",
            field="call_data_length",
            received=str(len(call)),
            expected="68 bytes minimum (4 bytes method + 32 bytes offset + 32 bytes length)",
        )
    length = _u32_tail(call[36:68])
    if len(call) < 68 + length:
        raise _fail(
            code,
            "Call data too short for declared payload length",
            field="call_data_length",
            received=str(len(call)),
            expected=f"{68 + length} bytes",
        )
    payload = call[68 : 68 + length]
    if len(payload) < 4:
        raise _fail(
            code,
            "Payload too short for version and action_id",
            field="payload_length",
            received=str(len(payload)),
            expected="4 bytes minimum (1 version + 3 action_id)",
        )
    if payload[0] != 0x01:
        raise _fail(code, "Invalid payload version", field="version", received=f"0x{payload[0]:02x}", expected="0x01")
    action = int.from_bytes(payload[1:4], "big")
    if action not in ALLOWED_ACTIONS:
        raise _fail(
            code,
            "Invalid action_id for HyperEVM core writer call",
            field="action_id",
            received=f"0x{action:06x}",
            expected="One of: 0x000002, 0x000003, 0x000004, 0x000005, 0x000007",
        )
