"""The software authenticator's output, read back with fido2's own parsers and COSE verification
(independent of the simulator's verifier in `omni_sim/passkey.py`)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fido2 import cbor
from fido2.webauthn import AttestationObject, AuthenticatorData, CollectedClientData

from agentkeys_kit.conformance.soft_authenticator import SoftCredential
from agentkeys_kit.protocol import base64url

CHALLENGE = base64url.encode(bytes(range(32)))


def test_attestation_parses_as_webauthn_none_attestation() -> None:
    credential = SoftCredential.generate(b"seed")
    out = credential.attestation(CHALLENGE, "https://app.example", "app.example")
    attestation = AttestationObject(base64url.decode(out["attestation_object"]))
    assert attestation.fmt == "none" and attestation.att_stmt == {}
    auth = attestation.auth_data
    assert auth.rp_id_hash == hashlib.sha256(b"app.example").digest()
    assert auth.is_user_present() and auth.is_user_verified() and auth.is_attested()
    assert auth.credential_data is not None
    assert auth.credential_data.credential_id == credential.credential_id
    client = CollectedClientData(base64url.decode(out["client_data_json"]))
    assert (client.type, client.origin, client.challenge) == (
        "webauthn.create",
        "https://app.example",
        bytes(range(32)),
    )


@pytest.mark.parametrize("signature_format", ["der", "raw"])
def test_assertion_verifies_with_the_attested_cose_key(signature_format: str) -> None:
    credential = SoftCredential.generate(b"seed")
    attested = AttestationObject(
        base64url.decode(credential.attestation(CHALLENGE, "https://a", "a")["attestation_object"])
    )
    assert attested.auth_data.credential_data is not None
    cose = attested.auth_data.credential_data.public_key
    out = credential.assertion(CHALLENGE, "https://a", "a", counter=7, signature_format=signature_format)
    auth = AuthenticatorData(base64url.decode(out["auth_data"]))
    assert auth.counter == 7 and auth.is_user_present() and auth.is_user_verified()
    client = base64url.decode(out["client_data_json"])
    signature = base64url.decode(out["signature"])
    if signature_format == "raw":
        assert len(signature) == 64
        signature = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    cose.verify(bytes(auth) + hashlib.sha256(client).digest(), signature)  # raises when it does not verify


def test_flags_are_settable_for_negative_cases() -> None:
    credential = SoftCredential.generate(b"seed")
    out = credential.assertion(CHALLENGE, "https://a", "a", flags=["UP"])
    auth = AuthenticatorData(base64url.decode(out["auth_data"]))
    assert auth.is_user_present() and not auth.is_user_verified()
    att = credential.attestation(CHALLENGE, "https://a", "a", flags=["AT"])
    assert AttestationObject(base64url.decode(att["attestation_object"])).auth_data.flags == AuthenticatorData.FLAG.AT


def test_credentials_round_trip_through_json_and_seeds_are_deterministic() -> None:
    first = SoftCredential.generate(b"seed")
    assert SoftCredential.from_json(first.to_json()).to_json() == first.to_json()
    assert SoftCredential.generate(b"seed").to_json() == first.to_json()
    assert SoftCredential.generate(b"other").credential_id != first.credential_id


def test_cose_key_array_writes_the_same_key_values_as_a_cbor_array() -> None:
    credential = SoftCredential.generate(b"seed")
    as_map = cbor.decode(base64url.decode(credential.attestation(CHALLENGE, "https://a", "a")["attestation_object"]))
    out = credential.attestation(CHALLENGE, "https://a", "a", cose_key="array")
    as_array = cbor.decode(base64url.decode(out["attestation_object"]))
    key = AttestationObject(cbor.encode(as_map)).auth_data.credential_data
    assert key is not None
    prefix = len(as_map["authData"]) - len(cbor.encode(dict(key.public_key)))
    assert as_array["authData"][:prefix] == as_map["authData"][:prefix]
    assert cbor.decode(as_array["authData"][prefix:]) == list(dict(key.public_key).values())
    with pytest.raises(ValueError, match="cose_key"):
        credential.attestation(CHALLENGE, "https://a", "a", cose_key="list")
