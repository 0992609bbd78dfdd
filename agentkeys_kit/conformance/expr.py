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
from coincurve import PrivateKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from eth_abi.abi import encode as abi_encode
from eth_abi.grammar import ABIType, BasicType, TupleType, parse
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address

from agentkeys_kit.conformance.fake_google import FakeGoogle
from agentkeys_kit.conformance.soft_authenticator import SoftCredential
from agentkeys_kit.protocol import base64url
from agentkeys_kit.protocol.signatures import (
    SignatureScheme,
    evm_address,
    sign_bitcoin,
    sign_evm_personal,
    sign_evm_raw,
    sign_solana,
    sign_substrate,
)
from agentkeys_kit.protocol.user_operation import DEFAULT_ENTRY_POINT_ADDRESS

_WHOLE = re.compile(r"^\$\{([^{}]+)\}$")
_INNER = re.compile(r"\$\{([^{}]+)\}")


class ExprError(ValueError):
    """A suite value that cannot be evaluated (unknown variable, bad function arguments)."""


#: The harness's backend signing key for `wildmeta_backend` / `agentkeys_backend`: a fixed, public
#: test key (a worker under test is configured with its public key, printed by the harness). Never
#: use it anywhere else.
BACKEND_TEST_SECRET = hashlib.sha256(b"agentkeys-kit conformance backend key (public test key)").digest()


def backend_test_pubkey_hex() -> str:
    """The compressed public key of `BACKEND_TEST_SECRET`, as ``OE_<CLIENT>_BACKEND_ECDSA_PUBKEY`` takes it."""
    return PrivateKey(BACKEND_TEST_SECRET).public_key.format(compressed=True).hex()


class Keys:
    """Keys the functions may use: the TEE's (when the target gives the private key), a foreign
    RSA key of the harness's own, for forgeries, and the backend test key."""

    def __init__(self, tee_private: rsa.RSAPrivateKey | None, tee_public: rsa.RSAPublicKey) -> None:
        self.tee_private = tee_private
        self.tee_public = tee_public
        self.foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.backend = PrivateKey(BACKEND_TEST_SECRET)

    @property
    def backend_pubkey_hex(self) -> str:
        """What `OE_WILDMETA_BACKEND_ECDSA_PUBKEY` / `OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY` must be."""
        return self.backend.public_key.format(compressed=True).hex()


class Scope:
    """Variables of one case, with the keys, the fake Google provider and the functions its values
    may call."""

    def __init__(self, keys: Keys, values: Mapping[str, Any] | None = None, google: FakeGoogle | None = None) -> None:
        self.keys = keys
        self.google = google
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
                    try:
                        return FUNCTIONS[key](self, self.evaluate(argument))
                    except ExprError:
                        raise
                    except (ValueError, KeyError, TypeError, IndexError) as exc:
                        raise ExprError(f"{key}: {type(exc).__name__}: {exc}") from None
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
    """A text in upper case (Unicode rules)."""
    return str(argument).upper()


def lower(scope: Scope, argument: Any) -> str:
    """A text in lower case (Unicode rules)."""
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


def add(scope: Scope, argument: Any) -> int:
    """``{$add: [a, b, …]}``: the sum of integers (an instant plus a lifetime, a boundary minus one)."""
    if not isinstance(argument, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in argument):
        raise ExprError("$add takes a list of integers")
    return sum(argument)


