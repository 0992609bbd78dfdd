"""The client role: what a wallet front end sends to the worker, from the wire contract.

Used by the end-to-end smoke run and the tests; the conformance suites (YAML) will drive the same
calls step by step.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
from typing import Any

import aiohttp

from agentkeys_kit.protocol.hexcodec import hex_encode
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
from agentkeys_kit.protocol.signatures import evm_address, sign_evm_personal
from agentkeys_kit.protocol.web3_message import HeimaMessagePayload


class WorkerClient:
    """JSON-RPC over HTTP POST to a worker (simulated or real)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.url = url
        self._ids = itertools.count(1)

    async def call(self, method: str, params: Any = None, *, token: str | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            request["params"] = params
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self._session.post(self.url, json=request, headers=headers) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
        return answer

    async def sign_in_message(self, client_id: str, account: str) -> HeimaMessagePayload:
        answer = await self.call("omni_getWeb3SignInMessage", {"client_id": client_id, "omni_account": account})
        if "result" not in answer:
            raise RuntimeError(f"omni_getWeb3SignInMessage failed: {answer}")
        return HeimaMessagePayload(**answer["result"])

    async def evm_login(self, key: bytes, client_id: str, client_auth: Any = None) -> dict[str, Any]:
        address = hex_encode(evm_address(key))
        message = await self.sign_in_message(client_id, omni_account_of(IdentityKind.EVM, address, client_id))
        signature = sign_evm_personal(message.signing_bytes(), key)
        return await self.call(
            "omni_userLogin",
            {
                "user_id": {"type": "evm", "value": address},
                "user_auth": {"type": "evm", "value": hex_encode(signature)},
                "client_id": client_id,
                "client_auth": client_auth,
            },
        )

    async def request_email_code(self, client_id: str, email: str) -> dict[str, Any]:
        return await self.call("omni_requestEmailVerificationCode", {"client_id": client_id, "user_email": email})

    async def email_login(self, client_id: str, email: str, code: str) -> dict[str, Any]:
        return await self.call(
            "omni_userLogin",
            {
                "user_id": {"type": "email", "value": email},
                "user_auth": {"type": "email", "value": code},
                "client_id": client_id,
            },
        )


def transport_problem(exc: BaseException, within: float | None = None) -> str:
    """Why a request got no usable answer, as one phrase for a person (``connection refused``):
    an exception's repr (``ClientConnectorError(ConnectionKey(host=…, ssl=True, …))``) is for
    developers. `within` is the time the request was given, when known."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was not accepted ({exc.certificate_error})"
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError too
        return f"no answer within {within:g} s" if within is not None else "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, socket.gaierror):
            return f"the host name {exc.host} does not resolve ({cause.strerror or cause})"
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"the TLS handshake failed ({getattr(cause, 'reason', None) or cause})"
        return _os_problem(cause)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without answering"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"it answered HTTP {exc.status}" + (f" {exc.message}" if exc.message else "")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"its answer was cut off ({exc})"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{exc.url} is not a usable URL"
    if isinstance(exc, json.JSONDecodeError):
        return f"its answer is not JSON ({exc})"
    if isinstance(exc, OSError):
        return _os_problem(exc)
    if isinstance(exc, ValueError | RuntimeError) and str(exc):
        return str(exc)  # raised with a message for people (`sign_in_message`)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _os_problem(exc: OSError) -> str:
    """``connection refused``, ``no route to host``: the errno's text, not the call's wording."""
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    return exc.strerror or str(exc) or type(exc).__name__
