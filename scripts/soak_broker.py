#!/usr/bin/env python3
"""Soak the AgentKeys broker: valid logins at a steady rate while floods of refusals, malformed
requests, slow clients and idle connections run against it, then a kill -9 in mid-load.

Everything stays on 127.0.0.1 and every loop stops by itself after ``--duration`` seconds. The
broker is a separate process (``python -m agentkeys_kit.broker.cli run``) on a fresh SQLite file or
a fresh PostgreSQL schema (dropped at the end); the floods run in a second process of this script
(``--role flood``) so that their CPU does not inflate the latency of the valid logins, which the
main process sends and times.

* valid load: ``post_heima_login`` for a new EVM identity each time, at ``--login-rate`` per
  second (open loop); each 200 is an acknowledged write that must survive the kill;
* refusal flood: ``POST /v3/account/add_wallet`` with ``Authorization: Bearer garbage`` at
  ``--refusal-rate`` per second (each refusal writes an audit row: the WAL's worst case);
* malformed flood: broken request lines, headers, framing and bodies, a bearer in each, at
  ``--malformed-rate`` per second, each on its own connection;
* slow clients: ``--slow-clients`` connections dripping header bytes (slowloris) or a body
  (slow body), reopened when the broker closes them;
* idle connections: ``--idle-connections`` connections that never send a byte, reopened.

Printed: 5xx answers (target 0), hangs (a request unanswered or a slow connection not closed
within ``HANG_AFTER_S``: target 0), the WAL (SQLite file size; PostgreSQL: WAL bytes the cluster
wrote) and the broker's RSS at start and end, p99 of the valid logins under the floods as the
client sees it (target < 100 ms) and as the broker's own histogram bounds it, and acknowledged
logins missing after ``kill -9`` mid-load (target 0); then the broker is restarted on the same
database and must answer ``/readyz``.

Run from the repository root (timings taken while other work shares the CPUs are not comparable):

    .venv/bin/python scripts/soak_broker.py [--db sqlite|postgresql|both] [--duration 60]
        [--login-rate 50] [--refusal-rate 300] [--malformed-rate 50] [--slow-clients 100]
        [--idle-connections 200] [--pg-dsn DSN] [--json PATH]

Exit status: 0 when every target holds, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import benchkit
from bench_broker import Caller, make_callers
from benchkit import HOST, ROOT, SetupError

TEE_PUBLIC_KEY = ROOT / "fixtures" / "keys" / "tee_jwt_public_key.test.pem"
LOGIN_PATH = "/v3/account/post_heima_login"
REFUSAL_PATH = "/v3/account/add_wallet"
P99_TARGET_MS = 100.0
HANG_AFTER_S = 20.0  # longer than the broker's header and body deadlines (10 s) with room to spare
#: A hang is a request the broker did not answer within HANG_AFTER_S of receiving it; time spent
#: waiting for a free client connection is the load generator's queue, not the broker's.
ANSWER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=HANG_AFTER_S, sock_read=HANG_AFTER_S)
KILL_AFTER_S = 1.0  # the kill -9 comes this long after the measured window, with logins in flight
BEARER = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzb2FrIn0.c29hay1zZWNyZXQtc2lnbmF0dXJl"
MALFORMED = [
    f"GET /x{BEARER} HTTP/1.1 junk\r\nAuthorization: Bearer {BEARER}\r\n\r\n".encode(),
    f"POST {REFUSAL_PATH} HTTP/1.1\r\nAuthorization: Bearer {BEARER}\x01\r\nContent-Length: 0\r\n\r\n".encode(),
    f"POST {REFUSAL_PATH} HTTP/1.1\r\nAuthorization: Bearer \xff{BEARER}\r\nContent-Length: 0\r\n\r\n".encode(
        "latin-1"
    ),
    f"GET / HTTP/1.1\r\nAuthorization: Bearer {BEARER}{'A' * 9000}\r\n\r\n".encode(),
    f"POST {LOGIN_PATH} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}".encode(),
    f"POST {LOGIN_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n".encode(),
    f"POST {LOGIN_PATH} HTTP/1.1\r\nAuthorization: Bearer {BEARER}\r\nContent-Encoding: gzip\r\n"
    "Content-Length: 2\r\n\r\n{}".encode(),
    f"POST {LOGIN_PATH} HTTP/1.1\r\nAuthorization: Bearer {BEARER}\r\nContent-Length: 24\r\n\r\n"
    '{"a": "\\ud800", "a": 1}'.encode(),
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40 + b"\r\n\r\n",
]


# =========================================================================== the broker process


class SoakBroker(benchkit.ChildProcess):
    """``python -m agentkeys_kit.broker.cli run`` on a free port; `kill9` ends it without warning."""

    def __init__(self, database: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__(f"the {database} broker", log_path)
        self.url = f"http://{HOST}:{self.port}"
        self._env = env

    def start(self) -> None:
        env = benchkit.child_env(drop_prefix="BROKER_")
        env.update(self._env)
        env["BROKER_PORT"] = str(self.port)
        self.spawn([sys.executable, "-m", "agentkeys_kit.broker.cli", "run"], env)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def rss_bytes(self) -> int | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None


async def wait_ready(broker: SoakBroker, within: float = 60.0) -> None:
    async with aiohttp.ClientSession() as session:

        async def readyz() -> None:
            async with session.get(broker.url + "/readyz") as response:
                if response.status != 200:
                    raise benchkit.NotReady(f"HTTP {response.status}")

        await benchkit.wait_ready(broker, readyz, within, (aiohttp.ClientError, OSError, TimeoutError))


# =========================================================================== databases


@dataclass
class Database:
    kind: str
    url: str
    schema: str | None
    path: Path | None = None
    session_key: Path | None = None  # PostgreSQL: the broker's keys would default to ~/.agentkeys

    def env(self) -> dict[str, str]:
        env = {"BROKER_DB_URL": self.url, "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY)}
        if self.session_key is not None:
            env["BROKER_SESSION_KEYPAIR_PATH"] = str(self.session_key)
            env["BROKER_OIDC_KEYPAIR_PATH"] = str(self.session_key.with_name("oidc-keypair.json"))
        if self.schema:
            env["BROKER_DB_SCHEMA"] = self.schema
        return env

    async def wal_bytes(self) -> int | None:
        """SQLite: the size of the ``-wal`` file. PostgreSQL: the cluster's WAL position (bytes)."""
        if self.path is not None:
            wal = self.path.with_name(self.path.name + "-wal")
            return wal.stat().st_size if wal.exists() else 0
        import asyncpg

        connection = await asyncpg.connect(self.url)
        try:
            return int(await connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
        finally:
            await connection.close()

    async def stored_wallets(self, addresses: Sequence[str]) -> set[str]:
        """Which of these EVM identities have a user row."""
        if self.path is not None:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                rows = connection.execute("SELECT identity_value FROM users WHERE identity_type = 'evm'").fetchall()
            finally:
                connection.close()
            return {row[0] for row in rows} & set(addresses)
        import asyncpg

        connection = await asyncpg.connect(self.url, server_settings={"search_path": self.schema or "public"})
        try:
            rows = await connection.fetch(
                "SELECT identity_value FROM users WHERE identity_type = 'evm' AND identity_value = ANY($1)",
                list(addresses),
            )
        finally:
            await connection.close()
        return {row["identity_value"] for row in rows}

    async def drop(self) -> None:
        if self.schema is None:
            return
        import asyncpg

        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await connection.close()


def make_database(kind: str, directory: Path, pg_dsn: str) -> Database:
    if kind == "sqlite":
        path = directory / "broker.sqlite3"
        return Database(kind, f"sqlite:///{path}", None, path)
    return Database(kind, pg_dsn, f"soak_{secrets.token_hex(6)}", session_key=directory / "session-keypair.json")


# =========================================================================== the valid load


@dataclass
class ValidLoad:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: list[str] = field(default_factory=list)
    hangs: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def valid_logins(url: str, callers: list[Caller], rate: float, until: float, load: ValidLoad) -> None:
    """One login of a new identity every 1/`rate` s (open loop) until `until`; a 200 is acknowledged."""
    timeout = ANSWER_TIMEOUT
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        for index, caller in enumerate(callers):
            await benchkit.sleep_until(started + index / rate)
            if time.monotonic() >= until:
                break
            tasks.append(asyncio.create_task(_one_login(session, url, caller, load)))
        await asyncio.gather(*tasks, return_exceptions=True)


async def _one_login(session: aiohttp.ClientSession, url: str, caller: Caller, load: ValidLoad) -> None:
    started = time.monotonic()
    try:
        async with session.post(url + LOGIN_PATH, data=caller.body, headers=caller.headers) as response:
            await response.read()
            status = response.status
    except TimeoutError:
        load.hangs += 1
        return
    except (aiohttp.ClientError, OSError) as exc:  # the kill -9 cuts the last ones off
        load.errors[type(exc).__name__] += 1
        return
    load.latencies.append(time.monotonic() - started)
    load.statuses[status] += 1
    if status == 200:
        load.acknowledged.append(caller.address)


# =========================================================================== the floods (a process of their own)


@dataclass
class FloodReport:
    statuses: Counter[str] = field(default_factory=Counter)
    hangs: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closed_by_broker: int = 0
    leaked_bearer: int = 0
    unsent: int = 0  # still queued in the flood client when the window closed (the broker fell behind)


async def flood(url: str, duration: float, args: argparse.Namespace) -> FloodReport:
    """Floods for `duration` seconds from now (the main process starts its window when it reads
    the ``flooding`` line)."""
    report = FloodReport()
    until = time.monotonic() + duration
    print("flooding", flush=True)
    host, port = url.removeprefix("http://").split(":")
    target = (host, int(port))
    async with aiohttp.ClientSession(timeout=ANSWER_TIMEOUT, connector=aiohttp.TCPConnector(limit=256)) as session:
        jobs: list[Awaitable[None]] = [
            _at_rate(args.refusal_rate, until, lambda: _refusal(session, url, report), report),
            _at_rate(args.malformed_rate, until, lambda: _malformed(target, report), report),
        ]
        jobs += [_slow_client(target, until, report, body=n % 2 == 1) for n in range(args.slow_clients)]
        jobs += [_idle_client(target, until, report) for _ in range(args.idle_connections)]
        await asyncio.gather(*jobs)
    return report


async def _at_rate(
    rate: float, until: float, make: Callable[[], Coroutine[Any, Any, None]], report: FloodReport
) -> None:
    """Start `make()` `rate` times a second until `until`; then give what was sent `HANG_AFTER_S`
    to be answered and drop what is still queued in this client (counted as ``unsent``)."""
    if rate <= 0:
        return
    tasks: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    while next_at < until:
        await benchkit.sleep_until(next_at)
        task = asyncio.create_task(make())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += 1 / rate
    if tasks:
        _, queued = await asyncio.wait(tasks, timeout=HANG_AFTER_S + 5)
        report.unsent += len(queued)
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)