def totp_code(scope: Scope, argument: Any) -> str:
    """``{$totp: {secret, at}}``: the RFC 6238 code (SHA-1, 30 s, 6 digits) of a base32 `secret` at unix
    time `at`, computed by the harness itself (not with the broker's `totp.py`, which it checks)."""
    args = _args(argument, "$totp", "secret", "at")
    secret = str(args["secret"]).upper()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, (int(args["at"]) // 30).to_bytes(8, "big"), hashlib.sha1).digest()
    start = digest[19] & 0x0F
    return f"{(int.from_bytes(digest[start : start + 4], 'big') & 0x7FFFFFFF) % 1_000_000:06d}"


def sha256_hex(scope: Scope, argument: Any) -> str:
    """Lowercase hex SHA-256 of a text's UTF-8."""
    return hashlib.sha256(str(argument).encode()).hexdigest()


# --------------------------------------------------------------------------- passkeys


def passkey_credential(scope: Scope, argument: Any) -> dict[str, str]:
    """``{$passkey_credential: {seed?}}``: a P-256 credential of the software authenticator."""
    seed = (argument or {}).get("seed") if isinstance(argument, Mapping) else None
    return SoftCredential.generate(None if seed is None else str(seed).encode()).to_json()


def _passkey_options(args: dict[str, Any]) -> dict[str, Any]:
    return {key: args[key] for key in ("type", "flags", "counter", "signature_format") if key in args}


def passkey_attestation(scope: Scope, argument: Any) -> dict[str, str]:
    """``{credential, challenge, origin, rp_id, type?, flags?, cose_key?: map|array}`` →
    ``{attestation_object, client_data_json, credential_id}`` as `navigator.credentials.create`
    gives them (``cose_key: array``: the credential's COSE key written as a CBOR array)."""
    args = _args(argument, "$passkey_attestation", "credential", "challenge", "origin", "rp_id")
    credential = SoftCredential.from_json(args["credential"])
    options = {key: args[key] for key in ("type", "flags", "cose_key") if key in args}
    return credential.attestation(str(args["challenge"]), str(args["origin"]), str(args["rp_id"]), **options)


def passkey_assertion(scope: Scope, argument: Any) -> dict[str, str]:
    """``{credential, challenge, origin, rp_id, type?, flags?, counter?, signature_format?:
    der|raw}`` → ``{credential_id, auth_data, client_data_json, signature}``."""
    args = _args(argument, "$passkey_assertion", "credential", "challenge", "origin", "rp_id")
    credential = SoftCredential.from_json(args["credential"])
    return credential.assertion(
        str(args["challenge"]), str(args["origin"]), str(args["rp_id"]), **_passkey_options(args)
    )


def b64url(scope: Scope, argument: Any) -> str:
    """Base64url without padding of a text's UTF-8 (hand-made client data for negative cases)."""
    return base64url.encode(str(argument).encode("utf-8"))


# --------------------------------------------------------------------------- user operations


_USER_OP_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "PackedUserOperation": [
        {"name": "sender", "type": "address"},
        {"name": "nonce", "type": "uint256"},
        {"name": "initCode", "type": "bytes"},
        {"name": "callData", "type": "bytes"},
        {"name": "accountGasLimits", "type": "bytes32"},
        {"name": "preVerificationGas", "type": "uint256"},
        {"name": "gasFees", "type": "bytes32"},
        {"name": "paymasterAndData", "type": "bytes"},
    ],
}


