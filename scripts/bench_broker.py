#!/usr/bin/env python3
"""Throughput benchmark of the AgentKeys broker's ``post_heima_login`` callback, measured in one run.

Each callback is the real thing: an RS256 TEE access token (minted with the fixture TEE key exactly
as the worker mints it) that the broker verifies, then the transaction of the user upsert, the
token row and the audit row. Targets at ``--concurrency`` (64) callers: >= 1000 callbacks/s on
SQLite, >= 800/s on PostgreSQL, p99 latency < 50 ms on both, no failed callback.

The broker runs in its own subprocess, as deployed: ``python -m agentkeys_kit.broker.cli run --port P`` with
``BROKER_DB_URL`` (a fresh temporary SQLite file, or PostgreSQL with a fresh
``BROKER_DB_SCHEMA=bench_<random>`` that is dropped at the end) and
``BROKER_TEE_JWT_PUBLIC_KEY=fixtures/keys/tee_jwt_public_key.test.pem``; it is ready when
``GET /readyz`` answers 200. The load generator is the main process: ``--identities`` (2000) EVM
identities with one pre-minted token and body each, used in a cycle, so that the first pass inserts
users and every later pass updates them (the report gives the mix inside the window); one aiohttp
session with keep-alive, ``--concurrency`` workers, a warm-up, then a fixed window per database.
Every answer must be HTTP 200 with ``code`` 10000 and the same ``user_id`` for the same identity
each time; afterwards the rows in ``users`` and ``audit_log`` are checked against what was sent.

CPU shares are CPU seconds used during the window divided by the window's wall time (1.00 = one
core busy): the broker's from ``/proc/<pid>/stat`` (split into its event-loop thread and its other
threads, e.g. the SQLite executor), PostgreSQL's from every ``postgres`` process on this machine,
the load generator's from ``time.process_time()``, and "other" is the rest of the machine.

Run from the repository root:

    PYTHONPATH=. /tmp/venv/bin/python scripts/bench_broker.py [--duration S] [--concurrency N]
        [--only sqlite|postgresql] [--sqlite-synchronous full,normal] [--json PATH] [--profile PREFIX]
        [--wait-quiet S] [--pg-dsn DSN]

SQLite runs twice by default (``--sqlite-synchronous full,normal``): ``full``, the broker's default,
acknowledges a login only once its transaction is on disk (the broker fsyncs the WAL before it
answers, one fsync shared by the transactions committed meanwhile); ``normal`` answers without it
(a power loss can undo the last acknowledged logins). The report gives the cost of durability as
the difference of the two runs. Figures taken while other processes load the machine (the report
warns) are not to be trusted, this one least of all: it compares two runs taken one after the other.

Before each database the script waits (``--wait-quiet``, at most 30 s) for the rest of the machine
to go idle, and warns when other processes still used the CPUs during a window.

``--profile PREFIX`` runs the broker as ``python -m cProfile -o PREFIX.<db>.prof -m agentkeys_kit.broker.cli run
…``, stops it with SIGINT so that the profile is written, and prints where the broker's event-loop
thread spends its time (cProfile sees only that thread; the split of CPU by thread covers the rest).

Exit status: 0 when every target passes and nothing failed, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pstats
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import benchkit
from benchkit import HOST, NOISY_CPU_SHARE, ROOT, BenchFailure, SetupError
from benchkit import fmt as _fmt
from benchkit import share as _share
from benchkit import verdict as _verdict

CLIENT_ID = "agentkeys"
CALLBACK_PATH = "/v3/account/post_heima_login"
TEE_KEY_PATH = ROOT / "fixtures" / "keys" / "auth_token_key.test.bin"
DATABASES = ("sqlite", "postgresql")
RATE_TARGETS = {"sqlite": 1000.0, "postgresql": 800.0}
P99_TARGET_MS = 50.0
SUCCESS_CODE = 10000
READY_WITHIN_S = 60.0
STOP_WITHIN_S = 30.0  # a profiled broker writes its profile on the way out

#: Runs in the broker's process before it becomes the broker (``os.execv`` keeps the pid): the
#: broker gets SIGTERM if this script dies without its ``finally`` (Linux ``PR_SET_PDEATHSIG``).
_LAUNCHER = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ.pop("BENCH_BROKER_PARENT", "0")):
    sys.exit(3)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


# =========================================================================== the broker process


class BrokerProcess(benchkit.ChildProcess):
    """``python [-m cProfile -o FILE] -m agentkeys_kit.broker.cli run --port P`` with the bench's BROKER_* env;
    stopped with SIGINT (aiohttp's graceful exit; cProfile writes its file after it), then SIGKILL."""

    stop_signal = signal.SIGINT
    stop_within = STOP_WITHIN_S

    def __init__(self, database: str, env: dict[str, str], log_dir: Path, profile_path: str | None) -> None:
        super().__init__(f"the {database} broker", log_dir / f"broker-{database}.log")
        self.database = database
        self.url = f"http://{HOST}:{self.port}"
        self.profile_path = profile_path
        profiler = ["-m", "cProfile", "-o", profile_path] if profile_path else []
        self.argv = [*profiler, "-m", "agentkeys_kit.broker.cli", "run", "--port", str(self.port)]
        self._env = env

    @property
    def command(self) -> str:
        return " ".join(["python", *self.argv])

    def start(self) -> None:
        env = benchkit.child_env(drop_prefix="BROKER_")
        env["BENCH_BROKER_PARENT"] = str(os.getpid())
        env.update(self._env)
        self.spawn([sys.executable, "-c", _LAUNCHER, *self.argv], env)

    def not_ready_error(self, within: float, last: str) -> SetupError:
        return SetupError(f"{self.label} is not ready after {within} s ({last}):\n{self.log_tail()}")


async def wait_ready(session: aiohttp.ClientSession, broker: BrokerProcess, within: float) -> dict[str, Any]:
    """The broker's ``GET /readyz`` answer once it is HTTP 200."""

    async def readyz() -> dict[str, Any]:
        async with session.get(broker.url + "/readyz") as response:
            body = await response.read()
            if response.status != 200:
                raise benchkit.NotReady(f"HTTP {response.status}: {body[:200]!r}")
            ready: dict[str, Any] = json.loads(body)
            return ready

    return await benchkit.wait_ready(broker, readyz, within, (aiohttp.ClientError, OSError, TimeoutError, ValueError))


# =========================================================================== identities and tokens


@dataclass(frozen=True, slots=True)
class Caller:
    """One EVM identity: its pre-encoded callback body and its ``Authorization`` header."""

    address: str
    omni_account: str
    body: bytes
    headers: dict[str, str]


def make_callers(count: int) -> list[Caller]:
    """`count` distinct random EVM identities, each with a TEE access token valid for 7 days."""
    from agentkeys_kit.omni_sim.keystore import load_pkcs1_der
    from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of
    from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_LIFETIME_SECONDS, AuthTokenClaims, encode_auth_token

    key = load_pkcs1_der(TEE_KEY_PATH)
    expires = int(time.time()) + AUTH_TOKEN_LIFETIME_SECONDS
    callers: list[Caller] = []
    seen: set[str] = set()
    while len(callers) < count:
        address = "0x" + secrets.token_bytes(20).hex()
        if address in seen:
            continue
        seen.add(address)
        account = omni_account_of(IdentityKind.EVM, address, CLIENT_ID)
        token = encode_auth_token(AuthTokenClaims(account, "access", expires, CLIENT_ID), key)
        body = {
            "userId": {"type": "evm", "value": address},
            "clientId": CLIENT_ID,
            "clientAuth": None,
            "heimaLoginSuccess": True,
        }
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        callers.append(Caller(address, account, json.dumps(body, separators=(",", ":")).encode(), headers))
    return callers


# =========================================================================== load generation


@dataclass
class DatabaseResult(benchkit.LoadResult):
    database: str  # the run's name: sqlite, sqlite/normal or postgresql
    concurrency: int
    warmup_s: float
    duration_s: float
    broker_command: str = ""
    profiled: bool = False
    background_before: float | None = None
    waited_for_quiet_s: float = 0.0
    ready: dict[str, Any] = field(default_factory=dict)
    inserts: int = 0
    updates: int = 0
    started_total: int = 0
    succeeded_total: int = 0
    latency_mean_ms: float | None = None
    latency_max_ms: float | None = None
    broker_cpu_share: float | None = None
    broker_loop_thread_share: float | None = None
    broker_other_threads_share: float | None = None
    postgres_cpu_share: float | None = None
    postgres_processes: int | None = None
    distinct_identities_ok: int = 0
    db_users: int | None = None
    db_login_audit_ok: int | None = None
    db_audit_other: int | None = None
    db_check_ok: bool | None = None
    db_check_error: str | None = None
    kind: str = ""  # sqlite or postgresql
    sqlite_synchronous: str | None = None
    rate_pass: bool = False
    p99_pass: bool = False
    ok: bool = False
    error: str | None = None


async def run_load(
    session: aiohttp.ClientSession,
    broker: BrokerProcess,
    callers: Sequence[Caller],
    result: DatabaseResult,
    *,
    max_ops: int,
) -> None:
    """`concurrency` workers post callbacks back to back for warm-up + duration seconds; every
    operation ``i`` uses caller ``i mod len(callers)``, so operations ``< len(callers)`` insert."""
    url = broker.url + CALLBACK_PATH
    latencies: list[float] = []
    user_ids: dict[int, str] = {}
    started = itertools.count()
    begin = time.perf_counter()
    measure_from = begin + result.warmup_s
    measure_to = measure_from + result.duration_s

    async def callback(index: int) -> None:
        caller = callers[index]
        async with session.post(url, data=caller.body, headers=caller.headers) as response:
            raw = await response.read()
            status = response.status
        if status != 200:
            raise BenchFailure(f"HTTP {status}: {raw[:200]!r}")
        answer = json.loads(raw)
        code = answer.get("code") if isinstance(answer, dict) else None
        if code != SUCCESS_CODE:
            raise BenchFailure(f"code {code}: {raw[:200]!r}")
        user_id = (answer.get("data") or {}).get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise BenchFailure(f"no user_id: {raw[:200]!r}")
        known = user_ids.setdefault(index, user_id)
        if known != user_id:
            raise BenchFailure(f"user_id changed: {caller.address} was {known}, now {user_id}")

    async def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= measure_to:
                return
            op = next(started)
            if op >= max_ops:
                result.hit_op_cap = True
                return
            failed = await benchkit.attempt(callback(op % len(callers)))
            t1 = time.perf_counter()
            in_window = measure_from <= t1 <= measure_to
            if failed is None:
                result.succeeded_total += 1
                if in_window:
                    result.completed += 1
                    if op < len(callers):
                        result.inserts += 1
                    else:
                        result.updates += 1
                    latencies.append(t1 - t0)
                continue
            result.record_failure(failed, in_window, distinct=True)

    async def sampler() -> None:
        """CPU counters at the window's start and end."""
        await benchkit.sleep_until(measure_from)
        start = benchkit.CpuSnapshot.take()
        broker0, threads0 = broker.cpu_seconds(), benchkit.thread_cpu_seconds(broker.pid)
        pg0 = benchkit.command_cpu_seconds("postgres")
        await benchkit.sleep_until(measure_to)
        end = benchkit.CpuSnapshot.take()
        broker1, threads1 = broker.cpu_seconds(), benchkit.thread_cpu_seconds(broker.pid)
        pg1 = benchkit.command_cpu_seconds("postgres")
        window = benchkit.CpuWindow(start, end)
        result.client_cpu_share = window.client_share
        result.broker_cpu_share = window.share(broker0, broker1)
        if result.broker_cpu_share is not None:
            loop_thread = threads1.get(broker.pid, 0.0) - threads0.get(broker.pid, 0.0)
            result.broker_loop_thread_share = loop_thread / window.wall
            result.broker_other_threads_share = max(0.0, result.broker_cpu_share - result.broker_loop_thread_share)
        if pg0 is not None and pg1 is not None:
            result.postgres_cpu_share = max(0.0, pg1[0] - pg0[0]) / window.wall
            result.postgres_processes = pg1[1]
        ours = [result.client_cpu_share, result.broker_cpu_share]
        if result.database == "postgresql":
            ours.append(result.postgres_cpu_share)
        result.other_cpu_share, result.steal_share = window.rest(ours)

    hard_limit = result.warmup_s + result.duration_s + 60.0  # requests time out well before this
    async with asyncio.timeout(hard_limit), asyncio.TaskGroup() as group:
        group.create_task(sampler())
        for _ in range(result.concurrency):
            group.create_task(worker())
    result.started_total = min(next(started), max_ops)
    result.distinct_identities_ok = len(user_ids)
    result.rate_per_s = result.completed / result.duration_s
    latencies.sort()
    result.set_percentiles(latencies)
    if latencies:
        result.latency_max_ms = latencies[-1] * 1000
        result.latency_mean_ms = sum(latencies) / len(latencies) * 1000


# =========================================================================== database checks


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


_COUNT_SQL = (
    "SELECT (SELECT COUNT(*) FROM {p}users) AS users,"
    " (SELECT COUNT(*) FROM {p}audit_log WHERE event = 'post_heima_login' AND outcome = 'ok') AS login_ok,"
    " (SELECT COUNT(*) FROM {p}audit_log WHERE NOT (event = 'post_heima_login' AND outcome = 'ok')) AS other"
)


async def count_rows(database: str, db_url: str, schema: str | None) -> tuple[int, int, int]:
    """(users, ok post_heima_login audit rows, other audit rows) once the broker has stopped."""
    if database == "sqlite":
        path = db_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            row = conn.execute(_COUNT_SQL.format(p="")).fetchone()
        return int(row[0]), int(row[1]), int(row[2])
    import asyncpg

    connection = await asyncpg.connect(db_url, timeout=10)
    try:
        record = await connection.fetchrow(_COUNT_SQL.format(p=f'"{schema}".'))
    finally:
        await connection.close()
    return int(record["users"]), int(record["login_ok"]), int(record["other"])


async def check_postgres(dsn: str) -> str:
    import asyncpg

    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise SetupError(f"PostgreSQL at {dsn} is not reachable: {exc}") from exc
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


# =========================================================================== orchestration


async def bench_database(
    run: str,
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    callers: Sequence[Caller],
    tmpdir: Path,
) -> DatabaseResult:
    """One window on a fresh database: `run` is ``postgresql``, ``sqlite`` (synchronous full) or
    ``sqlite/normal``."""
    database, _, synchronous = run.partition("/")
    result = DatabaseResult(run, args.concurrency, args.warmup, args.duration, profiled=bool(args.profile))
    result.kind = database
    schema: str | None = None
    schema_to_drop: str | None = None
    if database == "sqlite":
        result.sqlite_synchronous = synchronous or "full"
        db_url = f"sqlite:///{tmpdir / f'broker-bench-{result.sqlite_synchronous}.sqlite3'}"
        env = {"BROKER_DB_URL": db_url, "BROKER_SQLITE_SYNCHRONOUS": result.sqlite_synchronous}
    else:
        db_url = args.pg_dsn
        schema = f"bench_{secrets.token_hex(6)}"
        env = {"BROKER_DB_URL": db_url, "BROKER_DB_SCHEMA": schema}
    env["BROKER_TEE_JWT_PUBLIC_KEY"] = str(TEE_KEY_PATH.with_name("tee_jwt_public_key.test.pem"))
    env["BROKER_OIDC_KEYPAIR_PATH"] = str(tmpdir / "oidc-keypair.json")
    env["BROKER_SESSION_KEYPAIR_PATH"] = str(tmpdir / "session-keypair.json")
    profile_path = f"{args.profile}.{run.replace('/', '-')}.prof" if args.profile else None
    broker = BrokerProcess(run.replace("/", "-"), env, tmpdir, profile_path)
    result.broker_command = broker.command
    try:
        try:
            if database == "postgresql":
                result.ready["schema"] = schema
                result.ready["server_version"] = await check_postgres(db_url)
                schema_to_drop = schema  # the broker creates it from here on
            result.background_before, result.waited_for_quiet_s = await benchkit.wait_for_quiet(args.wait_quiet)
            broker.start()
            result.ready.update(await wait_ready(session, broker, READY_WITHIN_S))
            if result.ready.get("db") != database:
                raise SetupError(f"the broker reports database {result.ready.get('db')!r}, not {database!r}")
            await run_load(session, broker, callers, result, max_ops=args.max_ops)
        finally:
            broker.stop()
        if not args.profile and broker.proc is not None and broker.proc.returncode not in (0, None):
            result.db_check_error = f"broker exited with status {broker.proc.returncode}: {broker.log_tail(5)}"
        try:
            users, login_ok, other = await count_rows(database, db_url, schema)
        except Exception as exc:  # any driver error: report it, never hide it
            result.db_check_error = f"cannot count rows: {type(exc).__name__}: {exc}"
        else:
            result.db_users, result.db_login_audit_ok, result.db_audit_other = users, login_ok, other
            if result.db_check_error is None:
                result.db_check_ok = (
                    users == result.distinct_identities_ok
                    and login_ok == result.succeeded_total
                    and other == result.failures_total
                )
    except SetupError as exc:
        result.error = str(exc)
    finally:
        if schema_to_drop is not None:
            try:
                await drop_schema(db_url, schema_to_drop)
            except Exception as exc:
                print(f"bench_broker: could not drop schema {schema_to_drop}: {exc}", file=sys.stderr)
    result.rate_pass = result.rate_per_s >= RATE_TARGETS[database]
    result.p99_pass = result.latency_p99_ms is not None and result.latency_p99_ms < P99_TARGET_MS
    result.ok = (
        result.error is None
        and result.rate_pass
        and result.p99_pass
        and result.failures_total == 0
        and bool(result.db_check_ok)
        and not result.hit_op_cap
    )
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    benchkit.bootstrap_path()
    databases = runs_of(args)
    figures: dict[str, Any] = {
        "machine": benchkit.machine_info(),
        "settings": {
            "concurrency": args.concurrency,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "identities": args.identities,
            "max_ops_per_database": args.max_ops,
            "request_timeout_s": args.request_timeout,
            "wait_quiet_s": args.wait_quiet,
            "profiled_broker": bool(args.profile),
            "targets": {
                "callbacks_per_s": {db: RATE_TARGETS[db.partition("/")[0]] for db in databases},
                "p99_ms_below": P99_TARGET_MS,
            },
        },
        "results": {},
    }
    t0 = time.perf_counter()
    callers = await asyncio.to_thread(make_callers, args.identities)
    figures["settings"]["mint_seconds"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory(prefix="bench_broker-") as tmp:
        async with benchkit.client_session(args.concurrency, args.request_timeout) as session:
            for database in databases:
                result = await bench_database(database, args, session, callers, Path(tmp))
                figures["results"][database] = asdict(result)
    results = figures["results"].values()
    figures["failures_total"] = sum(res["failures_total"] for res in results)
    figures["setup_error"] = any(res["error"] is not None for res in results)
    figures["ok"] = all(res["ok"] for res in results)
    return figures


# =========================================================================== report


def _per_op_us(share: float | None, rate: float) -> str:
    return "n/a" if share is None or not rate else f"{share / rate * 1e6:,.0f}"


def _rows(res: dict[str, Any], concurrency: int) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    db, rate = res["database"], res["rate_per_s"]
    kind = res["kind"] or db
    notes: list[str] = []
    if res["error"] is not None:
        return [("setup", "error", "", "FAIL")], [f"{db}: {res['error']}"]
    pg = kind == "postgresql"
    cpu_parts = ["client", "broker (loop + other threads)", *(["postgres"] if pg else []), "other"]
    cpu_values = [
        _share(res["client_cpu_share"]),
        f"{_share(res['broker_cpu_share'])} ({_share(res['broker_loop_thread_share'])}"
        f" + {_share(res['broker_other_threads_share'])})",
        *([_share(res["postgres_cpu_share"])] if pg else []),
        _share(res["other_cpu_share"]),
    ]
    us_parts = ["client", "broker", *(["postgres"] if pg else [])]
    us_values = [
        _per_op_us(res["client_cpu_share"], rate),
        _per_op_us(res["broker_cpu_share"], rate),
        *([_per_op_us(res["postgres_cpu_share"], rate)] if pg else []),
    ]
    little = concurrency / rate * 1000 if rate else None
    rows = [
        ("post_heima_login callbacks/s", _fmt(rate), f">= {RATE_TARGETS[kind]:.0f}", _verdict(res["rate_pass"])),
        (
            "latency p50 / p99 ms",
            f"{_fmt(res['latency_p50_ms'], '.1f')} / {_fmt(res['latency_p99_ms'], '.1f')}",
            f"p99 < {P99_TARGET_MS:.0f}",
            _verdict(res["p99_pass"]),
        ),
        (
            f"latency mean / max ms ({concurrency} callers / rate = {_fmt(little, '.1f')})",
            f"{_fmt(res['latency_mean_ms'], '.1f')} / {_fmt(res['latency_max_ms'], '.1f')}",
            "",
            "",
        ),
        (
            "failures in window / total",
            f"{res['failures_measured']} / {res['failures_total']}",
            "0",
            _verdict(res["failures_total"] == 0),
        ),
        (
            "window mix: user inserts / updates",
            f"{res['inserts']:,} / {res['updates']:,}",
            "",
            "",
        ),
        (
            "rows: users / ok login audits / other audits",
            f"{_fmt(res['db_users'], ',')} / {_fmt(res['db_login_audit_ok'], ',')}"
            f" / {_fmt(res['db_audit_other'], ',')}",
            f"= {res['distinct_identities_ok']:,} / {res['succeeded_total']:,} / {res['failures_total']:,}",
            _verdict(bool(res["db_check_ok"])),
        ),
        (f"CPU µs/callback: {' / '.join(us_parts)}", " / ".join(us_values), "", ""),
        (f"CPU cores: {' / '.join(cpu_parts)}", " / ".join(cpu_values), "", ""),
        (
            "other processes before the run, cores (waited s)",
            f"{_share(res['background_before'])} ({res['waited_for_quiet_s']:.0f} s)",
            f"< {NOISY_CPU_SHARE}",
            "",
        ),
    ]
    notes += benchkit.failure_notes(db, res)
    if res["db_check_error"]:
        notes.append(f"{db} row check: {res['db_check_error']}")
    if res["hit_op_cap"]:
        notes.append(f"{db}: stopped at --max-ops before the end of the window")
    loop = res["broker_loop_thread_share"]
    shares = [res["client_cpu_share"], res["broker_cpu_share"], res["other_cpu_share"]]
    shares += [res["postgres_cpu_share"]] if pg else []
    busy = sum(share for share in shares if share is not None)
    cores = os.cpu_count() or 1
    if not (res["rate_pass"] and res["p99_pass"]) and loop is not None and loop < 0.85 and busy < 0.9 * cores:
        waits_on = (
            "sequential round trips to PostgreSQL per callback, and the pool's connections"
            if pg
            else "hand-offs to the single SQLite thread and back, which contend for the GIL"
        )
        notes.append(
            f"{db}: the broker's event-loop thread was busy only {loop:.2f} of the window and the machine"
            f" had spare CPU ({busy:.2f} of {cores} cores): the broker waits rather than computes (likely: {waits_on})."
        )
    if res["client_cpu_share"] is not None and res["client_cpu_share"] >= 0.9:
        notes.append(f"{db}: the load generator used {res['client_cpu_share']:.2f} of a core: partly client-bound")
    return rows, notes


def render(figures: dict[str, Any]) -> str:
    machine, settings = figures["machine"], figures["settings"]
    concurrency = settings["concurrency"]
    sections: list[tuple[str, list[tuple[str, str, str, str]]]] = []
    notes: list[str] = []
    for res in figures["results"].values():
        rows, more_notes = _rows(res, concurrency)
        notes += more_notes
        title = f"{res['database']}: {res['broker_command']}"
        if res["sqlite_synchronous"]:
            title += f"  (BROKER_SQLITE_SYNCHRONOUS={res['sqlite_synchronous']})"
        if res["database"] == "postgresql":
            title += f"  (schema {res['ready'].get('schema')}, PostgreSQL {res['ready'].get('server_version')})"
        sections.append((title, rows))
    widths = benchkit.column_widths(row for _, rows in sections for row in rows)
    out = [
        "bench_broker: AgentKeys broker post_heima_login (RS256 TEE-token check + user upsert), one run",
        benchkit.machine_line(machine),
        f"settings: concurrency={concurrency}  warm-up={settings['warmup_s']} s  window={settings['duration_s']} s"
        f" per database  identities={settings['identities']} (tokens minted in {settings['mint_seconds']} s)",
    ]
    for title, rows in sections:
        out += ["", f"== {title}", *benchkit.table(rows, widths)]
    out += [
        "",
        "CPU cores = CPU seconds used in the window / window wall time (1.00 = one core busy); broker loop =",
        "its event-loop thread, other threads = SQLite executor and resolver; postgres = every postgres process;",
        "other = the rest of the machine. Inserts are first logins of an identity, updates are later ones.",
    ]
    results = list(figures["results"].values())
    out += durability_cost_lines(figures["results"])
    noise = max((max(res["other_cpu_share"] or 0.0, res["background_before"] or 0.0) for res in results), default=0.0)
    steal = max((res["steal_share"] or 0.0 for res in results), default=0.0)
    out += benchkit.quiet_warning(noise, steal)
    if any(not res["p99_pass"] and res["error"] is None for res in results):
        out.append(
            f"NOTE: with {concurrency} closed-loop callers the mean latency is {concurrency} / rate (Little's law):"
            f" p99 < {P99_TARGET_MS:.0f} ms needs well over {concurrency / P99_TARGET_MS * 1000:,.0f} callbacks/s."
        )
    out += benchkit.closing_lines("broker" if settings["profiled_broker"] else None, notes, figures["ok"])
    return "\n".join(out)


def durability_cost_lines(results: dict[str, Any]) -> list[str]:
    """What acknowledging only durable writes costs on SQLite: the full run against the normal one."""
    full, normal = results.get("sqlite"), results.get("sqlite/normal")
    if not full or not normal or full["error"] or normal["error"] or not normal["rate_per_s"]:
        return []
    rate_change = full["rate_per_s"] / normal["rate_per_s"] - 1
    return [
        "",
        "SQLite durability cost (BROKER_SQLITE_SYNCHRONOUS full vs normal, two runs one after the other):",
        f"  callbacks/s {_fmt(full['rate_per_s'])} vs {_fmt(normal['rate_per_s'])} ({rate_change:+.1%});"
        f" p50 {_fmt(full['latency_p50_ms'], '.1f')} vs {_fmt(normal['latency_p50_ms'], '.1f')} ms;"
        f" p99 {_fmt(full['latency_p99_ms'], '.1f')} vs {_fmt(normal['latency_p99_ms'], '.1f')} ms",
    ]


def runs_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The windows to measure: SQLite once per --sqlite-synchronous mode, then PostgreSQL."""
    runs: list[str] = []
    for database in DATABASES if args.only is None else (args.only,):
        if database == "sqlite":
            runs += ["sqlite" if mode == "full" else f"sqlite/{mode}" for mode in args.sqlite_synchronous]
        else:
            runs.append(database)
    return tuple(runs)


# =========================================================================== profile summary

ProfileKey = tuple[str, int, str]
_OTHER = "other"
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle: waiting in epoll", ("select.epoll",)),
    ("start-up: imports", ("<frozen importlib", "<frozen zipimport", "marshal.")),
    ("RSA verify (cryptography/OpenSSL)", ("/cryptography/", "cryptography.hazmat")),
    ("PyJWT (decode, base64 checks, claims)", ("/jwt/",)),
    ("asyncpg (protocol, pool, transactions)", ("/asyncpg/", "asyncpg.")),
    ("sqlite3 (event-loop thread only)", ("sqlite3",)),
    ("aiohttp (HTTP parsing, routing, responses)", ("/aiohttp/", "aiohttp.", "/multidict/", "multidict.", "yarl")),
    ("asyncio event loop + socket I/O", ("/asyncio/", "_asyncio", "selectors.py", "socket", "_contextvars", "_heapq")),
    ("json", ("/json/", "_json")),
    ("broker/ code", ("/broker/",)),
    ("protocol/ code", ("/protocol/",)),
    ("concurrent.futures / threading (executor hop)", ("/concurrent/", "threading.py", "_thread")),
    ("logging", ("/logging/",)),
)


def _own_category(key: ProfileKey) -> str:
    text = f"{key[0]}:{key[2]}"
    for name, needles in _CATEGORIES:
        if any(needle in text for needle in needles):
            return name
    return _OTHER


def profile_by_area(raw: dict[ProfileKey, tuple[Any, ...]]) -> dict[str, float]:
    """Self time per area; a function of no area (a builtin, `base64`, `re`…) is charged to the
    areas of its callers, in proportion to the time it spent for each (up to three levels up)."""

    def shares(key: ProfileKey, depth: int) -> dict[str, float]:
        own = _own_category(key)
        callers: dict[ProfileKey, tuple[Any, ...]] = raw[key][4] if key in raw else {}
        if own != _OTHER or depth == 0 or not callers:
            return {own: 1.0}
        spent = {caller: float(timing[2]) for caller, timing in callers.items()}
        total = sum(spent.values())
        if total <= 0:
            return {own: 1.0}
        result: dict[str, float] = {}
        for caller, seconds in spent.items():
            for area, fraction in shares(caller, depth - 1).items():
                result[area] = result.get(area, 0.0) + fraction * seconds / total
        return result

    by_area: dict[str, float] = {}
    for key, (_cc, _nc, tottime, _ct, _callers) in raw.items():
        for area, fraction in shares(key, 3).items():
            by_area[area] = by_area.get(area, 0.0) + tottime * fraction
    return by_area


def print_profile(path: str, top: int) -> None:
    stats = pstats.Stats(path)
    raw: dict[ProfileKey, tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    by_area = profile_by_area(raw)
    total = sum(by_area.values()) or 1.0
    idle = sum(seconds for area, seconds in by_area.items() if area.startswith(("idle", "start-up")))
    busy = (total - idle) or 1.0
    print(f"\n=== cProfile of the broker's event-loop thread ({path}) ===")
    print("self time by area (builtins charged to their callers); cProfile inflates code made of many tiny calls")
    print(f"  {'area':<48} {'seconds':>8}  {'of wall':>7}  {'of busy':>7}")
    for area, seconds in sorted(by_area.items(), key=lambda item: -item[1]):
        of_busy = "" if area.startswith(("idle", "start-up")) else f"{seconds / busy:7.1%}"
        print(f"  {area:<48} {seconds:8.2f}  {seconds / total:7.1%}  {of_busy:>7}")
    print(f"--- top {top} by tottime ---")
    benchkit.print_top_functions(stats, top, f"--- top {top} by cumulative time ---")


# =========================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the broker's post_heima_login callbacks/s on SQLite and PostgreSQL."
    )
    parser.add_argument("--duration", type=float, default=8.0, help="window per database, seconds (8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="before each window, seconds (1)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers (64)")
    parser.add_argument("--identities", type=int, default=2000, help="EVM identities, one token each (2000)")
    parser.add_argument("--only", choices=DATABASES, default=None, help="run one database only")
    parser.add_argument(
        "--sqlite-synchronous",
        type=lambda text: [mode.strip() for mode in text.split(",") if mode.strip()],
        default=["full", "normal"],
        metavar="MODES",
        help="SQLite windows, one per BROKER_SQLITE_SYNCHRONOUS mode (full,normal)",
    )
    parser.add_argument(
        "--pg-dsn",
        default=None,
        help="PostgreSQL DSN (default: BROKER_TEST_PG_DSN, else 127.0.0.1:5432, else a throwaway server of our own)",
    )
    parser.add_argument("--max-ops", type=int, default=2_000_000, help="cap on callbacks per database")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="per request, s (10)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        metavar="S",
        help="before each database, wait up to S seconds for other processes to leave the CPUs idle (30)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="run the broker under cProfile, write PREFIX.<database>.prof and print where the time goes",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per profile (25)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.request_timeout <= 0 or args.wait_quiet < 0:
        parser.error("--duration and --request-timeout must be positive, --warmup and --wait-quiet >= 0")
    if args.concurrency < 1 or args.identities < 1 or args.max_ops < 1:
        parser.error("--concurrency, --identities and --max-ops must be >= 1")
    if args.identities < args.concurrency:
        parser.error("--identities must be >= --concurrency (no two callers share an identity at once)")
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    # Whole-run bound: minting, and per database start + window + stop + checks, with margin.
    per_database = args.wait_quiet + READY_WITHIN_S + args.warmup + args.duration + 60.0 + STOP_WITHIN_S + 30.0
    if not args.sqlite_synchronous or set(args.sqlite_synchronous) - {"full", "normal"}:
        parser.error("--sqlite-synchronous takes full, normal or both (comma-separated)")
    budget = 120.0 + len(runs_of(args)) * per_database

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(budget):
            return await bench(args)

    try:
        with contextlib.ExitStack() as stack:
            if args.only != "sqlite":  # the PostgreSQL of this machine, or one of our own for the run
                args.pg_dsn = stack.enter_context(benchkit.postgres(args.pg_dsn))
            figures = asyncio.run(bounded())
    except (SetupError, OSError, TimeoutError) as exc:
        print(f"bench_broker: setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:  # SIGTERM: the brokers were stopped on the way out
        print("bench_broker: terminated", file=sys.stderr)
        return 2
    print(render(figures))
    if args.json:
        benchkit.write_figures(args.json, figures)
    if args.profile:
        for database in figures["results"]:
            with contextlib.suppress(OSError):
                print_profile(f"{args.profile}.{database.replace('/', '-')}.prof", args.profile_top)
    if figures["setup_error"]:
        return 2
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
