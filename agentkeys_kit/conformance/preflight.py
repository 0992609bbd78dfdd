"""Before any case runs against a worker someone else runs: is it there, and does it reach the harness?

A worker that is not configured for the harness fails every case that needs a callback or a mail,
each with "the worker made 0 calls"; one clear message instead is the point of this module.

1. `wait_for_worker`: ``omni_getHealth`` until the worker answers (``--wait-for-worker``).
2. `run_preflight`, each check a `Check`:

   * *health* — ``omni_getHealth`` answers ``"OK"``;
   * *target*, a note when the target answers ``/_sim/info``: it is the kit's simulator, not a
     worker (`identify_simulator`; the reports say so too);
   * *callbacks (pumpx API)* — a wildmeta wallet login, whose ``post_heima_login`` must arrive at the
     receiver's ``/pumpx/`` path (today's worker and the patched one alike);
   * *JWT key* — the tokens of that login verify (RS256) with the key given as ``--tee-key``;
   * *callbacks (agentkeys API)*, for profile ``agentkeys-patch`` — an agentkeys login; a worker
     that refuses the client (upstream's ``-32602``) is reported, not fatal: that is what the patch
     clauses test;
   * *mail (<client>)*, when a mailer that reaches the harness is declared — a code requested for
     each client must arrive at the SendGrid stand-in (or SMTP sink);
   * *clock* and *simulator endpoints*, when declared — the simulator's ``/_sim/`` answers, and its
     clock has not been moved yet (it only moves forward: one run per omni-sim started);
   * *OAuth2 (<client>)* — ``omni_getOAuth2AuthorizationData`` names the OAuth2 client the harness
     printed (``OE_GOOGLE_CLIENT_ID_<CLIENT>``); with ``--tee-oauth2-provider harness`` its
     authorize URL must also be the fake Google's, which only an omni-sim given the ``OE_SIM_*``
     lines can do (a real worker's endpoints are compiled in);

   A failed fatal check stops the run before any case, with every problem and the variable that
   fixes it (`PreflightFailed`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt

from agentkeys_kit.conformance.receiver import CallbackScript, ObservedCallback
from agentkeys_kit.conformance.worker_client import WorkerClient, transport_problem

if TYPE_CHECKING:
    from agentkeys_kit.conformance.runner import Harness

CALLBACK_GRACE = 1.0
HEALTH_TIMEOUT = 5.0
MAIL_WAIT = 10.0
# Worker errors that mean "I tried to call the backend and it failed" (both eras), as opposed to
# refusing the request itself: the sign that its API URL points somewhere else.
_BACKEND_FAILURES = {-32000, -32161, -32041, -32603}


class WorkerUnreachable(Exception):
    """The worker did not answer within the wait."""


class PreflightFailed(Exception):
    """The worker is not configured for this harness; the message says what to change."""


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fatal: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fatal": self.fatal}

    @property
    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.fatal else "note")
        return f"  {mark} {self.name}: {self.detail}"


async def _health(http: aiohttp.ClientSession, url: str) -> Any:
    request = {"jsonrpc": "2.0", "id": 1, "method": "omni_getHealth", "params": []}
    async with http.post(url, json=request, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)) as response:
        raw = await response.read()
    try:
        return json.loads(raw)
    except ValueError:
        return {"http_status": response.status, "body": raw[:200].decode("utf-8", errors="replace")}


async def wait_for_worker(http: aiohttp.ClientSession, url: str, seconds: float, announce: Any = None) -> Any:
    """The first answer to ``omni_getHealth``, waiting up to `seconds` for the worker to listen."""
    deadline = time.monotonic() + seconds
    announced = False
    while True:
        try:
            return await _health(http, url)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            if time.monotonic() >= deadline:
                problem = transport_problem(exc, HEALTH_TIMEOUT)
                tried = f" (omni_getHealth, tried for {seconds:g} s)" if seconds else " (omni_getHealth)"
                raise WorkerUnreachable(f"cannot reach the worker at {url}: {problem}{tried}") from None
            if announce is not None and not announced:
                announce(f"waiting up to {seconds:g} s for the worker at {url} …")
                announced = True
            await asyncio.sleep(0.5)


async def run_preflight(h: Harness, health: Any) -> list[Check]:
    url = h.tee.url or ""
    checks = [_health_check(health)]
    if not checks[0].ok:
        return checks
    h.sim_info = await identify_simulator(h, url)
    if h.sim_info:
        checks.append(_simulator_check(h, url))
    checks += await _login_checks(h, url, "wildmeta", "pumpx", "OE_PUMPX_API_BASE_URL")
    if h.tee.profile == "agentkeys-patch":
        checks += await _login_checks(h, url, "agentkeys", "agentkeys", "OE_AGENTKEYS_API_BASE_URL")
    if "mail" in h.tee.capabilities:
        for client in ("wildmeta", "agentkeys"):
            checks.append(await _mail_check(h, url, client))
    if h.tee.clock:
        checks.append(await _clock_check(h, url))
    if h.tee.sim_endpoints:
        checks.append(await _sim_endpoint_check(h, url, "_sim/info", "simulator endpoints"))
    for client in ("wildmeta", "agentkeys"):
        checks.append(await _oauth2_check(h, url, client))
    return checks


async def identify_simulator(h: Harness, url: str) -> dict[str, str]:
    """The kit's simulator answers ``GET /_sim/info`` with ``{"simulator": "omni_sim", "profile": …}``;
    a worker has no such endpoint. The reports then say the verdicts are the simulator's, so a run
    against an ``omni-sim run`` process is never presented as a worker's behaviour."""
    try:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)
        async with h.http.get(url + "_sim/info", timeout=timeout) as response:
            if response.status != 200:
                return {}
            info = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    if not isinstance(info, dict) or info.get("simulator") != "omni_sim":
        return {}
    return {key: info[key] for key in ("simulator", "profile", "error_era") if isinstance(info.get(key), str)}