async def _refusal(session: aiohttp.ClientSession, url: str, report: FloodReport) -> None:
    try:
        async with session.post(url + REFUSAL_PATH, headers={"Authorization": "Bearer garbage"}) as response:
            body = await response.read()
            report.statuses[f"refusal {response.status}"] += 1
            report.leaked_bearer += BEARER.encode() in body
    except TimeoutError:
        report.hangs["refusal"] += 1
    except (aiohttp.ClientError, OSError) as exc:
        report.errors[f"refusal {type(exc).__name__}"] += 1


async def _malformed(target: tuple[str, int], report: FloodReport) -> None:
    try:
        reader, writer = await asyncio.open_connection(*target)
    except OSError as exc:
        report.errors[f"malformed connect {type(exc).__name__}"] += 1
        return
    try:
        writer.write(random.choice(MALFORMED))
        reply = await asyncio.wait_for(reader.read(), HANG_AFTER_S)
        status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "no reply"
        report.statuses[f"malformed {status}"] += 1
        report.leaked_bearer += BEARER.encode() in reply or b"c29hay1zZWNyZXQ" in reply
    except TimeoutError:
        report.hangs["malformed"] += 1
    except OSError as exc:
        report.errors[f"malformed {type(exc).__name__}"] += 1
    finally:
        writer.close()


