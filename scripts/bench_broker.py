#!/usr/bin/env python3
"""Throughput benchmark of the AgentKeys broker's ``post_heima_login`` callback, measured in one run.

Each callback is the real thing: an RS256 TEE access token (minted with the fixture TEE key exactly
as the worker mints it) that the broker verifies, then the transaction of the user upsert, the
token row and the audit row. Targets at ``--concurrency`` (64) callers: >= 1000 callbacks/s on
SQLite, >= 800/s on PostgreSQL, p99 latency < 50 ms on both, no failed callback.

The broker runs in its own subprocess, as deployed: ``python -m broker.cli run --port P`` with
``BROKER_DB_URL`` (a fresh temporary SQLite file, or PostgreSQL with a fresh
``BROKER_DB_SCHEMA=bench_<random>`` that is dropped at the end) and
``BROKER_TEE_JWT_PUBLIC_KEY=fixtures/keys/auth_token_key.test.bin``; it is ready when
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
        [--only sqlite|postgresql] [--json PATH] [--profile PREFIX] [--wait-quiet S] [--pg-dsn DSN]

Before each database the script waits (``--wait-quiet``, at most 30 s) for the rest of the machine
to go idle, and warns when other processes still used the CPUs during a window.

``--profile PREFIX`` runs the broker as ``python -m cProfile -o PREFIX.<db>.prof -m broker.cli run
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
import platform
import pstats
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_ID = "agentkeys"
CALLBACK_PATH = "/v3/account/post_heima_login"
TEE_KEY_PATH = ROOT / "fixtures" / "keys" / "auth_token_key.test.bin"
DEFAULT_PG_DSN = os.environ.get("BROKER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DATABASES = ("sqlite", "postgresql")
RATE_TARGETS = {"sqlite": 1000.0, "postgresql": 800.0}
P99_TARGET_MS = 50.0
SUCCESS_CODE = 10000
MAX_FAILURE_SAMPLES = 5
NOISY_CPU_SHARE = 0.15  # other processes using this much of a core disturb a 2-core run
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


def _bootstrap_path() -> None:
    """Make `protocol` and `omni_sim` importable when the script is run by path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


class BenchFailure(Exception):
    """One callback went wrong; the text before the first ':' is its category in the report."""


class SetupError(RuntimeError):
    """The benchmark could not be set up (database, broker start); nothing was measured."""


# =========================================================================== /proc readings


