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
The health windows run in ABBA order (echo, sim, sim, echo; half the window each, each with its
own warm-up) so that a drift of the shared machine's speed weighs the same on both servers.
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
import pstats
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import benchkit
from aiohttp import web
from benchkit import HOST, MAX_FAILURE_SAMPLES, BenchFailure
from benchkit import fmt as _fmt
from benchkit import share as _share
from benchkit import verdict as _verdict

CLIENT_ID = "wildmeta"
HEALTH_TARGET_RATIO = 0.6
LOGIN_TARGET_RPS = 600.0
JSON_HEADERS = {"Content-Type": "application/json"}
BACKEND_REPLY = b'{"code":10000,"message":"OK","data":{"user_id":null}}'
STATS_PATH = "/_bench/stats"
#: A server is not ready yet while its probe raises one of these.
READY_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, BenchFailure)


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
        while not stop.is_set() and time.monotonic() < deadline:
            if parent is not None and os.getppid() != parent:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        stop.set()

    guard = asyncio.create_task(watchdog())
    if args.serve == "sim":
        from agentkeys_kit.omni_sim.config import config_from_env
        from agentkeys_kit.omni_sim.server import SimServer

        env = {
            "OE_PUMPX_API_BASE_URL": args.backend_url,
            "OE_SIM_CALLBACK_TIMEOUT_SECONDS": "10",
        }
        config = config_from_env(env, host=HOST, port=args.port, profile="upstream", local_dir=args.local_dir)
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
    benchkit.bootstrap_path()
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


class ServerProcess(benchkit.ChildProcess):
    """One `--serve` subprocess of this script; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, kind: str, log_dir: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(f"{kind} server", log_dir / f"{kind}.log")
        self.kind = kind
        self.url = f"http://{HOST}:{self.port}/"
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

    def start(self, max_lifetime: float) -> None:
        self.spawn([*self._argv, "--max-lifetime", str(max_lifetime)], benchkit.child_env())


# =========================================================================== load generation


@dataclass
class PhaseResult(benchkit.LoadResult):
    name: str
    concurrency: int
    warmup_s: float
    duration_s: float
    server_cpu_share: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


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
) -> tuple[PhaseResult, list[float]]:
    """`concurrency` workers call `op(worker)` back to back for warm-up + duration seconds;
    returns the result and the sorted latencies (seconds) of the operations in the window."""
    result = PhaseResult(name, concurrency, warmup, duration)
    latencies: list[float] = []
    started = itertools.count()
    begin = time.perf_counter()
    measure_from = begin + warmup
    measure_to = measure_from + duration

    async def worker(index: int) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= measure_to or next(started) >= max_ops:
                return
            failed = await benchkit.attempt(op(index))
            t1 = time.perf_counter()
            in_window = measure_from <= t1 <= measure_to
            if failed is None:
                if in_window:
                    result.completed += 1
                    latencies.append(t1 - t0)
                continue
            result.record_failure(failed, in_window)

    async def sampler() -> None:
        """CPU counters (and the optional probe) at the window's start and end."""
        await benchkit.sleep_until(measure_from)
        start = benchkit.CpuSnapshot.take()
        srv0 = [server.cpu_seconds() for server in servers]
        probe0 = await window_probe() if window_probe else None
        await benchkit.sleep_until(measure_to)
        end = benchkit.CpuSnapshot.take()
        srv1 = [server.cpu_seconds() for server in servers]
        probe1 = await window_probe() if window_probe else None
        window = benchkit.CpuWindow(start, end)
        result.client_cpu_share = window.client_share
        for server, a, b in zip(servers, srv0, srv1, strict=True):
            result.server_cpu_share[server.kind] = window.share(a, b)
        result.other_cpu_share, result.steal_share = window.rest(
            [result.client_cpu_share, *result.server_cpu_share.values()]
        )
        if probe0 is not None and probe1 is not None:
            result.extra["callbacks_in_window"] = probe1 - probe0
            result.extra["callbacks_per_s"] = (probe1 - probe0) / window.wall

    hard_limit = warmup + duration + 60.0  # requests time out after 10 s; this never waits
    await asyncio.wait_for(asyncio.gather(sampler(), *(worker(i) for i in range(concurrency))), hard_limit)
    result.hit_op_cap = next(started) > max_ops
    result.rate_per_s = result.completed / duration
    latencies.sort()
    result.set_percentiles(latencies)
    return result, latencies


