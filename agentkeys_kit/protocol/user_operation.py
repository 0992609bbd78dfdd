"""ERC-4337 packed user operations as the worker takes them (`omni_submitUserOpWithAuth`) and
the user-operation hash it signs and checks.

* `SerializablePackedUserOperation` (`core/src/types.rs@60635e7f`): hex strings for the byte
  fields, ``nonce`` and ``pre_verification_gas`` as JSON integers (u128), ``signature`` optional;
* `convert_to_packed_user_op` (`rpc-server/src/utils/user_op.rs@3f4c9bad`): each field decoded
  with the worker's own error texts (they reach the wire inside -32001 "Invalid UserOp");
* `calculate_user_operation_hash` (`clients/aa/src/utils.rs@17b8c4dc`): the EIP-712 hash of
  EntryPoint v0.8 (domain ``ERC4337``/``1``, chain id, EntryPoint address; struct
  ``PackedUserOperation`` with the three ``bytes`` fields keccak-hashed), which the worker uses for
  every EntryPoint it talks to; pinned in the tests against viem's published v0.8 vectors and
  against eth-account's EIP-712 encoder;
* the backend digest of `verify_wildmeta_backend_signature` (`utils/auth.rs@3f4c9bad`): keccak256
  of the concatenated hashes, in order.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak

from agentkeys_kit.protocol.hexcodec import HexError, decode_hex
from agentkeys_kit.protocol.rust_fmt import debug_char
from agentkeys_kit.protocol.serde_rules import Field, optional, parse_struct, string, u128

#: `DEFAULT_ENTRY_POINT_ADDRESS` (`core/src/config/config.rs@29cca4f9`), `OE_ENTRY_POINT_ADDRESS`.
DEFAULT_ENTRY_POINT_ADDRESS = "0x5FF137D4b0FDCD49DcA30c7CF57E578a026d2789"

SERIALIZABLE_USER_OPERATION_FIELDS = (
    Field("sender", string),
    Field("nonce", u128),
    Field("init_code", string),
    Field("call_data", string),
    Field("account_gas_limits", string),
    Field("pre_verification_gas", u128),
    Field("gas_fees", string),
    Field("paymaster_and_data", string),
    Field("signature", optional(string), optional=True),
)

_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_PACKED_USEROP_TYPEHASH = keccak(
    b"PackedUserOperation(address sender,uint256 nonce,bytes initCode,bytes callData,bytes32 accountGasLimits,"
    b"uint256 preVerificationGas,bytes32 gasFees,bytes paymasterAndData)"
)
_HEX_BYTES = frozenset(b"0123456789abcdefABCDEF")


class UserOperationError(ValueError):
    """A user operation the worker cannot convert; the message is the worker's text."""


class AddressError(ValueError):
    """`Address::from_str` refused the text; `debug` is the `FromHexError` Debug, `display` its Display."""

    def __init__(self, debug: str, display: str) -> None:
        super().__init__(display)
        self.debug = debug
        self.display = display


def parse_evm_address(text: str) -> bytes:
    """alloy's `Address::from_str` (const-hex `decode_to_array`): an optional ``0x``, then exactly
    40 hex digits; no checksum check. Odd length, then length, then characters are checked."""
    body = text[2:] if text.startswith("0x") else text
    raw = body.encode("utf-8", errors="surrogateescape")
    if len(raw) % 2:
        raise AddressError("OddLength", "Odd number of digits")
    if len(raw) != 40:
        raise AddressError("InvalidStringLength", "Invalid string length")
    for index, byte in enumerate(raw):
        if byte not in _HEX_BYTES:
            char = debug_char(chr(byte))
            raise AddressError(
                f"InvalidHexCharacter {{ c: {char}, index: {index} }}", f"Invalid character {char} at position {index}"
            )
    return bytes.fromhex(raw.decode("ascii"))


def checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case rendering (alloy's `Address` Display and Debug)."""
    digits = raw.hex()
    digest = keccak(digits.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(digits))


@dataclass(frozen=True, slots=True)
class PackedUserOperation:
    """`oe_client_aa::PackedUserOperation`, decoded."""

    sender: bytes
    nonce: int
    init_code: bytes
    call_data: bytes
    account_gas_limits: bytes
    pre_verification_gas: int
    gas_fees: bytes
    paymaster_and_data: bytes
    signature: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """The `SerializablePackedUserOperation` form (hex with ``0x``)."""
        return {
            "sender": checksum_address(self.sender),
            "nonce": self.nonce,
            "init_code": "0x" + self.init_code.hex(),
            "call_data": "0x" + self.call_data.hex(),
            "account_gas_limits": "0x" + self.account_gas_limits.hex(),
            "pre_verification_gas": self.pre_verification_gas,
            "gas_fees": "0x" + self.gas_fees.hex(),
            "paymaster_and_data": "0x" + self.paymaster_and_data.hex(),
            "signature": "0x" + self.signature.hex(),
        }


def parse_user_operation(value: Any) -> dict[str, Any]:
    """`SerializablePackedUserOperation` from JSON (raises `SerdeError`)."""
    return parse_struct(value, SERIALIZABLE_USER_OPERATION_FIELDS, "SerializablePackedUserOperation")


def _bytes(text: str, what: str) -> bytes:
    try:
        return decode_hex(text)
    except HexError as exc:
        raise UserOperationError(f"Invalid {what} hex: {exc.display}") from None


def _fixed32(text: str, name: str) -> bytes:
    try:
        raw = decode_hex(text)
    except HexError as exc:
        raise UserOperationError(f"Invalid hex string '{text}' '{name}': {exc.display}") from None
    if len(raw) != 32:
        raise UserOperationError(f"Expected 32 bytes, got {len(raw)} for '{text}'")
    return raw


def to_packed_user_operation(op: dict[str, Any]) -> PackedUserOperation:
    """`convert_to_packed_user_op`, field by field in the worker's order."""
    try:
        sender = parse_evm_address(op["sender"])
    except AddressError as exc:
        raise UserOperationError(f"Invalid sender address '{op['sender']}': {exc.display}") from None
    init_code = _bytes(op["init_code"], "init_code")
    call_data = _bytes(op["call_data"], "call_data")
    account_gas_limits = _fixed32(op["account_gas_limits"], "account_gas_limits")
    gas_fees = _fixed32(op["gas_fees"], "gas_fees")
    paymaster_and_data = _bytes(op["paymaster_and_data"], "paymaster_and_data")
    signature = b"" if op.get("signature") is None else _bytes(op["signature"], "signature")
    return PackedUserOperation(
        sender=sender,
        nonce=op["nonce"],
        init_code=init_code,
        call_data=call_data,
        account_gas_limits=account_gas_limits,
        pre_verification_gas=op["pre_verification_gas"],
        gas_fees=gas_fees,
        paymaster_and_data=paymaster_and_data,
        signature=signature,
    )


def _word(value: int | bytes) -> bytes:
    if isinstance(value, int):
        return value.to_bytes(32, "big")
    return value.rjust(32, b"\0")


def domain_separator(chain_id: int, entry_point: bytes) -> bytes:
    """`calculate_domain_separator("ERC4337", "1", chain_id, entry_point)`."""
    return keccak(
        _DOMAIN_TYPEHASH + keccak(b"ERC4337") + keccak(b"1") + _word(chain_id) + _word(entry_point),
    )


def user_operation_hash(op: PackedUserOperation, entry_point: bytes, chain_id: int) -> bytes:
    """`calculate_user_operation_hash`: ``keccak256(0x1901 ‖ domainSeparator ‖ structHash)``."""
    struct_hash = keccak(
        _PACKED_USEROP_TYPEHASH
        + _word(op.sender)
        + _word(op.nonce)
        + keccak(op.init_code)
        + keccak(op.call_data)
        + op.account_gas_limits
        + _word(op.pre_verification_gas)
        + op.gas_fees
        + keccak(op.paymaster_and_data)
    )
    return keccak(b"\x19\x01" + domain_separator(chain_id, entry_point) + struct_hash)


def backend_digest(hashes: Sequence[bytes]) -> bytes:
    """What a backend signs for `wildmeta_backend`: keccak256 of the hashes concatenated in order."""
    return keccak(b"".join(hashes))
