"""Helpers of the mint tests: moto's STS as a real HTTP server, agents that sign mint bodies,
the OIDC JWKS read with PyJWT's standard client, the audit chain read back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
from broker_client import Reply, bearer
from conftest import BrokerHandle

from agentkeys_kit.broker import audit_chain
from agentkeys_kit.broker.agent_mint import signing_input
from agentkeys_kit.protocol.signatures import evm_address, sign_evm_personal

OIDC = "/v1/mint-oidc-jwt"
AWS = "/v1/mint-aws-creds"
ROLE_ARN = "arn:aws:iam::123456789012:role/agentkeys-data-role"
ISSUER = "https://oidc.example.test"


class MotoSts:
    """moto's server on a free loopback port, in a thread of the test process."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.stop()

    def assumed_roles(self) -> list[Any]:
        from moto.sts.models import sts_backends

        return [role for backend in sts_backends.values() for b in backend.values() for role in b.assumed_roles]

    @contextlib.contextmanager
    def refusing_unsigned_calls(self) -> Iterator[None]:
        """moto's IAM enforcement on: what it answers then is not an STS answer (sts_error)."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def _set_auth(self, count: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - loopback moto
            f"{self.url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request) as response:  # noqa: S310
            response.read()


def aws_env(moto: MotoSts, **extra: str) -> dict[str, str]:
    return {
        "BROKER_DATA_ROLE_ARN": ROLE_ARN,
        "BROKER_STS_ENDPOINT_URL": moto.url,
        "BROKER_AWS_REGION": "us-east-1",
        "BROKER_OIDC_ISSUER": ISSUER,
        **extra,
    }


class Agent:
    """A wallet that signs mint bodies (EIP-191 over the method, path and canonical JSON)."""

    def __init__(self, seed: int) -> None:
        self.key = bytes([seed]) * 32
        self.address = "0x" + evm_address(self.key).hex()

    def body(
        self,
        grant_id: str,
        *,
        path: str = AWS,
        method: str = "POST",
        service: str = "s3",
        scope_path: str = "reports/2026",
        issued_at: int | None = None,
        request_id: str | None = None,
        address: str | None = None,
        signer: Agent | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request_id": request_id or f"req-{time.time_ns()}",
            "issued_at": int(time.time()) if issued_at is None else issued_at,
            "intent": {"agent_id": grant_id, "service": service, "scope_path": scope_path},
            "auth": {"address": address or self.address, "signature": ""},
        }
        signature = sign_evm_personal(signing_input(method, path, body), (signer or self).key)
        body["auth"]["signature"] = "0x" + signature.hex()
        return body


async def post(
    http: aiohttp.ClientSession, broker: BrokerHandle, path: str, token: str | None, body: Any = None
) -> Reply:
    data = b"" if body is None else json.dumps(body).encode()
    headers = {**(bearer(token) if token else {}), "Content-Type": "application/json"}
    async with http.post(broker.url.rstrip("/") + path, data=data, headers=headers) as response:
        text = await response.text()
    try:
        return Reply(response.status, json.loads(text))
    except ValueError:
        return Reply(response.status, text)


async def jwks_key(broker: BrokerHandle, token: str) -> Any:
    """The key for `token` from the broker's JWKS, found as an OIDC relying party finds it
    (discovery document → jwks_uri → kid), with PyJWT's `PyJWKClient`."""
    base = broker.url.rstrip("/")

    def fetch() -> Any:
        with urllib.request.urlopen(base + "/.well-known/openid-configuration") as response:  # noqa: S310
            discovery = json.loads(response.read())
        # the issuer is not this test server's URL: read the JWKS at the same path here
        assert discovery["jwks_uri"] == discovery["issuer"] + "/.well-known/jwks.json"
        client = jwt.PyJWKClient(base + "/.well-known/jwks.json", cache_keys=False, cache_jwk_set=False)
        return client.get_signing_key_from_jwt(token)

    return await asyncio.to_thread(fetch)


async def chain(broker: BrokerHandle, *, logins: bool = False) -> list[audit_chain.ChainRow]:
    """The audit chain, oldest first; without the login rows unless `logins`."""
    rows: list[audit_chain.ChainRow] = []
    async for page in audit_chain.pages(broker.state.db):
        rows += page
    return [row for row in rows if logins or row.entry.event != "login"]