def combine(name: str, parts: Sequence[tuple[PhaseResult, list[float]]]) -> PhaseResult:
    """One result from several windows against the same server (CPU shares time-weighted)."""
    first = parts[0][0]
    duration = sum(part.duration_s for part, _ in parts)
    merged = PhaseResult(name, first.concurrency, first.warmup_s, duration)
    kinds: Counter[str] = Counter()
    for part, _ in parts:
        merged.completed += part.completed
        merged.failures_measured += part.failures_measured
        merged.failures_total += part.failures_total
        kinds.update(part.failure_kinds)
        merged.failure_samples += part.failure_samples
        merged.hit_op_cap |= part.hit_op_cap
    merged.failure_samples = merged.failure_samples[:MAX_FAILURE_SAMPLES]
    merged.failure_kinds = dict(kinds)
    merged.rate_per_s = merged.completed / duration

    def weighted(shares: Sequence[float | None]) -> float | None:
        if any(share is None for share in shares):
            return None
        weights = [part.duration_s for part, _ in parts]
        return sum(s * w for s, w in zip(shares, weights, strict=True) if s is not None) / duration

    merged.client_cpu_share = weighted([part.client_cpu_share for part, _ in parts])
    merged.other_cpu_share = weighted([part.other_cpu_share for part, _ in parts])
    merged.steal_share = weighted([part.steal_share for part, _ in parts])
    for kind in first.server_cpu_share:
        merged.server_cpu_share[kind] = weighted([part.server_cpu_share.get(kind) for part, _ in parts])
    latencies = sorted(itertools.chain.from_iterable(lat for _, lat in parts))
    merged.set_percentiles(latencies)
    merged.extra["windows"] = len(parts)
    return merged


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

    from agentkeys_kit.protocol.identity import Identity, IdentityKind
    from agentkeys_kit.protocol.signatures import evm_address

    wallets = []
    for _ in range(count):
        key = PrivateKey().secret  # a valid secp256k1 scalar
        address = evm_address(key)
        account = Identity.address(IdentityKind.EVM, address).omni_account_hex(CLIENT_ID)
        wallets.append(EvmWallet(key, address, account))
    return wallets


def login_op(session: aiohttp.ClientSession, url: str, wallets: Sequence[EvmWallet], concurrency: int) -> Operation:
    """Worker `w` cycles through wallets w, w+N, w+2N…: no two workers share a wallet, so no
    login consumes the sign-in code of another worker's pending login."""
    from agentkeys_kit.protocol.signatures import sign_evm_personal
    from agentkeys_kit.protocol.web3_message import HeimaMessagePayload

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


# =========================================================================== orchestration


def cpu_us_per_op(result: PhaseResult, server: str) -> float | None:
    """CPU microseconds the server spent per completed operation in the window."""
    share = result.server_cpu_share.get(server)
    if share is None or not result.rate_per_s:
        return None
    return share / result.rate_per_s * 1e6


