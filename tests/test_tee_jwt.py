"""TEE JWT bytes and validation (`crypto/src/jwt.rs`, `core/src/auth/auth_token.rs@677675c8`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agentkeys_kit.omni_sim.keystore import load_pkcs1_der
from agentkeys_kit.protocol.tee_jwt import (
    UPSTREAM_AUDIENCES,
    AuthTokenClaims,
    TokenRejected,
    encode_auth_token,
    verify_auth_token,
)

KEY = load_pkcs1_der(Path(__file__).parent.parent / "fixtures" / "keys" / "auth_token_key.test.bin")
SUB = "0x5a0194d421e69bb2fb2fa9659628258d1d9d4f42d12ca74354819e65a14f8fae"
EXP = 1767225600
# Signed independently with `openssl dgst -sha256 -sign` over the same signing input.
GOLDEN_ACCESS_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9."
    "eyJzdWIiOiIweDVhMDE5NGQ0MjFlNjliYjJmYjJmYTk2NTk2MjgyNThkMWQ5ZDRmNDJkMTJjYTc0MzU0ODE5ZTY1YTE0ZjhmYWUi"
    "LCJ0eXAiOiJhY2Nlc3MiLCJleHAiOjE3NjcyMjU2MDAsImF1ZCI6IndpbGRtZXRhIn0."
    "Ei4GGnEEi6KdJ2TReP3Fbb-GQZlWffYpTkfnkC5Zez9vLOT48AOzO6b2DVPbNXrMR2OS8dwr1iQI9xhdimANzGRyP5TClegA18oK"
    "9RcumqBfQ0t-F6XxQlOajELvbGs1Fcdg-4KtZtqkDfx15claCyLf3Id_Fv_lcjpEEsjIhPpJAk6D8rKhm_dS2dJRgL_jl2xxEbWc"
    "7hxKYu9zAhQMUdGZF9gnaHwUXWKXGggVOTCKLilgwpK9VKOwooRpz6w7yxxyfpYUD-Dz58euq6IIVVP-h1TkLP_MUetgmbdn4wWo"
    "hZG4tDfGgAxasAEi4RugdtMFjZx7zZRfm-NT_M6QiQ"
)


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_token_bytes_match_the_worker_for_a_fixed_key_and_clock() -> None:
    token = encode_auth_token(AuthTokenClaims(SUB, "access", EXP, "wildmeta"), KEY)
    assert token == GOLDEN_ACCESS_TOKEN


def test_header_and_claims_are_in_jsonwebtoken_order() -> None:
    token = encode_auth_token(AuthTokenClaims(SUB, "id", EXP, "agentkeys"), KEY)
    header, payload, _ = token.split(".")
    assert _b64(header) == b'{"typ":"JWT","alg":"RS256"}'
    assert _b64(payload) == (f'{{"sub":"{SUB}","typ":"id","exp":{EXP},"aud":"agentkeys"}}').encode()


def test_signature_is_pkcs1v15_sha256_over_the_signing_input() -> None:
    header, payload, signature = GOLDEN_ACCESS_TOKEN.split(".")
    KEY.public_key().verify(_b64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())


def _verify(token: str, **overrides: object) -> AuthTokenClaims:
    kwargs: dict[str, object] = {
        "expected_type": "access",
        "audiences": UPSTREAM_AUDIENCES,
        "now": EXP - 100,
    }
    kwargs.update(overrides)
    return verify_auth_token(token, KEY.public_key(), **kwargs)  # type: ignore[arg-type]


def test_valid_token_verifies() -> None:
    claims = _verify(GOLDEN_ACCESS_TOKEN)
    assert (claims.sub, claims.typ, claims.exp, claims.aud) == (SUB, "access", EXP, "wildmeta")


def test_expiry_has_sixty_seconds_of_leeway() -> None:
    assert _verify(GOLDEN_ACCESS_TOKEN, now=EXP + 60).exp == EXP
    with pytest.raises(TokenRejected, match="Expired"):
        _verify(GOLDEN_ACCESS_TOKEN, now=EXP + 61)


def test_wrong_type_and_audience_are_refused() -> None:
    with pytest.raises(TokenRejected):
        _verify(GOLDEN_ACCESS_TOKEN, expected_type="id")
    with pytest.raises(TokenRejected):
        _verify(GOLDEN_ACCESS_TOKEN, audiences=("agentkeys",))


def _forge(header: dict[str, str], claims: dict[str, object], key: rsa.RSAPrivateKey | None) -> str:
    h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=")
    p = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signing_input = h + b"." + p
    sig = b"" if key is None else key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()


CLAIMS = {"sub": SUB, "typ": "access", "exp": EXP, "aud": "wildmeta"}


def test_alg_none_is_refused() -> None:
    with pytest.raises(TokenRejected):
        _verify(_forge({"typ": "JWT", "alg": "none"}, CLAIMS, None))


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    # PyJWT refuses to HMAC with a PEM key; build the token by hand as an attacker would.
    h = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"HS256"}').rstrip(b"=")
    p = base64.urlsafe_b64encode(json.dumps(CLAIMS).encode()).rstrip(b"=")
    mac = hmac.new(pem, h + b"." + p, hashlib.sha256).digest()
    forged = (h + b"." + p + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    with pytest.raises(TokenRejected):
        _verify(forged)


def test_token_signed_by_another_rsa_key_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenRejected):
        _verify(_forge({"typ": "JWT", "alg": "RS256"}, CLAIMS, other))


@pytest.mark.parametrize("missing", ["sub", "typ", "aud", "exp"])
def test_tokens_missing_a_claim_are_refused(missing: str) -> None:
    claims = {k: v for k, v in CLAIMS.items() if k != missing}
    with pytest.raises(TokenRejected):
        _verify(_forge({"typ": "JWT", "alg": "RS256"}, claims, KEY))


def test_truncated_and_tampered_tokens_are_refused() -> None:
    with pytest.raises(TokenRejected):
        _verify(GOLDEN_ACCESS_TOKEN[:-5])
    header, _payload, sig = GOLDEN_ACCESS_TOKEN.split(".")
    tampered_claims = base64.urlsafe_b64encode(json.dumps({**CLAIMS, "sub": "0x" + "11" * 32}).encode())
    with pytest.raises(TokenRejected):
        _verify(f"{header}.{tampered_claims.rstrip(b'=').decode()}.{sig}")


# --------------------------------------------------------------------------- jsonwebtoken's strictness


def _signed(header: str, claims: str) -> str:
    signing_input = (
        f"{base64.urlsafe_b64encode(header.encode()).rstrip(b'=').decode()}."
        + base64.urlsafe_b64encode(claims.encode()).rstrip(b"=").decode()
    )
    signature = KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


CLAIMS_TEXT = f'{{"sub":"{SUB}","typ":"access","exp":{EXP},"aud":"wildmeta"}}'
HEADER_TEXT = '{"typ":"JWT","alg":"RS256"}'


def test_padding_on_any_segment_is_refused_as_url_safe_no_pad_does() -> None:
    header, payload, signature = GOLDEN_ACCESS_TOKEN.split(".")
    assert len(signature) % 4 == 2  # 256 bytes encode to 342 characters: "==" would be its padding
    for token in (
        f"{header}.{payload}.{signature}==",
        f"{header}=.{payload}.{signature}",
        f"{header}.{payload}=.{signature}",
    ):
        with pytest.raises(TokenRejected, match="base64url"):
            _verify(token)


def test_non_canonical_trailing_bits_are_refused() -> None:
    header, payload, signature = GOLDEN_ACCESS_TOKEN.split(".")
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) + 1]  # same decoded bytes in Python, different trailing bits
    assert base64.urlsafe_b64decode(signature[:-1] + twin + "==") == base64.urlsafe_b64decode(signature + "==")
    with pytest.raises(TokenRejected, match="canonical"):
        _verify(f"{header}.{payload}.{signature[:-1]}{twin}")


def test_a_repeated_known_field_is_refused_and_an_unknown_one_is_not() -> None:
    assert _verify(_signed(HEADER_TEXT, CLAIMS_TEXT)).sub == SUB
    with pytest.raises(TokenRejected, match="duplicate field `aud`"):
        _verify(_signed(HEADER_TEXT, CLAIMS_TEXT[:-1] + ',"aud":"wildmeta"}'))
    with pytest.raises(TokenRejected, match="duplicate field `alg`"):
        _verify(_signed('{"typ":"JWT","alg":"RS256","alg":"RS256"}', CLAIMS_TEXT))
    # serde ignores unknown fields without looking for repeats: the worker accepts this one.
    assert _verify(_signed(HEADER_TEXT, CLAIMS_TEXT[:-1] + ',"x":1,"x":2}')).sub == SUB


def test_exp_must_fit_i64() -> None:
    biggest = CLAIMS_TEXT.replace(str(EXP), str(2**63 - 1))
    assert _verify(_signed(HEADER_TEXT, biggest)).exp == 2**63 - 1
    for exp in (2**63, 2**64):
        with pytest.raises(TokenRejected, match="i64"):
            _verify(_signed(HEADER_TEXT, CLAIMS_TEXT.replace(str(EXP), str(exp))))


def test_claims_must_be_utf8_json_objects() -> None:
    header_segment = GOLDEN_ACCESS_TOKEN.split(".")[0]
    utf16 = base64.urlsafe_b64encode(CLAIMS_TEXT.encode("utf-16")).rstrip(b"=").decode()
    signing_input = f"{header_segment}.{utf16}"
    signature = base64.urlsafe_b64encode(KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))
    with pytest.raises(TokenRejected, match="UTF-8"):
        _verify(f"{signing_input}.{signature.rstrip(b'=').decode()}")
    with pytest.raises(TokenRejected, match="object"):
        _verify(_signed(HEADER_TEXT, "[1]"))
