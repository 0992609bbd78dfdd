#!/usr/bin/env python3
"""Throughput benchmark of the omni_sim simulator, measured in one run.

1. ``omni_getHealth`` requests/s of the simulator, as a ratio to a bare aiohttp JSON-RPC echo
   server (``json.loads`` of the body, ``json.dumps`` of ``{"jsonrpc","id","result":"OK"}``).
   Target: ratio >= 0.6.
2. EVM ``omni_userLogin`` logins/s, each one the real protocol: ``omni_getWeb3SignInMessage``,
   an EIP-191 signature made by the client over the compact JSON of the returned payload, then
   ``omni_userLogin``, which makes the simulator call ``post_heima_login`` on a lean aiohttp
   backend. Target: >= 600 logins/s.

Every server (echo, simulator, backend) runs in its own subprocess (this script in a
``--serve`` mode) bound to 127.0.0.1 on a free port; the load generator is the main process (one
aiohttp session, shared keep-alive connector, ``--concurrency`` workers). Each measurement is a
warm-up then a fixed window; throughput counts the operations that complete inside the window.
CPU shares are the CPU seconds a process used during the window divided by the window's wall
time (1.0 = one core busy all the time); the servers' come from ``/proc/<pid>/stat``.

Run from the repository root:

    PYTHONPATH=. /tmp/venv/bin/python scripts/bench_sim.py [--duration S] [--concurrency N]
        [--json PATH] [--profile-sim PATH.prof]

Exit status: 0 when both targets pass and no operation failed, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
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
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLIENT_ID = "wildmeta"
HEALTH_TARGET_RATIO = 0.6
LOGIN_TARGET_RPS = 600.0
JSON_HEADERS = {"Content-Type": "application/json"}
BACKEND_REPLY = b'{"code":10000,"message":"OK","data":{"user_id":null}}'
STATS_PATH = "/_bench/stats"
MAX_FAILURE_SAMPLES = 5


def _bootstrap_path() -> None:
    """Make `protocol` and `omni_sim` importable when the script is run by path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# =========================================================================== server processes


async def _echo_handler(request: web.Request) -> web.Response:
    payload = json.loads(await request.read())
    answer = {"jsonrpc": "2.0", "id": payload.get("id"), "result": "OK"}
    return web.Response(text=json.dumps(answer), content_type="application/json")


def _echo_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{tail:.*}", _echo_handler)
    return app


def _backend_app() -> web.Application:
    """Answers every POST with the success envelope; counts calls, keeps no bodies."""
    calls = [0]

    async def callback(request: web.Request) -> web.Response:
        await request.read()
        calls[0] += 1
        return web.Response(body=BACKEND_REPLY, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"calls": calls[0]})

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    app.router.add_post("/{tail:.*}", callback)
    return app


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = args.parent_pid

    async def watchdog() -> None:
        """Stop when the parent is gone or the lifetime is over, whatever happens to it."""
        deadline = time.monotonic() + args.max_lifetime
        while time.monotonic() < deadline and (parent is None or os.getppid() == parent):
            await asyncio.sleep(0.5)
        stop.set()

    guard = asyncio.create_task(watchdog())
    if args.serve == "sim":
        from omni_sim.config import config_from_env
        from omni_sim.server import SimServer

        env = {
            "OE_PUMPX_API_BASE_URL": args.backend_url,
            "OE_SIM_CALLBACK_TIMEOUT_SECONDS": "10",
        }
        config = config_from_env(
            env, host=HOST, port=args.port, profile="upstream", local_dir=args.local_dir
        )
        async with SimServer(config):
            await stop.wait()
    else:
        app = _echo_app() if args.serve == "echo" else _backend_app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, args.port, reuse_address=True).start()
            await stop.wait()
        finally:
            await runner.cleanup()
    guard.cancel()