def cpu_ratio(echo: PhaseResult, sim: PhaseResult) -> float | None:
    """Requests per server-CPU-second, sim over echo (echo µs/req ÷ sim µs/req)."""
    echo_us, sim_us = cpu_us_per_op(echo, "echo"), cpu_us_per_op(sim, "sim")
    return None if echo_us is None or not sim_us else echo_us / sim_us


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    benchkit.bootstrap_path()
    phases = {"health", "login"} if args.only is None else {args.only}
    health_s = args.duration if args.duration is not None else args.health_duration
    login_s = args.duration if args.duration is not None else args.login_duration
    lifetime = 5 * args.warmup + 2 * health_s + login_s + 600.0  # a backstop only
    figures: dict[str, Any] = {
        "machine": benchkit.machine_info(),
        "settings": {
            "concurrency": args.concurrency,
            "warmup_s": args.warmup,
            "health_duration_s": health_s,
            "login_duration_s": login_s,
            "wallets": args.keys,
            "max_ops_per_phase": args.max_ops,
            "profiled_sim": bool(args.profile_sim),
        },
    }
    common = {
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "max_ops": args.max_ops,
    }
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="bench_sim-") as tmp:
        tmpdir = Path(tmp)
        async with benchkit.client_session(args.concurrency, args.request_timeout) as session:

            def health_probe(server: ServerProcess) -> Callable[[], Awaitable[None]]:
                async def probe() -> None:
                    await health_op(session, server.url)(0)

                return probe

            try:
                echo: ServerProcess | None = None
                if "health" in phases:
                    echo = ServerProcess("echo", tmpdir)
                    servers.append(echo)
                    echo.start(lifetime)
                backend = ServerProcess("backend", tmpdir)
                servers.append(backend)
                backend.start(lifetime)
                stats_url = backend.url.rstrip("/") + STATS_PATH

                async def backend_calls() -> int | None:
                    async with session.get(stats_url) as response:
                        if response.status != 200:
                            raise BenchFailure(f"backend stats HTTP {response.status}")
                        return int((await response.json())["calls"])

                await benchkit.wait_ready(backend, backend_calls, 30.0, READY_ERRORS)
                sim_args = ["--backend-url", backend.url, "--local-dir", str(tmpdir / "sim")]
                if args.profile_sim:
                    sim_args += ["--cprofile", args.profile_sim]
                sim = ServerProcess("sim", tmpdir, sim_args)
                servers.append(sim)
                sim.start(lifetime)
                if echo is not None:
                    await benchkit.wait_ready(echo, health_probe(echo), 30.0, READY_ERRORS)
                # The first start generates the RSA-2048 and RSA-3072 keystore.
                await benchkit.wait_ready(sim, health_probe(sim), 180.0, READY_ERRORS)

                if echo is not None:
                    # ABBA order (echo, sim, sim, echo), half the window each: a drift of the
                    # machine's speed during the run (shared host, client warming up) weighs
                    # the same on both servers.
                    half = health_s / 2
                    runs: dict[str, list[tuple[PhaseResult, list[float]]]] = {"echo": [], "sim": []}
                    for server in (echo, sim, sim, echo):
                        runs[server.kind].append(
                            await run_phase(
                                f"{server.kind} omni_getHealth",
                                health_op(session, server.url),
                                duration=half,
                                servers=[server],
                                **common,
                            )
                        )
                    echo.stop()
                    echo_res = combine("echo getHealth", runs["echo"])
                    sim_res = combine("sim omni_getHealth", runs["sim"])
                    ratio = sim_res.rate_per_s / echo_res.rate_per_s if echo_res.rate_per_s else 0
                    figures["health"] = {
                        "echo": asdict(echo_res),
                        "sim": asdict(sim_res),
                        "ratio": ratio,
                        # Client-independent view: server CPU per request and its ratio.
                        "echo_cpu_us_per_req": cpu_us_per_op(echo_res, "echo"),
                        "sim_cpu_us_per_req": cpu_us_per_op(sim_res, "sim"),
                        "cpu_ratio": cpu_ratio(echo_res, sim_res),
                        "target_ratio": HEALTH_TARGET_RATIO,
                        "pass": ratio >= HEALTH_TARGET_RATIO,
                    }

                if "login" in phases:
                    wallets = make_wallets(max(args.keys, args.concurrency))
                    login_res, _ = await run_phase(
                        "EVM login",
                        login_op(session, sim.url, wallets, args.concurrency),
                        duration=login_s,
                        servers=[sim, backend],
                        window_probe=backend_calls,
                        **common,
                    )
                    figures["login"] = {
                        "result": asdict(login_res),
                        "sim_cpu_us_per_login": cpu_us_per_op(login_res, "sim"),
                        "backend_cpu_us_per_login": cpu_us_per_op(login_res, "backend"),
                        "client_cpu_us_per_login": (
                            login_res.client_cpu_share / login_res.rate_per_s * 1e6
                            if login_res.client_cpu_share is not None and login_res.rate_per_s
                            else None
                        ),
                        "target_per_s": LOGIN_TARGET_RPS,
                        "pass": login_res.rate_per_s >= LOGIN_TARGET_RPS,
                    }
            finally:
                for server in reversed(servers):
                    server.stop()
    passes = [figures[key]["pass"] for key in ("health", "login") if key in figures]
    failures = 0
    if "health" in figures:
        failures += figures["health"]["echo"]["failures_total"]
        failures += figures["health"]["sim"]["failures_total"]
    if "login" in figures:
        failures += figures["login"]["result"]["failures_total"]
    figures["failures_total"] = failures
    figures["ok"] = all(passes) and failures == 0
    return figures