def _simulator_check(h: Harness, url: str) -> Check:
    profile = h.sim_info.get("profile", "?")
    detail = f"{url}_sim/info answers: this is the kit's simulator omni-sim (profile {profile}), not a Heima worker"
    if profile != h.tee.profile:
        detail += f"; the run declares profile {h.tee.profile}"
    return Check("target", True, detail, fatal=False)


def failure_message(url: str, checks: list[Check]) -> str:
    lines = [f"preflight failed: the worker at {url} is not configured for this harness; no case ran."]
    lines += [check.line for check in checks if not check.ok and check.fatal]
    return "\n".join(lines)


def _health_check(health: Any) -> Check:
    if isinstance(health, dict) and health.get("result") == "OK":
        return Check("health", True, 'omni_getHealth answered "OK"')
    shown = json.dumps(health, ensure_ascii=False)[:200]
    return Check("health", False, f'omni_getHealth did not answer "OK" (is this an omni-executor?): {shown}')


async def _login_checks(h: Harness, url: str, client: str, api: str, variable: str) -> list[Check]:
    name = f"callbacks ({api} API)"
    expected = h.receiver.api_url(api)
    fix = f"set {variable}={expected}"
    receiver = h.receiver
    already = len(receiver.observed)
    receiver.open_window([CallbackScript(api, "post_heima_login", 1, {})])
    try:
        answer = await WorkerClient(h.http, url).evm_login(secrets.token_bytes(32), client)
        await receiver.wait_for(already + 1, time.monotonic() + CALLBACK_GRACE)
    except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
        return [Check(name, False, f"the {client} login probe failed before the worker answered: {_problem(h, exc)}")]
    finally:
        receiver.close_window()
    arrived = receiver.observed[already:]
    receiver.observed[already:] = []  # the probe's calls are not a case's
    taken = [call for call in arrived if call.api == api and call.op == "post_heima_login"]
    error = answer.get("error") if isinstance(answer, dict) else None
    if taken:
        arrived_check = Check(name, True, f"post_heima_login of the {client} login arrived at {expected}")
        return [arrived_check] if client != "wildmeta" else [arrived_check, _key_check(h, answer)]
    if arrived:
        wrong = f"the worker called {_calls(arrived)}, not {expected}v3/account/post_heima_login"
        return [Check(name, False, f"{wrong}: {fix} (keep its trailing /)")]
    code = error.get("code") if isinstance(error, dict) else None
    if client == "agentkeys" and code == -32602:
        note = "the worker refuses client agentkeys (-32602, today's upstream behaviour): the patch clauses will fail"
        return [Check(name, False, note, fatal=False)]
    if code in _BACKEND_FAILURES:
        return [Check(name, False, f"the worker could not call post_heima_login for {client} ({_short(error)}): {fix}")]
    return [Check(name, False, f"the {client} login made no callback and answered {_short(answer)}")]