def eip712_user_op_hash(op: Mapping[str, Any], entry_point: bytes, chain_id: int) -> bytes:
    """The EntryPoint v0.8 userOpHash (EIP-712, domain ``ERC4337``/``1``) of a user operation in the
    worker's JSON form, computed with eth-account's typed-data encoder: independent of
    `protocol.user_operation`, which the simulator uses."""
    message = {
        "sender": to_checksum_address(_hex_bytes(str(op["sender"]))),
        "nonce": int(op["nonce"]),
        "initCode": _hex_bytes(str(op["init_code"])),
        "callData": _hex_bytes(str(op["call_data"])),
        "accountGasLimits": _hex_bytes(str(op["account_gas_limits"])),
        "preVerificationGas": int(op["pre_verification_gas"]),
        "gasFees": _hex_bytes(str(op["gas_fees"])),
        "paymasterAndData": _hex_bytes(str(op["paymaster_and_data"])),
    }
    domain = {
        "name": "ERC4337",
        "version": "1",
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(entry_point),
    }
    signable = encode_typed_data(
        full_message={
            "types": _USER_OP_TYPES,
            "primaryType": "PackedUserOperation",
            "domain": domain,
            "message": message,
        }
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def _user_op_hashes(args: Mapping[str, Any], operations: list[Any]) -> list[bytes]:
    entry_point = _hex_bytes(str(args.get("entry_point", DEFAULT_ENTRY_POINT_ADDRESS)))
    try:
        return [eip712_user_op_hash(op, entry_point, int(args["chain_id"])) for op in operations]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExprError(f"not a user operation the harness can hash: {exc}") from None


def user_op_hash(scope: Scope, argument: Any) -> str:
    """``{user_operation, chain_id, entry_point?}`` → the EntryPoint's EIP-712 userOpHash."""
    args = _args(argument, "$user_op_hash", "user_operation", "chain_id")
    return "0x" + _user_op_hashes(args, [args["user_operation"]])[0].hex()


def backend_signature(scope: Scope, argument: Any) -> str:
    """``{user_operations, chain_id, entry_point?, v_offset?}``: the harness backend key's
    signature over keccak256 of the operations' hashes, ``r ‖ s ‖ v`` with v 0/1 (plus
    `v_offset`, e.g. 27 for the Ethereum form the worker refuses)."""
    args = _args(argument, "$backend_signature", "user_operations", "chain_id")
    digest = keccak(b"".join(_user_op_hashes(args, list(args["user_operations"]))))
    signature = scope.keys.backend.sign_recoverable(digest, hasher=None)
    return "0x" + (signature[:64] + bytes([signature[64] + int(args.get("v_offset", 0))])).hex()


def _abi_value(abi_type: ABIType, value: Any) -> Any:
    if abi_type.is_array:
        return [_abi_value(abi_type.item_type, item) for item in value]
    if isinstance(abi_type, TupleType):
        return tuple(_abi_value(component, item) for component, item in zip(abi_type.components, value, strict=True))
    if isinstance(abi_type, BasicType) and abi_type.base == "bytes" and isinstance(value, str):
        return _hex_bytes(value)
    return value


def abi_call(scope: Scope, argument: Any) -> str:
    """``{signature: "transfer(address,uint256)", args: [...]}`` → ``0x`` selector ‖ ABI-encoded
    arguments (``bytes`` given as hex)."""
    args = _args(argument, "$abi_call", "signature", "args")
    signature = str(args["signature"])
    name, _, rest = signature.partition("(")
    types = parse("(" + rest)
    if not isinstance(types, TupleType) or not name:
        raise ExprError(f"$abi_call: not a function signature: {signature!r}")
    values = _abi_value(types, list(args["args"]))
    encoded = abi_encode([component.to_type_str() for component in types.components], list(values))
    return "0x" + (keccak(signature.encode())[:4] + encoded).hex()


def checksum(scope: Scope, argument: Any) -> str:
    """EIP-55 form of an EVM address (as the worker's Debug prints `Address`)."""
    return str(to_checksum_address(_hex_bytes(str(argument))))


# --------------------------------------------------------------------------- the fake Google


def _google(scope: Scope, name: str) -> FakeGoogle:
    if scope.google is None:
        raise ExprError(f"{name} needs the harness's fake Google provider")
    return scope.google


def google_code(scope: Scope, argument: Any) -> str:
    """``{client_id, redirect_uri, email, nonce?}``: an authorization code of the fake Google for
    that user (added on first use), as its authorization endpoint would redirect with it."""
    args = _args(argument, "$google_code", "client_id", "redirect_uri", "email")
    google = _google(scope, "$google_code")
    if google.find_user(str(args["email"])) is None:
        google.add_user(str(args["email"]))
    nonce = args.get("nonce")
    return google.issue_code(
        str(args["client_id"]), str(args["redirect_uri"]), str(args["email"]), None if nonce is None else str(nonce)
    )


def google_id_token(scope: Scope, argument: Any) -> str:
    """``{client_id, email, nonce?, claims?}``: an id_token signed by the fake Google (the worker
    does not check the signature of the client's token; ``claims`` overrides, ``null`` removes)."""
    args = _args(argument, "$google_id_token", "client_id", "email")
    google = _google(scope, "$google_id_token")
    if google.find_user(str(args["email"])) is None:
        google.add_user(str(args["email"]))
    return google.mint_id_token(
        str(args["client_id"]), str(args["email"]), nonce=args.get("nonce"), extra_claims=args.get("claims")
    )


def google_sub(scope: Scope, argument: Any) -> str:
    """The fake Google's ``sub`` of an e-mail address."""
    google = _google(scope, "$google_sub")
    user = google.find_user(str(argument)) or google.add_user(str(argument))
    return user.sub


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
    "$add": add,
    "$totp": totp_code,
    "$upper": upper,
    "$lower": lower,
    "$claims": jwt_claims,
    "$passkey_credential": passkey_credential,
    "$passkey_attestation": passkey_attestation,
    "$passkey_assertion": passkey_assertion,
    "$b64url": b64url,
    "$user_op_hash": user_op_hash,
    "$backend_signature": backend_signature,
    "$abi_call": abi_call,
    "$checksum": checksum,
    "$google_code": google_code,
    "$google_id_token": google_id_token,
    "$google_sub": google_sub,
}


def function_reference() -> dict[str, str]:
    """Each function's name and the first paragraph of its docstring (published in the schema)."""
    reference = {}
    for name, function in FUNCTIONS.items():
        first = (function.__doc__ or "").strip().split("\n\n")[0]
        reference[name] = " ".join(first.split())
    return reference
