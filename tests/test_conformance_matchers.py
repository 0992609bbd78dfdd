"""The harness's own matchers and functions: each one can fail, and says where."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentkeys_kit.conformance.expr import ExprError, Keys, Scope
from agentkeys_kit.conformance.matchers import match
from agentkeys_kit.omni_sim.keystore import load_pkcs1_der

KEY = load_pkcs1_der(Path(__file__).parent.parent / "fixtures" / "keys" / "auth_token_key.test.bin")


@pytest.fixture(scope="module")
def scope() -> Scope:
    return Scope(Keys(KEY, KEY.public_key()))


def problems(expected: object, actual: object) -> list[str]:
    return [str(m) for m in match(expected, actual, KEY.public_key())]


def test_exact_pins_key_order_and_plain_mappings_do_not() -> None:
    assert problems({"$exact": {"code": 1, "message": "m"}}, {"code": 1, "message": "m"}) == []
    assert problems({"$exact": {"code": 1, "message": "m"}}, {"message": "m", "code": 1})
    assert problems({"code": 1}, {"message": "m", "code": 1}) == []


def test_a_mismatch_names_its_path() -> None:
    assert problems({"error": {"code": -32602}}, {"error": {"code": -32700}}) == [
        "error.code: expected -32602, got -32700"
    ]


def test_absent_between_and_types() -> None:
    assert problems({"data": {"$absent": True}}, {"data": 1}) == ["data: must be absent, got 1"]
    assert problems({"data": {"$absent": True}}, {}) == []
    assert problems({"$between": [1, 3]}, 3) == [] and problems({"$between": [1, 3]}, 4)
    assert problems({"$type": "integer"}, True)  # a boolean is not an integer


def test_omni_account_function_reproduces_the_rust_vectors_independently(scope: Scope) -> None:
    email = scope.evaluate(
        {"$omni_account": {"type": "email", "value": "HELLO.WORLD@TEST.COM", "client_id": "wildmeta"}}
    )
    assert email == "0x5a0194d421e69bb2fb2fa9659628258d1d9d4f42d12ca74354819e65a14f8fae"
    evm = scope.evaluate({"$omni_account": {"type": "evm", "value": "0x" + "00" * 20, "client_id": "test_client"}})
    assert evm == "0xe502d639feeb199ae332376b050307d76d11b32e93b9fd1310127d2af64923fe"


def test_jwt_matcher_verifies_with_the_tee_key_and_refuses_a_forgery(scope: Scope) -> None:
    claims = {"sub": "0x" + "ab" * 32, "typ": "access", "exp": 1_900_000_000, "aud": "agentkeys"}
    genuine = scope.evaluate({"$mint_jwt": {"claims": claims}})
    forged = scope.evaluate({"$mint_jwt": {"claims": claims, "key": "foreign"}})
    spec = {"$jwt": {"header": {"typ": "JWT", "alg": "RS256"}, "claims_order": ["sub", "typ", "exp", "aud"]}}
    assert problems(spec, genuine) == []
    assert problems(spec, forged) == ["(root): RS256 signature does not verify with the TEE key"]
    assert problems({"$jwt": {"claims": {"aud": "wildmeta"}}}, genuine) == [
        '<claims>.aud: expected "wildmeta", got "agentkeys"'
    ]


def test_signature_matcher_recovers_the_signer(scope: Scope) -> None:
    alice = scope.evaluate({"$wallet": {"kind": "evm", "seed": "alice"}})
    bob = scope.evaluate({"$wallet": {"kind": "evm", "seed": "bob"}})
    signature = scope.evaluate({"$sign_text": {"wallet": alice, "message": "hello"}})
    assert problems({"$signature": {"address": alice["address"], "message": "hello"}}, signature) == []
    assert problems({"$signature": {"address": bob["address"], "message": "hello"}}, signature)
    assert problems({"$signature": {"address": alice["address"], "message": "hullo"}}, signature)


def test_unknown_variables_are_suite_errors(scope: Scope) -> None:
    with pytest.raises(ExprError, match="unknown variable"):
        scope.evaluate("${nobody.knows}")
    assert scope.evaluate("plain") == "plain"


def test_numbers_keep_their_json_type() -> None:
    assert problems({"code": 10000}, {"code": 10000.0}) == ["code: expected 10000, got 10000.0"]
    assert problems({"code": 1}, {"code": True})
