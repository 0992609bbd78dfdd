"""Identities and OmniAccount derivation.

Rules (spec heima-protocol.md §4, `parachain/primitives/src/identity.rs@0025e244`,
`primitives/src/auth.rs@4a07c15e`):

* eleven identity kinds; addresses are raw fixed-length bytes (Substrate/Solana 32, EVM 20,
  Bitcoin 33), every other kind is a handle held as at most 64 bytes (`IdentityString::new`
  truncates with `BoundedVec::truncate_from`);
* ``OmniAccount = SHA-256(client_id ‖ tag ‖ value)`` with no separators;
* a handle whose truncated bytes are not valid UTF-8 hashes as the empty string
  (`String::from_utf8(..).unwrap_or_default()`); e-mail handles are lowercased after that, with
  Rust's Unicode-aware `str::to_lowercase` (Python's `str.lower` applies the same full case
  mapping, final sigma included);
* rendered as ``0x`` + 64 lowercase hex.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from agentkeys_kit.protocol.hexcodec import HexError, decode_base58, decode_hex, encode_base58, hex_encode

IDENTITY_STRING_MAX_BYTES = 64


class IdentityKind(StrEnum):
    """The `UserId` / `Identity` variants, by their snake_case JSON tag (also the hash tag)."""

    PUMPX = "pumpx"
    EMAIL = "email"
    TWITTER = "twitter"
    DISCORD = "discord"
    APPLE = "apple"
    SUBSTRATE = "substrate"
    EVM = "evm"
    BITCOIN = "bitcoin"
    SOLANA = "solana"
    GOOGLE = "google"
    PASSKEY = "passkey"


#: Byte length of the address kinds; every other kind is a handle.
ADDRESS_LENGTHS: dict[IdentityKind, int] = {
    IdentityKind.SUBSTRATE: 32,
    IdentityKind.EVM: 20,
    IdentityKind.BITCOIN: 33,
    IdentityKind.SOLANA: 32,
}

WEB3_KINDS = frozenset(ADDRESS_LENGTHS)


class IdentityError(ValueError):
    """A `UserId` value the worker cannot turn into an `Identity` (bad hex, base58 or length).

    `reason` is the worker's own `&'static str` (`TryFrom<UserId> for Identity`,
    `primitives/src/auth.rs@4a07c15e`): "Invalid hex encoding", "Invalid base58 encoding" or
    "Invalid address"; it reaches the wire in ``Failed to convert to omni_account: "<reason>"``.
    """

    def __init__(self, message: str, reason: str = "Invalid address") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """An `Identity`: its kind and its raw value (address bytes, or the handle's ≤64 bytes)."""

    kind: IdentityKind
    raw: bytes

    @classmethod
    def handle(cls, kind: IdentityKind, value: str) -> Identity:
        if kind in ADDRESS_LENGTHS:
            raise IdentityError(f"{kind} is an address kind, not a handle")
        return cls(kind, value.encode("utf-8")[:IDENTITY_STRING_MAX_BYTES])

    @classmethod
    def address(cls, kind: IdentityKind, raw: bytes) -> Identity:
        expected = ADDRESS_LENGTHS.get(kind)
        if expected is None:
            raise IdentityError(f"{kind} is a handle kind, not an address")
        if len(raw) != expected:
            raise IdentityError(f"{kind} address must be {expected} bytes, got {len(raw)}")
        return cls(kind, bytes(raw))

    @classmethod
    def from_user_id(cls, kind: IdentityKind, value: str) -> Identity:
        """`TryFrom<UserId> for Identity`: hex for Substrate/EVM/Bitcoin, base58 for Solana."""
        if kind not in ADDRESS_LENGTHS:
            return cls.handle(kind, value)
        try:
            raw = decode_base58(value) if kind is IdentityKind.SOLANA else decode_hex(value)
        except HexError as exc:
            encoding = "base58" if kind is IdentityKind.SOLANA else "hex"
            raise IdentityError(str(exc), f"Invalid {encoding} encoding") from exc
        return cls.address(kind, raw)

    @property
    def is_web3(self) -> bool:
        return self.kind in WEB3_KINDS

    def hashed_value(self) -> bytes:
        """The bytes `to_omni_account` feeds to SHA-256 after the tag."""
        if self.kind in ADDRESS_LENGTHS:
            return self.raw
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if self.kind is IdentityKind.EMAIL:
            text = rust_to_lowercase(text)
        return text.encode("utf-8")

    def omni_account(self, client_id: str) -> bytes:
        digest = hashlib.sha256(client_id.encode("utf-8"))
        digest.update(self.kind.value.encode("ascii"))
        digest.update(self.hashed_value())
        return digest.digest()

    def omni_account_hex(self, client_id: str) -> str:
        return hex_encode(self.omni_account(client_id))

    def user_id_value(self) -> str:
        """`TryFrom<Identity> for UserId`: the JSON `value` this identity serialises to."""
        if self.kind is IdentityKind.SOLANA:
            return encode_base58(self.raw)
        if self.kind in ADDRESS_LENGTHS:
            return hex_encode(self.raw)
        return self.raw.decode("utf-8", errors="replace")


def rust_to_lowercase(text: str) -> str:
    """Rust's `str::to_lowercase`: full Unicode lowercase mapping, final sigma included."""
    return text.lower()


def omni_account_of(kind: IdentityKind, value: str, client_id: str) -> str:
    """Convenience: the ``0x`` OmniAccount of a `UserId` under `client_id`."""
    return Identity.from_user_id(kind, value).omni_account_hex(client_id)


def email_omni_account(client_id: str, email: str) -> bytes:
    """The account `omni_getOmniAccount` and the e-mail code store use."""
    return Identity.handle(IdentityKind.EMAIL, email).omni_account(client_id)


def pumpx_omni_account(client_id: str, user_id: str) -> bytes:
    """The account `omni_requestJwt` mints tokens for: the Pumpx identity of the backend user id."""
    return Identity.handle(IdentityKind.PUMPX, user_id).omni_account(client_id)
