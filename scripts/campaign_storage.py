#!/usr/bin/env python3
"""The reliability campaign's attacks on the broker's storage (issue 11), run against real broker
processes (``python -m agentkeys_kit.broker.cli run``, configured only by ``BROKER_*`` variables),
each with a verdict. Loopback only; every campaign is bounded in time.

    .venv/bin/python scripts/campaign_storage.py [CAMPAIGN ...] [--duration S] [--pg-dsn DSN]

flood      SQLite: an ``Authorization: Bearer garbage`` flood at add_wallet beside valid logins.
           The WAL stays bounded (it grew to 4 GB in 60 s), refusal rows stay within the
           per-source budget, and the refusal rows count every refusal (sum of repeat_count).
grants     Two broker processes on one database (PostgreSQL, then one SQLite file): rounds of 8
           identical concurrent grant creates (up to 8 active grants before), then revokes
           racing creates (deadlocks, 503, before): one open grant per pair, no 5xx.
starts     PostgreSQL: N brokers (``BROKER_DB_POOL_SIZE=1``) started at once on a new schema
           (2 of 60 failed before): every one comes up, each migration applied once.
terminate  PostgreSQL: ``pg_terminate_backend`` on the broker's connections every half second
           under load (an asyncpg error escaped as a 500 before): no 500.
outage     PostgreSQL behind a TCP proxy the script cuts, then restores: every request is a 200
           or a 503 envelope, the log has no traceback (60 lines per request before), one line per
           failed request, one "unavailable", one "available again", and 200s after.

With no campaign named, all run. Exit status 0 when every campaign passes, 1 otherwise, 2 when
one could not be set up. Timing figures are not the point here; the machine may be busy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import benchkit
from benchkit import HOST, ROOT, SetupError

CLIENT_ID = "agentkeys"
TEE_KEY_PATH = ROOT / "fixtures" / "keys" / "auth_token_key.test.bin"
TEE_PUBLIC_KEY = ROOT / "fixtures" / "keys" / "tee_jwt_public_key.test.pem"
WAL_BOUND = 16 * 1024 * 1024 + 8 * 1024 * 1024  # the broker's limit plus what lands between two looks
CAMPAIGNS = ("flood", "grants", "starts", "terminate", "outage")

benchkit.bootstrap_path()


# =========================================================================== brokers and callers


class Broker(benchkit.ChildProcess):
    """``python -m agentkeys_kit.broker.cli run --port P``; stopped with SIGINT (a clean stop)."""

    stop_signal = signal.SIGINT
    stop_within = 30.0

    def __init__(self, label: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(label, log_dir / f"{label}.log")
        self.url = f"http://{HOST}:{self.port}"
        self.env = {
            "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY),
            "BROKER_OIDC_KEYPAIR_PATH": str(log_dir / f"oidc-keypair-{label}.json"),
            "BROKER_SESSION_KEYPAIR_PATH": str(log_dir / "session-keypair.json"),
            **env,
        }

    def start(self) -> None:
        env = benchkit.child_env(drop_prefix="BROKER_")
        env.update(self.env)
        self.spawn([sys.executable, "-m", "agentkeys_kit.broker.cli", "run", "--port", str(self.port)], env)

    async def ready(self, session: aiohttp.ClientSession, within: float = 60.0) -> None:
        async def readyz() -> None:
            async with session.get(self.url + "/readyz") as response:
                if response.status != 200:
                    raise benchkit.NotReady(f"HTTP {response.status}")

        await benchkit.wait_ready(self, readyz, within, (aiohttp.ClientError, OSError, TimeoutError))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Caller:
    """An EVM identity with a TEE access token minted as the worker mints it."""

    _key: Any = None

    def __init__(self, address: str | None = None) -> None:
        from agentkeys_kit.omni_sim.keystore import load_pkcs1_der
        from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
        from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, encode_auth_token

        if Caller._key is None:
            Caller._key = load_pkcs1_der(TEE_KEY_PATH)
        self.address = address or "0x" + secrets.token_bytes(20).hex()
        account = omni_account_of(IdentityKind.EVM, self.address, CLIENT_ID)
        token = encode_auth_token(AuthTokenClaims(account, "access", int(time.time()) + 86400, CLIENT_ID), Caller._key)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.login_body = {
            "userId": {"type": "evm", "value": self.address},
            "clientId": CLIENT_ID,
            "clientAuth": None,
            "heimaLoginSuccess": True,
        }


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON body or text); a transport failure is status 0."""
    try:
        async with session.request(kwargs.pop("method", "POST"), url, **kwargs) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


