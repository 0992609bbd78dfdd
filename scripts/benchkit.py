"""What the benchmark scripts (``bench_sim.py``, ``bench_broker.py``, ``bench_login*.py``) share.

Subprocesses under test (start, readiness, stop with a kill fallback, CPU readings), CPU
accounting from ``/proc`` (per process, per thread, per command name, the whole machine), the
quiet-machine check, the bookkeeping of one load operation, the login benchmarks' caller loop
(`run_window`, once per database: `per_database`), and the pieces of the text report
(number formats, the metric/value/target/verdict table, the machine line, closing notes, the
top of a cProfile dump).

The scripts run as ``python scripts/bench_X.py``, so ``scripts/`` is ``sys.path[0]`` and
``import benchkit`` works from any working directory. Linux only for the CPU figures: elsewhere
the readers return None and the report says ``n/a``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MAX_FAILURE_SAMPLES = 5
NOISY_CPU_SHARE = 0.15  # other processes using this much of a core disturb a 2-core run
#: What a failed load operation may raise besides `BenchFailure`; it is counted, never fatal.
OPERATION_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError, TimeoutError, ValueError)

_T = TypeVar("_T")


def bootstrap_path() -> None:
    """Make `protocol`, `omni_sim` and `broker` importable when a script is run by path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """The PostgreSQL a benchmark or campaign uses: `dsn` if given, else as the tests choose it
    (`fixtures/postgres.py`: BROKER_TEST_PG_DSN, 127.0.0.1:5432, or a throwaway server of our own,
    stopped and removed on the way out). Prints which one in one line."""
    bootstrap_path()
    from fixtures.postgres import Postgres, PostgresUnavailable, provide

    try:
        server = Postgres(dsn, "--pg-dsn", "as given") if dsn else provide()
    except PostgresUnavailable as exc:
        raise SetupError(f"PostgreSQL: {exc}") from None
    print(server.describe(), flush=True)
    try:
        yield server.dsn
    finally:
        server.stop()


class BenchFailure(Exception):
    """One operation went wrong; the text before the first ':' is its category in the report."""


class SetupError(RuntimeError):
    """The benchmark could not be set up (database, server start); nothing was measured."""


class NotReady(Exception):
    """A readiness probe got an answer that is not "ready" yet; the message says what it was."""


# =========================================================================== /proc readings


def stat_fields(path: Path) -> tuple[str, list[str]] | None:
    """(comm, fields after comm) of a /proc stat file, or None when it is gone or unreadable."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return comm, stat[stat.rindex(")") + 2 :].split()


def stat_cpu_seconds(fields: list[str]) -> float:
    """utime + stime in seconds (fields 14 and 15 of proc(5); 0-based 11, 12 after comm)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (Linux /proc), or None elsewhere or when it is gone."""
    parsed = stat_fields(Path(f"/proc/{pid}/stat"))
    return None if parsed is None else stat_cpu_seconds(parsed[1])


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of `pid`, by thread id (the main thread's id is `pid`)."""
    threads: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            parsed = stat_fields(Path(entry.path) / "stat")
            if parsed is not None:
                threads[int(entry.name)] = stat_cpu_seconds(parsed[1])
    return threads


def command_cpu_seconds(comm: str) -> tuple[float, int] | None:
    """(CPU seconds, process count) of every live process named `comm` on this machine."""
    total, count = 0.0, 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        parsed = stat_fields(Path(entry.path) / "stat")
        if parsed is not None and parsed[0] == comm:
            total += stat_cpu_seconds(parsed[1])
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


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """This process's CPU time, the wall clock and the machine's counters at one instant."""

    client: float
    wall: float
    host: tuple[float, float] | None

    @classmethod
    def take(cls) -> CpuSnapshot:
        return cls(time.process_time(), time.perf_counter(), host_cpu_seconds())


@dataclass(frozen=True, slots=True)
class CpuWindow:
    """CPU shares over a measurement window: CPU seconds / wall seconds (1.0 = one core busy)."""

    start: CpuSnapshot
    end: CpuSnapshot

    @property
    def wall(self) -> float:
        return self.end.wall - self.start.wall

    @property
    def client_share(self) -> float:
        """This process (the load generator)."""
        return (self.end.client - self.start.client) / self.wall

    def share(self, before: float | None, after: float | None) -> float | None:
        """Share of a CPU-seconds counter read at the window's start and end (None if unknown)."""
        return None if before is None or after is None else (after - before) / self.wall

    def rest(self, ours: Sequence[float | None]) -> tuple[float | None, float | None]:
        """(other, steal): what the rest of the machine used besides `ours`, and hypervisor
        steal; (None, None) when the machine's counters or one of `ours` is unknown."""
        host0, host1 = self.start.host, self.end.host
        if host0 is None or host1 is None or None in ours:
            return None, None
        busy = (host1[0] - host0[0]) / self.wall
        other = max(0.0, busy - sum(x for x in ours if x is not None))
        return other, (host1[1] - host0[1]) / self.wall


