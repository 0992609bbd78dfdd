"""`agentkeys init google`: the broker's Google sign-in, finished in a browser.

The command asks the broker for a sign-in request (``POST /v1/auth/google/start``), prints the
authorization URL for the user to open, and polls ``GET /v1/auth/google/status/{request_id}``
until the browser has come back to the broker (the session), the sign-in failed, or the request
expired. The request id is the claim on the session: it is never printed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import aiohttp

from agentkeys_kit.client.login_email import LoginFailed, post_json, refusal

POLL_INTERVAL = 1.0  # seconds between polls

_FAILURES = {
    "user_denied": "the sign-in was declined in the browser",
    "code_exchange_failed": "Google did not accept the sign-in (code exchange failed): start again",
    "id_token_invalid": "Google's answer did not verify: start again",
    "provider_unavailable": "the broker could not reach Google: try again later",
}


async def google_login(
    http: aiohttp.ClientSession,
    broker_url: str,
    out: TextIO,
    *,
    login_hint: str | None = None,
    interval: float = POLL_INTERVAL,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """The broker's session once the user signed in with Google (the status answer's ``data``)."""
    base = broker_url.rstrip("/")
    body = {"login_hint": login_hint} if login_hint else {}
    status, answer = await post_json(http, base + "/v1/auth/google/start", body, "the broker")
    if status != 200:
        error, _, message = refusal(answer)
        raise LoginFailed(_FAILURES.get(error, f"the broker refused to start a Google sign-in: {message}"))
    started = answer["data"]
    out.write(f"Open this URL in a browser to sign in with Google:\n{started['authorization_url']}\n")
    out.write("Waiting for the browser…\n")
    out.flush()
    deadline = time.monotonic() + float(started.get("expires_in_seconds", 600))
    poll_url = base + "/v1/auth/google/status/" + started["request_id"]
    while True:
        try:
            async with http.get(poll_url) as response:
                status = response.status
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LoginFailed(f"the broker unreachable at {base}: {type(exc).__name__}") from None
        except ValueError:
            raise LoginFailed(f"the broker answered HTTP {status} without JSON") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if status == 200 and isinstance(data, dict) and data.get("status") != "pending":
            return data
        if status != 200:
            error, details, message = refusal(answer)
            if error == "google_login_failed":
                reason = str(details.get("reason", ""))
                raise LoginFailed(_FAILURES.get(reason, f"Google sign-in failed: {reason}"))
            if error == "request_expired":
                raise LoginFailed("the sign-in took too long and expired: run `agentkeys init google` again")
            raise LoginFailed(f"the broker refused: {message}")
        if time.monotonic() >= deadline:
            raise LoginFailed("the sign-in took too long and expired: run `agentkeys init google` again")
        await sleep(interval)
