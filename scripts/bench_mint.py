#!/usr/bin/env python3
"""Throughput of ``POST /v1/mint-oidc-jwt`` at 64 callers, on SQLite and on PostgreSQL.

Each mint is the real thing: the broker verifies the caller's bearer (a TEE access token recorded
by ``post_heima_login``, so one database read), signs an ES256 JWT with its OIDC key and writes the
mint's audit-chain row (`broker/audit_chain.py`: concurrent mints share one transaction, group
commit), and answers only once that row is committed. Targets: >= 1500 mints/s and p99 < 50 ms on
both databases, no failed mint, the chain intact afterwards with one row per mint.

The broker runs in its own subprocess as deployed (``python -m agentkeys_kit.broker.cli run``; a
fresh SQLite file, or a fresh PostgreSQL schema dropped at the end). The load generator is this
process: ``--users`` wallets logged in through ``post_heima_login`` first, then ``--concurrency``
workers on one keep-alive session, a warm-up, and a ``--duration`` window per database.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python scripts/bench_mint.py [--duration S] [--concurrency N]
        [--only sqlite|postgresql] [--pg-dsn DSN] [--users N]

Exit status: 0 when every target passes and nothing failed, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import benchkit
from benchkit import HOST, ROOT, SetupError

benchkit.bootstrap_path()

from agentkeys_kit.omni_sim.keystore import load_pkcs1_der  # noqa: E402
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of  # noqa: E402
from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, encode_auth_token  # noqa: E402

TEE_KEY_PATH = ROOT / "fixtures" / "keys" / "auth_token_key.test.bin"
TEE_PUBLIC_KEY = TEE_KEY_PATH.with_name("tee_jwt_public_key.test.pem")
RATE_TARGET = 1500.0
P99_TARGET_MS = 50.0
LOGIN_PATH = "/v3/account/post_heima_login"
MINT_PATH = "/v1/mint-oidc-jwt"


class Broker(benchkit.ChildProcess):
    def __init__(self, database: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(f"the {database} broker", log_dir / f"broker-{database}.log")
        self.url = f"http://{HOST}:{self.port}"
        self.env = env

    def start(self) -> None:
        env = benchkit.child_env(drop_prefix="BROKER_")
        env.update(self.env)
        path = os.environ.get("BENCH_MINT_PROFILE")  # a cProfile file of the broker, when set
        profile = ["-m", "cProfile", "-o", path] if path else []
        self.spawn([sys.executable, *profile, "-m", "agentkeys_kit.broker.cli", "run", "--port", str(self.port)], env)


async def login_users(session: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    """`count` wallets logged in as the worker reports it; their TEE access tokens."""
    key = load_pkcs1_der(TEE_KEY_PATH)
    tokens = []
    for index in range(count):
        wallet = f"0x{index + 1:040x}"
        claims = AuthTokenClaims(
            sub=omni_account_of(IdentityKind.EVM, wallet, "agentkeys"),
            typ="access",
            exp=int(time.time()) + 3600,
            aud="agentkeys",
        )
        token = encode_auth_token(claims, key)
        body = {
            "userId": {"type": "evm", "value": wallet},
            "clientId": "agentkeys",
            "clientAuth": None,
            "heimaLoginSuccess": True,
        }
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(url + LOGIN_PATH, json=body, headers=headers) as response:
            if response.status != 200:
                raise SetupError(f"login {index} failed: HTTP {response.status} {await response.text()}")
        tokens.append(token)
    return tokens


async def load(
    session: aiohttp.ClientSession, url: str, tokens: list[str], concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    result = benchkit.LoadResult()
    latencies: list[float] = []
    start = time.monotonic() + warmup
    stop = start + duration
    total = 0

    async def mint(token: str) -> None:
        async with session.post(url + MINT_PATH, headers={"Authorization": f"Bearer {token}"}) as response:
            text = await response.text()
            if response.status != 200:
                raise benchkit.BenchFailure(f"HTTP {response.status}: {text[:200]}")
            if "jwt" not in json.loads(text):
                raise benchkit.BenchFailure("no jwt in the answer")

    async def worker(number: int) -> None:
        nonlocal total
        token = tokens[number % len(tokens)]
        while (now := time.monotonic()) < stop:
            failed = await benchkit.attempt(mint(token))
            elapsed = time.monotonic() - now
            total += 1
            in_window = now >= start
            if failed is not None:
                result.record_failure(failed, in_window)
            elif in_window:
                latencies.append(elapsed)

    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    latencies.sort()
    result.completed = len(latencies)
    result.rate_per_s = len(latencies) / duration
    result.set_percentiles(latencies)
    return {**result.__dict__, "requests_total": total}


async def chain_verdict(env: dict[str, str]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentkeys_kit.broker.cli",
        "audit",
        "verify",
        env={**benchkit.child_env(drop_prefix="BROKER_"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await process.communicate()
    if not out:
        raise SetupError(f"audit verify failed: {err.decode()[:300]}")
    verdict: dict[str, Any] = json.loads(out)
    return verdict


async def bench_database(database: str, args: argparse.Namespace, tmp: Path, dsn: str | None) -> dict[str, Any]:
    env = {
        "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY),
        "BROKER_OIDC_KEYPAIR_PATH": str(tmp / f"oidc-{database}.json"),
        "BROKER_SESSION_KEYPAIR_PATH": str(tmp / f"session-{database}.json"),
        "BROKER_OIDC_ISSUER": "https://oidc.bench.invalid",
        "BROKER_LOG_LEVEL": "WARNING",
    }
    schema = None
    if database == "sqlite":
        env["BROKER_DB_URL"] = f"sqlite:///{tmp / 'mint-bench.sqlite3'}"
    else:
        assert dsn is not None
        schema = f"bench_{secrets.token_hex(6)}"
        env.update({"BROKER_DB_URL": dsn, "BROKER_DB_SCHEMA": schema})
    broker = Broker(database, env, tmp)
    broker.start()
    try:
        async with benchkit.client_session(args.concurrency, 30.0) as session:

            async def ready() -> None:
                async with session.get(broker.url + "/readyz") as response:
                    if response.status != 200:
                        raise benchkit.NotReady(f"HTTP {response.status}")

            await benchkit.wait_ready(broker, ready, 60.0, (aiohttp.ClientError, OSError))
            tokens = await login_users(session, broker.url, args.users)
            figures = await load(session, broker.url, tokens, args.concurrency, args.warmup, args.duration)
        verdict = await chain_verdict(env)
    finally:
        broker.stop()
        if schema is not None and dsn is not None:
            import asyncpg

            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await connection.close()
    figures["chain_intact"] = verdict["intact"]
    figures["chain_rows"] = verdict["rows"]
    # every mint answered (in and out of the window) and every login is one row
    figures["chain_rows_expected"] = figures["requests_total"] - figures["failures_total"] + args.users
    return figures


def report(database: str, figures: dict[str, Any], concurrency: int) -> bool:
    rate, p99 = figures["rate_per_s"], figures["latency_p99_ms"]
    chain_ok = figures["chain_intact"] and figures["chain_rows"] == figures["chain_rows_expected"]
    ok = rate >= RATE_TARGET and p99 is not None and p99 < P99_TARGET_MS and not figures["failures_total"] and chain_ok
    print(
        f"{database:<11} mint-oidc-jwt at {concurrency} callers: {rate:,.0f}/s (target >= {RATE_TARGET:,.0f}), "
        f"p50 {benchkit.fmt(figures['latency_p50_ms'], '.1f')} ms, p99 {benchkit.fmt(p99, '.1f')} ms "
        f"(target < {P99_TARGET_MS:.0f}), failures {figures['failures_total']}, chain "
        f"{'intact' if figures['chain_intact'] else 'BROKEN'} {figures['chain_rows']}/{figures['chain_rows_expected']} "
        f"rows: {benchkit.verdict(ok)}",
        flush=True,
    )
    for sample in figures["failure_samples"]:
        print(f"  failure: {sample}")
    return ok


async def bench(args: argparse.Namespace, databases: list[str], dsn: str | None) -> bool:
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-mint-") as directory:
        for database in databases:
            figures = await bench_database(database, args, Path(directory), dsn)
            ok = report(database, figures, args.concurrency) and ok
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-dsn", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    databases = [args.only] if args.only else ["sqlite", "postgresql"]
    print(benchkit.machine_line(benchkit.machine_info()), flush=True)
    try:
        with contextlib.ExitStack() as stack:  # the PostgreSQL is chosen before the event loop runs
            dsn = stack.enter_context(benchkit.postgres(args.pg_dsn)) if "postgresql" in databases else None
            return 0 if asyncio.run(bench(args, databases, dsn)) else 1
    except SetupError as exc:
        print(f"bench_mint: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
