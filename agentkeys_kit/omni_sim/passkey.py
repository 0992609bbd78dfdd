"""`PasskeyVerifier` (`crypto/src/passkey.rs@4a07c15e`): what the worker checks in WebAuthn data,
and what it does not.

* client data: base64url (no padding), UTF-8, JSON with string ``type``, ``challenge`` and
  ``origin`` (extra members ignored);
* attestation (`omni_attachPasskey`): a CBOR map with bytes ``authData`` and text ``fmt``;
  ``authData`` at least 55 bytes with the AT flag; the credential id is base64url of the bytes at
  ``[55 .. 55+len]``; the COSE key's ``-2``/``-3`` byte strings are the P-256 point. **Not
  checked at registration:** the attestation statement, the rpIdHash, the UP/UV flags, the
  algorithm, the sign counter;
* assertion (login): ``authData[0..32] == SHA-256(rp_id)``, then UP and UV (checked by the
  caller), then an ECDSA P-256 signature over ``authData ‖ SHA-256(clientDataJSON)``, raw 64-byte
  ``r‖s`` or DER (longer than 64 bytes, first byte ``0x30``).

Errors carry the worker's `PasskeyError` Debug (`debug`) and Display (`str(error)`): both reach
the wire inside reasons. Two texts are approximations: a CBOR decode failure (ciborium's Debug)
and a JSON parse failure (serde_json's message); the kind of failure is the worker's.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.rust_fmt import debug_str

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class PasskeyVerifierError(Exception):
    """`oe_crypto::passkey::PasskeyError`: `variant` and its optional message."""

    _DISPLAY: ClassVar[dict[str, str]] = {
        "InvalidPublicKeyFormat": "Invalid public key format",
        "InvalidSignatureFormat": "Invalid signature format",
        "ChallengeVerificationFailed": "Challenge verification failed",
        "OriginVerificationFailed": "Origin verification failed",
    }
    _PREFIX: ClassVar[dict[str, str]] = {
        "ParseError": "Parse error",
        "AttestationParseError": "Attestation parse error",
    }

    def __init__(self, variant: str, message: str | None = None) -> None:
        self.variant = variant
        self.message = message
        super().__init__(self.display)

    @property
    def display(self) -> str:
        if self.message is None:
            return self._DISPLAY[self.variant]
        return f"{self._PREFIX[self.variant]}: {self.message}"

    @property
    def debug(self) -> str:
        return self.variant if self.message is None else f"{self.variant}({debug_str(self.message)})"


def _attestation_error(message: str) -> PasskeyVerifierError:
    return PasskeyVerifierError("AttestationParseError", message)


@dataclass(frozen=True, slots=True)
class ClientData:
    type: str
    challenge: str
    origin: str
    raw: bytes


def _utf8_error(exc: UnicodeDecodeError) -> str:
    """Rust's `Utf8Error` Display."""
    if exc.reason == "unexpected end of data":
        return f"incomplete utf-8 byte sequence from index {exc.start}"
    return f"invalid utf-8 sequence of {exc.end - exc.start} bytes from index {exc.start}"


