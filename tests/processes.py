"""The kit's console scripts as separate processes, as a user starts them."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import aiohttp

BIN = Path(sys.executable).parent


def script(name: str) -> list[str]:
    """The installed console script (`omni-sim`, `conformance`, `agentkeys-broker`)."""
    path = BIN / name
    assert path.exists(), f"{path}: the project is not installed in this environment"
    return [str(path)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: where the kernel hands out ports of its own choosing (Linux's; another system keeps the default)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> range:
    """The ports the kernel gives to a bind to port 0 and to every outgoing connection."""
    try:
        low, high = (int(word) for word in EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port_base(count: int = 4) -> int:
    """A base port with `count` free ports after it (the harness's parties take four).

    The ports are fixed ones (a worker is configured with them before the harness binds them), so
    they are chosen below the kernel's ephemeral range: one inside it could be given meanwhile to
    any process's outgoing connection or `free_port()` (the simulator's own port among them), and
    the harness's bind would then fail. Only a fixed port of another process can still clash."""
    ephemeral = ephemeral_ports()
    low, high = 10000, ephemeral.start - count
    if high - low < 1000:  # a kernel that hands out nearly every port: above its range, else anywhere
        low, high = (ephemeral.stop, 65536 - count) if 65536 - count - ephemeral.stop >= 1000 else (10000, 60000)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OE_* or BROKER_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OE_", "BROKER_"))}
    return {**env, **extra}


def parse_env_lines(text: str) -> dict[str, str]:
    """The KEY=VALUE lines of `conformance serve`/`env` output."""
    lines = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("OE_") and " " not in name:
            lines[name] = value
    return lines


class SimProcess:
    """`omni-sim run` configured only from the given variables."""

    def __init__(self, env: dict[str, str], port: int, profile: str, local_dir: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.local_dir = local_dir
        self._log: IO[bytes] = log.open("wb")
        command = [*script("omni-sim"), "run", "--port", str(port), "--profile", profile, "--local-dir", str(local_dir)]
        self.process = subprocess.Popen(command, env=clean_env(**env), stdout=self._log, stderr=subprocess.STDOUT)

    async def wait_ready(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        request = {"jsonrpc": "2.0", "id": 1, "method": "omni_getHealth"}
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.process.poll() is None, f"omni-sim exited with {self.process.returncode}"
                try:
                    async with http.post(self.url, json=request) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "omni-sim did not start"
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
