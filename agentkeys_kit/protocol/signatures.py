"""Web3 signature verification exactly as the worker's `HeimaMultiSignature::verify` does it.

Source: `tee-worker/omni-executor/primitives/src/signature/heima_multi_signature.rs@677675c8`
(litentry/heima), with secp256k1 recovery from `crypto/src/secp256k1.rs@594f15bf` and Bitcoin
signed messages from rust-bitcoin's `sign_message` module. Spec: heima-protocol.md §6.

* Substrate: ed25519 / sr25519 / ecdsa over ``<Bytes>msg</Bytes>``, then over the raw ``msg``;
  ecdsa hashes with blake2-256 and compares blake2-256 of the recovered compressed key;
* EVM: 65-byte r‖s‖v over the EIP-191 ``personal_sign`` digest, then over raw ``keccak256(msg)``;
  ``v > 26`` ⇒ ``v - 27``, and the recovery id must be < 4;
* Bitcoin: signed-message hash of the lowercase-hex text of ``msg``, then of ``msg`` as UTF-8;
  header ≥ 27, recovery id ``(header - 27) & 3`` (the "compressed" flag is ignored), the recovered
  key is compared in compressed form to the 33-byte identity;
* Solana: ed25519 over the raw ``msg``.

Every function here is pure; malformed input yields ``False`` (or ``None``), never an exception.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import ed25519_zebra
import sr25519
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_hash.auto import keccak

from agentkeys_kit.protocol.identity import ADDRESS_LENGTHS, Identity, IdentityKind

__all__ = [
    "SIGNATURE_LENGTHS",
    "SignatureScheme",
    "Web3Signature",
    "bitcoin_signed_message_hash",
    "evm_address",
    "evm_eip191_wrap",
    "recover_evm_address",
    "sign_bitcoin",
    "sign_evm_personal",
    "sign_evm_raw",
    "sign_solana",
    "sign_substrate",
    "substrate_wrap",
    "verify_web3",
]


class SignatureScheme(StrEnum):
    """The `HeimaMultiSignature` variants, by wire tag (SCALE indices 0..4 in this order)."""

    ED25519 = "ed25519"
    SR25519 = "sr25519"
    ECDSA = "ecdsa"
    ETHEREUM = "ethereum"
    BITCOIN = "bitcoin"


#: Raw byte length of each variant's signature.
SIGNATURE_LENGTHS: dict[SignatureScheme, int] = {
    SignatureScheme.ED25519: 64,
    SignatureScheme.SR25519: 64,
    SignatureScheme.ECDSA: 65,
    SignatureScheme.ETHEREUM: 65,
    SignatureScheme.BITCOIN: 65,
}

_SUBSTRATE_SCHEMES = frozenset({SignatureScheme.ED25519, SignatureScheme.SR25519, SignatureScheme.ECDSA})
_BITCOIN_SIGNED_MSG_PREFIX = b"\x18Bitcoin Signed Message:\n"
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"


@dataclass(frozen=True, slots=True)
class Web3Signature:
    """One `HeimaMultiSignature`: its variant and its raw fixed-length bytes."""

    scheme: SignatureScheme
    raw: bytes

    def __post_init__(self) -> None:
        """Reject an unknown scheme or a length the Rust fixed-size arrays would refuse."""
        try:
            scheme = SignatureScheme(self.scheme)
        except ValueError as exc:
            raise ValueError(f"unknown signature scheme: {self.scheme!r}") from exc
        if not isinstance(self.raw, bytes | bytearray | memoryview):
            raise ValueError(f"signature must be bytes, got {type(self.raw).__name__}")
        raw = bytes(self.raw)
        expected = SIGNATURE_LENGTHS[scheme]
        if len(raw) != expected:
            raise ValueError(f"{scheme} signature must be {expected} bytes, got {len(raw)}")
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "raw", raw)


# --------------------------------------------------------------------------- hashing / wrapping


def _keccak256(data: bytes) -> bytes:
    """`keccak_256` (sp-core hashing)."""
    return bytes(keccak(data))


def _blake2_256(data: bytes) -> bytes:
    """`blake2_256` (sp-core hashing): unkeyed BLAKE2b with a 32-byte digest."""
    return hashlib.blake2b(data, digest_size=32).digest()


def _compact_size(n: int) -> bytes:
    """Bitcoin `VarInt` (CompactSize) consensus encoding of a length."""
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFF_FFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def evm_eip191_wrap(msg: bytes) -> bytes:
    """`evm_eip191_wrap` (heima_multi_signature.rs@677675c8): personal_sign prefix + decimal len."""
    return _EIP191_PREFIX + str(len(msg)).encode("ascii") + msg


def substrate_wrap(msg: bytes) -> bytes:
    """`substrate_wrap` (heima_multi_signature.rs@677675c8): ``<Bytes>`` + msg + ``</Bytes>``."""
    return b"<Bytes>" + msg + b"</Bytes>"


def bitcoin_signed_message_hash(text: bytes) -> bytes:
    """rust-bitcoin `signed_msg_hash`: sha256d(prefix ‖ CompactSize(len) ‖ text)."""
    payload = _BITCOIN_SIGNED_MSG_PREFIX + _compact_size(len(text)) + text
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()


# --------------------------------------------------------------------------- secp256k1 recovery


def _recover_pubkey(digest32: bytes, sig64: bytes, recid: int) -> PublicKey | None:
    """`RecoverableSignature::from_compact` + `recover_ecdsa`; ``None`` on any failure."""
    if len(digest32) != 32 or len(sig64) != 64 or not 0 <= recid < 4:
        return None
    try:
        return PublicKey.from_signature_and_message(sig64 + bytes([recid]), digest32, hasher=None)
    except Exception:
        return None


def _rsv_recid(v: int) -> int:
    """The recovery id `secp256k1_ecdsa_recover` derives from v (crypto/src/secp256k1.rs)."""
    return v - 27 if v > 26 else v


def recover_evm_address(digest32: bytes, sig65: bytes) -> bytes | None:
    """`recover_evm_address` (heima_multi_signature.rs@677675c8): keccak(pubkey)[12:], or None."""
    if len(sig65) != 65:
        return None
    pubkey = _recover_pubkey(digest32, sig65[:64], _rsv_recid(sig65[64]))
    if pubkey is None:
        return None
    uncompressed = pubkey.format(compressed=False)
    return _keccak256(uncompressed[1:])[12:]


def _recover_compressed(digest32: bytes, sig65: bytes) -> bytes | None:
    """`secp256k1_ecdsa_recover_compressed` (crypto/src/secp256k1.rs@594f15bf): 33 bytes or None."""
    if len(sig65) != 65:
        return None
    pubkey = _recover_pubkey(digest32, sig65[:64], _rsv_recid(sig65[64]))
    return None if pubkey is None else pubkey.format(compressed=True)


# --------------------------------------------------------------------------- per-chain verifiers


def _verify_ed25519(msg: bytes, sig64: bytes, public32: bytes) -> bool:
    """`ed25519::Pair::verify` (sp-core): ed25519-zebra, i.e. ZIP-215 acceptance rules."""
    if len(sig64) != 64 or len(public32) != 32:
        return False
    try:
        return bool(ed25519_zebra.ed_verify(sig64, msg, public32))
    except (ValueError, TypeError, OverflowError):
        return False


def _verify_sr25519(msg: bytes, sig64: bytes, public32: bytes) -> bool:
    """`sr25519::Pair::verify` (sp-core): schnorrkel `verify_simple` with context "substrate"."""
    if len(sig64) != 64 or len(public32) != 32:
        return False
    try:
        return bool(sr25519.verify(sig64, msg, public32))
    except Exception:
        return False


def _verify_substrate(msg: bytes, signature: Web3Signature, account: bytes) -> bool:
    """`HeimaMultiSignature::verify_substrate` (heima_multi_signature.rs@677675c8)."""
    if signature.scheme is SignatureScheme.ED25519:
        return _verify_ed25519(msg, signature.raw, account)
    if signature.scheme is SignatureScheme.SR25519:
        return _verify_sr25519(msg, signature.raw, account)
    if signature.scheme is SignatureScheme.ECDSA:
        recovered = _recover_compressed(_blake2_256(msg), signature.raw)
        return recovered is not None and _blake2_256(recovered) == account
    return False


def _verify_evm_signature(msg: bytes, sig65: bytes, address: bytes) -> bool:
    """`verify_evm_signature` (heima_multi_signature.rs@677675c8): keccak, recover, compare."""
    recovered = recover_evm_address(_keccak256(msg), sig65)
    return recovered is not None and recovered == address


def _verify_bitcoin_signature(text: bytes, sig65: bytes, pubkey33: bytes) -> bool:
    """`verify_bitcoin_signature` (heima_multi_signature.rs@677675c8) + `MessageSignature`."""
    if len(sig65) != 65 or sig65[0] < 27:
        return False
    recid = (sig65[0] - 27) & 0x03
    pubkey = _recover_pubkey(bitcoin_signed_message_hash(text), sig65[1:], recid)
    return pubkey is not None and pubkey.format(compressed=True) == pubkey33


def _verify_bitcoin(msg: bytes, sig65: bytes, pubkey33: bytes) -> bool:
    """`HeimaMultiSignature::verify_bitcoin`: hex text of msg first, then msg as UTF-8."""
    if _verify_bitcoin_signature(msg.hex().encode("ascii"), sig65, pubkey33):
        return True
    try:
        msg.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _verify_bitcoin_signature(msg, sig65, pubkey33)


def verify_web3(msg: bytes, identity: Identity, signature: Web3Signature) -> bool:
    """`HeimaMultiSignature::verify(msg, identity)` (heima_multi_signature.rs@677675c8)."""
    try:
        kind = identity.kind
        raw = bytes(identity.raw)
        expected = ADDRESS_LENGTHS.get(kind)
        if expected is None or len(raw) != expected:
            return False
        scheme = signature.scheme
        if kind is IdentityKind.SUBSTRATE:
            if scheme not in _SUBSTRATE_SCHEMES:
                return False
            return _verify_substrate(substrate_wrap(msg), signature, raw) or _verify_substrate(msg, signature, raw)
        if kind is IdentityKind.EVM:
            if scheme is not SignatureScheme.ETHEREUM:
                return False
            return _verify_evm_signature(evm_eip191_wrap(msg), signature.raw, raw) or _verify_evm_signature(
                msg, signature.raw, raw
            )
        if kind is IdentityKind.BITCOIN:
            return scheme is SignatureScheme.BITCOIN and _verify_bitcoin(msg, signature.raw, raw)
        if kind is IdentityKind.SOLANA:
            return scheme is SignatureScheme.ED25519 and _verify_ed25519(msg, signature.raw, raw)
    except Exception:
        return False
    return False


# --------------------------------------------------------------------------- signing helpers


def _sign_recoverable(digest32: bytes, private_key: bytes) -> bytes:
    """secp256k1 recoverable signature over a 32-byte digest: r ‖ s ‖ recid (0..3)."""
    return bytes(PrivateKey(private_key).sign_recoverable(digest32, hasher=None))


def _to_eth_v(sig65: bytes) -> bytes:
    """Rewrite the recovery id as Ethereum's v = 27 + recid."""
    return sig65[:64] + bytes([sig65[64] + 27])