def _stat_fields(path: Path) -> tuple[str, list[str]] | None:
    """(comm, fields after comm) of a /proc stat file, or None when it is gone or unreadable."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return comm, stat[stat.rindex(")") + 2 :].split()


def _cpu_of(fields: list[str]) -> float:
    """utime + stime in seconds (fields 14 and 15 of proc(5); 0-based 11, 12 after comm)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    parsed = _stat_fields(Path(f"/proc/{pid}/stat"))
    return None if parsed is None else _cpu_of(parsed[1])


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of `pid`, by thread id (the main thread's id is `pid`)."""
    threads: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            parsed = _stat_fields(Path(entry.path) / "stat")
            if parsed is not None:
                threads[int(entry.name)] = _cpu_of(parsed[1])
    return threads


def postgres_cpu_seconds() -> tuple[float, int] | None:
    """(CPU seconds, process count) of every live ``postgres`` process on this machine."""
    total, count = 0.0, 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        parsed = _stat_fields(Path(entry.path) / "stat")
        if parsed is not None and parsed[0] == "postgres":
            total += _cpu_of(parsed[1])
            count += 1
    return (total, count) if count else None


def host_cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (Linux /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ([*map(int, fields), 0, 0])[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


async def background_cpu_share(seconds: float = 1.0) -> float | None:
    """Cores the rest of the machine keeps busy while this process sleeps for `seconds`."""
    host0, own0, wall0 = host_cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    host1, own1, wall1 = host_cpu_seconds(), time.process_time(), time.perf_counter()
    if host0 is None or host1 is None:
        return None
    return max(0.0, (host1[0] - host0[0]) - (own1 - own0)) / (wall1 - wall0)


async def wait_for_quiet(max_wait: float) -> tuple[float | None, float]:
    """Wait (at most `max_wait` seconds) until the machine is quiet: (last busy share, waited s)."""
    begin = time.perf_counter()
    while True:
        busy = await background_cpu_share()
        waited = time.perf_counter() - begin
        if busy is None or busy < NOISY_CPU_SHARE or waited >= max_wait:
            return busy, waited


# =========================================================================== the broker process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    """``python [-m cProfile -o FILE] -m broker.cli run --port P`` with the bench's BROKER_* env."""

    def __init__(self, database: str, env: dict[str, str], log_dir: Path, profile_path: str | None) -> None:
        self.database = database
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_dir / f"broker-{database}.log"
        self.profile_path = profile_path
        profiler = ["-m", "cProfile", "-o", profile_path] if profile_path else []
        self.argv = [*profiler, "-m", "broker.cli", "run", "--port", str(self.port)]
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> str:
        return " ".join(["python", *self.argv])

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env["BENCH_BROKER_PARENT"] = str(os.getpid())
        env.update(self._env)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGINT (aiohttp's graceful exit; cProfile writes its file after it), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10.0)


async def wait_ready(session: aiohttp.ClientSession, broker: BrokerProcess, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last: str = "no answer"
    while time.monotonic() < deadline:
        if not broker.alive():
            raise SetupError(f"the {broker.database} broker exited early:\n{broker.log_tail()}")
        try:
            async with session.get(broker.url + "/readyz") as response:
                body = await response.read()
                if response.status == 200:
                    ready: dict[str, Any] = json.loads(body)
                    return ready
                last = f"HTTP {response.status}: {body[:200]!r}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    raise SetupError(f"the {broker.database} broker is not ready after {within} s ({last}):\n{broker.log_tail()}")


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
    from omni_sim.keystore import load_pkcs1_der
    from protocol.identity import IdentityKind, omni_account_of
    from protocol.tee_jwt import AUTH_TOKEN_LIFETIME_SECONDS, AuthTokenClaims, encode_auth_token

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
class DatabaseResult:
    database: str
    concurrency: int
    warmup_s: float
    duration_s: float
    broker_command: str = ""
    profiled: bool = False
    background_before: float | None = None
    waited_for_quiet_s: float = 0.0
    ready: dict[str, Any] = field(default_factory=dict)
    completed: int = 0
    inserts: int = 0
    updates: int = 0
    rate_per_s: float = 0.0
    started_total: int = 0
    succeeded_total: int = 0
    failures_measured: int = 0
    failures_total: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    failure_samples: list[str] = field(default_factory=list)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_mean_ms: float | None = None
    latency_max_ms: float | None = None
    client_cpu_share: float | None = None
    broker_cpu_share: float | None = None
    broker_loop_thread_share: float | None = None
    broker_other_threads_share: float | None = None
    postgres_cpu_share: float | None = None
    postgres_processes: int | None = None
    other_cpu_share: float | None = None
    steal_share: float | None = None
    distinct_identities_ok: int = 0
    db_users: int | None = None
    db_login_audit_ok: int | None = None
    db_audit_other: int | None = None
    db_check_ok: bool | None = None
    db_check_error: str | None = None
    hit_op_cap: bool = False
    rate_pass: bool = False
    p99_pass: bool = False
    ok: bool = False
    error: str | None = None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


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
    kinds: Counter[str] = Counter()
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
            try:
                await callback(op % len(callers))
                failed: str | None = None
            except BenchFailure as exc:
                failed = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                failed = f"{type(exc).__name__}: {exc}"
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
            result.failures_total += 1
            result.failures_measured += in_window
            kinds[failed.split(":", 1)[0]] += 1
            sample = failed[:300]
            if len(result.failure_samples) < MAX_FAILURE_SAMPLES and sample not in result.failure_samples:
                result.failure_samples.append(sample)

    async def sampler() -> None:
        """CPU counters at the window's start and end."""
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        broker0, threads0 = process_cpu_seconds(broker.pid), thread_cpu_seconds(broker.pid)
        pg0, host0 = postgres_cpu_seconds(), host_cpu_seconds()
        await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
        cpu1, wall1 = time.process_time(), time.perf_counter()
        broker1, threads1 = process_cpu_seconds(broker.pid), thread_cpu_seconds(broker.pid)
        pg1, host1 = postgres_cpu_seconds(), host_cpu_seconds()
        wall = wall1 - wall0
        result.client_cpu_share = (cpu1 - cpu0) / wall
        if broker0 is not None and broker1 is not None:
            result.broker_cpu_share = (broker1 - broker0) / wall
            loop_thread = threads1.get(broker.pid, 0.0) - threads0.get(broker.pid, 0.0)
            result.broker_loop_thread_share = loop_thread / wall
            result.broker_other_threads_share = max(0.0, result.broker_cpu_share - result.broker_loop_thread_share)
        if pg0 is not None and pg1 is not None:
            result.postgres_cpu_share = max(0.0, pg1[0] - pg0[0]) / wall
            result.postgres_processes = pg1[1]
        ours = [result.client_cpu_share, result.broker_cpu_share]
        if result.database == "postgresql":
            ours.append(result.postgres_cpu_share)
        if host0 is not None and host1 is not None and None not in ours:
            busy = (host1[0] - host0[0]) / wall
            result.other_cpu_share = max(0.0, busy - sum(x for x in ours if x is not None))
            result.steal_share = (host1[1] - host0[1]) / wall

    hard_limit = result.warmup_s + result.duration_s + 60.0  # requests time out well before this
    async with asyncio.timeout(hard_limit), asyncio.TaskGroup() as group:
        group.create_task(sampler())
        for _ in range(result.concurrency):
            group.create_task(worker())
    result.started_total = min(next(started), max_ops)
    result.distinct_identities_ok = len(user_ids)
    result.rate_per_s = result.completed / result.duration_s
    latencies.sort()
    for name, value in (
        ("latency_p50_ms", percentile(latencies, 50)),
        ("latency_p99_ms", percentile(latencies, 99)),
        ("latency_max_ms", latencies[-1] if latencies else None),
        ("latency_mean_ms", sum(latencies) / len(latencies) if latencies else None),
    ):
        setattr(result, name, None if value is None else value * 1000)
    result.failure_kinds = dict(kinds)


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
    database: str,
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    callers: Sequence[Caller],
    tmpdir: Path,
) -> DatabaseResult:
    result = DatabaseResult(database, args.concurrency, args.warmup, args.duration, profiled=bool(args.profile))
    schema: str | None = None
    schema_to_drop: str | None = None
    if database == "sqlite":
        db_url = f"sqlite:///{tmpdir / 'broker-bench.sqlite3'}"
        env = {"BROKER_DB_URL": db_url}
    else:
        db_url = args.pg_dsn
        schema = f"bench_{secrets.token_hex(6)}"
        env = {"BROKER_DB_URL": db_url, "BROKER_DB_SCHEMA": schema}
    env["BROKER_TEE_JWT_PUBLIC_KEY"] = str(TEE_KEY_PATH)
    profile_path = f"{args.profile}.{database}.prof" if args.profile else None
    broker = BrokerProcess(database, env, tmpdir, profile_path)
    result.broker_command = broker.command
    try:
        try:
            if database == "postgresql":
                result.ready["schema"] = schema
                result.ready["server_version"] = await check_postgres(db_url)
                schema_to_drop = schema  # the broker creates it from here on
            result.background_before, result.waited_for_quiet_s = await wait_for_quiet(args.wait_quiet)
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
    _bootstrap_path()
    databases = DATABASES if args.only is None else (args.only,)
    figures: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(),
            "aiohttp": aiohttp.__version__,
        },
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
                "callbacks_per_s": {db: RATE_TARGETS[db] for db in databases},
                "p99_ms_below": P99_TARGET_MS,
            },
        },
        "results": {},
    }
    t0 = time.perf_counter()
    callers = await asyncio.to_thread(make_callers, args.identities)
    figures["settings"]["mint_seconds"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory(prefix="bench_broker-") as tmp:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=args.concurrency, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=args.request_timeout),
            skip_auto_headers=("User-Agent",),
        ) as session:
            for database in databases:
                result = await bench_database(database, args, session, callers, Path(tmp))
                figures["results"][database] = asdict(result)
    results = figures["results"].values()
    figures["failures_total"] = sum(res["failures_total"] for res in results)
    figures["setup_error"] = any(res["error"] is not None for res in results)
    figures["ok"] = all(res["ok"] for res in results)
    return figures


