#!/usr/bin/env python3
"""E-mail login throughput of the broker: request a code, read it from the mail, verify it.

The broker runs in its own subprocess (``BROKER_LOGIN_BACKEND=local``, a fresh SQLite file or a
fresh PostgreSQL schema dropped at the end) and sends each code over real SMTP to an aiosmtpd sink
in this process; the rate limits are lifted so that the figure is the login path's own cost. Each
caller loops ``POST /v1/auth/email/request`` (the address validated, two rate-limit buckets counted,
the code's HMAC stored, the mail handed to the relay), then ``POST /v1/auth/email/verify`` (the try
counted and the code spent in one transaction, the user upserted, an ES256 session signed and
recorded). A login is counted when the verify answers 200 with a session. No target: the mail
relay's latency dominates in production.

    PYTHONPATH=. .venv/bin/python scripts/bench_login_email.py [--duration S] [--concurrency N]
        [--only sqlite|postgresql] [--pg-dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

import benchkit
from bench_broker import TEE_KEY_PATH, BrokerProcess, drop_schema, wait_ready
from benchkit import SetupError, Window, post_ok, run_window


def _sink() -> tuple[object, dict[str, str]]:
    from agentkeys_kit.conformance.mail_sink import Mailbox, ReceivedMail, SmtpSink

    codes: dict[str, str] = {}

    class LatestCodes(Mailbox):
        def add(self, mail: ReceivedMail) -> None:  # keep only the last code per address
            for to in mail.to:
                codes[to.lower()] = mail.code or ""

    sink = SmtpSink(LatestCodes())
    sink.start()
    return sink, codes


async def bench_database(database: str, args: argparse.Namespace, tmp: Path) -> Window:
    sink, codes = _sink()
    env = {
        "BROKER_LOGIN_BACKEND": "local",
        "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_KEY_PATH.with_name("tee_jwt_public_key.test.pem")),
        "BROKER_SESSION_KEYPAIR_PATH": str(tmp / f"session-{database}.json"),
        "BROKER_OIDC_KEYPAIR_PATH": str(tmp / f"oidc-{database}.json"),  # never ~/.agentkeys
        "BROKER_EMAIL_CODE_KEY_PATH": str(tmp / "email_code.key"),
        "BROKER_SMTP_URL": sink.url,  # type: ignore[attr-defined]
        "BROKER_EMAIL_RATE_LIMIT_PER_EMAIL_HOURLY": "1000000000",
        "BROKER_EMAIL_RATE_LIMIT_PER_IP_MINUTELY": "1000000000",
        "BROKER_LOG_LEVEL": "WARNING",
    }
    schema = None
    if database == "sqlite":
        env["BROKER_DB_URL"] = f"sqlite:///{tmp / 'email-bench.sqlite3'}"
    else:
        schema = f"bench_{secrets.token_hex(6)}"
        env.update(BROKER_DB_URL=args.pg_dsn, BROKER_DB_SCHEMA=schema)
    broker = BrokerProcess(database, env, tmp, None)
    broker.start()
    counter = itertools.count()
    try:
        async with benchkit.client_session(args.concurrency, 30.0) as http:
            await wait_ready(http, broker, 60.0)
            base = broker.url + "/"

            async def login(index: int) -> None:
                address = f"user{next(counter)}@bench.example.org"
                await post_ok(http, base + "v1/auth/email/request", {"email": address})
                for _ in range(200):
                    code = codes.pop(address, None)
                    if code:
                        break
                    await asyncio.sleep(0.005)
                else:
                    raise RuntimeError("no mail")
                verified = await post_ok(http, base + "v1/auth/email/verify", {"email": address, "code": code})
                if not verified["data"].get("session_token"):
                    raise RuntimeError("no session")

            return await run_window("e-mail logins (request + verify)", args.concurrency, args.duration, login)
    finally:
        broker.stop()
        sink.stop()  # type: ignore[attr-defined]
        if schema is not None:
            await drop_schema(args.pg_dsn, schema)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per window (default 5)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-dsn", default=None)
    args = parser.parse_args(argv)
    try:
        results = benchkit.per_database(args, "bench-email-", bench_database)
    except SetupError as exc:
        print(f"bench_login_email: {exc}", file=sys.stderr)
        return 2
    print(benchkit.machine_line(benchkit.machine_info()))
    print(f"callers: {args.concurrency}")
    failed = False
    for database, window in results.items():
        failed = failed or window.failures > 0
        print(
            f"{database:<11} {window.what:<34} {window.rate:8,.0f}/s  p50 {benchkit.fmt(window.p(50), '.1f')} ms  "
            f"p99 {benchkit.fmt(window.p(99), '.1f')} ms  failures {window.failures}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    benchkit.bootstrap_path()
    raise SystemExit(main())
