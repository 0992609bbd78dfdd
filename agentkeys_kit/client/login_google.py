"""``agentkeys init google [--login-hint EMAIL]``: the broker's Google sign-in, finished in a browser.

The command asks the broker for a sign-in request (``POST /v1/auth/google/start``), prints the
authorization URL for the user to open, and polls ``GET /v1/auth/google/status/{request_id}``
until the browser has come back to the broker, the sign-in failed, or the request expired. Then it
asks for the code the browser page shows and sends it with the request id (``POST
/v1/auth/google/confirm``) for the session: the request id alone is not enough (see
`broker/login/google.py`). The request id is never printed. Offered by a ``local`` broker with a
Google client; a ``heima`` broker has no Google login of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TextIO

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import BrokerApi, CliError, normalise_url, session_credential, timeout, unreachable
from agentkeys_kit.client.login_email import CodeReader, post_json, read_code, refusal

POLL_INTERVAL = 1.0  # seconds between polls

_FAILURES = {
    "user_denied": "the sign-in was declined in the browser",
    "code_exchange_failed": "Google did not accept the sign-in (the code exchange failed): start again",
    "id_token_invalid": "Google's answer did not verify: start again",
    "provider_unavailable": "the broker cannot reach Google: try again later",
    "confirmation_failed": "too many wrong codes: run `agentkeys init google` again",
}
read_page_code: CodeReader = partial(read_code, echo=True)  # shown on the page: no secret on this screen
_EXPIRED = "the sign-in took too long and expired: run `agentkeys init google` again"


def register(commands: Any, init: Any) -> None:
    google = init.add_parser("google", help="log in with a Google account (in a browser)")
    google.add_argument("--login-hint", help="the Google account to preselect (an e-mail address)")
    google.set_defaults(handler=init_google)


async def google_login(
    http: aiohttp.ClientSession,
    broker_url: str,
    out: TextIO,
    *,
    login_hint: str | None = None,
    interval: float = POLL_INTERVAL,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ask: CodeReader = read_page_code,
) -> dict[str, Any]:
    """The broker's session once the user signed in with Google and typed the page's code."""
    body = {"login_hint": login_hint} if login_hint else {}
    status, reply = await post_json(http, broker_url + "v1/auth/google/start", body)
    if status != 200:
        error, _, message = refusal(reply)
        raise CliError(_FAILURES.get(error, f"the broker refused to start a Google sign-in: {message}"))
    started = reply["data"]
    out.write(f"Open this URL in a browser to sign in with Google:\n{started['authorization_url']}\n")
    out.write("Waiting for the browser...\n")
    out.flush()
    deadline = time.monotonic() + float(started.get("expires_in_seconds", 600))
    poll_url = broker_url + "v1/auth/google/status/" + started["request_id"]
    while True:
        try:
            async with http.get(poll_url, timeout=timeout()) as response:
                status = response.status
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise unreachable("broker", broker_url, exc) from None
        except ValueError:
            raise CliError(f"the broker at {broker_url} answered HTTP {status} without JSON") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if status == 200 and isinstance(data, dict) and data.get("status") == "confirm":
            return await _confirm(http, broker_url, started["request_id"], ask)
        if status != 200:
            raise _refused(answer if isinstance(answer, dict) else {}, "the broker refused")
        if time.monotonic() >= deadline:
            raise CliError(_EXPIRED)
        await sleep(interval)


async def _confirm(http: aiohttp.ClientSession, broker_url: str, request_id: str, ask: CodeReader) -> dict[str, Any]:
    prompt = "Signed in. Type the code the browser page shows: "
    while True:
        code = ask(prompt)
        if not code:
            raise CliError("no code was entered")
        body = {"request_id": request_id, "code": code}
        status, reply = await post_json(http, broker_url + "v1/auth/google/confirm", body)
        if status == 200 and isinstance(reply.get("data"), dict):
            session: dict[str, Any] = reply["data"]
            return session
        error, details, _ = refusal(reply)
        if error != "wrong_confirmation_code":
            raise _refused(reply, "the broker refused the code")
        left = int(details.get("attempts_left", 0))
        prompt = f"That is not the code on the page ({left} {'try' if left == 1 else 'tries'} left). Code: "


def _refused(answer: dict[str, Any], otherwise: str) -> CliError:
    """The line for a refusal of the status poll or the confirmation."""
    error, details, message = refusal(answer)
    if error == "google_login_failed":
        reason = str(details.get("reason", ""))
        return CliError(_FAILURES.get(reason, f"the Google sign-in failed: {reason}"))
    if error == "request_expired":
        return CliError(_EXPIRED)
    return CliError(f"{otherwise}: {message}")


async def init_google(args: argparse.Namespace) -> int:
    url = normalise_url(args.broker_url)
    async with aiohttp.ClientSession() as http:
        broker = BrokerApi(http, url)
        config = await broker.config()
        if config.get("backend") != "local" or "google" not in (config.get("methods") or []):
            raise CliError(f"the broker at {url} does not offer Google login")
        session = await google_login(http, broker.url, sys.stdout, login_hint=args.login_hint)
    return credentials.keep(session_credential(url, session), "google, local backend")