async def run_for(seconds: float, workers: int, work: Callable[[int], Awaitable[None]]) -> None:
    deadline = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        while time.monotonic() < deadline:
            await work(worker)

    await asyncio.gather(*(loop(n) for n in range(workers)))


async def pg_execute(dsn: str, sql: str, *args: Any) -> Any:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def file_size(path: Path) -> int:
    """A stat of a local file: too fast to matter to the event loop, and sampled on it on purpose."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def new_schema() -> str:
    return f"campaign_{secrets.token_hex(6)}"


def first_traceback(log: str) -> str:
    """The first traceback of a log, its head and its last lines, for the report."""
    start = log.find("Traceback")
    if start < 0:
        return ""
    lines = log[:start].splitlines()[-1:] + log[start:].splitlines()[:60]
    end = next((n for n, line in enumerate(lines[1:], 1) if line and not line.startswith(" ")), len(lines) - 1)
    return " | ".join(lines[: end + 1][:2] + lines[max(2, end - 2) : end + 1])


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.ok = True

    def check(self, what: str, value: Any, passed: bool) -> None:
        self.ok &= passed
        self.lines.append(f"  {'PASS' if passed else 'FAIL'}  {what}: {value}")

    def note(self, text: str) -> None:
        self.lines.append(f"        {text}")


# =========================================================================== flood


async def flood(args: argparse.Namespace, session: aiohttp.ClientSession, tmp: Path) -> Report:
    report = Report("flood (SQLite)")
    path = tmp / "flood.sqlite3"
    broker = Broker("flood", {"BROKER_DB_URL": f"sqlite:///{path}"}, tmp)
    broker.start()
    callers = [Caller() for _ in range(200)]
    statuses: Counter[str] = Counter()
    wal_max = 0
    try:
        await broker.ready(session)
        garbage = itertools.count()
        turn = itertools.count()

        async def refused(_: int) -> None:
            headers = {"Authorization": f"Bearer garbage{next(garbage)}"}
            status, _body = await post(session, broker.url + "/v3/account/add_wallet", headers=headers)
            statuses[f"garbage {status}"] += 1

        async def login(_: int) -> None:
            caller = callers[next(turn) % len(callers)]
            status, _body = await post(
                session, broker.url + "/v3/account/post_heima_login", headers=caller.headers, json=caller.login_body
            )
            statuses[f"login {status}"] += 1

        async def sample_wal() -> None:
            nonlocal wal_max
            wal = Path(f"{path}-wal")
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                wal_max = max(wal_max, file_size(wal))
                await asyncio.sleep(0.02)

        await asyncio.gather(run_for(args.duration, 48, refused), run_for(args.duration, 16, login), sample_wal())
    finally:
        broker.stop()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows, counted = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(repeat_count), 0) FROM audit_log WHERE outcome LIKE 'refused:%'"
        ).fetchone()
        logins = conn.execute("SELECT COUNT(*) FROM audit_log WHERE event = 'post_heima_login' AND outcome = 'ok'")
        login_rows = logins.fetchone()[0]
    sent = statuses["garbage 401"]
    windows = int(args.duration // 10) + 2
    report.check(
        "garbage bearers refused with 401 / other answers",
        f"{sent:,} / {statuses.total() - sent - statuses['login 200']}",
        statuses.total() == sent + statuses["login 200"],
    )
    report.check("valid logins answered 200", f"{statuses['login 200']:,}", statuses["login 200"] > 0)
    report.check(
        "largest WAL during the flood", f"{wal_max / 1e6:.1f} MB (bound {WAL_BOUND / 1e6:.0f} MB)", wal_max <= WAL_BOUND
    )
    report.check("refusal rows written", f"{rows:,} (at most {windows * 101:,})", rows <= windows * 101)
    report.check("refusals counted in them (sum of repeat_count)", f"{counted:,} of {sent:,}", counted == sent)
    report.check("ok login audit rows = logins answered 200", f"{login_rows:,}", login_rows == statuses["login 200"])
    return report


# =========================================================================== grants


async def grants(args: argparse.Namespace, session: aiohttp.ClientSession, tmp: Path) -> Report:
    report = Report("grants (two replicas)")
    for database in ("postgresql", "sqlite"):
        schema = new_schema()
        env = (
            {"BROKER_DB_URL": args.pg_dsn, "BROKER_DB_SCHEMA": schema}
            if database == "postgresql"
            else {"BROKER_DB_URL": f"sqlite:///{tmp / 'grants.sqlite3'}"}
        )
        replicas = [Broker(f"grants-{database}-{n}", env, tmp) for n in range(2)]
        try:
            for replica in replicas:  # one after the other: the first creates the schema
                replica.start()
                await replica.ready(session)
            await grant_rounds(args, session, replicas, database, schema, report)
        finally:
            for replica in replicas:
                replica.stop()
            if database == "postgresql":
                await pg_execute(args.pg_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return report


async def grant_rounds(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    replicas: list[Broker],
    database: str,
    schema: str,
    report: Report,
) -> None:
    master = Caller()
    status, body = await post(
        session, replicas[0].url + "/v3/account/post_heima_login", headers=master.headers, json=master.login_body
    )
    if status != 200:
        raise SetupError(f"master login: {status} {body}")
    turn = itertools.count()
    statuses: Counter[int] = Counter()
    expires = int(time.time()) + 3600

    async def send(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        answer = await post(session, replicas[next(turn) % 2].url + path, headers=master.headers, json=body)
        statuses[answer[0]] += 1
        return answer

    async def open_grants(agent: str) -> list[str]:
        sql = (
            "SELECT grant_id FROM grants WHERE master_wallet = $1 AND agent_wallet = $2 AND revoked_at IS NULL "
            "AND superseded_by IS NULL"
        )
        if database == "postgresql":
            rows = await pg_execute(args.pg_dsn, sql.replace("grants", f'"{schema}".grants'), master.address, agent)
            return [row["grant_id"] for row in rows]
        with contextlib.closing(sqlite3.connect(replicas[0].env["BROKER_DB_URL"].removeprefix("sqlite:///"))) as conn:
            return [row[0] for row in conn.execute(sql.replace("$1", "?").replace("$2", "?"), (master.address, agent))]

    duplicates = 0
    for round_ in range(args.rounds):
        agent = f"0x{round_ + 1:040x}"
        body = {"agent_wallet": agent, "scope": "trade", "expires_at": expires}
        answers = await asyncio.gather(*(send("/v1/grant/create", body) for _ in range(8)))
        duplicates += sum(status == 200 for status, _ in answers) != 1 or len(await open_grants(agent)) != 1
    agent = "0x" + "ab" * 20
    body = {"agent_wallet": agent, "scope": "trade", "expires_at": expires}
    races_broken = 0
    for _ in range(args.rounds):
        for grant_id in await open_grants(agent):
            await send("/v1/grant/revoke", {"grant_id": grant_id})
        status, created = await send("/v1/grant/create", body)
        if status != 200:
            races_broken += 1
            continue
        grant_id = created["data"]["grant"]["grant_id"]
        answers = await asyncio.gather(
            *(send("/v1/grant/revoke", {"grant_id": grant_id}) for _ in range(4)),
            *(send("/v1/grant/create", body) for _ in range(4)),
        )
        revoked = sorted(status for status, _ in answers[:4])
        races_broken += revoked != [200, 409, 409, 409] or len(await open_grants(agent)) > 1
    five_xx = sum(count for status, count in statuses.items() if status >= 500 or status == 0)
    report.check(
        f"{database}: rounds of 8 identical creates with other than one grant",
        f"{duplicates} of {args.rounds}",
        duplicates == 0,
    )
    report.check(
        f"{database}: revoke/create races with a failed revoke or two open grants",
        f"{races_broken} of {args.rounds}",
        races_broken == 0,
    )
    report.check(f"{database}: 5xx or transport failures", f"{five_xx} of {statuses.total():,} requests", five_xx == 0)


# =========================================================================== starts


async def starts(args: argparse.Namespace, session: aiohttp.ClientSession, tmp: Path) -> Report:
    report = Report(f"starts ({args.starts} replicas at once on a new schema)")
    schema = new_schema()
    env = {"BROKER_DB_URL": args.pg_dsn, "BROKER_DB_SCHEMA": schema, "BROKER_DB_POOL_SIZE": "1"}
    brokers = [Broker(f"start-{n}", env, tmp) for n in range(args.starts)]
    try:
        for broker in brokers:
            broker.start()
        results = await asyncio.gather(
            *(broker.ready(session, within=180.0) for broker in brokers), return_exceptions=True
        )
        failed = [(broker.label, result) for broker, result in zip(brokers, results, strict=True) if result is not None]
        versions = await pg_execute(
            args.pg_dsn, f'SELECT version, COUNT(*) AS n FROM "{schema}".schema_migrations GROUP BY version'
        )
        report.check("brokers that came up", f"{args.starts - len(failed)} of {args.starts}", not failed)
        for label, error in failed[:3]:
            report.note(f"{label}: {str(error).splitlines()[-1][:200]}")
        report.check(
            "migrations applied once each",
            sorted((row["version"], row["n"]) for row in versions),
            all(row["n"] == 1 for row in versions),
        )
    finally:
        for broker in brokers:
            broker.stop()
        await pg_execute(args.pg_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return report


# =========================================================================== terminate and outage


async def mixed_load(
    session: aiohttp.ClientSession, url: str, callers: list[Caller], statuses: Counter[int]
) -> Callable[[int], Awaitable[None]]:
    turn = itertools.count()

    async def work(_: int) -> None:
        n = next(turn)
        caller = callers[n % len(callers)]
        if n % 3 == 0:
            status, _ = await post(
                session, url + "/v3/account/post_heima_login", headers=caller.headers, json=caller.login_body
            )
        elif n % 3 == 1:
            status, _ = await post(session, url + "/v3/account/add_wallet", headers=caller.headers)
        else:
            status, _ = await post(session, url + "/v1/grant/list", method="GET", headers=caller.headers)
        statuses[status] += 1

    for caller in callers:  # every caller has logged in once
        status, body = await post(
            session, url + "/v3/account/post_heima_login", headers=caller.headers, json=caller.login_body
        )
        if status != 200:
            raise SetupError(f"login: {status} {body}")
    return work


async def terminate(args: argparse.Namespace, session: aiohttp.ClientSession, tmp: Path) -> Report:
    report = Report("terminate (pg_terminate_backend under load)")
    schema = new_schema()
    broker = Broker("terminate", {"BROKER_DB_URL": args.pg_dsn, "BROKER_DB_SCHEMA": schema}, tmp)
    broker.start()
    statuses: Counter[int] = Counter()
    terminated = 0
    try:
        await broker.ready(session)
        work = await mixed_load(session, broker.url, [Caller() for _ in range(50)], statuses)

        async def storm() -> None:
            nonlocal terminated
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                rows = await pg_execute(
                    args.pg_dsn,
                    "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE application_name = $1",
                    f"agentkeys-broker/{schema}",
                )
                terminated += rows[0]["n"]

        await asyncio.gather(run_for(args.duration, 32, work), storm())
        after: Counter[int] = Counter()
        await run_for(2.0, 8, await mixed_load(session, broker.url, [Caller() for _ in range(5)], after))
    finally:
        broker.stop()
        await pg_execute(args.pg_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    report.check("connections terminated", terminated, terminated > 0)
    report.check("answers during the storm", dict(sorted(statuses.items())), set(statuses) <= {200, 503})
    report.check("answers after it", dict(sorted(after.items())), set(after) == {200})
    report.check("tracebacks in the broker's log", broker.log().count("Traceback"), "Traceback" not in broker.log())
    if "Traceback" in broker.log():
        report.note(first_traceback(broker.log()))
    return report


class Proxy:
    """A TCP proxy on loopback in front of PostgreSQL, which the campaign cuts and restores."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = benchkit.free_port()
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, HOST, self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for transport in list(self.transports):
            transport.abort()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, up_writer.transport}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.transports -= {writer.transport, up_writer.transport}


