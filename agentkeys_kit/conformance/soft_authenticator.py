"""A software WebAuthn authenticator for the suites and the tests: a P-256 credential that
creates attestations and signs assertions, built on `fido2`'s WebAuthn data classes (client data,
authenticator data, attested credential data, attestation object, COSE key).

It plays what a browser and a platform authenticator do together, with knobs for the negative
cases: any flags, any RP id, any client-data type and origin, raw (64-byte) or DER signatures.
Everything it returns is base64url without padding, as the worker takes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fido2 import cbor
from fido2.cose import ES256
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticatorData,
    CollectedClientData,
)

from agentkeys_kit.protocol import base64url

UP, UV, AT = AuthenticatorData.FLAG.UP, AuthenticatorData.FLAG.UV, AuthenticatorData.FLAG.AT
_FLAG_NAMES = {"UP": UP, "UV": UV, "AT": AT, "BE": AuthenticatorData.FLAG.BE, "BS": AuthenticatorData.FLAG.BS}
ZERO_AAGUID = bytes(16)


def flags_from(names: list[str] | None, default: AuthenticatorData.FLAG) -> AuthenticatorData.FLAG:
    if names is None:
        return default
    flags = AuthenticatorData.FLAG(0)
    for name in names:
        flags |= _FLAG_NAMES[name]
    return flags


@dataclass(frozen=True, slots=True)
class SoftCredential:
    """One credential: its id and P-256 private key (PKCS#8 DER, hex, so it fits in suite variables)."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, seed: bytes | None = None) -> SoftCredential:
        if seed is None:
            key = ec.generate_private_key(ec.SECP256R1())
            credential_id = hashlib.sha256(key.public_key().public_bytes(*_SPKI)).digest()[:16]
        else:
            scalar = int.from_bytes(hashlib.sha256(b"soft-authenticator\0" + seed).digest(), "big")
            key = ec.derive_private_key(scalar % (_P256_ORDER - 1) + 1, ec.SECP256R1())
            credential_id = hashlib.sha256(b"credential\0" + seed).digest()[:16]
        return cls(credential_id, key)

    def to_json(self) -> dict[str, str]:
        der = self.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {"credential_id": base64url.encode(self.credential_id), "private_key": der.hex()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SoftCredential:
        key = serialization.load_der_private_key(bytes.fromhex(value["private_key"]), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not a P-256 private key")
        return cls(base64url.decode(value["credential_id"]), key)

    # ------------------------------------------------------------------ registration

    def attestation(
        self,
        challenge: str,
        origin: str,
        rp_id: str,
        *,
        type: str = "webauthn.create",
        flags: list[str] | None = None,
        cose_key: str = "map",
    ) -> dict[str, str]:
        """``navigator.credentials.create`` with attestation ``none``; ``cose_key="array"`` writes
        the credential's COSE key as a CBOR array of the map's values (a broken authenticator)."""
        client_data = CollectedClientData.create(type, challenge, origin)
        key = ES256.from_cryptography_key(self.private_key.public_key())  # type: ignore[no-untyped-call]
        credential = AttestedCredentialData.create(ZERO_AAGUID, self.credential_id, key)
        auth_data = bytearray(AuthenticatorData.create(_rp_hash(rp_id), UP | UV | AT, 0, credential))
        # The flags byte is set afterwards so that negative cases (no AT, no UP…) can be built:
        # fido2's AuthenticatorData refuses credential data without the AT flag.
        auth_data[32] = int(flags_from(flags, UP | UV | AT))
        if cose_key == "array":  # the COSE key ends the authenticator data
            written = cbor.encode(dict(key))
            assert auth_data.endswith(written)
            auth_data[len(auth_data) - len(written) :] = cbor.encode(list(dict(key).values()))
        elif cose_key != "map":
            raise ValueError(f"cose_key must be map or array, not {cose_key!r}")
        attestation = cbor.encode({"fmt": "none", "attStmt": {}, "authData": bytes(auth_data)})
        return {
            "attestation_object": base64url.encode(attestation),
            "client_data_json": base64url.encode(bytes(client_data)),
            "credential_id": base64url.encode(self.credential_id),
        }

    # ------------------------------------------------------------------ authentication

    def assertion(
        self,
        challenge: str,
        origin: str,
        rp_id: str,
        *,
        type: str = "webauthn.get",
        flags: list[str] | None = None,
        counter: int = 1,
        signature_format: str = "der",
    ) -> dict[str, str]:
        """``navigator.credentials.get``: authenticator data, client data and the signature over
        ``authData ‖ SHA-256(clientDataJSON)``, DER (as authenticators produce it) or raw ``r‖s``."""
        client_data = bytes(CollectedClientData.create(type, challenge, origin))
        auth_data = bytes(AuthenticatorData.create(_rp_hash(rp_id), flags_from(flags, UP | UV), counter))
        der = self.private_key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        if signature_format == "raw":
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif signature_format == "der":
            signature = der
        else:
            raise ValueError(f"signature_format must be raw or der, not {signature_format!r}")
        return {
            "credential_id": base64url.encode(self.credential_id),
            "auth_data": base64url.encode(auth_data),
            "client_data_json": base64url.encode(client_data),
            "signature": base64url.encode(signature),
        }


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _rp_hash(rp_id: str) -> bytes:
    return hashlib.sha256(rp_id.encode("utf-8")).digest()
