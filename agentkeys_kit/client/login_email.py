"""`agentkeys init email ADDRESS`: a 6-digit code sent to the address, typed back by its owner.

* ``local`` backend: the broker sends the code (``POST /v1/auth/email/request``) and trades it for
  its own session (``POST /v1/auth/email/verify``); a wrong code may be typed again while tries
  remain.
* ``heima`` backend: the worker does (``omni_requestEmailVerificationCode`` then ``omni_userLogin``
  with client id ``agentkeys``); the TEE access token it returns is the bearer the broker accepts.

The code is read from the terminal without echo, or as a line of standard input when that is not
a terminal; it is never printed. Every failure is one line (`LoginFailed`).
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

CodeReader = Callable[[str], "str | None"]


class LoginFailed(Exception):
    """A login that did not succeed, said in one line for the user."""


def read_code(prompt: str) -> str | None:
    """The code from the terminal (no echo) or the next line of standard input; None at its end."""
    if sys.stdin.isatty():
        try:
            return getpass.getpass(prompt).strip()
        except EOFError:
            return None
    sys.stderr.write(prompt + "\n")
    sys.stderr.flush()
    line = sys.stdin.readline()
    return line.strip() if line else None


async def post_json(http: aiohttp.ClientSession, url: str, body: Any, what: str) -> tuple[int, Any]:
    """POST `body`; (status, JSON answer). An unreachable peer or a non-JSON answer is `LoginFailed`."""
    try:
        async with http.post(url, json=body) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise LoginFailed(f"{what} unreachable at {url.split('/v1/')[0]}: {type(exc).__name__}") from None
    try:
        return status, json.loads(text)
    except ValueError:
        raise LoginFailed(f"{what} answered HTTP {status} without JSON (is this the right URL?)") from None


def refusal(answer: Any) -> tuple[str, dict[str, Any], str]:
    """(data.error, data, message) of a broker refusal envelope."""
    data = answer.get("data") if isinstance(answer, dict) else None
    data = data if isinstance(data, dict) else {}
    message = answer.get("message") if isinstance(answer, dict) else None
    return str(data.get("error", "")), data, str(message or "refused")


_VERIFY_MESSAGES = {
    "code_expired": "the code has expired: run `agentkeys init email` again for a new one",
    "code_used": "the code was already used: run `agentkeys init email` again for a new one",
    "no_code": "no code is pending for this address: run `agentkeys init email` again",
    "too_many_attempts": "too many wrong codes: run `agentkeys init email` again for a new one",
    "rate_limited": "too many attempts: wait and try again",
}


async def email_login_local(
    http: aiohttp.ClientSession, broker_url: str, address: str, ask: CodeReader = read_code
) -> dict[str, Any]:
    """The broker's session for `address` (the verify answer's ``data``)."""
    base = broker_url.rstrip("/")
    status, answer = await post_json(http, base + "/v1/auth/email/request", {"email": address}, "the broker")
    if status != 200:
        error, data, message = refusal(answer)
        if error == "rate_limited":
            raise LoginFailed(f"too many codes requested: try again in {data.get('retry_after_seconds', '?')} s")
        if error == "mail_not_sent":
            raise LoginFailed("the broker could not send the mail: try again later")
        raise LoginFailed(f"the broker refused the address: {message}")
    prompt = f"A 6-digit code was sent to {address}. Code: "
    while True:
        code = ask(prompt)
        if not code:
            raise LoginFailed("no code was entered")
        body = {"email": address, "code": code}
        status, answer = await post_json(http, base + "/v1/auth/email/verify", body, "the broker")
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("data"), dict):
            session: dict[str, Any] = answer["data"]
            return session
        error, details, message = refusal(answer)
        if error == "wrong_code":
            left = int(details.get("attempts_left", 0))
            if left <= 0:
                raise LoginFailed("wrong code, and no tries are left: run `agentkeys init email` again")
            prompt = f"Wrong code ({left} {'try' if left == 1 else 'tries'} left). Code: "
            continue
        if error == "malformed_body":
            raise LoginFailed(f"the code must be 6 digits ({message})")
        raise LoginFailed(_VERIFY_MESSAGES.get(error, f"the broker refused the code: {message}"))


async def rpc(http: aiohttp.ClientSession, worker_url: str, method: str, params: dict[str, Any]) -> Any:
    """One JSON-RPC call to the worker; its ``result``, or `LoginFailed` with its error message."""
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    status, answer = await post_json(http, worker_url, request, "the worker")
    if not isinstance(answer, dict):
        raise LoginFailed(f"the worker answered HTTP {status} without a JSON-RPC reply")
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        raise LoginFailed(f"{method}: the worker refused: {error.get('message', 'error')} ({error.get('code')})")
    return answer.get("result")


async def email_login_heima(
    http: aiohttp.ClientSession, worker_url: str, client_id: str, address: str, ask: CodeReader = read_code
) -> dict[str, Any]:
    """The worker's login result (``access_token``, ``id_token``, ``backend_response``)."""
    await rpc(http, worker_url, "omni_requestEmailVerificationCode", {"client_id": client_id, "user_email": address})
    code = ask(f"The worker sent a 6-digit code to {address}. Code: ")
    if not code:
        raise LoginFailed("no code was entered")
    params = {
        "user_id": {"type": "email", "value": address},
        "user_auth": {"type": "email", "value": code},
        "client_id": client_id,
    }
    try:
        result = await rpc(http, worker_url, "omni_userLogin", params)
    except LoginFailed as exc:
        raise LoginFailed(f"the worker refused the code (wrong, expired or already used): {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("access_token"), str):
        raise LoginFailed("the worker's login answer has no access token")
    return result