async def sleep_until(moment: float) -> None:
    """Sleep until `time.perf_counter()` reaches `moment` (at once if it has)."""
    await asyncio.sleep(max(0.0, moment - time.perf_counter()))


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


# =========================================================================== subprocesses


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env(drop_prefix: str | None = None) -> dict[str, str]:
    """This process's environment (less the variables starting with `drop_prefix`), with the
    repository root first on PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if drop_prefix is None or not key.startswith(drop_prefix)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


class ChildProcess:
    """A subprocess on a free port of 127.0.0.1, run in the repository root with its output in
    `log_path`; stopped with `stop_signal`, then SIGKILL after `stop_within` seconds."""

    stop_signal: signal.Signals = signal.SIGTERM
    stop_within: float = 10.0

    def __init__(self, label: str, log_path: Path) -> None:
        self.label = label  # how error messages name it, e.g. "echo server"
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                list(argv),
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

    def cpu_seconds(self) -> float | None:
        """utime + stime of the process (Linux /proc), or None elsewhere or before it starts."""
        return None if self.proc is None else process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(self.stop_within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10.0)

    def not_ready_error(self, within: float, last: str) -> SetupError:
        return SetupError(f"{self.label} not ready after {within} s ({last})")


async def wait_ready(
    process: ChildProcess,
    probe: Callable[[], Awaitable[_T]],
    within: float,
    retry_on: tuple[type[Exception], ...],
) -> _T:
    """`probe()`'s answer once it stops raising `NotReady` or one of `retry_on`; `SetupError`
    when the process exits first or `within` seconds pass."""
    deadline = time.monotonic() + within
    last = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise SetupError(f"{process.label} exited early:\n{process.log_tail()}")
        try:
            return await probe()
        except NotReady as exc:
            last = str(exc)
        except retry_on as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    raise process.not_ready_error(within, last)


def client_session(concurrency: int, request_timeout: float) -> aiohttp.ClientSession:
    """The load generator's session: keep-alive, `concurrency` connections per server."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        skip_auto_headers=("User-Agent",),
    )


# =========================================================================== load operations


@dataclass(kw_only=True)
class LoadResult:
    """What every load window measures; each script's result subclasses it with its own fields
    (which its `asdict` lists after these)."""

    completed: int = 0
    rate_per_s: float = 0.0
    failures_measured: int = 0
    failures_total: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    failure_samples: list[str] = field(default_factory=list)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    #: CPU shares of the load generator, of the rest of the machine (noise), hypervisor steal.
    client_cpu_share: float | None = None
    other_cpu_share: float | None = None
    steal_share: float | None = None
    hit_op_cap: bool = False

    def record_failure(self, failed: str, in_window: bool, *, distinct: bool = False) -> None:
        """Count a failed operation, by category, and keep the first few samples (only distinct
        ones when `distinct`)."""
        self.failures_total += 1
        self.failures_measured += in_window
        kind = failed.split(":", 1)[0]
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1
        sample = failed[:300]
        if len(self.failure_samples) < MAX_FAILURE_SAMPLES and not (distinct and sample in self.failure_samples):
            self.failure_samples.append(sample)

    def set_percentiles(self, sorted_latencies: Sequence[float]) -> None:
        """p50 and p99 in milliseconds of the window's latencies (seconds, ascending)."""
        self.latency_p50_ms = percentile_ms(sorted_latencies, 50)
        self.latency_p99_ms = percentile_ms(sorted_latencies, 99)


async def attempt(operation: Awaitable[None]) -> str | None:
    """Await one load operation: None when it succeeded, else its failure ("category: detail")."""
    try:
        await operation
    except BenchFailure as exc:
        return str(exc)
    except OPERATION_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class Window:
    """One window of `run_window`: the operations completed and failed, and their latencies."""

    what: str
    completed: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float | None:
        return percentile_ms(sorted(self.latencies), q)


