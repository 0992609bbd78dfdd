"""``agentkeys init email ADDRESS``: a 6-digit code sent to the address, typed back by its owner.

* ``local`` backend: the broker sends the code (``POST /v1/auth/email/request``) and trades it for
  its own session (``POST /v1/auth/email/verify``); a wrong code may be typed again while tries
  remain.
* ``heima`` backend: the worker does (``omni_requestEmailVerificationCode`` then ``omni_userLogin``
  with client id ``agentkeys``); the TEE access token it returns is presented to the broker
  (``GET /v1/whoami``), which accepts it only once the worker's ``post_heima_login`` reached it.

The code is read from the terminal without echo, or as a line of standard input when that is not
a terminal; it is never printed. Every failure is one `CliError` line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from agentkeys_kit.client import credentials
from agentkeys_kit.client.api import (
    BrokerApi,
    CliError,
    WorkerApi,
    heima_credential,
    heima_worker,
    normalise_url,
    session_credential,
    timeout,
    unreachable,
)
from agentkeys_kit.protocol.email_rules import EmailVerdict, validate_email
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

CodeReader = Callable[[str], "str | None"]


def register(commands: Any, init: Any) -> None:
    email = init.add_parser("email", help="log in with an e-mail address (a code is sent to it)")
    email.add_argument("address", help="the e-mail address")
    email.set_defaults(handler=init_email)


def read_code(prompt: str, *, echo: bool = False) -> str | None:
    """The code from the terminal (without echo unless `echo`: a code the user reads off a screen
    is no secret there) or the next line of standard input; None at its end."""
    if sys.stdin.isatty():
        try:
            return (input(prompt) if echo else getpass.getpass(prompt)).strip()
        except EOFError:
            return None
    sys.stderr.write(prompt + "\n")
    sys.stderr.flush()
    line = sys.stdin.readline()
    return line.strip() if line else None


# --------------------------------------------------------------------------- the broker, refusals kept


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST `body` to the broker; (status, envelope). Unreachable or not an envelope: `CliError`."""
    base = url.split("/v1/")[0] + "/"
    try:
        async with http.post(url, json=body, timeout=timeout()) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise unreachable("broker", base, exc) from None
    try:
        reply = json.loads(text)
    except ValueError:
        raise CliError(f"the broker at {base} answered HTTP {status} without JSON (is it a broker?)") from None
    if not isinstance(reply, dict):
        raise CliError(f"the broker at {base} answered HTTP {status} with something else than its envelope")
    return status, reply


def refusal(reply: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(data.error, data, message) of a broker refusal envelope."""
    data = reply.get("data") if isinstance(reply.get("data"), dict) else {}
    assert isinstance(data, dict)
    return str(data.get("error", "")), data, str(reply.get("message") or "refused")


_AGAIN = "run `agentkeys init email` again for a new one"
_VERIFY_MESSAGES = {
    "code_expired": f"the code has expired: {_AGAIN}",
    "code_used": f"the code was already used: {_AGAIN}",
    "no_code": f"no code is pending for this address: {_AGAIN}",
    "too_many_attempts": f"too many wrong codes: {_AGAIN}",
}


async def email_login_local(
    http: aiohttp.ClientSession, broker_url: str, address: str, ask: CodeReader = read_code
) -> dict[str, Any]:
    """The broker's session for `address` (the verify answer's ``data``)."""
    status, reply = await post_json(http, broker_url + "v1/auth/email/request", {"email": address})
    if status != 200:
        error, details, message = refusal(reply)
        if error == "rate_limited":
            raise CliError(f"too many codes requested: try again in {details.get('retry_after_seconds', '?')} s")
        if error == "mail_not_sent":
            raise CliError("the broker could not send the mail: try again later")
        raise CliError(f"the broker refused the address: {message}")
    prompt = f"A 6-digit code was sent to {address}. Code: "
    while True:
        code = ask(prompt)
        if not code:
            raise CliError("no code was entered")
        status, reply = await post_json(http, broker_url + "v1/auth/email/verify", {"email": address, "code": code})
        if status == 200 and isinstance(reply.get("data"), dict):
            session: dict[str, Any] = reply["data"]
            return session
        error, details, message = refusal(reply)
        if error == "wrong_code":
            left = int(details.get("attempts_left", 0))
            if left <= 0:
                raise CliError(f"wrong code, and no tries are left: {_AGAIN}")
            prompt = f"Wrong code ({left} {'try' if left == 1 else 'tries'} left). Code: "
            continue
        if error == "malformed_body":
            raise CliError(f"the code must be the 6 digits of the mail ({message})")
        raise CliError(_VERIFY_MESSAGES.get(error, f"the broker refused the code: {message}"))


# --------------------------------------------------------------------------- the worker


async def email_login_heima(
    worker: WorkerApi, client_id: str, address: str, ask: CodeReader = read_code
) -> dict[str, Any]:
    """The worker's login result (``access_token``, ``id_token``, ``backend_response``)."""
    await worker.call("omni_requestEmailVerificationCode", {"client_id": client_id, "user_email": address})
    code = ask(f"The worker sent a 6-digit code to {address}. Code: ")
    if not code:
        raise CliError("no code was entered")
    params = {
        "user_id": {"type": "email", "value": address},
        "user_auth": {"type": "email", "value": code},
        "client_id": client_id,
    }
    try:
        result = await worker.call("omni_userLogin", params)
    except CliError as exc:
        if "cannot reach" in str(exc):
            raise
        raise CliError(f"the worker refused the code (wrong, expired or already used): {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("access_token"), str):
        raise CliError("the worker's login answer carries no access_token")
    return result


# --------------------------------------------------------------------------- the command


async def init_email(args: argparse.Namespace, ask: CodeReader = read_code) -> int:
    address = args.address.strip()
    verdict = validate_email(address)
    if verdict is not EmailVerdict.VALID:
        raise CliError(f"{address!r} is not an e-mail address the worker accepts", 2)
    url = normalise_url(args.broker_url)
    async with aiohttp.ClientSession() as http:
        broker = BrokerApi(http, url)
        config = await broker.config()
        backend = config.get("backend")
        if backend == "heima":
            credential = await _heima_login(http, broker, config, address, ask)
        elif backend == "local":
            if "email" not in (config.get("methods") or []):
                raise CliError(f"the broker at {url} does not offer e-mail login (no mailer configured)")
            credential = session_credential(broker.url, await email_login_local(http, broker.url, address, ask))
        else:
            raise CliError(f"the broker names an unknown login backend {backend!r}")
    return credentials.keep(credential, f"email {address.lower()}, {backend} backend")


async def _heima_login(
    http: aiohttp.ClientSession, broker: BrokerApi, config: dict[str, Any], address: str, ask: CodeReader
) -> credentials.Credential:
    worker, client_id = heima_worker(http, config)
    login = await email_login_heima(worker, client_id, address, ask)
    account = omni_account_of(IdentityKind.EMAIL, address, client_id)
    return await heima_credential(broker, login["access_token"], account)
