"""What the CLI says to the broker (HTTP, the ``{code, message, data}`` envelope) and to the
worker (JSON-RPC 2.0), with every failure turned into one `CliError` line."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import aiohttp

from agentkeys_kit.client import credentials

SUCCESS = 10000
DEFAULT_TIMEOUT_SECONDS = 30.0


def timeout() -> aiohttp.ClientTimeout:
    """Each request's limit: `AGENTKEYS_HTTP_TIMEOUT_SECONDS` (default 30), connecting within 10 s."""
    text = os.environ.get("AGENTKEYS_HTTP_TIMEOUT_SECONDS", "").strip()
    try:
        total = float(text) if text else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        total = -1.0
    if not 0 < total <= 3600:
        raise CliError(f"AGENTKEYS_HTTP_TIMEOUT_SECONDS must be a number of seconds from 0 to 3600 (got {text!r})", 2)
    return aiohttp.ClientTimeout(total=total, connect=min(total, 10.0))


class CliError(Exception):
    """A failure the user reads as one line; `status` is the exit status (1: refused or failed,
    2: usage or configuration)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def normalise_url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise CliError(f"the broker URL must start with http:// or https:// (got {url!r})", 2)
    return url.rstrip("/") + "/"


class BrokerApi:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.url = normalise_url(url)

    async def call(self, method: str, path: str, *, token: str | None = None, body: Any = None) -> dict[str, Any]:
        """The ``data`` of a successful reply; a refusal is a `CliError` naming the broker's reason."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            async with self._session.request(
                method, self.url + path, json=body, headers=headers, timeout=timeout()
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise unreachable("broker", self.url, exc) from None
        try:
            reply = json.loads(text)
        except ValueError:
            raise CliError(f"the broker at {self.url} answered HTTP {status} without JSON (is it a broker?)") from None
        if not isinstance(reply, dict):
            raise CliError(f"the broker at {self.url} answered HTTP {status} with something else than its envelope")
        if status == 200 and reply.get("code") == SUCCESS and isinstance(reply.get("data"), dict):
            data: dict[str, Any] = reply["data"]
            return data
        details = reply.get("data") if isinstance(reply.get("data"), dict) else {}
        error = details.get("error") if isinstance(details, dict) else None
        reason = details.get("reason") if isinstance(details, dict) else None
        message = str(reply.get("message") or f"HTTP {status}")
        code = ": ".join(str(part) for part in (error, reason) if part)
        raise CliError(f"the broker refused: {message}" + (f" ({code})" if code else ""))

    async def config(self) -> dict[str, Any]:
        return await self.call("GET", "v1/auth/config")


class WorkerApi:
    """JSON-RPC over HTTP POST to the worker the broker's config names."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.url = url
        self._ids = itertools.count(1)

    async def call(self, method: str, params: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            async with self._session.post(self.url, json=request, timeout=timeout()) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise unreachable("worker", self.url, exc) from None
        try:
            answer = json.loads(text)
        except ValueError:
            raise CliError(f"the worker at {self.url} did not answer JSON-RPC") from None
        if isinstance(answer, dict) and "result" in answer:
            return answer["result"]
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            raise CliError(f"the worker refused {method}: {error.get('message')} (code {error.get('code')})")
        raise CliError(f"the worker at {self.url} did not answer JSON-RPC")


def heima_worker(http: aiohttp.ClientSession, config: dict[str, Any]) -> tuple[WorkerApi, str]:
    """The worker a ``heima`` broker's config names, and the client id to log in there with."""
    heima = config.get("heima") or {}
    worker_url, client_id = heima.get("worker_url"), heima.get("client_id") or config.get("client_id")
    if not isinstance(worker_url, str) or not isinstance(client_id, str):
        raise CliError("the broker uses the heima backend but names no worker (BROKER_HEIMA_WORKER_URL)")
    return WorkerApi(http, worker_url), client_id


async def heima_credential(broker: BrokerApi, token: str, account: str) -> credentials.Credential:
    """The worker's access token as the CLI keeps it, once the broker has heard of the login (the
    worker's ``post_heima_login`` reached it: ``GET /v1/whoami`` answers) and names `account`."""
    me = await broker.call("GET", "v1/whoami", token=token)
    if me.get("omni_account") != account:
        raise CliError("the broker names another OmniAccount for this login; not keeping it")
    return credentials.Credential(broker.url, token, "tee", account, None)


def session_credential(broker_url: str, session: dict[str, Any]) -> credentials.Credential:
    """The broker session a ``local`` login answered with (its ``data``), as the CLI keeps it."""
    token, account = session.get("session_token"), session.get("omni_account")
    if not isinstance(token, str) or not isinstance(account, str):
        raise CliError("the broker's login answer carries no session")
    return credentials.Credential(broker_url, token, "session", account, session.get("expires_at"))


def unreachable(party: str, url: str, exc: BaseException) -> CliError:
    """The one line for a request that got no answer: a timeout says so (the party may well be
    reachable and just silent), anything else names the reason."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return CliError(f"no answer from the {party} at {url} within {timeout().total:g} s")
    text = str(exc).strip().splitlines()
    return CliError(f"cannot reach the {party} at {url}: {text[0] if text else type(exc).__name__}")
