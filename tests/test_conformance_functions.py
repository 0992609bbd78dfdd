"""The harness functions added for OAuth2, passkeys and user operations, and their documentation
in the suite schema."""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PublicKey
from cryptography.hazmat.primitives.asymmetric import rsa
from eth_hash.auto import keccak

from agentkeys_kit.conformance.expr import FUNCTIONS, ExprError, Keys, Scope, eip712_user_op_hash
from agentkeys_kit.conformance.model import SCHEMA
from agentkeys_kit.protocol import base64url

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OP = {
    "sender": "0x" + "12" * 20,
    "nonce": 5,
    "init_code": "0x",
    "call_data": "0xdeadbeef",
    "account_gas_limits": "0x" + "00" * 32,
    "pre_verification_gas": 21000,
    "gas_fees": "0x" + "00" * 32,
    "paymaster_and_data": "0x",
}


def scope() -> Scope:
    return Scope(Keys(KEY, KEY.public_key()))


def call(name: str, argument: Any) -> Any:
    return scope().evaluate({name: argument})


def test_every_function_is_documented_in_the_schema() -> None:
    documented = {
        name: variant["properties"][name]["description"]
        for variant in SCHEMA["$defs"]["function_call"]["oneOf"]
        for name in variant["required"]
    }
    assert set(documented) == set(FUNCTIONS)
    assert all(documented.values()), [name for name, doc in documented.items() if not doc]


def test_abi_call_and_checksum() -> None:
    assert call("$abi_call", {"signature": "transfer(address,uint256)", "args": ["0x" + "11" * 20, 1]}) == (
        "0xa9059cbb" + "00" * 12 + "11" * 20 + "00" * 31 + "01"
    )
    # EIP-55's own test vector
    assert (
        call("$checksum", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed") == "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    )


def test_b64url() -> None:
    assert call("$b64url", '{"type":"webauthn.get"}') == base64url.encode(b'{"type":"webauthn.get"}')


def test_user_op_hash_and_backend_signature() -> None:
    entry_point = "0x" + "ab" * 20
    expected = eip712_user_op_hash(OP, bytes.fromhex("ab" * 20), 42161)
    assert call("$user_op_hash", {"user_operation": OP, "chain_id": 42161, "entry_point": entry_point}) == (
        "0x" + expected.hex()
    )
    s = scope()
    signature = bytes.fromhex(s.evaluate({"$backend_signature": {"user_operations": [OP, OP], "chain_id": 42161}})[2:])
    digest = keccak(2 * eip712_user_op_hash(OP, bytes.fromhex("5FF137D4b0FDCD49DcA30c7CF57E578a026d2789"), 42161))
    assert signature[64] in (0, 1)
    recovered = PublicKey.from_signature_and_message(signature, digest, hasher=None)
    assert recovered.format() == s.keys.backend.public_key.format()
    ethereum = bytes.fromhex(
        s.evaluate({"$backend_signature": {"user_operations": [OP], "chain_id": 1, "v_offset": 27}})[2:]
    )
    assert ethereum[64] in (27, 28)


def test_bad_user_operation_is_a_suite_error() -> None:
    with pytest.raises(ExprError):
        call("$user_op_hash", {"user_operation": {**OP, "call_data": "0xzz"}, "chain_id": 1})


def test_passkey_functions_round_trip() -> None:
    s = scope()
    credential = s.evaluate({"$passkey_credential": {"seed": "a"}})
    assert credential == s.evaluate({"$passkey_credential": {"seed": "a"}})
    challenge = base64url.encode(b"c" * 32)
    attestation = s.evaluate(
        {"$passkey_attestation": {"credential": credential, "challenge": challenge, "origin": "o", "rp_id": "r"}}
    )
    assert attestation["credential_id"] == credential["credential_id"]
    assertion = s.evaluate(
        {
            "$passkey_assertion": {
                "credential": credential,
                "challenge": challenge,
                "origin": "o",
                "rp_id": "r",
                "signature_format": "raw",
            }
        }
    )
    assert len(base64url.decode(assertion["signature"])) == 64
    with pytest.raises(ExprError):
        s.evaluate(
            {
                "$passkey_assertion": {
                    "credential": credential,
                    "challenge": challenge,
                    "origin": "o",
                    "rp_id": "r",
                    "signature_format": "pem",
                }
            }
        )
