"""OmniAccount vectors from the Rust source (`parachain/primitives/src/identity.rs@0025e244`)."""

from __future__ import annotations

import hashlib

import pytest

from agentkeys_kit.protocol.auth import UserId
from agentkeys_kit.protocol.identity import Identity, IdentityError, IdentityKind, omni_account_of

EMAIL_VECTOR = "0x5a0194d421e69bb2fb2fa9659628258d1d9d4f42d12ca74354819e65a14f8fae"


def test_substrate_zero_account_under_test_client_matches_rust() -> None:
    identity = Identity.address(IdentityKind.SUBSTRATE, bytes(32))
    assert identity.omni_account_hex("test_client") == (
        "0xf3ecfc8a1f9a3b0f23e02a0a866d75c749bee1023a9a512f958df0ae1167248d"
    )


@pytest.mark.parametrize("email", ["hello.world@test.com", "HELLO.WORLD@TEST.COM", "hELLo.WorLd@teST.COM"])
def test_email_account_is_case_insensitive_like_rust(email: str) -> None:
    assert omni_account_of(IdentityKind.EMAIL, email, "wildmeta") == EMAIL_VECTOR


def test_solana_account_matches_rust() -> None:
    value = "4fuUiYxTQ6QCrdSq9ouBYcTM7bqSwYTSyLueGZLTy4T4"
    assert omni_account_of(IdentityKind.SOLANA, value, "test_client") == (
        "0x585b0ce756bd1f237a9e46c3feaf68b47fdffba898cd62c1d663986d25ecc313"
    )


def test_evm_zero_address_matches_rust() -> None:
    value = "0x" + "00" * 20
    assert omni_account_of(IdentityKind.EVM, value, "test_client") == (
        "0xe502d639feeb199ae332376b050307d76d11b32e93b9fd1310127d2af64923fe"
    )


def test_account_is_sha256_of_client_tag_value_without_separators() -> None:
    expected = hashlib.sha256(b"agentkeys" + b"pumpx" + b"mock_user_123").hexdigest()
    assert omni_account_of(IdentityKind.PUMPX, "mock_user_123", "agentkeys") == "0x" + expected


def test_same_identity_differs_per_client_id() -> None:
    user = UserId(IdentityKind.EVM, "0x" + "ab" * 20)
    assert user.omni_account("wildmeta") != user.omni_account("agentkeys")


def test_handles_are_truncated_to_64_bytes() -> None:
    long_handle = "a" * 100
    expected = hashlib.sha256(b"c" + b"twitter" + b"a" * 64).hexdigest()
    assert omni_account_of(IdentityKind.TWITTER, long_handle, "c") == "0x" + expected


def test_truncation_inside_a_utf8_character_hashes_the_empty_string() -> None:
    handle = "a" * 63 + "é"  # 'é' is two bytes; the cut at 64 splits it
    expected = hashlib.sha256(b"c" + b"google").hexdigest()
    assert omni_account_of(IdentityKind.GOOGLE, handle, "c") == "0x" + expected


def test_email_is_lowercased_unicode_aware_after_truncation() -> None:
    # Rust's to_lowercase maps 'Σ' at the end of a word to final sigma 'ς', like Python.
    expected = hashlib.sha256(b"c" + b"email" + "ὀδυσσεύς@x.io".encode()).hexdigest()
    assert omni_account_of(IdentityKind.EMAIL, "ὈΔΥΣΣΕΎΣ@X.IO", "c") == "0x" + expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (IdentityKind.EVM, "0x1234"),  # wrong length
        (IdentityKind.EVM, "0X" + "00" * 20),  # uppercase prefix is not stripped
        (IdentityKind.SUBSTRATE, "zz" * 32),  # not hex
        (IdentityKind.BITCOIN, "00" * 32),  # 32 bytes, needs 33
        (IdentityKind.SOLANA, "0OIl"),  # not base58
    ],
)
def test_bad_address_values_are_refused(kind: IdentityKind, value: str) -> None:
    with pytest.raises(IdentityError):
        Identity.from_user_id(kind, value)


def test_hex_without_prefix_and_mixed_case_is_accepted() -> None:
    a = omni_account_of(IdentityKind.EVM, "AB" * 20, "wildmeta")
    b = omni_account_of(IdentityKind.EVM, "0x" + "ab" * 20, "wildmeta")
    assert a == b


def test_sign_in_message_is_compact_json_in_declaration_order() -> None:
    from agentkeys_kit.protocol.web3_message import HeimaMessagePayload

    payload = HeimaMessagePayload("wildmeta", EMAIL_VECTOR, "00123456")
    assert payload.signing_bytes() == (
        b'{"client_id":"wildmeta","omni_account":"' + EMAIL_VECTOR.encode() + b'","message_code":"00123456"}'
    )
    assert (
        HeimaMessagePayload("clé", "0x", "1").signing_bytes()
        == '{"client_id":"clé","omni_account":"0x","message_code":"1"}'.encode()
    )