async def outage(args: argparse.Namespace, session: aiohttp.ClientSession, tmp: Path) -> Report:
    from urllib.parse import urlsplit

    report = Report("outage (PostgreSQL cut behind a proxy, then restored)")
    dsn = urlsplit(args.pg_dsn)
    proxy = Proxy((dsn.hostname or HOST, dsn.port or 5432))
    await proxy.start()
    user = dsn.netloc.rsplit("@", 1)[0] + "@" if "@" in dsn.netloc else ""
    proxied = dsn._replace(netloc=f"{user}{HOST}:{proxy.port}").geturl()
    schema = new_schema()
    broker = Broker("outage", {"BROKER_DB_URL": proxied, "BROKER_DB_SCHEMA": schema}, tmp)
    broker.start()
    before: Counter[int] = Counter()
    during: Counter[int] = Counter()
    after: Counter[int] = Counter()
    try:
        await broker.ready(session)
        callers = [Caller() for _ in range(20)]
        await run_for(2.0, 8, await mixed_load(session, broker.url, callers, before))
        log_mark = len(broker.log())
        await proxy.cut()
        work = await mixed_load_without_login(session, broker.url, callers, during)
        await run_for(args.outage, 16, work)
        await proxy.start()
        await asyncio.sleep(0.5)
        await run_for(3.0, 8, await mixed_load(session, broker.url, callers, after))
    finally:
        broker.stop()
        with contextlib.suppress(Exception):
            await proxy.cut()
        await pg_execute(args.pg_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    log = broker.log()[log_mark:]
    failed = sum(count for status, count in during.items() if status != 200)
    per_failure = log.count("storage failed while serving")
    report.check(
        "answers before / during / after",
        f"{dict(before)} / {dict(during)} / {dict(after)}",
        set(before) == {200} and set(during) <= {200, 503} and set(after) == {200},
    )
    report.check("tracebacks in the broker's log", log.count("Traceback"), "Traceback" not in log)
    if "Traceback" in log:
        report.note(first_traceback(log))
    report.check("log lines per failed request", f"{per_failure} for {failed}", per_failure == failed)
    report.check(
        '"database unavailable" lines', log.count("database unavailable:"), log.count("database unavailable:") == 1
    )
    report.check('"database available again" lines', log.count("available again"), log.count("available again") == 1)
    return report


async def mixed_load_without_login(
    session: aiohttp.ClientSession, url: str, callers: list[Caller], statuses: Counter[int]
) -> Callable[[int], Awaitable[None]]:
    turn = itertools.count()

    async def work(_: int) -> None:
        caller = callers[next(turn) % len(callers)]
        status, _ = await post(session, url + "/v3/account/add_wallet", headers=caller.headers)
        statuses[status] += 1

    return work


# =========================================================================== command line


RUNNERS = {"flood": flood, "grants": grants, "starts": starts, "terminate": terminate, "outage": outage}


async def campaign(args: argparse.Namespace) -> list[Report]:
    reports = []
    with tempfile.TemporaryDirectory(prefix="campaign_storage-") as tmp:
        async with benchkit.client_session(128, 30.0) as session:
            for name in args.campaigns or CAMPAIGNS:
                print(f"== {name} …", flush=True)
                reports.append(await RUNNERS[name](args, session, Path(tmp)))
                print("\n".join(reports[-1].lines), flush=True)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("campaigns", nargs="*", metavar="CAMPAIGN", help=f"any of {', '.join(CAMPAIGNS)} (all)")
    parser.add_argument("--duration", type=float, default=20.0, help="flood and terminate, seconds (20)")
    parser.add_argument("--rounds", type=int, default=30, help="grant rounds per database (30)")
    parser.add_argument("--starts", type=int, default=30, help="brokers started at once (30)")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the database is cut (5)")
    parser.add_argument(
        "--pg-dsn", default=None, help="PostgreSQL DSN (default: as the tests choose it, a throwaway server if none)"
    )
    args = parser.parse_args()
    if set(args.campaigns) - set(CAMPAIGNS):
        parser.error(f"campaigns are {', '.join(CAMPAIGNS)}")
    try:
        with benchkit.postgres(args.pg_dsn) as args.pg_dsn:
            reports = asyncio.run(campaign(args))
    except SetupError as exc:
        print(f"campaign_storage: setup failed: {exc}", file=sys.stderr)
        return 2
    print()
    for report in reports:
        print(f"{'PASS' if report.ok else 'FAIL'}  {report.name}")
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