async def _slow_client(target: tuple[str, int], until: float, report: FloodReport, *, body: bool) -> None:
    """Drip a request one byte a second; reconnect whenever the broker closes the connection."""
    kind = "slow body" if body else "slowloris"
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(*target)
        except OSError as exc:
            report.errors[f"{kind} connect {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        opened = time.monotonic()
        head = b"POST /v1/account/check_hyper_agent_address HTTP/1.1\r\nHost: soak\r\n"
        writer.write(head + (b"Content-Length: 60000\r\n\r\n{" if body else b""))
        try:
            while not reader.at_eof() and time.monotonic() < until:
                if time.monotonic() - opened > HANG_AFTER_S:
                    report.hangs[kind] += 1
                    break
                writer.write(b"x" if body else b"X-a: b\r\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(65536), 1.0)
            if reader.at_eof():
                report.closed_by_broker += 1
        except OSError:
            report.closed_by_broker += 1
        finally:
            writer.close()


async def _idle_client(target: tuple[str, int], until: float, report: FloodReport) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(*target)
        except OSError as exc:
            report.errors[f"idle connect {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            await asyncio.wait_for(reader.read(), max(0.1, until - time.monotonic()))
            report.closed_by_broker += 1
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()


def run_flood_role(args: argparse.Namespace) -> int:
    report = asyncio.run(flood(args.url, args.duration, args))
    figures = {name: dict(value) if isinstance(value, Counter) else value for name, value in vars(report).items()}
    print(json.dumps(figures), flush=True)
    return 0


# =========================================================================== one database


@dataclass
class SoakResult:
    database: str
    duration_s: float
    wal_start: int | None = None
    wal_end: int | None = None
    rss_start: int | None = None
    rss_end: int | None = None
    logins_sent: int = 0
    logins_ok: int = 0
    login_p50_ms: float | None = None
    login_p99_ms: float | None = None
    server_login_p99_ms: float | None = None  # the broker's own histogram: a bucket's upper bound
    server_errors: int = 0
    hangs: int = 0
    acknowledged: int = 0
    rows_lost: int = 0
    restarted: bool = False
    flood: dict[str, Any] = field(default_factory=dict)
    login_statuses: dict[str, int] = field(default_factory=dict)
    broker_log_bytes: int = 0


async def soak_database(kind: str, args: argparse.Namespace, directory: Path) -> SoakResult:
    database = make_database(kind, directory, args.pg_dsn)
    result = SoakResult(kind, args.duration)
    callers = make_callers(int(args.login_rate * (args.duration + KILL_AFTER_S + 5)))
    broker = SoakBroker(kind, database.env(), directory / f"broker-{kind}.log")
    broker.start()
    try:
        await wait_ready(broker)
        result.rss_start, result.wal_start = broker.rss_bytes(), await database.wal_bytes()
        load = ValidLoad()
        flooding = _start_flood(broker.url, args)
        started = time.monotonic()
        logins = asyncio.create_task(
            valid_logins(broker.url, callers, args.login_rate, started + args.duration + KILL_AFTER_S + 5, load)
        )
        await benchkit.sleep_until(started + args.duration)
        result.rss_end, result.wal_end = broker.rss_bytes(), await database.wal_bytes()
        result.broker_log_bytes = broker.log_path.stat().st_size
        result.server_login_p99_ms = await server_side_p99_ms(broker.url, LOGIN_PATH)
        measured = sorted(load.latencies)
        result.login_p50_ms = benchkit.percentile_ms(measured, 50)
        result.login_p99_ms = benchkit.percentile_ms(measured, 99)
        result.flood = await asyncio.to_thread(_finish_flood, flooding)
        await asyncio.sleep(KILL_AFTER_S)
        broker.kill9()  # mid-load: valid logins are in flight
        logins.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await logins
        result.logins_sent = sum(load.statuses.values()) + load.hangs + sum(load.errors.values())
        result.logins_ok = load.statuses[200]
        result.login_statuses = {str(status): count for status, count in load.statuses.items()}
        result.acknowledged = len(load.acknowledged)
        result.rows_lost = len(set(load.acknowledged) - await database.stored_wallets(load.acknowledged))
        flood_5xx = sum(n for key, n in result.flood.get("statuses", {}).items() if key.split()[-1].startswith("5"))
        result.server_errors = sum(n for status, n in load.statuses.items() if status >= 500) + flood_5xx
        result.hangs = load.hangs + sum(result.flood.get("hangs", {}).values())
        broker = SoakBroker(kind, database.env(), directory / f"broker-{kind}-restart.log")
        broker.start()  # the same database after the crash
        await wait_ready(broker)
        result.restarted = True
    finally:
        broker.stop()
        await database.drop()
    return result


async def server_side_p99_ms(url: str, route: str) -> float | None:
    """The p99 of `route` as the broker measured it (parse to last byte), from ``GET /metrics``:
    the upper bound of the histogram bucket that holds it. Separates the broker's time from the
    time a request waited in the load generator or the kernel."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    buckets = sorted(
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "agentkeys_broker_request_duration_seconds_bucket" and sample.labels.get("route") == route
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(bound * 1000 for bound, count in buckets if count >= 0.99 * total)


def _start_flood(url: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """The flood process, once it has started flooding."""
    argv = [sys.executable, __file__, "--role", "flood", "--url", url, "--duration", str(args.duration)]
    for name in ("refusal_rate", "malformed_rate", "slow_clients", "idle_connections"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=benchkit.child_env(), cwd=ROOT)
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"flooding":
        process.kill()
        raise SetupError("the flood process did not start")
    return process


def _finish_flood(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=HANG_AFTER_S * 4)
    try:
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"the flood process exited {process.returncode} without a report"}
    return report


# =========================================================================== report


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:,.1f} MB"


def rows(result: SoakResult) -> list[tuple[str, str, str, str]]:
    verdict = benchkit.verdict
    wal = "WAL file" if result.database == "sqlite" else "WAL position (cluster)"
    p99 = result.login_p99_ms
    return [
        ("5xx answers", str(result.server_errors), "0", verdict(result.server_errors == 0)),
        ("hangs", str(result.hangs), "0", verdict(result.hangs == 0)),
        (f"{wal} start → end", f"{_mb(result.wal_start)} → {_mb(result.wal_end)}", "bounded", ""),
        ("broker RSS start → end", f"{_mb(result.rss_start)} → {_mb(result.rss_end)}", "bounded", ""),
        (
            "valid logins p50 / p99",
            f"{benchkit.fmt(result.login_p50_ms, '.1f')} / {benchkit.fmt(p99, '.1f')} ms",
            f"p99 < {P99_TARGET_MS:.0f} ms",
            verdict(p99 is not None and p99 < P99_TARGET_MS),
        ),
        ("valid logins p99 inside the broker", f"<= {benchkit.fmt(result.server_login_p99_ms, '.0f')} ms", "", ""),
        ("logins sent / 200", f"{result.logins_sent} / {result.logins_ok}", "", ""),
        (
            "rows lost after kill -9",
            f"{result.rows_lost} of {result.acknowledged}",
            "0",
            verdict(result.rows_lost == 0 and result.acknowledged > 0),
        ),
        ("restart after kill -9", "ready" if result.restarted else "FAILED", "ready", verdict(result.restarted)),
        ("broker log (stderr) in the window", _mb(result.broker_log_bytes), "", ""),
    ]


def render(results: list[SoakResult], args: argparse.Namespace) -> str:
    lines = [
        f"soak: {args.duration:g} s per database; logins {args.login_rate:g}/s, refusals {args.refusal_rate:g}/s, "
        f"malformed {args.malformed_rate:g}/s, {args.slow_clients} slow clients, {args.idle_connections} idle",
        benchkit.machine_line(benchkit.machine_info()),
    ]
    for result in results:
        table = rows(result)
        widths = benchkit.column_widths([benchkit.HEADER, *table])
        lines.append(f"\n[{result.database}]")
        for row in [benchkit.HEADER, *table]:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        flood = result.flood
        lines.append(f"flood answers: {json.dumps(flood.get('statuses', {}), sort_keys=True)}")
        lines.append(
            f"slow/idle connections closed by the broker: {flood.get('closed_by_broker', 0)}; "
            f"bearer echoed: {flood.get('leaked_bearer', 0)}; flood requests left unsent (the broker fell behind): "
            f"{flood.get('unsent', 0)}; client errors: {json.dumps(flood.get('errors', {}))}"
        )
    return "\n".join(lines)


def passed(result: SoakResult) -> bool:
    return (
        result.server_errors == 0
        and result.hangs == 0
        and result.rows_lost == 0
        and result.acknowledged > 0
        and result.restarted
        and result.login_p99_ms is not None
        and result.login_p99_ms < P99_TARGET_MS
        and result.flood.get("leaked_bearer", 0) == 0
    )


# =========================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per database")
    parser.add_argument("--login-rate", type=float, default=50.0)
    parser.add_argument("--refusal-rate", type=float, default=300.0)
    parser.add_argument("--malformed-rate", type=float, default=50.0)
    parser.add_argument("--slow-clients", type=int, default=100)
    parser.add_argument("--idle-connections", type=int, default=200)
    parser.add_argument(
        "--pg-dsn", default=None, help="PostgreSQL DSN (default: as the tests choose it, a throwaway server if none)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--role", choices=["main", "flood"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.duration > 3600:
        print("soak_broker: --duration must be in (0, 3600] seconds", file=sys.stderr)
        return 2
    if args.role == "flood":
        return run_flood_role(args)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results = []
    try:
        with contextlib.ExitStack() as stack:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-broker-"))
            if "postgresql" in kinds:
                args.pg_dsn = stack.enter_context(benchkit.postgres(args.pg_dsn))
            for kind in kinds:
                results.append(asyncio.run(soak_database(kind, args, Path(directory))))
    except SetupError as exc:
        print(f"soak_broker: {exc}", file=sys.stderr)
        return 2
    print(render(results, args))
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))
    return 0 if all(passed(result) for result in results) else 1


if __name__ == "__main__":
    benchkit.bootstrap_path()
    raise SystemExit(main())
