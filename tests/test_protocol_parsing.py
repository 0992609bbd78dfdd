"""The worker's serde acceptance rules for `UserId`, `UserAuth`, `ClientAuth` and param structs,
`to_omni_auth`, `validate_email`, and the exact error objects of both error eras.

Pure: no server. Spec heima-protocol.md §2.3, §2.4, §3, §5.1-§5.5.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentkeys_kit.protocol.auth import (
    AGENTKEYS_BACKEND_VARIANT,
    CLIENT_AUTH_VARIANTS,
    AuthTokenAuth,
    EmailAuth,
    OAuth2Auth,
    OmniAuthError,
    PasskeyAuth,
    UserAuthKind,
    UserId,
    Web3Auth,
    parse_client_auth,
    parse_user_auth,
    parse_user_id,
    to_omni_auth,
    user_auth_to_json,
)
from agentkeys_kit.protocol.email_rules import EmailVerdict, validate_email
from agentkeys_kit.protocol.errors import NO_DATA, ErrorCatalog, LegacyErrorCatalog, RpcError, catalog_for
from agentkeys_kit.protocol.identity import IdentityError, IdentityKind
from agentkeys_kit.protocol.serde_rules import Field, SerdeError, parse_struct, string, u32
from agentkeys_kit.protocol.signatures import SignatureScheme, Web3Signature

ALL_USER_ID_TAGS = (
    "pumpx",
    "email",
    "twitter",
    "discord",
    "apple",
    "substrate",
    "evm",
    "bitcoin",
    "solana",
    "google",
    "passkey",
)

EVM_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
SUBSTRATE_HEX = "0x" + "11" * 32
BITCOIN_PUBKEY = "035dfa70d8655939535864fccb0f407f8a250228935ff51b61ca3ecd9700afb1d8"
SOLANA_ADDRESS = "4fuUiYxTQ6QCrdSq9ouBYcTM7bqSwYTSyLueGZLTy4T4"

SIG65 = "ab" * 65
SIG64 = "cd" * 64


def _sig(auth_value: Any) -> Web3Signature:
    assert isinstance(auth_value, Web3Signature)
    return auth_value


# ============================================================================================
# UserId
# ============================================================================================


def test_user_id_object_form_type_first() -> None:
    user_id = parse_user_id({"type": "evm", "value": EVM_ADDRESS})
    assert user_id == UserId(IdentityKind.EVM, EVM_ADDRESS)


def test_user_id_object_form_value_first() -> None:
    user_id = parse_user_id({"value": "a@b.com", "type": "email"})
    assert user_id == UserId(IdentityKind.EMAIL, "a@b.com")


def test_user_id_array_form() -> None:
    assert parse_user_id(["email", "a@b.com"]) == UserId(IdentityKind.EMAIL, "a@b.com")


def test_user_id_unknown_keys_are_ignored() -> None:
    value = {"type": "twitter", "extra": [1, 2], "value": "handle", "other": None}
    assert parse_user_id(value) == UserId(IdentityKind.TWITTER, "handle")


@pytest.mark.parametrize("tag", ALL_USER_ID_TAGS)
def test_user_id_accepts_all_eleven_tags(tag: str) -> None:
    user_id = parse_user_id({"type": tag, "value": "v"})
    assert user_id.kind is IdentityKind(tag)
    assert user_id.value == "v"
    assert user_id.to_json() == {"type": tag, "value": "v"}
    assert list(user_id.to_json()) == ["type", "value"]


def test_user_id_tag_list_is_exactly_eleven() -> None:
    assert sorted(kind.value for kind in IdentityKind) == sorted(ALL_USER_ID_TAGS)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "github", "value": "x"},  # era-A tag, gone in era B
        {"type": "Email", "value": "x"},  # tags are case-sensitive
        {"type": "oauth2", "value": "x"},
        {"type": "", "value": "x"},
        ["github", "x"],
    ],
)
def test_user_id_unknown_tag_rejected(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_id(value)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "email"},
        {"type": "email", "val": "a@b.com"},
        {"value": "a@b.com"},  # missing type
    ],
)
def test_user_id_missing_member_rejected(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_id(value)


@pytest.mark.parametrize("content", [None, 5, 1.5, True, [], {}, ["a@b.com"]])
def test_user_id_non_string_value_rejected(content: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_id({"type": "email", "value": content})


@pytest.mark.parametrize(
    "value",
    [
        None,
        "email",
        5,
        1.5,
        True,
        [],
        ["email"],
        ["email", "a@b.com", "extra"],
        [7, "a@b.com"],
        {"type": 7, "value": "x"},
        {"type": None, "value": "x"},
    ],
)
def test_user_id_non_object_or_malformed_rejected(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_id(value)


def test_user_id_value_is_not_decoded_at_parse_time() -> None:
    """`UserId` holds a `String`: bad hex only fails later, in `TryFrom<UserId> for Identity`."""
    user_id = parse_user_id({"type": "evm", "value": "0xnothex"})
    assert user_id.value == "0xnothex"
    with pytest.raises(IdentityError):
        user_id.to_identity()


# ============================================================================================
# UserAuth
# ============================================================================================


@pytest.mark.parametrize("tag", ["email", "auth_token"])
def test_user_auth_string_variants(tag: str) -> None:
    auth = parse_user_auth({"type": tag, "value": "123456"})
    assert auth.kind is UserAuthKind(tag)
    assert auth.value == "123456"


@pytest.mark.parametrize("tag", ["email", "auth_token"])
@pytest.mark.parametrize("content", [None, 123456, ["123456"], {"code": "1"}])
def test_user_auth_string_variants_reject_non_strings(tag: str, content: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": tag, "value": content})


@pytest.mark.parametrize("text", ["0x" + SIG65, SIG65, "0x" + SIG65.upper(), SIG65.upper()])
def test_user_auth_evm_signature_with_or_without_0x(text: str) -> None:
    auth = parse_user_auth({"type": "evm", "value": text})
    assert auth.kind is UserAuthKind.EVM
    sig = _sig(auth.value)
    assert sig.scheme is SignatureScheme.ETHEREUM
    assert sig.raw == bytes.fromhex(SIG65)


@pytest.mark.parametrize(
    "text",
    [
        "0x" + "ab" * 64,  # 64 bytes
        "0x" + "ab" * 66,  # 66 bytes
        "0x",
        "",
        "0x" + "ab" * 64 + "a",  # odd length
        "0x" + "zz" * 65,  # not hex
        "0x" + "ab" * 64 + "g1",
        "0X" + SIG65,  # only a lowercase prefix is stripped
        "0x0x" + "ab" * 64,
        " 0x" + SIG65,
    ],
)
def test_user_auth_evm_signature_rejects_bad_input(text: str) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "evm", "value": text})


def test_user_auth_evm_signature_must_be_a_string() -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "evm", "value": list(bytes(65))})


def test_user_auth_bitcoin_signature_bare_hex_accepted() -> None:
    auth = parse_user_auth({"type": "bitcoin", "value": SIG65})
    sig = _sig(auth.value)
    assert sig.scheme is SignatureScheme.BITCOIN
    assert sig.raw == bytes.fromhex(SIG65)


@pytest.mark.parametrize("text", ["0x" + SIG65, "ab" * 64, "ab" * 66, "zz" * 65])
def test_user_auth_bitcoin_signature_rejects_0x_and_bad_length(text: str) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "bitcoin", "value": text})


@pytest.mark.parametrize("text", [SIG64, "0x" + SIG64])
def test_user_auth_solana_signature_is_64_bytes(text: str) -> None:
    sig = _sig(parse_user_auth({"type": "solana", "value": text}).value)
    assert sig.scheme is SignatureScheme.ED25519
    assert sig.raw == bytes.fromhex(SIG64)


@pytest.mark.parametrize("text", [SIG65, "cd" * 63, "0X" + SIG64])
def test_user_auth_solana_signature_rejects_other_lengths(text: str) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "solana", "value": text})


@pytest.mark.parametrize(("scheme", "length"), [("ed25519", 64), ("sr25519", 64), ("ecdsa", 65)])
@pytest.mark.parametrize("prefix", ["", "0x"])
def test_user_auth_substrate_signature_lengths(scheme: str, length: int, prefix: str) -> None:
    raw = bytes(range(length))
    auth = parse_user_auth({"type": "substrate", "value": {"type": scheme, "value": prefix + raw.hex()}})
    assert auth.kind is UserAuthKind.SUBSTRATE
    sig = _sig(auth.value)
    assert sig.scheme is SignatureScheme(scheme)
    assert sig.raw == raw


def test_user_auth_substrate_signature_inner_array_form_and_key_order() -> None:
    raw = bytes(64)
    by_array = parse_user_auth({"type": "substrate", "value": ["sr25519", raw.hex()]})
    reversed_keys = parse_user_auth({"value": {"value": raw.hex(), "type": "sr25519"}, "type": "substrate"})
    assert by_array == reversed_keys
    assert _sig(by_array.value).scheme is SignatureScheme.SR25519


@pytest.mark.parametrize(
    "content",
    [
        {"type": "ed25519", "value": "00" * 65},
        {"type": "sr25519", "value": "00" * 65},
        {"type": "ecdsa", "value": "00" * 64},
        {"type": "secp256k1", "value": "00" * 64},
        {"type": "ethereum", "value": "00" * 65},
        {"type": "Ed25519", "value": "00" * 64},
        {"type": "ed25519"},
        {"type": "ed25519", "value": None},
        "00" * 64,
        None,
    ],
)
def test_user_auth_substrate_signature_rejects_bad_content(content: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "substrate", "value": content})


def _oauth2_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": "Google",
        "code": "auth-code",
        "state": "st",
        "redirect_uri": "https://app.example/cb",
        "uid": "u1",
        "id_token": "eyJ...",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not _MISSING}


_MISSING: Any = object()


@pytest.mark.parametrize("provider", ["Google", "Apple"])
def test_user_auth_o_auth2_providers(provider: str) -> None:
    auth = parse_user_auth({"type": "o_auth2", "value": _oauth2_data(provider=provider)})
    assert auth.kind is UserAuthKind.O_AUTH2
    assert auth.value["provider"] == provider
    assert list(auth.value) == ["provider", "code", "state", "redirect_uri", "uid", "id_token"]


@pytest.mark.parametrize("redirect_uri", [_MISSING, None])
def test_user_auth_o_auth2_redirect_uri_is_optional(redirect_uri: Any) -> None:
    auth = parse_user_auth({"type": "o_auth2", "value": _oauth2_data(redirect_uri=redirect_uri)})
    assert auth.value["redirect_uri"] is None


def test_user_auth_oauth2_without_underscore_is_rejected() -> None:
    """serde's snake_case of `OAuth2` is "o_auth2"; the TS list's "oauth2" does not parse."""
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "oauth2", "value": _oauth2_data()})


@pytest.mark.parametrize("provider", ["google", "GOOGLE", "apple", "Github", "", None, 1])
def test_user_auth_o_auth2_provider_is_case_sensitive(provider: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "o_auth2", "value": _oauth2_data(provider=provider)})


@pytest.mark.parametrize(
    "overrides",
    [
        {"uid": _MISSING},
        {"id_token": _MISSING},
        {"code": _MISSING},
        {"state": None},
        {"redirect_uri": 5},
    ],
)
def test_user_auth_o_auth2_field_rules(overrides: dict[str, Any]) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "o_auth2", "value": _oauth2_data(**overrides)})


def test_user_auth_o_auth2_positional_data_needs_all_six_elements() -> None:
    six = ["Apple", "c", "s", None, "u", "t"]
    assert parse_user_auth({"type": "o_auth2", "value": six}).value["redirect_uri"] is None
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "o_auth2", "value": six[:5]})


def _passkey_data(user_id: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "client_id": "wildmeta",
        "credential_id": "cred",
        "signature": "c2ln",
        "auth_data": "YXV0aA",
        "client_data_json": "e30",
    }


def test_user_auth_passkey_with_nested_user_id() -> None:
    auth = parse_user_auth({"type": "passkey", "value": _passkey_data({"type": "passkey", "value": "cred"})})
    assert auth.kind is UserAuthKind.PASSKEY
    assert auth.value["user_id"] == UserId(IdentityKind.PASSKEY, "cred")
    assert auth.value["client_data_json"] == "e30"


def test_user_auth_passkey_nested_user_id_array_form() -> None:
    auth = parse_user_auth({"type": "passkey", "value": _passkey_data(["email", "a@b.com"])})
    assert auth.value["user_id"] == UserId(IdentityKind.EMAIL, "a@b.com")


@pytest.mark.parametrize("user_id", [{"type": "nope", "value": "x"}, "cred", None])
def test_user_auth_passkey_rejects_bad_nested_user_id(user_id: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "passkey", "value": _passkey_data(user_id)})


def test_user_auth_passkey_missing_field_rejected() -> None:
    data = _passkey_data({"type": "passkey", "value": "cred"})
    del data["client_data_json"]
    with pytest.raises(SerdeError):
        parse_user_auth({"type": "passkey", "value": data})


@pytest.mark.parametrize(
    "value",
    [
        {"type": "password", "value": "x"},
        {"type": "Email", "value": "x"},
        {"type": "email"},
        {"value": "x"},
        None,
        "email",
        ["email"],
        ["email", "1", "2"],
    ],
)
def test_user_auth_malformed_rejected(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_user_auth(value)


def test_user_auth_array_form() -> None:
    auth = parse_user_auth(["evm", "0x" + SIG65])
    assert _sig(auth.value).raw == bytes.fromhex(SIG65)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ({"type": "evm", "value": SIG65.upper()}, {"type": "evm", "value": "0x" + SIG65}),
        ({"type": "bitcoin", "value": SIG65}, {"type": "bitcoin", "value": SIG65}),
        ({"type": "solana", "value": "0x" + SIG64}, {"type": "solana", "value": SIG64}),
        (
            {"type": "substrate", "value": {"type": "ecdsa", "value": "0x" + SIG65}},
            {"type": "substrate", "value": {"type": "ecdsa", "value": SIG65}},
        ),
        ({"type": "email", "value": "123456"}, {"type": "email", "value": "123456"}),
    ],
)
def test_user_auth_serialises_like_the_worker(wire: Any, expected: Any) -> None:
    """EVM as `0x` + lowercase; Bitcoin and sp-core signatures as bare lowercase hex."""
    assert user_auth_to_json(parse_user_auth(wire)) == expected


# ============================================================================================
# ClientAuth
# ============================================================================================


def test_client_auth_wildmeta_both_fields_present() -> None:
    auth = parse_client_auth({"type": "wildmeta", "value": {"google_code": "123", "invite_code": "456"}})
    assert auth.kind == "wildmeta"
    assert auth.fields == {"google_code": "123", "invite_code": "456"}


@pytest.mark.parametrize(
    "value",
    [{}, {"google_code": None, "invite_code": None}, {"google_code": None}, {"unrelated": 1}],
)
def test_client_auth_wildmeta_fields_missing_or_null_are_none(value: dict[str, Any]) -> None:
    auth = parse_client_auth({"type": "wildmeta", "value": value})
    assert auth.fields == {"google_code": None, "invite_code": None}


def test_client_auth_to_json_keeps_declaration_order_and_null() -> None:
    auth = parse_client_auth({"value": {"invite_code": "456"}, "type": "wildmeta"})
    as_json = auth.to_json()
    assert as_json == {"type": "wildmeta", "value": {"google_code": None, "invite_code": "456"}}
    assert list(as_json) == ["type", "value"]
    assert list(as_json["value"]) == ["google_code", "invite_code"]


@pytest.mark.parametrize("value", [{"google_code": 123}, {"invite_code": ["x"]}, None, "x", ["only-one"]])
def test_client_auth_wildmeta_rejects_wrong_types(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_client_auth({"type": "wildmeta", "value": value})


def test_client_auth_wildmeta_positional_value() -> None:
    auth = parse_client_auth({"type": "wildmeta", "value": ["g", None]})
    assert auth.fields == {"google_code": "g", "invite_code": None}


def _hl(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "agent_address": "0xagent",
        "business_json": "{}",
        "main_address": "0xmain",
        "signature": "0xsig",
        "login_type": 1,
    }
    value.update(overrides)
    return {"type": "wildmeta_hl", "value": value}


@pytest.mark.parametrize("login_type", [0, 1, 2**32 - 1])
def test_client_auth_wildmeta_hl_login_type_u32_accepted(login_type: int) -> None:
    auth = parse_client_auth(_hl(login_type=login_type))
    assert auth.fields["login_type"] == login_type
    assert list(auth.to_json()["value"]) == [
        "agent_address",
        "business_json",
        "main_address",
        "signature",
        "login_type",
    ]


@pytest.mark.parametrize("login_type", [-1, 2**32, 1.5, 1.0, True, False, "1", None])
def test_client_auth_wildmeta_hl_login_type_rejects_non_u32(login_type: Any) -> None:
    with pytest.raises(SerdeError):
        parse_client_auth(_hl(login_type=login_type))


def test_client_auth_wildmeta_hl_fields_are_required() -> None:
    value = _hl()
    del value["value"]["main_address"]
    with pytest.raises(SerdeError):
        parse_client_auth(value)


def test_client_auth_wildmeta_backend() -> None:
    auth = parse_client_auth({"type": "wildmeta_backend", "value": {"signature": "0x1234567890abcdef"}})
    assert auth.to_json() == {
        "type": "wildmeta_backend",
        "value": {"signature": "0x1234567890abcdef"},
    }


def test_client_auth_agentkeys_backend_rejected_by_default() -> None:
    with pytest.raises(SerdeError):
        parse_client_auth({"type": "agentkeys_backend", "value": {"signature": "0x12"}})


def test_client_auth_agentkeys_backend_accepted_with_patch_variants() -> None:
    variants = {**CLIENT_AUTH_VARIANTS, **AGENTKEYS_BACKEND_VARIANT}
    auth = parse_client_auth({"type": "agentkeys_backend", "value": {"signature": "0x12"}}, variants=variants)
    assert auth.to_json() == {"type": "agentkeys_backend", "value": {"signature": "0x12"}}
    # and the upstream variants still parse with the merged table
    assert parse_client_auth({"type": "wildmeta", "value": {}}, variants=variants).kind == ("wildmeta")


@pytest.mark.parametrize(
    "value",
    [
        {"type": "pumpx", "value": {}},
        {"type": "Wildmeta", "value": {}},
        {"type": "wildmeta"},
        None,
        "wildmeta",
    ],
)
def test_client_auth_malformed_rejected(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_client_auth(value)


# ============================================================================================
# parse_struct
# ============================================================================================

FIELDS = (
    Field("a", string),
    Field("b", u32),
    Field("c", string, optional=True),
)


def test_parse_struct_object_form() -> None:
    assert parse_struct({"b": 2, "a": "x", "zz": 0}, FIELDS, "S") == {"a": "x", "b": 2, "c": None}


def test_parse_struct_object_missing_required_is_error() -> None:
    with pytest.raises(SerdeError, match="missing field `b`"):
        parse_struct({"a": "x"}, FIELDS, "S")


def test_parse_struct_array_exact_arity() -> None:
    assert parse_struct(["x", 2, None], FIELDS, "S") == {"a": "x", "b": 2, "c": None}
    assert parse_struct(["x", 2, "y"], FIELDS, "S") == {"a": "x", "b": 2, "c": "y"}


def test_parse_struct_array_missing_trailing_optional_is_error() -> None:
    with pytest.raises(SerdeError, match="invalid length 2"):
        parse_struct(["x", 2], FIELDS, "S")


def test_parse_struct_array_extra_element_is_error() -> None:
    with pytest.raises(SerdeError, match="invalid length 4"):
        parse_struct(["x", 2, None, None], FIELDS, "S")


def test_parse_struct_array_holding_one_object_is_not_accepted() -> None:
    with pytest.raises(SerdeError):
        parse_struct([{"a": "x", "b": 2}], FIELDS, "S")


@pytest.mark.parametrize("value", [None, "x", "", 0, 1.5, True, False])
def test_parse_struct_rejects_scalars(value: Any) -> None:
    with pytest.raises(SerdeError):
        parse_struct(value, FIELDS, "S")


def test_parse_struct_element_error_names_the_field() -> None:
    with pytest.raises(SerdeError, match=r"^b: "):
        parse_struct(["x", -1, None], FIELDS, "S")


# ============================================================================================
# to_omni_auth
# ============================================================================================


def _auth(tag: str, value: Any) -> Any:
    return parse_user_auth({"type": tag, "value": value})


def test_to_omni_auth_email_pairs_with_email_user_id() -> None:
    auth = to_omni_auth(_auth("email", "654321"), UserId(IdentityKind.EMAIL, "a@b.com"), "wildmeta")
    assert auth == EmailAuth("wildmeta", "a@b.com", "654321")


@pytest.mark.parametrize(
    "user_id",
    [
        UserId(IdentityKind.EVM, EVM_ADDRESS),
        UserId(IdentityKind.GOOGLE, "a@b.com"),
        UserId(IdentityKind.PUMPX, "a@b.com"),
    ],
)
def test_to_omni_auth_email_with_non_email_user_id_fails(user_id: UserId) -> None:
    with pytest.raises(OmniAuthError):
        to_omni_auth(_auth("email", "654321"), user_id, "wildmeta")


def test_to_omni_auth_evm_pairs_with_evm_user_id() -> None:
    auth = to_omni_auth(_auth("evm", "0x" + SIG65), UserId(IdentityKind.EVM, EVM_ADDRESS), "wildmeta")
    assert isinstance(auth, Web3Auth)
    assert auth.client_id == "wildmeta"
    assert auth.identity.kind is IdentityKind.EVM
    assert auth.identity.raw == bytes.fromhex(EVM_ADDRESS[2:])
    assert auth.signature.raw == bytes.fromhex(SIG65)


def test_to_omni_auth_evm_with_substrate_user_id_fails() -> None:
    with pytest.raises(OmniAuthError):
        to_omni_auth(_auth("evm", "0x" + SIG65), UserId(IdentityKind.SUBSTRATE, SUBSTRATE_HEX), "wildmeta")


@pytest.mark.parametrize(
    "value",
    [
        "0x" + "zz" * 20,  # bad hex
        "0x" + "00" * 19,  # wrong length
        "0x" + "00" * 21,
        "0X" + "00" * 20,  # uppercase prefix is not stripped
        "",
    ],
)
def test_to_omni_auth_evm_with_bad_evm_user_id_fails(value: str) -> None:
    with pytest.raises(OmniAuthError):
        to_omni_auth(_auth("evm", "0x" + SIG65), UserId(IdentityKind.EVM, value), "wildmeta")


@pytest.mark.parametrize(
    ("auth_tag", "auth_value", "user_id"),
    [
        ("bitcoin", SIG65, UserId(IdentityKind.EVM, EVM_ADDRESS)),
        ("solana", SIG64, UserId(IdentityKind.SUBSTRATE, SUBSTRATE_HEX)),
        ("evm", SIG65, UserId(IdentityKind.EMAIL, "a@b.com")),
        (
            "substrate",
            {"type": "ed25519", "value": SIG64},
            UserId(IdentityKind.SOLANA, SOLANA_ADDRESS),
        ),
    ],
)
def test_to_omni_auth_web3_kind_mismatch_fails(auth_tag: str, auth_value: Any, user_id: UserId) -> None:
    with pytest.raises(OmniAuthError):
        to_omni_auth(_auth(auth_tag, auth_value), user_id, "wildmeta")


@pytest.mark.parametrize(
    ("auth_tag", "auth_value", "user_id"),
    [
        ("bitcoin", SIG65, UserId(IdentityKind.BITCOIN, BITCOIN_PUBKEY)),
        ("solana", SIG64, UserId(IdentityKind.SOLANA, SOLANA_ADDRESS)),
        (
            "substrate",
            {"type": "sr25519", "value": SIG64},
            UserId(IdentityKind.SUBSTRATE, SUBSTRATE_HEX),
        ),
    ],
)
def test_to_omni_auth_web3_matching_kinds(auth_tag: str, auth_value: Any, user_id: UserId) -> None:
    auth = to_omni_auth(_auth(auth_tag, auth_value), user_id, "c")
    assert isinstance(auth, Web3Auth)
    assert auth.identity.kind is user_id.kind


@pytest.mark.parametrize(
    "user_id",
    [
        UserId(IdentityKind.EMAIL, "a@b.com"),
        UserId(IdentityKind.EVM, "0xnothex"),  # not even decoded
        UserId(IdentityKind.SUBSTRATE, ""),
        UserId(IdentityKind.PASSKEY, "cred"),
        UserId(IdentityKind.PUMPX, "user-1"),
    ],
)
def test_to_omni_auth_auth_token_pairs_with_any_user_id(user_id: UserId) -> None:
    assert to_omni_auth(_auth("auth_token", "jwt"), user_id, "wildmeta") == AuthTokenAuth("jwt")


def test_to_omni_auth_o_auth2_and_passkey_ignore_user_id() -> None:
    anything = UserId(IdentityKind.EVM, "0xnothex")
    oauth = to_omni_auth(_auth("o_auth2", _oauth2_data()), anything, "wildmeta")
    assert isinstance(oauth, OAuth2Auth)
    assert oauth.client_id == "wildmeta"
    passkey = to_omni_auth(_auth("passkey", _passkey_data({"type": "passkey", "value": "cred"})), anything, "x")
    assert isinstance(passkey, PasskeyAuth)


# ============================================================================================
# validate_email (`rpc-server/src/utils/validation.rs` test vectors)
# ============================================================================================


@pytest.mark.parametrize(
    "email",
    [
        "test@example.com",
        "user.name@example.co.uk",
        "test+tag@example.org",
        "test_123@test-domain.com",
    ],
)
def test_validate_email_valid_vectors(email: str) -> None:
    assert validate_email(email) is EmailVerdict.VALID


@pytest.mark.parametrize("email", ["notanemail", "@example.com", "test@", "test@.com", ""])
def test_validate_email_invalid_vectors(email: str) -> None:
    assert validate_email(email) is EmailVerdict.INVALID


def test_validate_email_without_tld_is_its_own_verdict() -> None:
    assert validate_email("test@example") is EmailVerdict.NO_TLD


# ============================================================================================
# Error objects, current vs legacy era
# ============================================================================================

CURRENT = ErrorCatalog()
LEGACY = LegacyErrorCatalog()


def _assert_error(error: RpcError, expected: dict[str, Any], data_keys: list[str] | None = None) -> None:
    as_json = error.to_json()
    assert as_json == expected
    assert list(as_json) == list(expected)
    if data_keys is None:
        assert "data" not in as_json
    else:
        assert list(as_json["data"]) == data_keys


def test_catalog_for_picks_the_era() -> None:
    assert type(catalog_for("current")) is ErrorCatalog
    assert type(catalog_for("legacy")) is LegacyErrorCatalog


def test_post_heima_login_code_current() -> None:
    _assert_error(
        CURRENT.post_heima_login_code(20001, "bad user"),
        {
            "code": -32000,
            "message": "Invalid backend response",
            "data": {
                "backend_response": {"code": 20001, "message": "bad user"},
                "field": "post_heima_login",
            },
        },
        ["backend_response", "field"],
    )
    data = CURRENT.post_heima_login_code(20001, "bad user").to_json()["data"]
    assert list(data["backend_response"]) == ["code", "message"]


def test_post_heima_login_code_legacy() -> None:
    _assert_error(
        LEGACY.post_heima_login_code(20001, "bad user"),
        {
            "code": -32603,
            "message": "Internal error",
            "data": {"backend_response": {"code": 20001, "message": "bad user"}},
        },
        ["backend_response"],
    )


def test_post_heima_login_transport_current() -> None:
    _assert_error(
        CURRENT.post_heima_login_transport("reqwest::Error { kind: Connect }"),
        {
            "code": -32161,
            "message": "Pumpx service error in post_heima_login",
            "data": {"reason": "reqwest::Error { kind: Connect }"},
        },
        ["reason"],
    )


def test_post_heima_login_transport_legacy_has_no_data() -> None:
    error = LEGACY.post_heima_login_transport("reqwest::Error { kind: Connect }")
    _assert_error(error, {"code": -32041, "message": "Server error"})
    assert error.data is NO_DATA


def test_get_account_user_id_transport_current() -> None:
    _assert_error(
        CURRENT.get_account_user_id_transport("boom"),
        {
            "code": -32161,
            "message": "Pumpx service error in get_account_user_id",
            "data": {"reason": "boom"},
        },
        ["reason"],
    )


def test_get_account_user_id_transport_legacy() -> None:
    _assert_error(
        LEGACY.get_account_user_id_transport("boom"),
        {
            "code": -32603,
            "message": "Failed to get account user ID",
            "data": {"suggestion": "Please try again"},
        },
        ["suggestion"],
    )


def test_empty_user_id_both_eras() -> None:
    _assert_error(
        CURRENT.empty_user_id(),
        {"code": -32603, "message": "Internal error", "data": {"reason": "Empty data.user_id"}},
        ["reason"],
    )
    _assert_error(
        LEGACY.empty_user_id(),
        {
            "code": -32603,
            "message": "Failed to get account user ID",
            "data": {"reason": "User ID not found in response"},
        },
        ["reason"],
    )


def test_user_connect_code_current() -> None:
    _assert_error(
        CURRENT.user_connect_code(30002, "invite code invalid"),
        {
            "code": -32000,
            "message": "Invalid backend response",
            "data": {
                "backend_response": {"code": 30002, "message": "invite code invalid"},
                "field": "user_connect",
            },
        },
        ["backend_response", "field"],
    )


def test_user_connect_code_legacy() -> None:
    _assert_error(
        LEGACY.user_connect_code(30002, "invite code invalid"),
        {
            "code": -32603,
            "message": "Internal error",
            "data": {"backend_response": {"code": 30002, "message": "invite code invalid"}},
        },
        ["backend_response"],
    )


def test_user_connect_transport_both_eras() -> None:
    _assert_error(
        CURRENT.user_connect_transport("r"),
        {"code": -32161, "message": "Pumpx service error in user_connect", "data": {"reason": "r"}},
        ["reason"],
    )
    _assert_error(
        LEGACY.user_connect_transport("r"),
        {
            "code": -32603,
            "message": "Failed to connect user",
            "data": {"suggestion": "Please try again"},
        },
        ["suggestion"],
    )


def test_google_auth_check_failed_both_eras() -> None:
    _assert_error(
        CURRENT.google_auth_check_failed(),
        {
            "code": -32603,
            "message": "Internal error",
            "data": {"reason": "Failed to verify google auth within RequestJwt"},
        },
        ["reason"],
    )
    _assert_error(
        LEGACY.google_auth_check_failed(),
        {
            "code": -32031,
            "message": "Google code verification failed",
            "data": {"suggestion": "Please check your Google verification code and try again"},
        },
        ["suggestion"],
    )


def test_user_connect_check_order_differs_by_era() -> None:
    assert CURRENT.user_connect_code_checked_first is True
    assert LEGACY.user_connect_code_checked_first is False


@pytest.mark.parametrize("catalog", [CURRENT, LEGACY], ids=["current", "legacy"])
def test_access_token_not_stored_has_empty_data(catalog: ErrorCatalog) -> None:
    error = catalog.access_token_not_stored()
    _assert_error(
        error,
        {"code": -32163, "message": "Storage service error in get access token", "data": {}},
        [],
    )
    assert "data" in error.to_json()


def test_add_wallet_code_both_eras() -> None:
    _assert_error(
        CURRENT.add_wallet_code(1, "x"),
        {
            "code": -32000,
            "message": "Invalid backend response",
            "data": {"backend_response": {"code": 1, "message": "x"}, "field": "add_wallet"},
        },
        ["backend_response", "field"],
    )
    _assert_error(
        LEGACY.add_wallet_code(1, "x"),
        {
            "code": -32603,
            "message": "Internal error",
            "data": {"backend_response": {"code": 1, "message": "x"}},
        },
        ["backend_response"],
    )


@pytest.mark.parametrize("catalog", [CURRENT, LEGACY], ids=["current", "legacy"])
def test_era_independent_objects(catalog: ErrorCatalog) -> None:
    _assert_error(catalog.parse_error(), {"code": -32700, "message": "Parse error"})
    _assert_error(catalog.invalid_request(), {"code": -32600, "message": "Invalid request"})
    _assert_error(catalog.method_not_found(), {"code": -32601, "message": "Method not found"})
    _assert_error(catalog.missing_authorization(), {"code": -32603, "message": "Internal error"})
    _assert_error(catalog.authentication_failed(), {"code": -32003, "message": "Authentication failed"})
    _assert_error(catalog.plain_parse_error(), {"code": -32700, "message": "Parse error"})
    _assert_error(catalog.plain_invalid_params(), {"code": -32602, "message": "Invalid params"})
    _assert_error(catalog.login_verification_failed(), {"code": -32003, "message": "Server error"})
    _assert_error(
        catalog.params_parse(),
        {
            "code": -32700,
            "message": "Parse error",
            "data": {"reason": "Invalid JSON format or missing required fields"},
        },
        ["reason"],
    )
    oversized = catalog.oversized_request(10485760).to_json()
    assert oversized == {
        "code": -32007,
        "message": "Request is too big",
        "data": "Exceeded max limit of 10485760",
    }


def test_invalid_email_is_invalid_params_in_the_newest_worker() -> None:
    """`validate_email` (`utils/validation.rs@c7751f89:81-102`) answers `invalid_params`."""
    assert CURRENT.invalid_email("notanemail").to_json() == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"field": "email", "reason": "invalid email address: notanemail"},
    }
    assert CURRENT.email_without_tld("test@example").to_json() == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"field": "email", "reason": "expect TLD in email address: test@example"},
    }


def test_invalid_email_data_key_order_in_era_a() -> None:
    error = LEGACY.invalid_email("notanemail").to_json()
    assert error["code"] == -32107
    assert error["message"] == "Invalid email format"
    assert list(error["data"]) == ["field", "expected", "received", "suggestion"]
    assert error["data"]["field"] == "email"
    assert error["data"]["received"] == "notanemail"


def test_email_without_tld_differs_from_invalid_email_in_era_a() -> None:
    no_tld = LEGACY.email_without_tld("test@example").to_json()
    invalid = LEGACY.invalid_email("test@example").to_json()
    assert no_tld["code"] == invalid["code"] == -32107
    assert no_tld["data"]["expected"] != invalid["data"]["expected"]
    assert no_tld["data"]["suggestion"] == "Email domain must include a top-level domain (TLD)"


def test_backend_code_wraps_to_i32_in_the_newest_worker() -> None:
    """`response.code as i32` (`detailed_error.rs@4a07c15e`): 2**31 and above become negative."""
    assert CURRENT.post_heima_login_code(2**31, "m").to_json()["data"]["backend_response"] == {
        "code": -(2**31),
        "message": "m",
    }
    assert CURRENT.add_wallet_code(4294967295, "m").to_json()["data"]["backend_response"]["code"] == -1
    assert CURRENT.user_connect_code(2**31 - 1, "m").to_json()["data"]["backend_response"]["code"] == 2**31 - 1


def test_mailer_not_configured_data() -> None:
    _assert_error(
        CURRENT.mailer_not_configured("nomailer"),
        {
            "code": -32164,
            "message": "Failed to initialize email service",
            "data": {
                "field": "client_id",
                "received": "nomailer",
                "reason": "Error: No mailer configuration found for client 'nomailer'",
            },
        },
        ["field", "received", "reason"],
    )


def test_rpc_error_data_null_differs_from_no_data() -> None:
    assert RpcError(-1, "m", None).to_json() == {"code": -1, "message": "m", "data": None}
    assert RpcError(-1, "m").to_json() == {"code": -1, "message": "m"}
