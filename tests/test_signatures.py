"""`protocol.signatures`: the worker's `HeimaMultiSignature::verify`, pinned to the Rust vectors."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from eth_hash.auto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkeys_kit.protocol.identity import Identity, IdentityKind
from agentkeys_kit.protocol.signatures import (
    SIGNATURE_LENGTHS,
    SignatureScheme,
    Web3Signature,
    bitcoin_signed_message_hash,
    evm_address,
    evm_eip191_wrap,
    recover_evm_address,
    sign_bitcoin,
    sign_evm_personal,
    sign_evm_raw,
    sign_solana,
    sign_substrate,
    substrate_wrap,
    verify_web3,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

EVM_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
OTHER_EVM_KEY = bytes.fromhex("47f78f59812d6d1f2c8a6504190d637f346c4b6f7d20453215689173a2b8c9e4")
SEED = bytes(range(32))
MSG = b'{"client_id":"wildmeta","omni_account":"0x00","message_code":"123456"}'

SUBSTRATE_SCHEMES = (SignatureScheme.ED25519, SignatureScheme.SR25519, SignatureScheme.ECDSA)

# --- Rust vectors -------------------------------------------------------------------------------

# heima_multi_signature.rs@677675c8, verify_solana_signature_works
SOLANA_SIGNER_B58 = "E9SegbpSr21FPLbUhoTNH6C2ja7KDkptybqSaT84wMH6"
SOLANA_SIGNER_HEX = "c35194276da6e0b3da0ae50724219c8138e90c9c3b9eeba36bb35dc26a5e9b75"
SOLANA_SIG_HEX = (
    "3e1994ba3589f8ae95bbe118ba30186d641b95c44205de8c161088ef9a1685604f02b46a9670740b0623200491f03682"
    "cec1c839f170237ae261aee7dd0d6202"
)

# heima_multi_signature.rs@677675c8, verify_bitcoin_signature_works (unisat wallet)
BITCOIN_MSG = bytes.fromhex("035dfa70d8655939535864fccb0f407f8a250228935ff51b61ca3ecd9700afb1")
BITCOIN_PUBKEY_HEX = "035dfa70d8655939535864fccb0f407f8a250228935ff51b61ca3ecd9700afb1d8"
BITCOIN_SIG_B64 = "G2LhyYzWT2o8UoBsuhJsqFgwm3tlE0cW4aseCXKqVuNATk6K/uEHlPzDFmtlMADywDHl5vLCWcNpwmQLD7n/yvc="

# rpc-server/src/utils/auth.rs@2a6c20a5, test_verify_wildmeta_signature_with_real_data
WILDMETA_BUSINESS_JSON = (
    '{"action":"trade","amount":1.5,"customField1":"buy","customField2":"market","leverage":10,'
    '"metadata":{"features":{"darkMode":true,"notifications":false},"userAgent":"mobile-app",'
    '"version":"1.0.0"},"positions":[{"entryPrice":50000,"metadata":{"openTime":1640995200,'
    '"strategy":"momentum"},"side":"long","size":1.5,"symbol":"BTC/USD"},{"entryPrice":3000,'
    '"metadata":{"openTime":1640995300,"strategy":"reversal"},"side":"short","size":2,'
    '"symbol":"ETH/USD"}],"price":50000,"riskManagement":{"maxLeverage":20,"stopLoss":'
    '{"enabled":true,"percentage":0.05},"takeProfit":{"enabled":true,"percentage":0.1}},'
    '"slippage":0.01,"symbol":"BTC/USD","timestamp":1752573555}'
)
WILDMETA_SIGNATURE = (
    "0x46c737250d61b60cbf0f46a6755e59815844a2f7cdb9dc16bf867b57bfed3526424343a237c15eef9089d571d1f6"
    "0fd0bd7f91d5888c649216a7df147b386a681c"
)
WILDMETA_AGENT = "0xf8b16F021438B710fDE9d59dD17dDE1Eb2691BFd"
# test_verify_wildmeta_signature_wrong_signer
WILDMETA_WRONG_AGENT = "0xA9d439F4DED81152DB00CB7CD94A8d908FEF903e"
# test_verify_wildmeta_signature_invalid_signature (66 bytes: refused by EthereumSignature)
WILDMETA_INVALID_SIGNATURE = "0x02" + "00" * 65


def _sig(scheme: SignatureScheme, raw: bytes) -> Web3Signature:
    return Web3Signature(scheme, raw)


def _evm(address: bytes) -> Identity:
    return Identity.address(IdentityKind.EVM, address)


def _flip(raw: bytes, index: int = 0) -> bytes:
    return raw[:index] + bytes([raw[index] ^ 0x01]) + raw[index + 1 :]


# --- wrappers and hashes ------------------------------------------------------------------------


def test_wrappers_and_hash_layouts() -> None:
    assert substrate_wrap(b"abc") == b"<Bytes>abc</Bytes>"
    assert evm_eip191_wrap(b"") == b"\x19Ethereum Signed Message:\n0"
    assert evm_eip191_wrap(b"x" * 300) == b"\x19Ethereum Signed Message:\n300" + b"x" * 300
    text = b"hello"
    expected = hashlib.sha256(hashlib.sha256(b"\x18Bitcoin Signed Message:\n\x05hello").digest()).digest()
    assert bitcoin_signed_message_hash(text) == expected


@pytest.mark.parametrize(
    ("length", "prefix"),
    [(0, b"\x00"), (252, b"\xfc"), (253, b"\xfd\xfd\x00"), (0xFFFF, b"\xfd\xff\xff")],
)
def test_bitcoin_hash_uses_compact_size(length: int, prefix: bytes) -> None:
    text = b"a" * length
    payload = b"\x18Bitcoin Signed Message:\n" + prefix + text
    expected = hashlib.sha256(hashlib.sha256(payload).digest()).digest()
    assert bitcoin_signed_message_hash(text) == expected


def test_bitcoin_hash_compact_size_four_byte_form() -> None:
    text = b"b" * 0x10000
    payload = b"\x18Bitcoin Signed Message:\n\xfe\x00\x00\x01\x00" + text
    expected = hashlib.sha256(hashlib.sha256(payload).digest()).digest()
    assert bitcoin_signed_message_hash(text) == expected


# --- Web3Signature ------------------------------------------------------------------------------


def test_signature_lengths() -> None:
    assert SIGNATURE_LENGTHS == {
        SignatureScheme.ED25519: 64,
        SignatureScheme.SR25519: 64,
        SignatureScheme.ECDSA: 65,
        SignatureScheme.ETHEREUM: 65,
        SignatureScheme.BITCOIN: 65,
    }
    assert [s.value for s in SignatureScheme] == [
        "ed25519",
        "sr25519",
        "ecdsa",
        "ethereum",
        "bitcoin",
    ]


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_web3_signature_rejects_wrong_length(scheme: SignatureScheme) -> None:
    good = SIGNATURE_LENGTHS[scheme]
    assert Web3Signature(scheme, bytes(good)).raw == bytes(good)
    for bad in (0, good - 1, good + 1):
        with pytest.raises(ValueError):
            Web3Signature(scheme, bytes(bad))


def test_web3_signature_accepts_wire_tag_and_normalises() -> None:
    sig = Web3Signature("ethereum", bytearray(65))  # type: ignore[arg-type]
    assert sig.scheme is SignatureScheme.ETHEREUM
    assert type(sig.raw) is bytes
    with pytest.raises(ValueError):
        Web3Signature("schnorr", bytes(64))  # type: ignore[arg-type]


# --- Rust vector 1: Solana ----------------------------------------------------------------------


def test_solana_vector_from_rust() -> None:
    signer = Identity.from_user_id(IdentityKind.SOLANA, SOLANA_SIGNER_B58)
    assert signer.raw.hex() == SOLANA_SIGNER_HEX
    sig = bytes.fromhex(SOLANA_SIG_HEX)
    assert verify_web3(b"test message", signer, _sig(SignatureScheme.ED25519, sig))
    for index in (0, 31, 32, 63):
        assert not verify_web3(b"test message", signer, _sig(SignatureScheme.ED25519, _flip(sig, index)))
    assert not verify_web3(b"test message!", signer, _sig(SignatureScheme.ED25519, sig))
    # a Substrate account with the same key accepts it through the unwrapped fallback
    substrate = Identity.address(IdentityKind.SUBSTRATE, signer.raw)
    assert verify_web3(b"test message", substrate, _sig(SignatureScheme.ED25519, sig))


# --- Rust vector 2: Bitcoin ---------------------------------------------------------------------


def test_bitcoin_vector_from_rust() -> None:
    signer = Identity.from_user_id(IdentityKind.BITCOIN, BITCOIN_PUBKEY_HEX)
    sig = base64.b64decode(BITCOIN_SIG_B64)
    assert len(sig) == 65
    assert sig[0] == 27  # recid 0, "uncompressed" flag: the worker ignores the flag
    assert verify_web3(BITCOIN_MSG, signer, _sig(SignatureScheme.BITCOIN, sig))
    assert not verify_web3(_flip(BITCOIN_MSG), signer, _sig(SignatureScheme.BITCOIN, sig))
    assert not verify_web3(BITCOIN_MSG, signer, _sig(SignatureScheme.BITCOIN, _flip(sig, 40)))


def test_bitcoin_vector_header_rules() -> None:
    signer = Identity.from_user_id(IdentityKind.BITCOIN, BITCOIN_PUBKEY_HEX)
    sig = base64.b64decode(BITCOIN_SIG_B64)
    body = sig[1:]
    # (header - 27) & 3 is the recovery id; bit 2 (compressed) is ignored; 35 wraps to recid 0.
    for header in (27, 31, 35, 27 + 128):
        assert verify_web3(BITCOIN_MSG, signer, _sig(SignatureScheme.BITCOIN, bytes([header]) + body))
    for header in (0, 1, 26, 28, 32):
        assert not verify_web3(BITCOIN_MSG, signer, _sig(SignatureScheme.BITCOIN, bytes([header]) + body))


# --- Rust vector 3: EVM EIP-191 -----------------------------------------------------------------


def test_evm_wildmeta_vector_from_rust() -> None:
    msg = WILDMETA_BUSINESS_JSON.encode("utf-8")
    agent = Identity.from_user_id(IdentityKind.EVM, WILDMETA_AGENT)
    sig = bytes.fromhex(WILDMETA_SIGNATURE.removeprefix("0x"))
    assert len(sig) == 65
    assert sig[64] == 28
    assert recover_evm_address(keccak(evm_eip191_wrap(msg)), sig) == agent.raw
    assert recover_evm_address(keccak(msg), sig) != agent.raw
    assert verify_web3(msg, agent, _sig(SignatureScheme.ETHEREUM, sig))
    wrong = Identity.from_user_id(IdentityKind.EVM, WILDMETA_WRONG_AGENT)
    assert not verify_web3(msg, wrong, _sig(SignatureScheme.ETHEREUM, sig))
    assert not verify_web3(msg + b" ", agent, _sig(SignatureScheme.ETHEREUM, sig))


def test_evm_wildmeta_invalid_signature_from_rust() -> None:
    raw = bytes.fromhex(WILDMETA_INVALID_SIGNATURE.removeprefix("0x"))
    assert len(raw) == 66
    with pytest.raises(ValueError):
        Web3Signature(SignatureScheme.ETHEREUM, raw)
    agent = Identity.from_user_id(IdentityKind.EVM, WILDMETA_AGENT)
    msg = b'{"action":"trade","timestamp":1752573555}'
    assert not verify_web3(msg, agent, _sig(SignatureScheme.ETHEREUM, raw[:65]))


# --- round trips: EVM ---------------------------------------------------------------------------


def test_evm_helpers_agree_with_eth_account() -> None:
    # independent implementation: eth-account's address derivation and personal_sign
    from eth_account import Account
    from eth_account.messages import encode_defunct

    for key in (EVM_KEY, OTHER_EVM_KEY):
        account = Account.from_key(key)
        assert evm_address(key) == bytes.fromhex(account.address[2:])
        for msg in (b"", MSG, b"\x00\xff" * 40):
            expected = account.sign_message(encode_defunct(primitive=msg)).signature
            assert sign_evm_personal(msg, key) == bytes(expected)


def test_evm_personal_and_raw_round_trip() -> None:
    identity = _evm(evm_address(EVM_KEY))
    personal = sign_evm_personal(MSG, EVM_KEY)
    raw = sign_evm_raw(MSG, EVM_KEY)
    for sig in (personal, raw):
        assert len(sig) == 65
        assert sig[64] in (27, 28)
        assert verify_web3(MSG, identity, _sig(SignatureScheme.ETHEREUM, sig))
        assert not verify_web3(MSG + b"x", identity, _sig(SignatureScheme.ETHEREUM, sig))
    assert recover_evm_address(keccak(evm_eip191_wrap(MSG)), personal) == identity.raw
    assert recover_evm_address(keccak(MSG), raw) == identity.raw
    other = _evm(evm_address(OTHER_EVM_KEY))
    assert not verify_web3(MSG, other, _sig(SignatureScheme.ETHEREUM, personal))


def test_evm_v_normalisation() -> None:
    identity = _evm(evm_address(EVM_KEY))
    sig = sign_evm_personal(MSG, EVM_KEY)
    recid = sig[64] - 27
    for v in (recid, recid + 27):
        assert verify_web3(MSG, identity, _sig(SignatureScheme.ETHEREUM, sig[:64] + bytes([v])))
    # the other parity recovers a different key
    for v in (1 - recid, 28 - recid):
        assert not verify_web3(MSG, identity, _sig(SignatureScheme.ETHEREUM, sig[:64] + bytes([v])))
    # 31 -> recid 4, 4..26 stay >= 4, 255 -> 228: all rejected (RecoveryId::from_i32)
    for v in (4, 5, 26, 31, 32, 255):
        assert not verify_web3(MSG, identity, _sig(SignatureScheme.ETHEREUM, sig[:64] + bytes([v])))
        assert recover_evm_address(keccak(evm_eip191_wrap(MSG)), sig[:64] + bytes([v])) is None


def test_evm_signature_rejected_for_other_kinds() -> None:
    sig = _sig(SignatureScheme.ETHEREUM, sign_evm_personal(MSG, EVM_KEY))
    address = evm_address(EVM_KEY)
    assert not verify_web3(MSG, Identity.address(IdentityKind.SUBSTRATE, address + bytes(12)), sig)
    assert not verify_web3(MSG, Identity.address(IdentityKind.SOLANA, address + bytes(12)), sig)
    assert not verify_web3(MSG, Identity.address(IdentityKind.BITCOIN, b"\x02" + address + bytes(12)), sig)
    assert not verify_web3(MSG, Identity.handle(IdentityKind.EMAIL, "a@b.c"), sig)
    assert not verify_web3(MSG, Identity.handle(IdentityKind.PUMPX, address.hex()), sig)


@pytest.mark.parametrize("scheme", [s for s in SignatureScheme if s is not SignatureScheme.ETHEREUM])
def test_evm_identity_rejects_other_schemes(scheme: SignatureScheme) -> None:
    sig = sign_evm_personal(MSG, EVM_KEY)
    raw = sig[: SIGNATURE_LENGTHS[scheme]]
    assert not verify_web3(MSG, _evm(evm_address(EVM_KEY)), _sig(scheme, raw))


def test_recover_evm_address_bad_lengths() -> None:
    sig = sign_evm_personal(MSG, EVM_KEY)
    digest = keccak(evm_eip191_wrap(MSG))
    assert recover_evm_address(digest, sig) == evm_address(EVM_KEY)
    assert recover_evm_address(digest, sig[:64]) is None
    assert recover_evm_address(digest, sig + b"\x00") is None
    assert recover_evm_address(digest[:31], sig) is None


# --- round trips: Substrate ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SUBSTRATE_SCHEMES)
@pytest.mark.parametrize("wrap", [True, False])
def test_substrate_round_trip(scheme: SignatureScheme, wrap: bool) -> None:
    account, raw = sign_substrate(MSG, scheme, SEED, wrap=wrap)
    assert len(account) == 32
    assert len(raw) == SIGNATURE_LENGTHS[scheme]
    identity = Identity.address(IdentityKind.SUBSTRATE, account)
    sig = _sig(scheme, raw)
    assert verify_web3(MSG, identity, sig)
    assert not verify_web3(MSG + b"!", identity, sig)
    assert not verify_web3(MSG, Identity.address(IdentityKind.SUBSTRATE, _flip(account, 5)), sig)
    # wrong identity kinds
    assert not verify_web3(MSG, Identity.handle(IdentityKind.TWITTER, "alice"), sig)
    assert not verify_web3(MSG, Identity.address(IdentityKind.EVM, account[:20]), sig)
    assert not verify_web3(MSG, Identity.address(IdentityKind.BITCOIN, b"\x02" + account), sig)


@pytest.mark.parametrize("scheme", SUBSTRATE_SCHEMES)
def test_substrate_wrap_is_applied_at_most_once(scheme: SignatureScheme) -> None:
    # a signature over <Bytes>m</Bytes> verifies for m (wrapped attempt) and for
    # <Bytes>m</Bytes> (raw attempt), but not for a doubly wrapped message.
    account, raw = sign_substrate(MSG, scheme, SEED, wrap=True)
    identity = Identity.address(IdentityKind.SUBSTRATE, account)
    assert verify_web3(substrate_wrap(MSG), identity, _sig(scheme, raw))
    assert not verify_web3(substrate_wrap(substrate_wrap(MSG)), identity, _sig(scheme, raw))


def test_substrate_ecdsa_details() -> None:
    account, raw = sign_substrate(MSG, SignatureScheme.ECDSA, SEED)
    assert raw[64] in (0, 1)
    identity = Identity.address(IdentityKind.SUBSTRATE, account)
    # v = 27/28 is accepted as well (same recovery helper as EVM)
    assert verify_web3(MSG, identity, _sig(SignatureScheme.ECDSA, raw[:64] + bytes([raw[64] + 27])))
    assert not verify_web3(MSG, identity, _sig(SignatureScheme.ECDSA, raw[:64] + bytes([31])))
    # the account is blake2_256(compressed pubkey), not the pubkey itself
    from coincurve import PrivateKey

    compressed = PrivateKey(SEED).public_key.format(compressed=True)
    assert account == hashlib.blake2b(compressed, digest_size=32).digest()


def test_substrate_ed25519_and_sr25519_keys_are_not_interchangeable() -> None:
    ed_account, ed_raw = sign_substrate(MSG, SignatureScheme.ED25519, SEED)
    sr_account, sr_raw = sign_substrate(MSG, SignatureScheme.SR25519, SEED)
    assert not verify_web3(
        MSG,
        Identity.address(IdentityKind.SUBSTRATE, ed_account),
        _sig(SignatureScheme.SR25519, sr_raw),
    )
    assert not verify_web3(
        MSG,
        Identity.address(IdentityKind.SUBSTRATE, sr_account),
        _sig(SignatureScheme.ED25519, ed_raw),
    )


def test_sign_substrate_rejects_non_substrate_scheme() -> None:
    with pytest.raises(ValueError):
        sign_substrate(MSG, SignatureScheme.ETHEREUM, SEED)


# --- round trips: Solana ------------------------------------------------------------------------


def test_solana_round_trip() -> None:
    pubkey, raw = sign_solana(MSG, SEED)
    identity = Identity.address(IdentityKind.SOLANA, pubkey)
    assert verify_web3(MSG, identity, _sig(SignatureScheme.ED25519, raw))
    assert not verify_web3(MSG + b"!", identity, _sig(SignatureScheme.ED25519, raw))
    # Solana does not try the <Bytes> wrapper
    _, wrapped = sign_substrate(MSG, SignatureScheme.ED25519, SEED, wrap=True)
    assert not verify_web3(MSG, identity, _sig(SignatureScheme.ED25519, wrapped))
    # only ed25519 is accepted for Solana
    sr_pub, sr_raw = sign_substrate(MSG, SignatureScheme.SR25519, SEED, wrap=False)
    assert not verify_web3(MSG, Identity.address(IdentityKind.SOLANA, sr_pub), _sig(SignatureScheme.SR25519, sr_raw))
    # wrong identity kinds
    assert not verify_web3(MSG, Identity.handle(IdentityKind.GOOGLE, "g"), _sig(SignatureScheme.ED25519, raw))
    assert not verify_web3(MSG, Identity.address(IdentityKind.EVM, pubkey[:20]), _sig(SignatureScheme.ED25519, raw))


# --- round trips: Bitcoin -----------------------------------------------------------------------


@pytest.mark.parametrize("as_hex_text", [True, False])
def test_bitcoin_round_trip(as_hex_text: bool) -> None:
    pubkey, raw = sign_bitcoin(MSG, EVM_KEY, as_hex_text=as_hex_text)
    assert len(pubkey) == 33
    assert pubkey[0] in (2, 3)
    assert raw[0] in (31, 32)
    identity = Identity.address(IdentityKind.BITCOIN, pubkey)
    assert verify_web3(MSG, identity, _sig(SignatureScheme.BITCOIN, raw))
    assert not verify_web3(MSG + b"!", identity, _sig(SignatureScheme.BITCOIN, raw))
    other, _ = sign_bitcoin(MSG, OTHER_EVM_KEY)
    assert not verify_web3(MSG, Identity.address(IdentityKind.BITCOIN, other), _sig(SignatureScheme.BITCOIN, raw))
    # wrong identity kinds
    assert not verify_web3(
        MSG,
        Identity.address(IdentityKind.SUBSTRATE, pubkey[1:]),
        _sig(SignatureScheme.BITCOIN, raw),
    )
    assert not verify_web3(MSG, _evm(evm_address(EVM_KEY)), _sig(SignatureScheme.BITCOIN, raw))


def test_bitcoin_non_utf8_message_only_hex_form() -> None:
    msg = b"\xff\xfe\x00binary"
    pubkey, raw = sign_bitcoin(msg, EVM_KEY)
    identity = Identity.address(IdentityKind.BITCOIN, pubkey)
    assert verify_web3(msg, identity, _sig(SignatureScheme.BITCOIN, raw))
    with pytest.raises(UnicodeDecodeError):
        sign_bitcoin(msg, EVM_KEY, as_hex_text=False)


def test_bitcoin_compares_compressed_key_only() -> None:
    from coincurve import PrivateKey

    pubkey, raw = sign_bitcoin(MSG, EVM_KEY)
    uncompressed = PrivateKey(EVM_KEY).public_key.format(compressed=False)
    assert uncompressed[1:33] == pubkey[1:]
    # an identity holding the wrong parity byte does not match
    wrong_parity = bytes([pubkey[0] ^ 0x01]) + pubkey[1:]
    assert not verify_web3(
        MSG,
        Identity.address(IdentityKind.BITCOIN, wrong_parity),
        _sig(SignatureScheme.BITCOIN, raw),
    )
    # header 27 + recid (uncompressed flag) verifies the same way
    assert verify_web3(
        MSG,
        Identity.address(IdentityKind.BITCOIN, pubkey),
        _sig(SignatureScheme.BITCOIN, bytes([raw[0] - 4]) + raw[1:]),
    )


# --- malformed input never raises ---------------------------------------------------------------


def _identities() -> list[Identity]:
    return [
        Identity.address(IdentityKind.SUBSTRATE, sign_substrate(MSG, SignatureScheme.SR25519, SEED)[0]),
        Identity.address(IdentityKind.SUBSTRATE, bytes(32)),
        Identity.address(IdentityKind.SUBSTRATE, b"\xff" * 32),
        _evm(evm_address(EVM_KEY)),
        _evm(bytes(20)),
        Identity.address(IdentityKind.BITCOIN, sign_bitcoin(MSG, EVM_KEY)[0]),
        Identity.address(IdentityKind.BITCOIN, bytes(33)),
        Identity.address(IdentityKind.SOLANA, sign_solana(MSG, SEED)[0]),
        Identity.address(IdentityKind.SOLANA, b"\xff" * 32),
        Identity.handle(IdentityKind.EMAIL, "x@y.z"),
        Identity.handle(IdentityKind.PASSKEY, "cred"),
        # not constructible through the factories, but must still not raise
        Identity(IdentityKind.EVM, bytes(5)),
        Identity(IdentityKind.SOLANA, b""),
    ]


def _malformed(scheme: SignatureScheme) -> list[bytes]:
    n = SIGNATURE_LENGTHS[scheme]
    out = [bytes(n), b"\xff" * n]
    if n == 65:
        out += [
            b"\xff" * 64 + b"\x00",  # r, s >= group order
            b"\xff" * 64 + b"\x1b",
            bytes(64) + b"\x1b",
            b"\x1f" + b"\xff" * 64,  # bitcoin header ok, r/s overflow
            b"\x1b" + bytes(64),
            b"\x01" * 32 + bytes(32) + b"\x00",  # s = 0
            bytes(32) + b"\x01" * 32 + b"\x00",  # r = 0
            SECP256K1_N.to_bytes(32, "big") + b"\x01" * 32 + b"\x00",  # r = n exactly
        ]
    else:
        out += [bytes(32) + b"\xff" * 32, b"\xff" * 32 + bytes(32), b"\x01" + bytes(62) + b"\x80"]
    return out


@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_malformed_signatures_return_false(scheme: SignatureScheme) -> None:
    for raw in _malformed(scheme):
        sig = _sig(scheme, raw)
        for identity in _identities():
            if _zip215_degenerate(scheme, raw, identity):
                continue  # pinned by test_ed25519_follows_zip215_like_sp_core
            for msg in (b"", MSG, b"\xff\xfe"):
                assert verify_web3(msg, identity, sig) is False


def _zip215_degenerate(scheme: SignatureScheme, raw: bytes, identity: Identity) -> bool:
    return scheme is SignatureScheme.ED25519 and raw == bytes(64) and identity.raw == bytes(32)


def test_ed25519_follows_zip215_like_sp_core() -> None:
    # sp-core's ed25519 verification is ed25519-zebra (ZIP-215): the all-zero key is a point of
    # small order, and with R = identity, s = 0 every message verifies. OpenSSL would refuse it;
    # the worker accepts it, so the simulator must too.
    zero_sig = _sig(SignatureScheme.ED25519, bytes(64))
    for kind in (IdentityKind.SUBSTRATE, IdentityKind.SOLANA):
        zero = Identity.address(kind, bytes(32))
        for msg in (b"", MSG, b"\xff\xfe"):
            assert verify_web3(msg, zero, zero_sig)
    solana_key, _ = sign_solana(MSG, SEED)
    assert not verify_web3(MSG, Identity.address(IdentityKind.SOLANA, solana_key), zero_sig)


def test_sr25519_degenerate_identity_key_quirk() -> None:
    # schnorrkel (the same crate sp-core uses) accepts the all-zero public key (the Ristretto
    # identity) with R = identity, s = 0 (marker bit set) for every message. The worker does
    # the same, so the simulator must too; any other key rejects that signature.
    sig = _sig(SignatureScheme.SR25519, bytes(63) + b"\x80")
    zero = Identity.address(IdentityKind.SUBSTRATE, bytes(32))
    for msg in (b"", MSG, b"\xff\xfe"):
        assert verify_web3(msg, zero, sig)
    account, _ = sign_substrate(MSG, SignatureScheme.SR25519, SEED)
    assert not verify_web3(MSG, Identity.address(IdentityKind.SUBSTRATE, account), sig)
    # without the schnorrkel marker bit the bytes are not a signature at all
    assert not verify_web3(MSG, zero, _sig(SignatureScheme.SR25519, bytes(64)))


def test_random_garbage_never_raises() -> None:
    rng = random.Random(1234)
    identities = _identities()
    for _ in range(300):
        scheme = rng.choice(list(SignatureScheme))
        raw = rng.randbytes(SIGNATURE_LENGTHS[scheme])
        msg = rng.randbytes(rng.randrange(0, 64))
        identity = rng.choice(identities)
        assert verify_web3(msg, identity, _sig(scheme, raw)) is False


# --- property -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    msg=st.binary(min_size=0, max_size=300),
    other=st.binary(min_size=0, max_size=300),
    secret=st.integers(min_value=1, max_value=SECP256K1_N - 1),
)
def test_evm_personal_sign_property(msg: bytes, other: bytes, secret: int) -> None:
    key = secret.to_bytes(32, "big")
    identity = _evm(evm_address(key))
    sig = _sig(SignatureScheme.ETHEREUM, sign_evm_personal(msg, key))
    assert verify_web3(msg, identity, sig)
    if other != msg:
        assert not verify_web3(other, identity, sig)
