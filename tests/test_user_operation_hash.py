"""The userOpHash the worker signs and checks (`clients/aa/src/utils.rs@17b8c4dc`), pinned against
two independent sources: viem's published EntryPoint v0.8 vectors (`getUserOperationHash.test.ts`)
and eth-account's EIP-712 encoder over the same typed data."""

from __future__ import annotations

import pytest
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak

from agentkeys_kit.protocol.user_operation import (
    AddressError,
    PackedUserOperation,
    UserOperationError,
    backend_digest,
    checksum_address,
    parse_evm_address,
    parse_user_operation,
    to_packed_user_operation,
    user_operation_hash,
)

SENDER = bytes.fromhex("1234567890123456789012345678901234567890")
ENTRY_POINT_V08 = bytes.fromhex("4337084D9E255Ff0702461CF8895CE9E3b5Ff108")
GAS = 6942069


def _packed(high: int, low: int) -> bytes:
    return high.to_bytes(16, "big") + low.to_bytes(16, "big")


def _viem_op(init_code: bytes = b"", paymaster_and_data: bytes = b"") -> PackedUserOperation:
    # viem packs accountGasLimits = verificationGasLimit ‖ callGasLimit, gasFees = priority ‖ max
    return PackedUserOperation(
        sender=SENDER,
        nonce=0,
        init_code=init_code,
        call_data=b"",
        account_gas_limits=_packed(GAS, GAS),
        pre_verification_gas=GAS,
        gas_fees=_packed(69, 69420),
        paymaster_and_data=paymaster_and_data,
    )


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (_viem_op(), "a2224e732a1d4e2f923c7c05d586a0aa6cbc42172ec02f31d35fa9a2b8ba9208"),
        (
            _viem_op(init_code=SENDER + bytes.fromhex("deadbeef")),
            "3146c70a9ef7538e9b9aca8b00ad4b127ca7eef7817a557f1801acbf8d68c206",
        ),
        (
            _viem_op(paymaster_and_data=SENDER + GAS.to_bytes(16, "big") * 2 + bytes.fromhex("deadbeef")),
            "f10ef9afcf27a4fd17e477cd19f37e588e3ff7d48eade07ab5b7eb8caf75667f",
        ),
    ],
)
def test_user_operation_hash_matches_viems_entry_point_v08_vectors(op: PackedUserOperation, expected: str) -> None:
    assert user_operation_hash(op, ENTRY_POINT_V08, 1).hex() == expected


def test_user_operation_hash_is_eip712_as_eth_account_encodes_it() -> None:
    op = PackedUserOperation(
        sender=bytes.fromhex("9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"),
        nonce=2**100 + 7,
        init_code=bytes.fromhex("aa" * 40),
        call_data=bytes.fromhex("b61d27f6" + "00" * 100),
        account_gas_limits=bytes(range(32)),
        pre_verification_gas=123456,
        gas_fees=bytes(range(32, 64)),
        paymaster_and_data=bytes.fromhex("cc" * 52),
    )
    entry_point = bytes.fromhex("5FF137D4b0FDCD49DcA30c7CF57E578a026d2789")
    typed = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "PackedUserOperation": [
                    {"name": "sender", "type": "address"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "initCode", "type": "bytes"},
                    {"name": "callData", "type": "bytes"},
                    {"name": "accountGasLimits", "type": "bytes32"},
                    {"name": "preVerificationGas", "type": "uint256"},
                    {"name": "gasFees", "type": "bytes32"},
                    {"name": "paymasterAndData", "type": "bytes"},
                ],
            },
            "primaryType": "PackedUserOperation",
            "domain": {
                "name": "ERC4337",
                "version": "1",
                "chainId": 42161,
                "verifyingContract": checksum_address(entry_point),
            },
            "message": {
                "sender": checksum_address(op.sender),
                "nonce": op.nonce,
                "initCode": op.init_code,
                "callData": op.call_data,
                "accountGasLimits": op.account_gas_limits,
                "preVerificationGas": op.pre_verification_gas,
                "gasFees": op.gas_fees,
                "paymasterAndData": op.paymaster_and_data,
            },
        }
    )
    expected = keccak(b"\x19" + typed.version + typed.header + typed.body)
    assert user_operation_hash(op, entry_point, 42161) == expected


def test_backend_digest_is_keccak_of_the_concatenated_hashes_in_order() -> None:
    first, second = keccak(b"a"), keccak(b"b")
    assert backend_digest([first, second]) == keccak(first + second)
    assert backend_digest([first, second]) != backend_digest([second, first])


def test_conversion_errors_carry_the_workers_texts() -> None:
    base = {
        "sender": "0x" + "11" * 20,
        "nonce": 0,
        "init_code": "0x",
        "call_data": "0x",
        "account_gas_limits": "0x" + "00" * 32,
        "pre_verification_gas": 0,
        "gas_fees": "0x" + "00" * 32,
        "paymaster_and_data": "0x",
    }
    op = parse_user_operation(base)
    assert op["signature"] is None
    assert to_packed_user_operation(op).signature == b""
    with pytest.raises(UserOperationError, match=r"^Expected 32 bytes, got 1 for '0x00'$"):
        to_packed_user_operation({**op, "gas_fees": "0x00"})
    with pytest.raises(UserOperationError, match=r"^Invalid call_data hex: Odd number of digits$"):
        to_packed_user_operation({**op, "call_data": "0xabc"})
    with pytest.raises(
        UserOperationError, match=r"^Invalid hex string 'zz' 'account_gas_limits': Invalid character 'z' at position 0$"
    ):
        to_packed_user_operation({**op, "account_gas_limits": "zz"})


@pytest.mark.parametrize(
    ("text", "debug"),
    [
        ("0x1234", "InvalidStringLength"),
        ("0x123", "OddLength"),
        ("0x" + "g" + "1" * 39, "InvalidHexCharacter { c: 'g', index: 0 }"),
    ],
)
def test_address_parsing_reports_const_hex_debug(text: str, debug: str) -> None:
    with pytest.raises(AddressError) as raised:
        parse_evm_address(text)
    assert raised.value.debug == debug
    assert parse_evm_address("1" * 40) == bytes.fromhex("1" * 40)


def test_checksum_address_is_eip55() -> None:
    assert checksum_address(bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")) == (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    )


def test_the_harness_hashes_user_operations_with_eth_account_alone() -> None:
    """`$user_op_hash` (the harness) does not use `protocol.user_operation`; both agree with viem."""
    from agentkeys_kit.conformance.expr import eip712_user_op_hash

    op = {
        "sender": "0x" + SENDER.hex(),
        "nonce": 0,
        "init_code": "0x",
        "call_data": "0x",
        "account_gas_limits": "0x" + _packed(GAS, GAS).hex(),
        "pre_verification_gas": GAS,
        "gas_fees": "0x" + _packed(69, 69420).hex(),
        "paymaster_and_data": "0x",
    }
    expected = "a2224e732a1d4e2f923c7c05d586a0aa6cbc42172ec02f31d35fa9a2b8ba9208"
    assert eip712_user_op_hash(op, ENTRY_POINT_V08, 1).hex() == expected
    packed = to_packed_user_operation(parse_user_operation(op))
    assert user_operation_hash(packed, ENTRY_POINT_V08, 1).hex() == expected