def parse_client_data_json(encoded: str) -> ClientData:
    """`parse_client_data_json`."""
    try:
        raw = base64url.decode(encoded)
    except base64url.Base64Error as exc:
        raise _attestation_error(f"Base64 decode error: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _attestation_error(f"UTF-8 error: {_utf8_error(exc)}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        line, column = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
        raise _attestation_error(f"JSON parse error: expected value at line {line} column {column}") from None
    fields = {}
    for name in ("type", "challenge", "origin"):
        member = value.get(name) if isinstance(value, dict) else None
        if not isinstance(member, str):
            raise _attestation_error(f"Missing {name} field")
        fields[name] = member
    return ClientData(fields["type"], fields["challenge"], fields["origin"], raw)


def _cbor(data: bytes, what: str) -> Any:
    """ciborium `from_reader`: one CBOR item, trailing bytes ignored."""
    try:
        return cbor2.CBORDecoder(io.BytesIO(data)).decode()
    except cbor2.CBORDecodeEOF:
        detail = 'Io(Error { kind: UnexpectedEof, message: "failed to fill whole buffer" })'
    except (cbor2.CBORDecodeError, ValueError, RecursionError):
        detail = "Syntax(0)"
    raise _attestation_error(f"{what}: {detail}")


@dataclass(frozen=True, slots=True)
class Attestation:
    credential_id: str
    public_key_sec1: bytes


def verify_attestation(encoded: str) -> Attestation:
    """`verify_attestation`: `parse_attestation_object` then `extract_credential_and_key_from_auth_data`."""
    try:
        raw = base64url.decode(encoded)
    except base64url.Base64Error as exc:
        raise _attestation_error(f"Base64 decode error: {exc}") from None
    value = _cbor(raw, "CBOR decode error")
    if not isinstance(value, dict):
        raise _attestation_error("Attestation object must be a CBOR map")
    auth_data = _text_keyed(value, "authData")
    if not isinstance(auth_data, bytes):
        raise _attestation_error("authData must be bytes")
    if not isinstance(_text_keyed(value, "fmt"), str):
        raise _attestation_error("fmt must be text")
    return _credential_from_auth_data(auth_data)


def _text_keyed(cbor_map: dict[Any, Any], name: str) -> Any:
    if name not in cbor_map:
        raise _attestation_error(f"Required field '{name}' not found in attestation object")
    return cbor_map[name]


def _credential_from_auth_data(auth_data: bytes) -> Attestation:
    if len(auth_data) < 55:
        raise _attestation_error("Auth data too short to contain credential data")
    if not auth_data[32] & 0x40:
        raise _attestation_error("No attested credential data present")
    length = int.from_bytes(auth_data[53:55], "big")
    if len(auth_data) < 55 + length:
        raise _attestation_error("Auth data too short for credential ID")
    credential_id = base64url.encode(auth_data[55 : 55 + length])
    cose = _cbor(auth_data[55 + length :], "Failed to parse COSE key")
    if not isinstance(cose, dict):
        raise _attestation_error("COSE key must be a map")
    point = b"\x04" + _cose_bytes(cose, -2) + _cose_bytes(cose, -3)
    public_key_from_sec1(point)  # `VerifyingKey::from_sec1_bytes` refuses a point off the curve
    return Attestation(credential_id, point)


def _cose_bytes(cose: dict[Any, Any], key: int) -> bytes:
    value = cose.get(key)
    if not isinstance(value, bytes) or isinstance(key, bool):
        raise _attestation_error(f"COSE key parameter {key} not found or invalid")
    return value


def public_key_from_sec1(sec1: bytes) -> ec.EllipticCurvePublicKey:
    """`PasskeyVerifier::from_sec1_bytes`."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sec1)
    except ValueError:
        raise PasskeyVerifierError("InvalidPublicKeyFormat") from None


def verify_rp_id_hash(auth_data: bytes, rp_id: str) -> None:
    """`verify_rp_id_hash`; the mismatch text prints both hashes as ``{:02x?}``."""
    if len(auth_data) < 32:
        raise PasskeyVerifierError("ParseError", "Auth data too short to contain RP ID hash")
    expected = hashlib.sha256(rp_id.encode("utf-8")).digest()
    if auth_data[:32] != expected:
        raise PasskeyVerifierError(
            "ParseError",
            f"RP ID hash mismatch. Expected RP ID: '{rp_id}', hash: {_hex_list(expected)}, "
            f"but got: {_hex_list(auth_data[:32])}",
        )


def _hex_list(raw: bytes) -> str:
    return "[" + ", ".join(f"{byte:02x}" for byte in raw) + "]"


def _signature_der(raw: bytes) -> bytes:
    """p256 `Signature::from_slice` (64 bytes) or `Signature::from_der`; r and s in [1, n-1]."""
    if len(raw) == 64:
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    elif len(raw) > 64 and raw[0] == 0x30:
        try:
            r, s = decode_dss_signature(raw)
        except ValueError:
            raise PasskeyVerifierError("InvalidSignatureFormat") from None
        if encode_dss_signature(r, s) != raw:
            raise PasskeyVerifierError("InvalidSignatureFormat")  # not canonical DER
    else:
        raise PasskeyVerifierError("InvalidSignatureFormat")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        raise PasskeyVerifierError("InvalidSignatureFormat")
    return encode_dss_signature(r, s)


def verify_passkey_signature_only(
    auth_data: str, client_data_json: str, signature: str, public_key: ec.EllipticCurvePublicKey
) -> bool:
    """`verify_passkey_signature_only`: format errors raise, a wrong signature is ``False``."""
    try:
        signature_raw = base64url.decode(signature)
    except base64url.Base64Error:
        raise PasskeyVerifierError("InvalidSignatureFormat") from None
    der = _signature_der(signature_raw)
    try:
        client_data = base64url.decode(client_data_json)
    except base64url.Base64Error as exc:
        raise PasskeyVerifierError("ParseError", f"Client data decode error: {exc}") from None
    try:
        authenticator_data = base64url.decode(auth_data)
    except base64url.Base64Error as exc:
        raise PasskeyVerifierError("ParseError", f"Auth data decode error: {exc}") from None
    signed = authenticator_data + hashlib.sha256(client_data).digest()
    try:
        public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