def serve_main(args: argparse.Namespace) -> int:
    _bootstrap_path()
    profiler = cProfile.Profile() if args.cprofile else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(_serve(args))
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    return 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One `--serve` subprocess of this script; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, kind: str, log_dir: Path, extra: Sequence[str] = ()) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.log_path = log_dir / f"{kind}.log"
        self._argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            kind,
            "--port",
            str(self.port),
            "--parent-pid",
            str(os.getpid()),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, max_lifetime: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self._argv, "--max-lifetime", str(max_lifetime)],
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
        """utime + stime of the process (Linux /proc), or None elsewhere."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except (OSError, AssertionError):
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


class BenchFailure(Exception):
    """One operation went wrong; the message is its category in the report."""


async def wait_ready(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    probe: Callable[[], Awaitable[None]],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.kind} server exited early:\n{server.log_tail()}")
        try:
            await probe()
            return
        except (aiohttp.ClientError, OSError, TimeoutError, BenchFailure) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.kind} server not ready after {timeout} s ({last!r})")


# =========================================================================== load generation


@dataclass
class PhaseResult:
    name: str
    concurrency: int
    warmup_s: float
    duration_s: float
    completed: int = 0
    rate_per_s: float = 0.0
    failures_measured: int = 0
    failures_total: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    failure_samples: list[str] = field(default_factory=list)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    client_cpu_share: float | None = None
    server_cpu_share: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    hit_op_cap: bool = False


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


Operation = Callable[[int], Awaitable[None]]


async def run_phase(
    name: str,
    op: Operation,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    max_ops: int,
    servers: Sequence[ServerProcess],
    window_probe: Callable[[], Awaitable[int | None]] | None = None,
) -> PhaseResult:
    """`concurrency` workers call `op(worker)` back to back for warm-up + duration seconds."""
    result = PhaseResult(name, concurrency, warmup, duration)
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    started = itertools.count()
    begin = time.perf_counter()
    measure_from = begin + warmup
    measure_to = measure_from + duration

    async def worker(index: int) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= measure_to or next(started) >= max_ops:
                return
            try:
                await op(index)
                failed: str | None = None
            except BenchFailure as exc:
                failed = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                failed = f"{type(exc).__name__}: {exc}"
            t1 = time.perf_counter()
            in_window = measure_from <= t1 <= measure_to
            if failed is None:
                if in_window:
                    result.completed += 1
                    latencies.append(t1 - t0)
                continue
            result.failures_total += 1
            result.failures_measured += in_window
            kinds[failed.split(":", 1)[0]] += 1
            if len(result.failure_samples) < MAX_FAILURE_SAMPLES:
                result.failure_samples.append(failed[:300])

    async def sampler() -> None:
        """CPU counters (and the optional probe) at the window's start and end."""
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        srv0 = [server.cpu_seconds() for server in servers]
        probe0 = await window_probe() if window_probe else None
        await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
        cpu1 = time.process_time()
        wall1 = time.perf_counter()
        srv1 = [server.cpu_seconds() for server in servers]
        probe1 = await window_probe() if window_probe else None
        wall = wall1 - wall0
        result.client_cpu_share = (cpu1 - cpu0) / wall
        for server, a, b in zip(servers, srv0, srv1, strict=True):
            result.server_cpu_share[server.kind] = None if a is None or b is None else (b - a) / wall
        if probe0 is not None and probe1 is not None:
            result.extra["callbacks_in_window"] = probe1 - probe0
            result.extra["callbacks_per_s"] = (probe1 - probe0) / wall

    hard_limit = warmup + duration + 60.0  # requests time out after 10 s; this never waits
    await asyncio.wait_for(
        asyncio.gather(sampler(), *(worker(i) for i in range(concurrency))), hard_limit
    )
    result.hit_op_cap = next(started) > max_ops
    result.rate_per_s = result.completed / duration
    latencies.sort()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    result.latency_p50_ms = None if p50 is None else p50 * 1000
    result.latency_p99_ms = None if p99 is None else p99 * 1000
    result.failure_kinds = dict(kinds)
    return result


async def rpc(session: aiohttp.ClientSession, url: str, method: str, params: Any) -> Any:
    """One JSON-RPC call; returns `result` or raises `BenchFailure`."""
    request = {"jsonrpc": "2.0", "id": next(_REQUEST_IDS), "method": method, "params": params}
    async with session.post(url, data=json.dumps(request), headers=JSON_HEADERS) as response:
        raw = await response.read()
        status = response.status
    if status != 200:
        raise BenchFailure(f"{method} HTTP {status}: {raw[:200]!r}")
    answer = json.loads(raw)
    if "error" in answer:
        error = answer["error"]
        raise BenchFailure(f"{method} RPC error {error.get('code')}: {error.get('message')}")
    if answer.get("id") != request["id"]:
        raise BenchFailure(f"{method} id mismatch: {answer.get('id')!r}")
    return answer.get("result")


_REQUEST_IDS = itertools.count(1)


def health_op(session: aiohttp.ClientSession, url: str) -> Operation:
    async def op(worker: int) -> None:
        result = await rpc(session, url, "omni_getHealth", None)
        if result != "OK":
            raise BenchFailure(f"omni_getHealth unexpected result: {result!r}")

    return op


@dataclass(frozen=True, slots=True)
class EvmWallet:
    key: bytes
    address: bytes
    omni_account: str


def make_wallets(count: int) -> list[EvmWallet]:
    from coincurve import PrivateKey

    from protocol.identity import Identity, IdentityKind
    from protocol.signatures import evm_address

    wallets = []
    for _ in range(count):
        key = PrivateKey().secret  # a valid secp256k1 scalar
        address = evm_address(key)
        account = Identity.address(IdentityKind.EVM, address).omni_account_hex(CLIENT_ID)
        wallets.append(EvmWallet(key, address, account))
    return wallets


def login_op(
    session: aiohttp.ClientSession, url: str, wallets: Sequence[EvmWallet], concurrency: int
) -> Operation:
    """Worker `w` cycles through wallets w, w+N, w+2N…: no two workers share a wallet, so no
    login consumes the sign-in code of another worker's pending login."""
    from protocol.signatures import sign_evm_personal
    from protocol.web3_message import HeimaMessagePayload

    if len(wallets) < concurrency:
        raise ValueError("need at least one wallet per worker")
    cursors = [itertools.cycle(wallets[w::concurrency]) for w in range(concurrency)]

    async def op(worker: int) -> None:
        wallet = next(cursors[worker])
        payload = await rpc(
            session,
            url,
            "omni_getWeb3SignInMessage",
            {"client_id": CLIENT_ID, "omni_account": wallet.omni_account},
        )
        if not isinstance(payload, dict):
            raise BenchFailure(f"omni_getWeb3SignInMessage unexpected result: {payload!r}")
        message = HeimaMessagePayload(**payload).signing_bytes()
        signature = sign_evm_personal(message, wallet.key)
        result = await rpc(
            session,
            url,
            "omni_userLogin",
            {
                "user_id": {"type": "evm", "value": "0x" + wallet.address.hex()},
                "user_auth": {"type": "evm", "value": "0x" + signature.hex()},
                "client_id": CLIENT_ID,
                "client_auth": None,
            },
        )
        token = result.get("access_token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise BenchFailure(f"omni_userLogin no access_token: {str(result)[:200]}")
        backend = result.get("backend_response") or {}
        if backend.get("code") != 10000:
            raise BenchFailure(f"omni_userLogin backend_response: {backend!r}")

    return op
