"""Grant-scoped mints: an agent (daemon) wallet mints within a grant a master gave it.

The agent logs in with its own wallet and sends, with its bearer, a signed body
(`agentkeys-broker.md` §1.3 v2 path, with V0.1-FOLLOWUPS R1-F4 and R1-F5 fixed and no implicit
grant):

    {"request_id": "...", "issued_at": <unix seconds>,
     "intent": {"agent_id": "<grant id>", "service": "...", "scope_path": "..."},
     "auth": {"address": "0x...", "signature": "0x<65 bytes>"}}

* Signed bytes: ``"<METHOD> <PATH>\\n"`` followed by the body without ``auth.signature`` as
  canonical JSON (keys sorted at every level, no whitespace, UTF-8), so a signature for one
  endpoint is refused on the other (R1-F4). EIP-191 ``personal_sign``, 65 bytes r‖s‖v with v in
  {0, 1, 27, 28}. The recovered address must be ``auth.address`` and the bearer's wallet
  (case-insensitive): a signature by another wallet is refused.
* ``issued_at`` within `BROKER_MINT_MAX_SKEW_SECONDS` of the broker's clock; ``request_id`` (8 to
  128 visible ASCII characters) is accepted once per signer (table ``mint_requests``, kept until
  the skew window has passed: R1-F5), in the same transaction as the grant's consumption.
* ``intent.agent_id`` names the grant (its ``grant_id``): the agent says under which master's grant
  it acts, and the grant must be this agent wallet's. A grant's ``scope`` is ``<service>`` or
  ``<service>/<path prefix>``; ``intent.service`` must be its service and ``intent.scope_path``
  inside its prefix (whole segments).
* The grant is consumed by one conditional UPDATE (not revoked, not superseded, not expired, uses
  below ``max_uses``); no grant is a refusal (fail closed; #64 let it through). Refusals are HTTP
  403 ``grant_refused`` with ``data.reason`` one of ``no_grant``, ``revoked``, ``expired``,
  ``exhausted``, ``out_of_scope``; signature rules are 401 ``invalid_mint_signature``; a replayed
  ``request_id`` 409 ``request_replayed``.

The credential then says whose it is: ``agentkeys_user_wallet`` is the master's wallet,
``sub`` and ``agentkeys_actor_omni`` the agent's, ``agentkeys_grant_id`` the grant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from eth_hash.auto import keccak

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.audit_chain import ChainEntry
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.storage.base import Operation, Query
from agentkeys_kit.protocol import json_rules
from agentkeys_kit.protocol.signatures import evm_eip191_wrap, recover_evm_address

_REQUEST_ID = re.compile(r"[\x21-\x7e]{8,128}")
_EVM_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_TEXT_MAX = 256
#: what an AWS session tag value may hold (IAM: [\p{L}\p{Z}\p{N}_.:/=+\-@]*)
_TAG_VALUE = re.compile(r"[\w .:/=+\-@]*")
GRANT_REFUSALS = ("no_grant", "revoked", "expired", "exhausted", "out_of_scope")


def grant_refused(reason: str) -> BrokerError:
    return BrokerError(403, 40304, "grant_refused", f"no usable grant: {reason.replace('_', ' ')}", reason=reason)


def invalid_mint_signature(reason: str) -> BrokerError:
    return BrokerError(401, 40102, "invalid_mint_signature", "the signed mint request was refused", reason=reason)


def request_replayed() -> BrokerError:
    return BrokerError(409, 40902, "request_replayed", "this request_id was used before")


@dataclass(frozen=True, slots=True)
class AgentRequest:
    request_id: str
    issued_at: int
    grant_id: str
    service: str
    scope_path: str
    address: str  # lowercase
    signed_bytes: bytes
    signature: bytes


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signing_input(method: str, path: str, body: dict[str, Any]) -> bytes:
    """What the agent signs: the method and path, then the body without ``auth.signature``."""
    unsigned = {**body, "auth": {key: value for key, value in body["auth"].items() if key != "signature"}}
    return f"{method.upper()} {path}\n".encode("ascii") + canonical_json(unsigned)


def _object(value: Any, name: str, keys: dict[str, type]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.malformed(f"{name} must be a JSON object")
    if set(value) != set(keys):
        raise errors.malformed(f"{name} must have exactly the fields {', '.join(sorted(keys))}")
    for key, kind in keys.items():
        if isinstance(value[key], bool) or not isinstance(value[key], kind):
            raise errors.malformed(f"{name}.{key} has the wrong type")
    return value


def parse(raw: bytes, method: str, path: str) -> AgentRequest:
    """The agent body, strictly (400 ``malformed_body`` otherwise)."""
    try:
        body = json_rules.loads(raw)
    except json_rules.JsonRefused as exc:
        raise errors.malformed(f"the body is not strict JSON: {exc}") from None
    _object(body, "the mint body", {"request_id": str, "issued_at": int, "intent": dict, "auth": dict})
    intent = _object(body["intent"], "intent", {"agent_id": str, "service": str, "scope_path": str})
    auth = _object(body["auth"], "auth", {"address": str, "signature": str})
    if not _REQUEST_ID.fullmatch(body["request_id"]):
        raise errors.malformed("request_id must be 8 to 128 visible ASCII characters")
    for key in ("agent_id", "service", "scope_path"):
        if len(intent[key]) > _TEXT_MAX:
            raise errors.malformed(f"intent.{key} is longer than {_TEXT_MAX} characters")
    if not intent["agent_id"] or not intent["service"]:
        raise errors.malformed("intent.agent_id and intent.service must not be empty")
    problem = path_problem(intent["scope_path"])
    if problem is not None:
        raise errors.malformed(f"intent.scope_path has {problem}")
    if not _TAG_VALUE.fullmatch(intent["service"]):
        raise errors.malformed("intent.service has a character an AWS session tag cannot carry")
    if not _EVM_ADDRESS.fullmatch(auth["address"]):
        raise errors.malformed("auth.address must be 0x + 40 hex digits")
    if not _SIGNATURE.fullmatch(auth["signature"]):
        raise errors.malformed("auth.signature must be 0x + 65 bytes in hex")
    return AgentRequest(
        request_id=body["request_id"],
        issued_at=body["issued_at"],
        grant_id=intent["agent_id"],
        service=intent["service"],
        scope_path=intent["scope_path"],
        address=auth["address"].lower(),
        signed_bytes=signing_input(method, path, body),
        signature=bytes.fromhex(auth["signature"][2:]),
    )


def check_signature(request: AgentRequest, *, wallet: str, now: int, max_skew: int) -> None:
    """401 ``invalid_mint_signature`` with the rule that failed."""
    if request.signature[64] not in (0, 1, 27, 28):
        raise invalid_mint_signature("bad_v")
    recovered = recover_evm_address(bytes(keccak(evm_eip191_wrap(request.signed_bytes))), request.signature)
    if recovered is None or "0x" + recovered.hex() != request.address:
        raise invalid_mint_signature("signature_mismatch")
    if request.address != wallet.lower():
        raise invalid_mint_signature("another_wallet")
    if abs(now - request.issued_at) > max_skew:
        raise invalid_mint_signature("stale_issued_at")


def path_problem(path: str) -> str | None:
    """Why a scope path (a grant's prefix, a mint's ``scope_path``) is refused, or None.

    The prefix check is textual, and whatever reads the path downstream may resolve it: so no
    ``.`` or ``..`` segment (nor one that percent-decodes to it), no empty segment inside
    (``a//b``), no backslash, no control character. Leading and trailing slashes do not count.
    And only what an AWS session tag value can carry (the credential names the path in one,
    `broker/mint.py`): letters, digits, spaces and ``_ . : / = + - @``."""
    if any(ord(char) < 0x20 or char == "\x7f" for char in path):
        return "a control character"
    if "\\" in path:
        return "a backslash"
    if not _TAG_VALUE.fullmatch(path):
        return "a character an AWS session tag cannot carry (letters, digits, spaces and _ . : / = + - @ only)"
    inner = path.strip("/")
    for segment in inner.split("/") if inner else ():
        if unquote(segment) in (".", ".."):
            return f"a {segment!r} segment"
        if not segment:
            return "an empty segment (//)"
    return None


def scope_allows(scope: str, service: str, scope_path: str) -> bool:
    """``<service>`` allows every path of it; ``<service>/<prefix>`` the prefix and what is under it."""
    granted_service, _, prefix = scope.partition("/")
    if granted_service != service:
        return False
    prefix = prefix.strip("/")
    path = scope_path.strip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class GrantUse:
    """A consumed grant (what the credential carries), or the refusal."""

    grant_id: str
    master_wallet: str = ""
    master_omni_account: str = ""
    refusal: str | None = None  # a GRANT_REFUSALS reason, or "replayed"


_GRANT = (
    "SELECT grant_id, master_omni_account, master_wallet, scope, expires_at, revoked_at, superseded_by, max_uses, uses "
)


def _why_not(row: dict[str, Any] | None, request: AgentRequest, now: int) -> str | None:
    if row is None:
        return "no_grant"
    if row["revoked_at"] is not None:
        return "revoked"
    if row["superseded_by"] is not None or row["expires_at"] <= now:
        return "expired"
    if row["max_uses"] is not None and row["uses"] >= row["max_uses"]:
        return "exhausted"
    if not scope_allows(row["scope"], request.service, request.scope_path):
        return "out_of_scope"
    return None


def consume(
    request: AgentRequest, *, now: int, max_skew: int, entries: Callable[[GrantUse], list[ChainEntry]]
) -> Operation[tuple[list[ChainEntry], GrantUse]]:
    """One transaction: the request id (once), the grant (one conditional UPDATE), the rows
    `entries` makes for the outcome."""
    fresh = yield Query.run(
        "INSERT INTO mint_requests (signer, request_id, seen_at, forget_after) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (signer, request_id) DO NOTHING",
        request.address,
        request.request_id,
        now,
        max(now, request.issued_at) + max_skew + 1,
    )
    if not fresh:
        use = GrantUse(request.grant_id, refusal="replayed")
        return entries(use), use
    row = yield Query.one(
        _GRANT + "FROM grants WHERE grant_id = ? AND agent_wallet = ?", request.grant_id, request.address
    )
    refusal = _why_not(row, request, now)
    if refusal is None:
        taken = yield Query.one(
            "UPDATE grants SET uses = uses + 1 WHERE grant_id = ? AND agent_wallet = ? AND revoked_at IS NULL "
            "AND superseded_by IS NULL AND expires_at > ? AND (max_uses IS NULL OR uses < max_uses) "
            "RETURNING uses",
            request.grant_id,
            request.address,
            now,
        )
        if taken is None:  # another mint or a revoke got there first: say which
            row = yield Query.one(
                _GRANT + "FROM grants WHERE grant_id = ? AND agent_wallet = ?", request.grant_id, request.address
            )
            refusal = _why_not(row, request, now) or "exhausted"
    if refusal is not None or row is None:
        use = GrantUse(request.grant_id, refusal=refusal or "no_grant")
    else:
        use = GrantUse(request.grant_id, str(row["master_wallet"]), str(row["master_omni_account"]))
    return entries(use), use


def give_back(grant_id: str, entries: list[ChainEntry]) -> Operation[tuple[list[ChainEntry], None]]:
    """STS did not issue the credential: the use is given back, with the row saying so."""
    yield Query.run("UPDATE grants SET uses = uses - 1 WHERE grant_id = ? AND uses > 0", grant_id)
    return entries, None


def forget_old_requests(now: int) -> Operation[int]:
    """Request ids whose `issued_at` can no longer pass the skew check."""
    count: int = yield Query.run("DELETE FROM mint_requests WHERE forget_after < ?", now)
    return count
