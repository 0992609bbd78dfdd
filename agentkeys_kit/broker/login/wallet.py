"""Wallet login of the ``local`` backend: Sign-In with Ethereum (EIP-4361) signed with EIP-191.

``POST /v1/auth/wallet/start {address, chain_id}`` → ``{request_id, message, nonce, issued_at,
expires_at}``. The message is EIP-4361 text::

    <domain> wants you to sign in with your Ethereum account:
    <EIP-55 address>

    Sign in to the AgentKeys broker.

    URI: <uri>
    Version: 1
    Chain ID: <chain_id>
    Nonce: <32 hex digits>
    Issued At: <RFC 3339, UTC>
    Expiration Time: <Issued At + 45 minutes>
    Resources:
    - urn:agentkeys:client:agentkeys

``domain`` and ``uri`` come from `BROKER_PUBLIC_URL`, else from the request's own Host. The whole
message is stored with its request id (`login_nonces`), so any replica can finish the login.

``POST /v1/auth/wallet/verify {request_id, signature}``: the signature is 65 bytes ``r‖s‖v``
(``0x`` + 130 hex digits) with ``v`` in 0/1/27/28, over the EIP-191 personal-sign envelope of the
stored message; the recovered address is compared case-insensitively with the one that started
the login. The rules, each pinned by a test:

* **45-minute window** (dexs-backend's): valid from ``Issued At`` to ``Expiration Time`` =
  ``Issued At`` + 2700 s, the end excluded (at ``Expiration Time`` it is expired: EIP-4361 and the
  safer reading of dexs-backend's unconfirmed bound);
* **bounded clock skew**: a replica whose clock is behind the one that issued the message accepts
  it at most `BROKER_LOGIN_CLOCK_SKEW_SECONDS` (default 60, at most 300) before its ``Issued At``;
  the end of the window is never extended;
* **single use** (dexs-backend's signature is replayable inside the window; ours is not): one
  conditional UPDATE consumes the nonce in the database, in the transaction that makes the session
  (`complete_login`'s ``consume``), so of two verifications on any replicas one wins and the other
  is refused. A wrong signature does not consume it (the user may retry).

Every refusal is 401 ``login_refused`` with the rule in ``data.reason``; malformed input is 400.

Library choice: the `siwe` package (4.4.0, its latest release) was evaluated and not used. The
broker never parses a SIWE message: it renders the message itself, stores the exact text and
verifies the signature over those bytes, so the package's main part (an ABNF parser) has nothing
to do; it pulls in ``web3`` (with ``requests`` and ``websockets``) for EIP-1271 contract wallets,
which this login does not offer; and it does not even import with the current ``abnf`` (2.9:
``GrammarError: 'ALPHA' is a core rule``, checked on this machine). Rendering is the dozen lines
below, EIP-55 included (`eip55`, pinned to the EIP's own vectors); EIP-191 recovery is
`protocol.signatures` (coincurve), shared with the simulator.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

from aiohttp import web
from eth_hash.auto import keccak

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.http import json_body, require_fields
from agentkeys_kit.broker.login import complete_login
from agentkeys_kit.broker.login.limits import audited, bucket_name, charge, client_source
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import login as login_store
from agentkeys_kit.broker.storage.login import LoginNonce
from agentkeys_kit.protocol.signatures import evm_eip191_wrap, recover_evm_address

WINDOW_SECONDS = 45 * 60
STATEMENT = "Sign in to the AgentKeys broker."
RESOURCE = "urn:agentkeys:client:agentkeys"
MAX_CHAIN_ID = 2**53 - 1  # what a JSON number carries exactly
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_REQUEST_ID = re.compile(r"wlr_[0-9a-f]{32}")
#: RFC 3986 authority as a Host header may carry it (no userinfo): host or [v6], optional port.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def eip55(address: str) -> str:
    """EIP-55 mixed-case checksum of a ``0x`` address (what EIP-4361 requires in the message)."""
    lower = address[2:].lower()
    digest = keccak(lower.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest[:40], strict=True))


def rfc3339(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class SiweFields:
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: int
    expires_at: int

    def render(self) -> str:
        return "\n".join(
            (
                f"{self.domain} wants you to sign in with your Ethereum account:",
                eip55(self.address),
                "",
                STATEMENT,
                "",
                f"URI: {self.uri}",
                "Version: 1",
                f"Chain ID: {self.chain_id}",
                f"Nonce: {self.nonce}",
                f"Issued At: {rfc3339(self.issued_at)}",
                f"Expiration Time: {rfc3339(self.expires_at)}",
                "Resources:",
                f"- {RESOURCE}",
            )
        )


def _origin(state: BrokerState, request: web.Request) -> tuple[str, str]:
    """(domain, uri) of the message: `BROKER_PUBLIC_URL`, else the request's Host."""
    if state.config.public_url:
        url = state.config.public_url
        return url.split("://", 1)[1].split("/", 1)[0], url
    host = request.host
    if not _AUTHORITY.fullmatch(host):
        raise errors.malformed("the Host header is not a host[:port]; set BROKER_PUBLIC_URL")
    return host, f"{request.scheme}://{host}"