def _key_check(h: Harness, answer: Any) -> Check:
    result = answer.get("result") if isinstance(answer, dict) else None
    token = result.get("id_token") if isinstance(result, dict) else None
    if not isinstance(token, str):
        return Check("JWT key", False, f"the login answered no id_token to check the key with: {_short(answer)}")
    try:
        jwt.decode(
            token,
            h.tee.public_key,
            algorithms=["RS256"],
            options={"verify_aud": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidTokenError as exc:
        detail = f"the worker's tokens do not verify with --tee-key {h.tee.key.source} ({exc}): not this worker's key"
        return Check("JWT key", False, detail)
    return Check("JWT key", True, f"the worker's tokens verify with {h.tee.key.source} ({h.tee.key.kind})")


async def _mail_check(h: Harness, url: str, client: str) -> Check:
    name = f"mail ({client})"
    upper = client.upper()
    email = f"preflight-{secrets.token_hex(4)}@example.com"
    baseline = len(h.mailbox.mails())
    try:
        answer = await WorkerClient(h.http, url).request_email_code(client, email)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(name, False, f"omni_requestEmailVerificationCode failed: {_problem(h, exc)}")
    lines = h.addresses()
    wanted = ", ".join(
        f"{key}={value}" for key, value in lines.items() if key.endswith(f"_{upper}") and "API_KEY" not in key
    )
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return Check(name, False, f"the worker answered {_short(error)}: set {wanted}")
    mail = await h.mailbox.wait_for(email, baseline, MAIL_WAIT)
    if mail is None:
        return Check(name, False, f"no mail reached the harness within {MAIL_WAIT:g} s: set {wanted}")
    if mail.code is None:
        return Check(name, False, f"a mail arrived via {mail.via} but the harness found no 6-digit code in it")
    return Check(name, True, f"a verification code arrived via {mail.via}")


async def _oauth2_check(h: Harness, url: str, client: str) -> Check:
    """The OAuth2 client the harness printed is the worker's; with the harness's provider declared,
    the authorize URL is the fake Google's (`get_oauth2_authorization_data.rs@60635e7f`)."""
    name = f"OAuth2 ({client})"
    lines = h.addresses()
    upper = client.upper()
    oauth_id = lines[f"OE_GOOGLE_CLIENT_ID_{upper}"]
    fix = f"set OE_GOOGLE_CLIENT_ID_{upper}={oauth_id} and OE_GOOGLE_CLIENT_SECRET_{upper}"
    params = {"provider": "google", "uid": f"preflight-{secrets.token_hex(4)}", "client_id": client}
    try:
        answer = await WorkerClient(h.http, url).call("omni_getOAuth2AuthorizationData", params)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(name, False, f"omni_getOAuth2AuthorizationData failed: {_problem(h, exc)}")
    result = answer.get("result") if isinstance(answer, dict) else None
    authorize = result.get("authorize_url") if isinstance(result, dict) else None
    if not isinstance(authorize, str):
        return Check(name, False, f"the worker answered {_short(answer)}: {fix}")
    if f"client_id={oauth_id}&" not in authorize:
        return Check(name, False, f"the worker's Google client is not the harness's ({_short(authorize)}): {fix}")
    endpoint = h.parties.google_endpoints[0]
    if h.tee.oauth2_provider and not authorize.startswith(endpoint + "?"):
        detail = (
            f"declared --tee-oauth2-provider harness, but the authorize URL is {authorize.split('?')[0][:200]}: "
            f"set OE_SIM_GOOGLE_AUTHORIZE_URL={endpoint} and the other OE_SIM_* lines (omni-sim only; "
            "a real worker cannot use the harness's provider: drop the declaration)"
        )
        return Check(name, False, detail)
    where = "the harness's fake Google" if h.tee.oauth2_provider else "the provider compiled into the worker"
    return Check(name, True, f"the Google client is {oauth_id}, authorizing at {where}")


async def _sim_endpoint_check(h: Harness, url: str, path: str, name: str) -> Check:
    try:
        async with h.http.get(url + path) as response:
            ok = response.status == 200
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = f"GET {url}{path} failed ({_problem(h, exc)}): declared, but the worker is not an omni-sim"
        return Check(name, False, detail)
    if not ok:
        return Check(
            name, False, f"GET {url}{path} answered HTTP {status}: declared, but the worker is not an omni-sim"
        )
    return Check(name, True, f"{url}{path} answers")


async def _clock_check(h: Harness, url: str) -> Check:
    """A declared clock must be the wall clock: the simulator's clock only moves forward, so a worker
    an earlier run moved (expiry cases advance it by days) would fail every case that checks a
    token's lifetime against the harness's own clock."""
    endpoint = await _sim_endpoint_check(h, url, "_sim/clock", "clock")
    if not endpoint.ok:
        return endpoint
    async with h.http.get(url + "_sim/clock") as response:
        clock = await response.json(content_type=None)
    offset = clock.get("offset") if isinstance(clock, dict) else None
    frozen = clock.get("frozen") if isinstance(clock, dict) else None
    if offset != 0 or frozen:
        detail = (
            f"the worker's clock was moved before this run (offset {offset} s, frozen {frozen}): restart the omni-sim"
        )
        return Check("clock", False, detail)
    return Check("clock", True, f"{url}_sim/clock answers and is the wall clock; the expiry cases will move it")


def _problem(h: Harness, exc: BaseException) -> str:
    return transport_problem(exc, h.http.timeout.total)


def _calls(calls: list[ObservedCallback]) -> str:
    return ", ".join(f"{call.method} {call.path}" for call in calls)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= 240 else text[:237] + "..."
