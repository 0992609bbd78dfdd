#!/usr/bin/env python3
"""Login and bearer-validation throughput of the broker, measured in one run.

Two loads against a broker in its own subprocess (``python -m agentkeys_kit.broker.cli run``,
``BROKER_LOGIN_BACKEND=local``, a fresh SQLite file or a fresh PostgreSQL schema dropped at the end,
the session key in a temporary directory):

* **wallet logins/s** (``local``): each caller loops ``POST /v1/auth/wallet/start``, an EIP-191
  signature over the SIWE message (the client's part, in this process), ``POST
  /v1/auth/wallet/verify`` (recovery, the nonce consumed, the user upserted, an ES256 session signed
  and recorded). A login is counted when the verify answers 200 with a session. Target >= 800/s.
* **bearer validations/s** on ``GET /v1/whoami`` at ``--concurrency`` (64) callers, each with its
  own broker session (ES256 verification + the session row read), and again with recorded TEE
  access tokens (RS256 verification + the recorded-token read). Target >= 3000/s, p99 < 50 ms.

Latency is per operation (a login is two requests, a validation one), measured by the caller
(queueing in this process included). Figures are
of this machine while nothing else runs; the report says how busy the rest of it was not.

    PYTHONPATH=. .venv/bin/python scripts/bench_login.py [--duration S] [--concurrency N]
        [--only sqlite|postgresql] [--pg-dsn DSN]

Exit status: 0 when every target passes and nothing failed, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import benchkit
from bench_broker import TEE_KEY_PATH, BrokerProcess, drop_schema, print_profile, wait_ready
from benchkit import SetupError, Window, post_ok, run_window

LOGIN_TARGET = 800.0
VALIDATION_TARGET = 3000.0
P99_TARGET_MS = 50.0


def _sign(message: str, key: bytes) -> str:
    from agentkeys_kit.protocol.signatures import sign_evm_personal

    return "0x" + sign_evm_personal(message.encode("utf-8"), key).hex()


async def bench_database(database: str, args: argparse.Namespace, tmp: Path) -> list[Window]:
    from agentkeys_kit.omni_sim.keystore import load_pkcs1_der
    from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
    from agentkeys_kit.protocol.signatures import evm_address
    from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, encode_auth_token

    env = {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_WALLET_START_RATE_LIMIT_PER_IP_MINUTELY": "1000000",  # the bench is one client address
        "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_KEY_PATH.with_name("tee_jwt_public_key.test.pem")),
        "BROKER_SESSION_KEYPAIR_PATH": str(tmp / f"session-{database}.json"),
        "BROKER_OIDC_KEYPAIR_PATH": str(tmp / f"oidc-{database}.json"),  # never ~/.agentkeys
        "BROKER_LOG_LEVEL": "WARNING",
    }
    schema = None
    if database == "sqlite":
        env["BROKER_DB_URL"] = f"sqlite:///{tmp / 'login-bench.sqlite3'}"
    else:
        schema = f"bench_{secrets.token_hex(6)}"
        env.update(BROKER_DB_URL=args.pg_dsn, BROKER_DB_SCHEMA=schema)
    profile = f"{args.profile}.{database}.prof" if args.profile else None
    broker = BrokerProcess(database, env, tmp, profile)
    broker.start()
    try:
        async with benchkit.client_session(args.concurrency, 30.0) as http:
            await wait_ready(http, broker, 60.0)
            base = broker.url + "/"
            keys = [secrets.token_bytes(32) for _ in range(args.concurrency)]
            addresses = ["0x" + evm_address(key).hex() for key in keys]

            async def login(index: int) -> None:
                start = await post_ok(http, base + "v1/auth/wallet/start", {"address": addresses[index], "chain_id": 1})
                data = start["data"]
                proof = {"request_id": data["request_id"], "signature": _sign(data["message"], keys[index])}
                verified = await post_ok(http, base + "v1/auth/wallet/verify", proof)
                if not verified["data"].get("session_token"):
                    raise RuntimeError("no session")

            windows = [await run_window("wallet logins (start + verify)", args.concurrency, args.duration, login)]
            sessions = [(await _post_login(http, base, keys[i], addresses[i])) for i in range(args.concurrency)]
            tee_key = load_pkcs1_der(TEE_KEY_PATH)
            tee_tokens = []
            for address in addresses:
                account = omni_account_of(IdentityKind.EVM, address, "agentkeys")
                token = encode_auth_token(
                    AuthTokenClaims(account, "access", int(time.time()) + 86400, "agentkeys"), tee_key
                )
                body = {
                    "userId": {"type": "evm", "value": address},
                    "clientId": "agentkeys",
                    "clientAuth": None,
                    "heimaLoginSuccess": True,
                }
                await post_ok(http, base + "v3/account/post_heima_login", body, token)
                tee_tokens.append(token)

            def whoami(tokens: list[str]) -> Callable[[int], Awaitable[None]]:
                async def call(index: int) -> None:
                    headers = {"Authorization": f"Bearer {tokens[index]}"}
                    async with http.get(base + "v1/whoami", headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"HTTP {response.status}")

                return call

            windows.append(
                await run_window("whoami, broker sessions", args.concurrency, args.duration, whoami(sessions))
            )
            windows.append(
                await run_window("whoami, TEE access tokens", args.concurrency, args.duration, whoami(tee_tokens))
            )
            return windows
    finally:
        broker.stop()
        if schema is not None:
            await drop_schema(args.pg_dsn, schema)


async def _post_login(http: aiohttp.ClientSession, base: str, key: bytes, address: str) -> str:
    start = (await post_ok(http, base + "v1/auth/wallet/start", {"address": address, "chain_id": 1}))["data"]
    proof = {"request_id": start["request_id"], "signature": _sign(start["message"], key)}
    return str((await post_ok(http, base + "v1/auth/wallet/verify", proof))["data"]["session_token"])


def render(results: dict[str, list[Window]], concurrency: int, load: float) -> tuple[str, bool]:
    """`load`: the 1-minute load average before the run (after it, the run's own processes count)."""
    lines = [
        benchkit.machine_line(benchkit.machine_info()),
        f"callers: {concurrency}",
        f"load average before the run: {load:.2f}",
    ]
    if load > (os.cpu_count() or 1) / 2:
        lines.append("WARNING: the machine is busy with other work; these figures are disturbed, rerun when it is idle")
    ok = True
    for database, windows in results.items():
        lines.append(f"\n{database}:")
        for window in windows:
            target = LOGIN_TARGET if window.what.startswith("wallet") else VALIDATION_TARGET
            p99 = window.p(99)
            passed = window.rate >= target and window.failures == 0
            if not window.what.startswith("wallet"):
                passed = passed and p99 is not None and p99 < P99_TARGET_MS
            ok = ok and passed
            lines.append(
                f"  {window.what:<32} {window.rate:8,.0f}/s (target {target:,.0f})  "
                f"p50 {benchkit.fmt(window.p(50), '.1f')} ms  p99 {benchkit.fmt(p99, '.1f')} ms  "
                f"failures {window.failures}  {benchkit.verdict(passed)}"
            )
    return "\n".join(lines), ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per window (default 5)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-dsn", default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--profile", default=None, help="cProfile the broker into PREFIX.<db>.prof and summarise")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    try:
        results = benchkit.per_database(args, "bench-login-", bench_database)
    except SetupError as exc:
        print(f"bench_login: {exc}", file=sys.stderr)
        return 2
    text, ok = render(results, args.concurrency, load_before)
    print(text)
    for database in results if args.profile else ():
        print_profile(f"{args.profile}.{database}.prof", 25)
    if args.json:
        figures = {
            db: [{"what": w.what, "rate": w.rate, "p99_ms": w.p(99), "failures": w.failures} for w in ws]
            for db, ws in results.items()
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    benchkit.bootstrap_path()
    raise SystemExit(main())
