"""Values in a suite: variables, captures and the harness's functions.

* A string that is exactly ``${path}`` becomes the value at `path` (any JSON type); ``${…}`` inside
  a longer string is interpolated as text. Paths are dotted (``login.result.access_token``); list
  items by index (``batch.0.id``).
* A mapping with one key that starts with ``$`` calls a function (`FUNCTIONS`), e.g.
  ``{$omni_account: {type: evm, value: "${alice.address}", client_id: agentkeys}}``.

The harness computes OmniAccounts itself (``SHA-256(client_id ‖ type ‖ value)``) rather than
through `protocol`, so a bug there shows up as a failed case instead of two wrongs agreeing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import base58
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agentkeys_kit.protocol.signatures import (
    SignatureScheme,
    evm_address,
    sign_bitcoin,
    sign_evm_personal,
    sign_evm_raw,
    sign_solana,
    sign_substrate,
)

_WHOLE = re.compile(r"^\$\{([^{}]+)\}$")
_INNER = re.compile(r"\$\{([^{}]+)\}")


class ExprError(ValueError):
    """A suite value that cannot be evaluated (unknown variable, bad function arguments)."""


class Keys:
    """Keys the functions may use: the TEE's (when the target gives the private key) and a
    foreign RSA key of the harness's own, for forgeries."""

    def __init__(self, tee_private: rsa.RSAPrivateKey | None, tee_public: rsa.RSAPublicKey) -> None:
        self.tee_private = tee_private
        self.tee_public = tee_public
        self.foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Scope:
    """Variables of one case, with the keys and functions its values may call."""

    def __init__(self, keys: Keys, values: Mapping[str, Any] | None = None) -> None:
        self.keys = keys
        self.values: dict[str, Any] = dict(values or {})

    def lookup(self, path: str) -> Any:
        head, *rest = path.strip().split(".")
        if head not in self.values:
            raise ExprError(f"unknown variable ${{{path}}}")
        value = self.values[head]
        for part in rest:
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
                value = value[int(part)]
            else:
                raise ExprError(f"${{{path}}}: no {part!r} in {type(value).__name__}")
        return value

    def evaluate(self, value: Any) -> Any:
        if isinstance(value, str):
            whole = _WHOLE.match(value)
            if whole:
                return self.lookup(whole.group(1))
            if "${" in value:
                return _INNER.sub(lambda m: _as_text(self.lookup(m.group(1))), value)
            return value
        if isinstance(value, list):
            return [self.evaluate(item) for item in value]
        if isinstance(value, Mapping):
            if len(value) == 1:
                ((key, argument),) = value.items()
                if isinstance(key, str) and key in FUNCTIONS:
                    return FUNCTIONS[key](self, self.evaluate(argument))
            return {key: self.evaluate(item) for key, item in value.items()}
        return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _args(argument: Any, name: str, *required: str) -> dict[str, Any]:
    if not isinstance(argument, Mapping):
        raise ExprError(f"{name} takes a mapping")
    missing = [key for key in required if key not in argument]
    if missing:
        raise ExprError(f"{name}: missing {', '.join(missing)}")
    return dict(argument)


def _hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text[2:] if text.startswith(("0x", "0X")) else text)


# --------------------------------------------------------------------------- functions

_ADDRESS_KINDS = {"evm": 20, "substrate": 32, "bitcoin": 33, "solana": 32}


def omni_account(scope: Scope, argument: Any) -> str:
    """``{type, value, client_id}`` → ``0x`` + SHA-256(client_id ‖ type ‖ value bytes)."""
    args = _args(argument, "$omni_account", "type", "value", "client_id")
    kind, value = str(args["type"]), str(args["value"])
    if kind == "solana":
        raw = base58.b58decode(value)
    elif kind in _ADDRESS_KINDS:
        raw = _hex_bytes(value)
    else:
        raw = value.encode()[:64]
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = ""
        raw = (text.lower() if kind == "email" else text).encode()
    return "0x" + hashlib.sha256(str(args["client_id"]).encode() + kind.encode() + raw).hexdigest()


def wallet(scope: Scope, argument: Any) -> dict[str, Any]:
    """``{kind: evm|substrate-sr25519|substrate-ed25519|substrate-ecdsa|solana|bitcoin, seed?}``:
    a wallet with its secret and its `UserId`; without `seed` a fresh random one."""
    args = _args(argument, "$wallet", "kind")
    kind = str(args["kind"])
    seed = hashlib.sha256(str(args["seed"]).encode()).digest() if "seed" in args else secrets.token_bytes(32)
    if kind == "evm":
        address = "0x" + evm_address(seed).hex()
        return {"kind": kind, "secret": seed.hex(), "address": address, "user_id": {"type": "evm", "value": address}}
    if kind.startswith("substrate-"):
        scheme = SignatureScheme(kind.split("-", 1)[1])
        account, _ = sign_substrate(b"probe", scheme, seed)
        address = "0x" + account.hex()
        return {
            "kind": kind,
            "secret": seed.hex(),
            "address": address,
            "user_id": {"type": "substrate", "value": address},
        }
    if kind == "solana":
        public, _ = sign_solana(b"probe", seed)
        address = base58.b58encode(public).decode()
        return {"kind": kind, "secret": seed.hex(), "address": address, "user_id": {"type": "solana", "value": address}}
    if kind == "bitcoin":
        public, _ = sign_bitcoin(b"probe", seed)
        return {
            "kind": kind,
            "secret": seed.hex(),
            "address": public.hex(),
            "user_id": {"type": "bitcoin", "value": public.hex()},
        }
    raise ExprError(f"$wallet: unknown kind {kind!r}")


