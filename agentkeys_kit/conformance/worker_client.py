"""The client role: what a wallet front end sends to the worker, from the wire contract.

Used by the end-to-end smoke run and the tests; the conformance suites (YAML) will drive the same
calls step by step.
"""

from __future__ import annotations

import itertools
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