async def run_window(
    what: str, concurrency: int, duration: float, operation: Callable[[int], Awaitable[None]]
) -> Window:
    """`concurrency` callers run `operation(caller)` (raising on a failure) until `duration`
    passes, after a warm-up second; the latency is per operation (a login is two requests)."""
    window = Window(what)
    stop_at = 0.0
    measuring = False

    async def caller(index: int) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                await operation(index)
            except Exception:
                if measuring:
                    window.failures += 1
                continue
            if measuring:
                window.completed += 1
                window.latencies.append(time.perf_counter() - started)

    stop_at = time.monotonic() + 1.0  # warm-up
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    measuring = True
    began = time.monotonic()
    stop_at = began + duration
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    window.seconds = time.monotonic() - began
    return window


async def post_ok(http: aiohttp.ClientSession, url: str, body: Any, token: str | None = None) -> dict[str, Any]:
    """POST `body` as JSON; the reply's JSON, or RuntimeError (a failed operation) unless 200."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as response:
        reply: dict[str, Any] = await response.json()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {reply}")
        return reply


def per_database(
    args: argparse.Namespace, prefix: str, bench_database: Callable[[str, argparse.Namespace, Path], Awaitable[_T]]
) -> dict[str, _T]:
    """`bench_database(database, args, directory)` for each of ``args.only`` (default SQLite then
    PostgreSQL), in one temporary directory; PostgreSQL is `postgres(args.pg_dsn)`, whose DSN is
    put in ``args.pg_dsn``. `SetupError` when one cannot be set up."""

    async def each() -> dict[str, _T]:
        results = {}
        with tempfile.TemporaryDirectory(prefix=prefix) as directory:
            for database in args.only or ("sqlite", "postgresql"):
                results[database] = await bench_database(database, args, Path(directory))
        return results

    if args.only and "postgresql" not in args.only:
        return asyncio.run(each())
    with postgres(args.pg_dsn) as dsn:
        args.pg_dsn = dsn
        return asyncio.run(each())


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def percentile_ms(sorted_seconds: Sequence[float], q: float) -> float | None:
    """`percentile` of latencies in seconds, in milliseconds."""
    value = percentile(sorted_seconds, q)
    return None if value is None else value * 1000


# =========================================================================== report

Row = tuple[str, str, str, str]
HEADER: Row = ("metric", "value", "target", "verdict")


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
    }


def machine_line(machine: Mapping[str, Any]) -> str:
    return (
        f"machine : os.cpu_count()={machine['cpu_count']}  {machine['python']}"
        f"  aiohttp {machine['aiohttp']}  {machine['platform']}"
    )


def column_widths(rows: Iterable[Row]) -> list[int]:
    """Widths of the table's columns, header included."""
    widths = [len(title) for title in HEADER]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    return widths


def table_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    name, value, target, outcome = cells
    return f"{name:<{widths[0]}}  {value:>{widths[1]}}  {target:<{widths[2]}}  {outcome}".rstrip()


def table(rows: Sequence[Row], widths: Sequence[int]) -> list[str]:
    """Header, rule and rows of a metric/value/target/verdict table."""
    return [
        table_line(HEADER, widths),
        table_line(["-" * width for width in widths], widths),
        *(table_line(row, widths) for row in rows),
    ]


def failure_notes(what: str, result: Mapping[str, Any]) -> list[str]:
    """The failure categories and samples of a result, when it has any."""
    if not result["failure_samples"]:
        return []
    samples = [f"  e.g. {sample}" for sample in result["failure_samples"]]
    return [f"{what} failures: {result['failure_kinds']}", *samples]


def quiet_warning(noise: float, steal: float) -> list[str]:
    """The warning that other processes (or the hypervisor) disturbed the figures, if they did."""
    if noise < NOISY_CPU_SHARE and steal < NOISY_CPU_SHARE:
        return []
    return [
        f"WARNING: the machine was not quiet (other processes up to {noise:.2f} cores,"
        f" steal up to {steal:.2f}); the figures are disturbed, rerun when it is idle."
    ]


def closing_lines(profiled: str | None, notes: Sequence[str], ok: bool) -> list[str]:
    """The report's last lines: the cProfile caveat for the process named `profiled`, the
    notes, the overall verdict."""
    out = [f"NOTE: the {profiled} ran under cProfile; its figures are not representative."] if profiled else []
    return [*out, *notes, f"overall: {verdict(ok)}"]


def write_figures(path: str, figures: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {path}")


def print_top_functions(stats: pstats.Stats, top: int, cumulative_heading: str) -> None:
    """The `top` functions of a profile by own time, then (after the heading) by cumulative time."""
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(cumulative_heading)
    stats.sort_stats("cumulative").print_stats(top)