def sign(scope: Scope, argument: Any) -> Any:
    """``{wallet, message, wrap?}`` → the `user_auth` value for that wallet over `message`
    (a string, signed as UTF-8). EVM signs EIP-191 unless ``raw: true``."""
    args = _args(argument, "$sign", "wallet", "message")
    w, message = args["wallet"], str(args["message"]).encode()
    kind, secret = w["kind"], bytes.fromhex(w["secret"])
    if kind == "evm":
        signature = sign_evm_raw(message, secret) if args.get("raw") else sign_evm_personal(message, secret)
        return {"type": "evm", "value": "0x" + signature.hex()}
    if kind.startswith("substrate-"):
        scheme = SignatureScheme(kind.split("-", 1)[1])
        _, signature = sign_substrate(message, scheme, secret, wrap=bool(args.get("wrap", True)))
        return {"type": "substrate", "value": {"type": scheme.value, "value": signature.hex()}}
    if kind == "solana":
        return {"type": "solana", "value": sign_solana(message, secret)[1].hex()}
    if kind == "bitcoin":
        return {"type": "bitcoin", "value": sign_bitcoin(message, secret, as_hex_text=not args.get("utf8"))[1].hex()}
    raise ExprError(f"$sign: unknown wallet kind {kind!r}")


def sign_text(scope: Scope, argument: Any) -> str:
    """``{wallet, message}`` → ``0x`` hex EIP-191 signature of an EVM wallet over `message` (for
    `client_auth` fields such as `wildmeta_hl`'s signature over its `business_json`)."""
    args = _args(argument, "$sign_text", "wallet", "message")
    if args["wallet"]["kind"] != "evm":
        raise ExprError("$sign_text signs with EVM wallets")
    return "0x" + sign_evm_personal(str(args["message"]).encode(), bytes.fromhex(args["wallet"]["secret"])).hex()


def compact_json(scope: Scope, argument: Any) -> str:
    """Compact JSON text, keys in the given order (the sign-in message is the compact JSON of
    the `omni_getWeb3SignInMessage` result)."""
    return json.dumps(argument, separators=(",", ":"), ensure_ascii=False)


def now(scope: Scope, argument: Any) -> int:
    """Unix seconds plus `argument` (an integer offset)."""
    return int(time.time()) + int(argument or 0)


def fresh(scope: Scope, argument: Any) -> str:
    """``{$fresh: prefix}`` → prefix + random hex (unique e-mails and handles per run)."""
    return f"{argument}{secrets.token_hex(6)}"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint_jwt(scope: Scope, argument: Any) -> str:
    """``{$mint_jwt: {claims, key: tee|foreign, alg: RS256|HS256-public-key|none, header?}}``: a token as the
    worker mints it (claims in the given order) or a forgery for the attack set."""
    args = _args(argument, "$mint_jwt", "claims")
    alg = str(args.get("alg", "RS256"))
    header = args.get("header") or {"typ": "JWT", "alg": "HS256" if alg.startswith("HS256") else alg}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(args["claims"], separators=(",", ":"), ensure_ascii=False).encode())
    ).encode()
    if alg == "none":
        return signing_input.decode() + "."
    if alg == "HS256-public-key":
        pem = scope.keys.tee_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return signing_input.decode() + "." + _b64url(hmac.new(pem, signing_input, hashlib.sha256).digest())
    key_name = str(args.get("key", "tee"))
    key = scope.keys.foreign if key_name == "foreign" else scope.keys.tee_private
    if key is None:
        raise ExprError("$mint_jwt with key tee needs the TEE private key (--tee-key auth_token_key.bin)")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + _b64url(signature)


def upper(scope: Scope, argument: Any) -> str:
    return str(argument).upper()


def lower(scope: Scope, argument: Any) -> str:
    return str(argument).lower()


def jwt_claims(scope: Scope, argument: Any) -> dict[str, Any]:
    """The claims of a compact JWT (or ``Bearer <jwt>``), unverified: for comparing two tokens."""
    token = str(argument).removeprefix("Bearer ")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise ExprError(f"$claims: not a JWT: {exc}") from None
    if not isinstance(claims, dict):
        raise ExprError("$claims: the payload is not an object")
    return claims


def sha256_hex(scope: Scope, argument: Any) -> str:
    return hashlib.sha256(str(argument).encode()).hexdigest()


FUNCTIONS: dict[str, Callable[[Scope, Any], Any]] = {
    "$omni_account": omni_account,
    "$wallet": wallet,
    "$sign": sign,
    "$sign_text": sign_text,
    "$json": compact_json,
    "$now": now,
    "$fresh": fresh,
    "$mint_jwt": mint_jwt,
    "$sha256": sha256_hex,
    "$upper": upper,
    "$lower": lower,
    "$claims": jwt_claims,
}