# =========================================================================== report


def render(figures: dict[str, Any]) -> str:
    machine, settings = figures["machine"], figures["settings"]
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    health = figures.get("health")
    if health is not None:
        echo, sim = health["echo"], health["sim"]
        rows += [
            ("echo server rps (bare aiohttp JSON-RPC)", _fmt(echo["rate_per_s"]), "", ""),
            ("sim omni_getHealth rps", _fmt(sim["rate_per_s"]), "", ""),
            (
                "ratio sim / echo",
                f"{health['ratio']:.3f}",
                f">= {health['target_ratio']}",
                _verdict(health["pass"]),
            ),
            (
                "health latency p50 / p99 ms (echo)",
                f"{_fmt(echo['latency_p50_ms'], '.2f')} / {_fmt(echo['latency_p99_ms'], '.2f')}",
                "",
                "",
            ),
            (
                "health latency p50 / p99 ms (sim)",
                f"{_fmt(sim['latency_p50_ms'], '.2f')} / {_fmt(sim['latency_p99_ms'], '.2f')}",
                "",
                "",
            ),
            (
                "health failures echo / sim",
                f"{echo['failures_total']} / {sim['failures_total']}",
                "0",
                _verdict(echo["failures_total"] == 0 and sim["failures_total"] == 0),
            ),
            (
                "server CPU µs/request echo / sim",
                f"{_fmt(health['echo_cpu_us_per_req'], '.1f')} / {_fmt(health['sim_cpu_us_per_req'], '.1f')}",
                "",
                "",
            ),
            (
                "ratio by server CPU (echo µs / sim µs)",
                _fmt(health["cpu_ratio"], ".3f"),
                "",
                "info",
            ),
            (
                "CPU cores, echo: client / echo / other",
                f"{_share(echo['client_cpu_share'])} / {_share(echo['server_cpu_share']['echo'])}"
                f" / {_share(echo['other_cpu_share'])}",
                "",
                "",
            ),
            (
                "CPU cores, sim: client / sim / other",
                f"{_share(sim['client_cpu_share'])} / {_share(sim['server_cpu_share']['sim'])}"
                f" / {_share(sim['other_cpu_share'])}",
                "",
                "",
            ),
        ]
        for label, res in (("echo", echo), ("sim", sim)):
            notes += benchkit.failure_notes(f"{label} health", res)
    login = figures.get("login")
    if login is not None:
        res = login["result"]
        cpu = res["server_cpu_share"]
        rows += [
            (
                "EVM logins/s (2 RPCs + 1 callback each)",
                _fmt(res["rate_per_s"]),
                f">= {login['target_per_s']:.0f}",
                _verdict(login["pass"]),
            ),
            (
                "login latency p50 / p99 ms",
                f"{_fmt(res['latency_p50_ms'], '.1f')} / {_fmt(res['latency_p99_ms'], '.1f')}",
                "",
                "",
            ),
            (
                "login failures (in window / total)",
                f"{res['failures_measured']} / {res['failures_total']}",
                "0",
                _verdict(res["failures_total"] == 0),
            ),
            (
                "post_heima_login callbacks/s (backend)",
                _fmt(res["extra"].get("callbacks_per_s")),
                "",
                "",
            ),
            (
                "CPU µs/login: client / sim / backend",
                f"{_fmt(login['client_cpu_us_per_login'])} / {_fmt(login['sim_cpu_us_per_login'])}"
                f" / {_fmt(login['backend_cpu_us_per_login'])}",
                "",
                "",
            ),
            (
                "CPU cores, login: client / sim / backend / other",
                f"{_share(res['client_cpu_share'])} / {_share(cpu.get('sim'))}"
                f" / {_share(cpu.get('backend'))} / {_share(res['other_cpu_share'])}",
                "",
                "",
            ),
        ]
        notes += benchkit.failure_notes("login", res)
        sim_share = cpu.get("sim")
        if sim_share is not None and sim_share < 0.9:
            notes.append(
                f"login: the simulator used only {sim_share:.2f} of a core; the client or the"
                " backend may be the limit, not the simulator"
            )
        if res["hit_op_cap"]:
            notes.append("login phase stopped at --max-ops before the end of its window")
    out = [
        "bench_sim: omni_sim throughput, one run",
        benchkit.machine_line(machine),
        f"settings: concurrency={settings['concurrency']}  warm-up={settings['warmup_s']} s"
        f"  health window={settings['health_duration_s']} s per server (ABBA, 2 halves)"
        f"  login window={settings['login_duration_s']} s  wallets={settings['wallets']}",
        "",
        *benchkit.table(rows, benchkit.column_widths(rows)),
        "",
        "CPU cores = CPU seconds used in the window / window wall time (1.00 = one core busy);",
        "other = the rest of the machine (not this benchmark) during the windows.",
    ]
    phases = [health["echo"], health["sim"]] if health is not None else []
    phases += [login["result"]] if login is not None else []
    noise = max((res["other_cpu_share"] or 0.0 for res in phases), default=0.0)
    steal = max((res["steal_share"] or 0.0 for res in phases), default=0.0)
    out += benchkit.quiet_warning(noise, steal)
    if health is not None:
        client_share = max(health["echo"]["client_cpu_share"] or 0.0, health["sim"]["client_cpu_share"] or 0.0)
        if client_share >= 0.9:
            out.append(
                f"NOTE: the load generator used {client_share:.2f} of a core in the health"
                " phases: both runs are (partly) client-bound, which pulls the rps ratio towards 1;"
                " the ratio by server CPU is the client-independent comparison."
            )
    out += benchkit.closing_lines("simulator" if settings["profiled_sim"] else None, notes, figures["ok"])
    return "\n".join(out)


