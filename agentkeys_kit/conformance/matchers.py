"""Expectations: literal YAML compared with what an end did, plus matchers for what varies.

Rules:

* a scalar matches by equality of value and JSON type (``1`` matches neither ``true`` nor ``1.0``);
* a mapping matches an object that has every listed key with a matching value (other keys are
  allowed); ``{$absent: true}`` as a value requires the key to be missing;
* a list matches a list of the same length, item by item;
* ``{$exact: value}`` matches only the identical JSON value, key order included: the worker's
  error objects and callback bodies are pinned this way;
* ``{$between: [low, high]}`` (inclusive, numbers),
* ``{$any: true}``, ``{$type: string|integer|number|boolean|null|object|array}``,
  ``{$regex: pattern}`` (full match), ``{$contains: text}``, ``{$one_of: [values]}``,
  ``{$len: n}``, ``{$not: matcher}``;
* ``{$jwt: {key: tee|none, header: {…exact…}, claims: matcher, claims_order: [names]}}`` decodes a
  compact JWT, verifies its RS256 signature with the target's TEE key (``key: none`` skips that),
  and matches header and claims;
* ``{$bearer: matcher}`` matches an ``Authorization: Bearer <token>`` header by its token;
* ``{$signature: {address, message}}`` matches a ``0x`` hex EVM signature (65 bytes) that recovers
  to `address` over `message`, EIP-191 or raw, as the worker verifies wallet signatures.

`match` returns the list of mismatches, each a path and a sentence; empty means it matched.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from agentkeys_kit.protocol.identity import Identity, IdentityKind
from agentkeys_kit.protocol.signatures import SignatureScheme, Web3Signature, verify_web3


@dataclass(frozen=True, slots=True)
class Mismatch:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path or '(root)'}: {self.problem}"


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 160 else text[:157] + "..."


def _is_matcher(expected: Any) -> bool:
    return isinstance(expected, Mapping) and len(expected) == 1 and next(iter(expected)) in _MATCHERS


def match(expected: Any, actual: Any, key: rsa.RSAPublicKey | None = None, path: str = "") -> list[Mismatch]:
    if _is_matcher(expected):
        ((name, argument),) = expected.items()
        return _MATCHERS[name](argument, actual, key, path)
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [Mismatch(path, f"expected an object, got {_show(actual)}")]
        problems: list[Mismatch] = []
        for name, want in expected.items():
            child = f"{path}.{name}" if path else str(name)
            if isinstance(want, Mapping) and want.get("$absent") is True and len(want) == 1:
                if name in actual:
                    problems.append(Mismatch(child, f"must be absent, got {_show(actual[name])}"))
                continue
            if name not in actual:
                problems.append(Mismatch(child, "missing"))
                continue
            problems.extend(match(want, actual[name], key, child))
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [Mismatch(path, f"expected an array, got {_show(actual)}")]
        if len(expected) != len(actual):
            return [Mismatch(path, f"expected {len(expected)} items, got {len(actual)}: {_show(actual)}")]
        return [
            m
            for i, (want, got) in enumerate(zip(expected, actual, strict=True))
            for m in match(want, got, key, f"{path}.{i}")
        ]
    if type(expected) is not type(actual):  # 10000 is not 10000.0, nor true 1: serde tells them apart
        return [Mismatch(path, f"expected {_show(expected)}, got {_show(actual)}")]
    if expected != actual:
        return [Mismatch(path, f"expected {_show(expected)}, got {_show(actual)}")]
    return []


def _exact(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    if json.dumps(argument, ensure_ascii=False) != json.dumps(actual, ensure_ascii=False):
        return [Mismatch(path, f"expected exactly {_show(argument)}, got {_show(actual)}")]
    return []


def _any(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    return []


def _absent(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    return [Mismatch(path, f"must be absent, got {_show(actual)}")]


def _type(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    kinds = _TYPES.get(str(argument))
    if kinds is None:
        return [Mismatch(path, f"unknown $type {argument!r}")]
    if isinstance(actual, bool) and bool not in kinds:
        return [Mismatch(path, f"expected {argument}, got boolean")]
    return [] if isinstance(actual, kinds) else [Mismatch(path, f"expected {argument}, got {_show(actual)}")]


def _regex(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    if not isinstance(actual, str) or re.fullmatch(str(argument), actual, re.DOTALL) is None:
        return [Mismatch(path, f"expected to match /{argument}/, got {_show(actual)}")]
    return []


def _contains(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    if not isinstance(actual, str) or str(argument) not in actual:
        return [Mismatch(path, f"expected to contain {argument!r}, got {_show(actual)}")]
    return []


def _one_of(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    if any(not match(option, actual, key, path) for option in argument):
        return []
    return [Mismatch(path, f"expected one of {_show(argument)}, got {_show(actual)}")]


def _len(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    if not hasattr(actual, "__len__") or len(actual) != int(argument):
        return [Mismatch(path, f"expected length {argument}, got {_show(actual)}")]
    return []


def _not(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    return [Mismatch(path, f"must not match {_show(argument)}")] if not match(argument, actual, key, path) else []


def _segment(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_jwt(token: str) -> tuple[dict[str, Any], list[tuple[str, Any]], bytes, bytes]:
    """(header, claims as ordered pairs, signing input, signature); raises ValueError."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWT (three segments)")
    header = json.loads(_segment(parts[0]))
    claims = json.loads(_segment(parts[1]), object_pairs_hook=list)
    if not isinstance(header, dict) or not isinstance(claims, list):
        raise ValueError("header and claims must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), _segment(parts[2])


def _between(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    low, high = argument
    if isinstance(actual, bool) or not isinstance(actual, (int, float)) or not low <= actual <= high:
        return [Mismatch(path, f"expected a number in [{low}, {high}], got {_show(actual)}")]
    return []


def _jwt(argument: Any, actual: Any, key: rsa.RSAPublicKey | None, path: str) -> list[Mismatch]:
    if not isinstance(actual, str):
        return [Mismatch(path, f"expected a JWT, got {_show(actual)}")]
    try:
        header, claim_pairs, signing_input, signature = decode_jwt(actual)
    except ValueError as exc:
        return [Mismatch(path, f"not a JWT: {exc}")]
    spec = argument if isinstance(argument, Mapping) else {}
    problems: list[Mismatch] = []
    if spec.get("key", "tee") != "none":
        if key is None:
            problems.append(Mismatch(path, "no TEE key to verify the signature with"))
        elif header.get("alg") != "RS256":
            problems.append(Mismatch(f"{path}<header>.alg", f"expected RS256, got {_show(header.get('alg'))}"))
        else:
            try:
                key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                problems.append(Mismatch(path, "RS256 signature does not verify with the TEE key"))
    if "header" in spec:
        problems.extend(_exact(spec["header"], header, key, f"{path}<header>"))
    if "claims_order" in spec and [name for name, _ in claim_pairs] != list(spec["claims_order"]):
        problems.append(
            Mismatch(
                f"{path}<claims>", f"claim order {[n for n, _ in claim_pairs]} is not {list(spec['claims_order'])}"
            )
        )
    if "claims" in spec:
        problems.extend(match(spec["claims"], dict(claim_pairs), key, f"{path}<claims>"))
    return problems


def _bearer(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    if not isinstance(actual, str) or not actual.startswith("Bearer "):
        return [Mismatch(path, f"expected 'Bearer <token>', got {_show(actual)}")]
    return match(argument, actual[len("Bearer ") :], key, f"{path}<bearer>")


def _signature(argument: Any, actual: Any, key: Any, path: str) -> list[Mismatch]:
    spec = argument if isinstance(argument, Mapping) else {}
    address, message = str(spec.get("address", "")).lower(), str(spec.get("message", "")).encode()
    if not isinstance(actual, str):
        return [Mismatch(path, f"expected a hex signature, got {_show(actual)}")]
    try:
        raw = bytes.fromhex(actual.removeprefix("0x"))
        expected = bytes.fromhex(address.removeprefix("0x"))
    except ValueError:
        return [Mismatch(path, f"not hex: {_show(actual)}")]
    identity = Identity(IdentityKind.EVM, expected)
    if len(raw) == 65 and verify_web3(message, identity, Web3Signature(SignatureScheme.ETHEREUM, raw)):
        return []
    return [Mismatch(path, f"signature does not recover to {address} over the given message")]


_MATCHERS = {
    "$exact": _exact,
    "$any": _any,
    "$absent": _absent,
    "$type": _type,
    "$regex": _regex,
    "$contains": _contains,
    "$one_of": _one_of,
    "$len": _len,
    "$not": _not,
    "$jwt": _jwt,
    "$bearer": _bearer,
    "$between": _between,
    "$signature": _signature,
}

#: every matcher name a suite may use under ``expect``
MATCHER_NAMES = frozenset(_MATCHERS)
