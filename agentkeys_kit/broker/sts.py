"""AWS STS for `POST /v1/mint-aws-creds`, through aiobotocore (botocore on the event loop).

One client for the broker's lifetime (`BROKER_STS_ENDPOINT_URL`, `BROKER_AWS_REGION`), short
timeouts and at most two attempts, so a slow STS cannot hold requests for long.
``AssumeRoleWithWebIdentity`` is an unsigned call: the broker's own OIDC JWT is the credential.
The start-up check ``sts:GetCallerIdentity`` is signed with the default credential chain (the
operator's principal) and proves STS answers; `agentkeys-broker run --skip-startup-check` skips it.

Failures are two kinds, as the mint endpoint answers them (HTTP 502):
``sts_unreachable`` (no connection, a timeout, the connection closed) and ``sts_error`` (STS
answered, with an error or with something that is not an STS answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
TOTAL_TIMEOUT = 25.0  # one call, both attempts included
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
#: what a call may raise: botocore's errors, an answer that is not STS's (ResponseParserError is
#: not a BotoCoreError), the connection, and a malformed success answer
_CALL_ERRORS = (BotoCoreError, ClientError, ResponseParserError, TimeoutError, OSError, KeyError, TypeError, ValueError)
_SESSION_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class StsFailure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "sts_error" or "sts_unreachable"
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: int  # unix seconds


def session_name(wallet: str, now: float) -> str:
    """`build_session_name` (§1.3): ``agentkeys-<wallet as [A-Za-z0-9_-], 40 at most>-<unix
    seconds>-<6-digit microseconds>``, cut to 64 characters (STS's limit)."""
    seconds = int(now)
    micros = round((now - seconds) * 1_000_000) % 1_000_000
    return f"agentkeys-{_SESSION_CHARS.sub('', wallet)[:40]}-{seconds}-{micros:06d}"[:64]


def _failure(exc: BaseException) -> StsFailure:
    if isinstance(exc, (*_UNREACHABLE, TimeoutError, OSError)):
        return StsFailure("sts_unreachable", type(exc).__name__)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return StsFailure("sts_error", f"{error.get('Code', 'Unknown')}: {error.get('Message', '')}"[:300])
    return StsFailure("sts_error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])


class Sts:
    def __init__(self, *, region: str, endpoint_url: str | None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        config = AioConfig(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("sts", region_name=self.region, endpoint_url=self.endpoint_url, config=config)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    async def assume_role_with_web_identity(
        self, *, role_arn: str, session_name: str, token: str, duration: int
    ) -> tuple[AwsCredentials, str]:
        """The credentials and the assumed role's ARN, or `StsFailure`."""
        try:
            async with asyncio.timeout(TOTAL_TIMEOUT):
                answer = await self._client.assume_role_with_web_identity(
                    RoleArn=role_arn, RoleSessionName=session_name, WebIdentityToken=token, DurationSeconds=duration
                )
            credentials = answer["Credentials"]
            expiration = credentials["Expiration"]
            if isinstance(expiration, dt.datetime):
                expires = int(expiration.timestamp())
            else:
                expires = int(dt.datetime.fromisoformat(str(expiration)).timestamp())
            result = AwsCredentials(
                str(credentials["AccessKeyId"]),
                str(credentials["SecretAccessKey"]),
                str(credentials["SessionToken"]),
                expires,
            )
            return result, str(answer.get("AssumedRoleUser", {}).get("Arn", ""))
        except _CALL_ERRORS as exc:
            raise _failure(exc) from None

    async def caller_identity(self) -> str:
        """`sts:GetCallerIdentity`: the ARN of the principal the broker runs as."""
        try:
            async with asyncio.timeout(TOTAL_TIMEOUT):
                answer = await self._client.get_caller_identity()
            return str(answer["Arn"])
        except NoCredentialsError:
            raise StsFailure("sts_error", "no AWS credentials found (the default credential chain is empty)") from None
        except _CALL_ERRORS as exc:
            raise _failure(exc) from None