async def wallet_start(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = require_fields(await json_body(request), {"address": str, "chain_id": int}, "WalletStart")
    if not _ADDRESS.fullmatch(body["address"]):
        raise errors.malformed("address must be 0x + 40 hex digits")
    if not 1 <= body["chain_id"] <= MAX_CHAIN_ID:
        raise errors.malformed(f"chain_id must be an integer from 1 to {MAX_CHAIN_ID}")
    domain, uri = _origin(state, request)
    # each start writes a nonce row: a client address gets a bounded number per minute
    limit = state.config.wallet_starts_per_minute
    await charge(state, "client address", bucket_name("wallet-ip", client_source(request)), limit, 60)
    now = state.now()
    fields = SiweFields(
        domain=domain,
        address=body["address"].lower(),
        uri=uri,
        chain_id=body["chain_id"],
        nonce=secrets.token_hex(16),
        issued_at=now,
        expires_at=now + WINDOW_SECONDS,
    )
    login = LoginNonce(
        request_id="wlr_" + secrets.token_hex(16),
        method="wallet",
        address=fields.address,
        chain_id=fields.chain_id,
        nonce=fields.nonce,
        message=fields.render(),
        issued_at=fields.issued_at,
        expires_at=fields.expires_at,
        consumed_at=None,
    )
    await state.db.run(login_store.start_login, login)
    return errors.ok(
        {
            "request_id": login.request_id,
            "message": login.message,
            "nonce": login.nonce,
            "address": fields.address,
            "chain_id": fields.chain_id,
            "issued_at": login.issued_at,
            "expires_at": login.expires_at,
        }
    )


def check_window(login: LoginNonce, now: int, skew: int) -> None:
    if now < login.issued_at - skew:
        raise errors.login_refused("the login message is not valid yet (Issued At is ahead of this broker's clock)")
    if now >= login.expires_at:
        raise errors.login_refused("the login message has expired (Expiration Time passed)")


def recovered_signer(message: str, signature_hex: str) -> str | None:
    """The address (lowercase ``0x``) whose EIP-191 signature this is, or None."""
    signature = bytes.fromhex(signature_hex[2:])
    if signature[64] not in (0, 1, 27, 28):
        return None
    address = recover_evm_address(keccak(evm_eip191_wrap(message.encode("utf-8"))), signature)
    return None if address is None else "0x" + address.hex()


async def wallet_verify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = require_fields(await json_body(request), {"request_id": str, "signature": str}, "WalletVerify")
    if not _SIGNATURE.fullmatch(body["signature"]):
        raise errors.malformed("signature must be 0x + 130 hex digits (r ‖ s ‖ v)")
    request_id = body["request_id"]
    login = await state.db.run(login_store.find_login, request_id) if _REQUEST_ID.fullmatch(request_id) else None
    if login is None or login.method != "wallet":
        raise errors.login_refused("no such login request (unknown, or purged after it expired)")
    if login.consumed_at is not None:
        raise errors.login_refused("this login message was already used")
    now = state.now()
    check_window(login, now, state.config.login_clock_skew)
    signer = recovered_signer(login.message, body["signature"])
    if signer is None:
        raise errors.login_refused("the signature does not recover (v must be 0, 1, 27 or 28)")
    if signer != login.address:
        raise errors.login_refused("the signature is not by the address that started this login")
    return await complete_login(
        state,
        request,
        identity_type="evm",
        identity_value=login.address,
        method="wallet",
        consume=lambda: login_store.consume_login(request_id, now),
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/auth/wallet/start", audited("wallet_start", wallet_start))
    app.router.add_post("/v1/auth/wallet/verify", audited("wallet_verify", wallet_verify))