def print_profile(path: str, top: int) -> None:
    print(f"\n=== cProfile of the simulator process ({path}), top {top} by tottime ===")
    stats = pstats.Stats(path, stream=sys.stdout)
    benchkit.print_top_functions(stats, top, f"=== top {top} by cumulative time ===")


# =========================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark omni_sim: getHealth vs a bare aiohttp echo, and EVM logins/s."
    )
    parser.add_argument("--duration", type=float, default=None, help="window of every phase, seconds")
    parser.add_argument("--health-duration", type=float, default=5.0, help="default 5 s")
    parser.add_argument("--login-duration", type=float, default=8.0, help="default 8 s")
    parser.add_argument("--warmup", type=float, default=1.0, help="before each window, seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="client workers (64)")
    parser.add_argument("--keys", type=int, default=4096, help="EVM wallets in the pool")
    parser.add_argument("--max-ops", type=int, default=2_000_000, help="cap on operations per phase")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="per request, s")
    parser.add_argument("--only", choices=["health", "login"], default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--profile-sim",
        metavar="PATH",
        help="run the simulator under cProfile, dump to PATH and print its top functions",
    )
    parser.add_argument("--profile-top", type=int, default=30, help=argparse.SUPPRESS)
    # Internal: the server subprocesses.
    parser.add_argument("--serve", choices=["echo", "backend", "sim"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-lifetime", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--backend-url", help=argparse.SUPPRESS)
    parser.add_argument("--local-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cprofile", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve:
        return serve_main(args)
    for name in ("duration", "health_duration", "login_duration"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.concurrency < 1 or args.keys < 1 or args.max_ops < 1:
        parser.error("--warmup >= 0, --concurrency, --keys and --max-ops >= 1")
    if args.profile_sim:
        args.profile_sim = str(Path(args.profile_sim).resolve())
    try:
        figures = asyncio.run(bench(args))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"bench_sim: setup failed: {exc}", file=sys.stderr)
        return 2
    print(render(figures))
    if args.json:
        benchkit.write_figures(args.json, figures)
    if args.profile_sim:
        with contextlib.suppress(OSError):
            print_profile(args.profile_sim, args.profile_top)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