# =========================================================================== report


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _per_op_us(share: float | None, rate: float) -> str:
    return "n/a" if share is None or not rate else f"{share / rate * 1e6:,.0f}"


def _rows(res: dict[str, Any], concurrency: int) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    db, rate = res["database"], res["rate_per_s"]
    notes: list[str] = []
    if res["error"] is not None:
        return [("setup", "error", "", "FAIL")], [f"{db}: {res['error']}"]
    pg = db == "postgresql"
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
        ("post_heima_login callbacks/s", _fmt(rate), f">= {RATE_TARGETS[db]:.0f}", _verdict(res["rate_pass"])),
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
    if res["failure_samples"]:
        notes.append(f"{db} failures: {res['failure_kinds']}")
        notes += [f"  e.g. {sample}" for sample in res["failure_samples"]]
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
        if res["database"] == "postgresql":
            title += f"  (schema {res['ready'].get('schema')}, PostgreSQL {res['ready'].get('server_version')})"
        sections.append((title, rows))
    header = ("metric", "value", "target", "verdict")
    all_rows = [row for _, rows in sections for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in all_rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        name, value, target, verdict = cells
        return f"{name:<{widths[0]}}  {value:>{widths[1]}}  {target:<{widths[2]}}  {verdict}".rstrip()

    out = [
        "bench_broker: AgentKeys broker post_heima_login (RS256 TEE-token check + user upsert), one run",
        f"machine : os.cpu_count()={machine['cpu_count']}  {machine['python']}"
        f"  aiohttp {machine['aiohttp']}  {machine['platform']}",
        f"settings: concurrency={concurrency}  warm-up={settings['warmup_s']} s  window={settings['duration_s']} s"
        f" per database  identities={settings['identities']} (tokens minted in {settings['mint_seconds']} s)",
    ]
    for title, rows in sections:
        out += ["", f"== {title}", line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    out += [
        "",
        "CPU cores = CPU seconds used in the window / window wall time (1.00 = one core busy); broker loop =",
        "its event-loop thread, other threads = SQLite executor and resolver; postgres = every postgres process;",
        "other = the rest of the machine. Inserts are first logins of an identity, updates are later ones.",
    ]
    results = list(figures["results"].values())
    noise = max((max(res["other_cpu_share"] or 0.0, res["background_before"] or 0.0) for res in results), default=0.0)
    steal = max((res["steal_share"] or 0.0 for res in results), default=0.0)
    if noise >= NOISY_CPU_SHARE or steal >= NOISY_CPU_SHARE:
        out.append(
            f"WARNING: the machine was not quiet (other processes up to {noise:.2f} cores,"
            f" steal up to {steal:.2f}); the figures are disturbed, rerun when it is idle."
        )
    if any(not res["p99_pass"] and res["error"] is None for res in results):
        out.append(
            f"NOTE: with {concurrency} closed-loop callers the mean latency is {concurrency} / rate (Little's law):"
            f" p99 < {P99_TARGET_MS:.0f} ms needs well over {concurrency / P99_TARGET_MS * 1000:,.0f} callbacks/s."
        )
    if settings["profiled_broker"]:
        out.append("NOTE: the broker ran under cProfile; its figures are not representative.")
    out += notes
    out.append(f"overall: {_verdict(figures['ok'])}")
    return "\n".join(out)


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
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"--- top {top} by cumulative time ---")
    stats.sort_stats("cumulative").print_stats(top)


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
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN, help=f"PostgreSQL DSN ({DEFAULT_PG_DSN})")
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
    budget = 120.0 + len(DATABASES) * per_database

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(budget):
            return await bench(args)

    try:
        figures = asyncio.run(bounded())
    except (SetupError, OSError, TimeoutError) as exc:
        print(f"bench_broker: setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:  # SIGTERM: the brokers were stopped on the way out
        print("bench_broker: terminated", file=sys.stderr)
        return 2
    print(render(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")
    if args.profile:
        for database in figures["results"]:
            with contextlib.suppress(OSError):
                print_profile(f"{args.profile}.{database}.prof", args.profile_top)
    if figures["setup_error"]:
        return 2
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