def sign_evm_personal(msg: bytes, private_key: bytes) -> bytes:
    """EIP-191 personal_sign of msg (what `verify_evm` tries first); 65 bytes, v in {27, 28}."""
    return _to_eth_v(_sign_recoverable(_keccak256(evm_eip191_wrap(msg)), private_key))


def sign_evm_raw(msg: bytes, private_key: bytes) -> bytes:
    """Sign keccak256(msg) with no prefix (`verify_evm`'s fallback); 65 bytes, v in {27, 28}."""
    return _to_eth_v(_sign_recoverable(_keccak256(msg), private_key))


def evm_address(private_key: bytes) -> bytes:
    """The 20-byte Ethereum address of a secp256k1 private key."""
    uncompressed = PrivateKey(private_key).public_key.format(compressed=False)
    return _keccak256(uncompressed[1:])[12:]


def _ed25519_sign(msg: bytes, seed: bytes) -> tuple[bytes, bytes]:
    """(public key, signature) for an ed25519 32-byte seed."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return public, key.sign(msg)


def sign_substrate(msg: bytes, scheme: SignatureScheme, seed: bytes, *, wrap: bool = True) -> tuple[bytes, bytes]:
    """(account32, signature) as a Substrate wallet signs; `wrap` adds ``<Bytes>…</Bytes>``."""
    payload = substrate_wrap(msg) if wrap else msg
    if scheme is SignatureScheme.ED25519:
        return _ed25519_sign(payload, seed)
    if scheme is SignatureScheme.SR25519:
        public, secret = sr25519.pair_from_seed(seed)
        signature = sr25519.sign((public, secret), payload)
        return bytes(public), bytes(signature)
    if scheme is SignatureScheme.ECDSA:
        signature = _sign_recoverable(_blake2_256(payload), seed)
        compressed = PrivateKey(seed).public_key.format(compressed=True)
        return _blake2_256(compressed), signature
    raise ValueError(f"{scheme} is not a Substrate signature scheme")


def sign_solana(msg: bytes, seed: bytes) -> tuple[bytes, bytes]:
    """(pubkey32, sig64): ed25519 over the raw message, as `verify_solana` expects."""
    return _ed25519_sign(msg, seed)


def sign_bitcoin(msg: bytes, private_key: bytes, *, as_hex_text: bool = True) -> tuple[bytes, bytes]:
    """(compressed pubkey33, 65-byte sig, header 31 + recid) over msg's hex text or UTF-8 text."""
    if as_hex_text:
        text = msg.hex().encode("ascii")
    else:
        msg.decode("utf-8")  # the worker only tries the UTF-8 form for valid UTF-8
        text = msg
    rsv = _sign_recoverable(bitcoin_signed_message_hash(text), private_key)
    header = 31 + rsv[64]
    pubkey = PrivateKey(private_key).public_key.format(compressed=True)
    return pubkey, bytes([header]) + rsv[:64]
