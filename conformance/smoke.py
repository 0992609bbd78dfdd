"""End-to-end smoke run: client → simulator → a real recording backend → simulator → client, in
both profiles, with a readable report. It checks the callback contract of the login path on
embedded defaults; the YAML conformance suites extend it clause by clause.

    python -m conformance.smoke [--report DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from conformance.worker_client import WorkerClient
from fixtures.recording_backend import RecordingBackend
from fixtures.wallets import EVM_ALICE_KEY, EVM_BOB_KEY, evm_user_id_value
from omni_sim.config import config_from_env
from omni_sim.server import SimServer
from protocol.identity import IdentityKind, omni_account_of
from protocol.tee_jwt import unverified_claims


@dataclass(slots=True)
class Check:
    profile: str
    clause: str
    passed: bool
    evidence: str


Scenario = Callable[[WorkerClient, SimServer, RecordingBackend], Awaitable[tuple[bool, str]]]


async def wildmeta_evm_login(client: WorkerClient, sim: SimServer, backend: RecordingBackend) -> tuple[bool, str]:
    answer = await client.evm_login(EVM_ALICE_KEY, "wildmeta")
    calls = backend.calls_of("post_heima_login")
    if "result" not in answer or len(calls) != 1:
        return False, f"answer={answer} callbacks={len(calls)}"
    call, result = calls[0], answer["result"]
    account = omni_account_of(IdentityKind.EVM, evm_user_id_value(EVM_ALICE_KEY), "wildmeta")
    ok = (
        call.bearer == result["access_token"]
        and unverified_claims(call.bearer or "").get("sub") == account
        and list(call.json) == ["userId", "clientId", "clientAuth", "heimaLoginSuccess"]
        and result["backend_response"]["code"] == 10000
    )
    return ok, f"POST {call.path} Bearer(sub={account[:12]}…) body keys {list(call.json)}"


async def agentkeys_evm_login(client: WorkerClient, sim: SimServer, backend: RecordingBackend) -> tuple[bool, str]:
    answer = await client.evm_login(EVM_BOB_KEY, "agentkeys")
    calls = backend.calls_of("post_heima_login")
    if sim.context.profile.name == "upstream":
        ok = answer.get("error") == {"code": -32602, "message": "Invalid params"} and not calls
        return ok, f"refused upstream with {answer.get('error')}, {len(calls)} callbacks"
    ok = "result" in answer and len(calls) == 1 and calls[0].path.startswith("/agentkeys/")
    return ok, f"{answer.get('error') or 'ok'}; callbacks {[c.path for c in calls]}"


async def agentkeys_email_login(client: WorkerClient, sim: SimServer, backend: RecordingBackend) -> tuple[bool, str]:
    email = "dave@example.org"
    await client.request_email_code("agentkeys", email)
    mails = sim.context.outbox.list(email)
    if not mails:
        return False, "no verification e-mail in the outbox"
    answer = await client.email_login("agentkeys", email, mails[-1].code)
    calls = backend.calls_of("post_heima_login")
    if sim.context.profile.name == "upstream":
        return answer.get("error", {}).get("code") == -32602 and not calls, f"{answer.get('error')}"
    account = omni_account_of(IdentityKind.EMAIL, email, "agentkeys")
    ok = "result" in answer and len(calls) == 1 and unverified_claims(calls[0].bearer or "").get("sub") == account
    return ok, f"callback sub={account[:12]}… path={calls[0].path if calls else None}"


async def add_wallet_with_id_token(client: WorkerClient, sim: SimServer, backend: RecordingBackend) -> tuple[bool, str]:
    login = await client.evm_login(EVM_ALICE_KEY, "wildmeta")
    tokens = login.get("result", {})
    answer = await client.call("omni_addWallet", token=tokens.get("id_token"))
    calls = backend.calls_of("add_wallet")
    ok = "result" in answer and len(calls) == 1 and calls[0].bearer == tokens.get("access_token") and not calls[0].body
    return ok, f"{answer.get('result') or answer.get('error')}"


async def request_jwt_two_callbacks(
    client: WorkerClient, sim: SimServer, backend: RecordingBackend
) -> tuple[bool, str]:
    email = "erin@example.org"
    await client.request_email_code("wildmeta", email)
    code = sim.context.outbox.list(email)[-1].code
    answer = await client.call(
        "omni_requestJwt",
        {"client_id": "wildmeta", "user_email": email, "google_code": "000000", "email_code": code},
    )
    order = [call.operation for call in backend.calls]
    return "result" in answer and order == [
        "get_account_user_id",
        "user_connect",
    ], f"callbacks {order}"


SCENARIOS: dict[str, Scenario] = {
    "wildmeta EVM login: post_heima_login, access token, camelCase body": wildmeta_evm_login,
    "agentkeys EVM login goes to the agentkeys API (refused upstream)": agentkeys_evm_login,
    "agentkeys e-mail login: callback for the token's OmniAccount": agentkeys_email_login,
    "omni_addWallet with the id token forwards the access token": add_wallet_with_id_token,
    "omni_requestJwt: get_account_user_id then user_connect": request_jwt_two_callbacks,
}


async def run() -> list[Check]:
    checks: list[Check] = []
    local = Path(tempfile.mkdtemp(prefix="omni-sim-"))
    async with RecordingBackend() as backend, aiohttp.ClientSession() as session:
        env = {
            "OE_PUMPX_API_BASE_URL": backend.url,
            "OE_AGENTKEYS_API_BASE_URL": backend.url + "agentkeys/",
            "OE_MAILER_TYPE_WILDMETA": "console",
            "OE_MAILER_TYPE_AGENTKEYS": "console",
        }
        for profile in ("upstream", "agentkeys-patch"):
            config = config_from_env(env, port=0, profile=profile, local_dir=local)
            async with SimServer(config) as sim:
                client = WorkerClient(session, sim.url)
                for clause, scenario in SCENARIOS.items():
                    backend.reset()
                    passed, evidence = await scenario(client, sim, backend)
                    checks.append(Check(profile, clause, passed, evidence))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conformance.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="reports", help="directory for smoke.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    checks = asyncio.run(run())
    report_dir = Path(args.report)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "smoke.json").write_text(json.dumps([asdict(c) for c in checks], indent=2))
    width = max(len(c.clause) for c in checks)
    for check in checks:
        verdict = "PASS" if check.passed else "FAIL"
        print(f"{verdict}  {check.profile:<16} {check.clause:<{width}}  {check.evidence}")
    failed = sum(not c.passed for c in checks)
    print(f"\n{len(checks) - failed} passed, {failed} failed in {time.perf_counter() - started:.1f}s")
    print(f"report: {Path(args.report) / 'smoke.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
