"""`agentkeys-broker run` as an operator starts it: a separate process, configured only by its
variables, read through its standard output and error."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import TEE_PUBLIC_KEY_PATH

BROKER_COMMAND = str(Path(sys.executable).parent / "agentkeys-broker")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_file_limit(soft: int, hard: int) -> Callable[[], None]:
    """A `preexec_fn` that starts the broker under ``ulimit -Sn soft -Hn hard``."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


class BrokerProcess:
    def __init__(
        self,
        db: tuple[str, str | None],
        log_dir: Path,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
        flags: list[str] | None = None,
    ) -> None:
        url, schema = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        values = {
            "BROKER_DB_URL": url,
            "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY_PATH),
            "BROKER_PORT": str(self.port),
            "BROKER_OIDC_KEYPAIR_PATH": str(log_dir / "oidc-keypair.json"),
            "BROKER_SESSION_KEYPAIR_PATH": str(log_dir / "session-keypair.json"),
            **({"BROKER_DB_SCHEMA": schema} if schema else {}),
            **(env or {}),
        }
        self.stdout_path = log_dir / f"broker-{self.port}.out"
        self.stderr_path = log_dir / f"broker-{self.port}.err"
        self._env = {**os.environ, **values}
        self._preexec = preexec
        self._flags = flags or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 20.0) -> BrokerProcess:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [BROKER_COMMAND, "run", *self._flags], env=self._env, stdout=out, stderr=err, preexec_fn=self._preexec
            )
        deadline = time.monotonic() + within
        while b"listening on" not in self.stdout_path.read_bytes():
            if self.process.poll() is not None:
                raise AssertionError(f"the broker exited {self.process.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the broker did not listen within {within} s: {self.stderr()}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM, within: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Standard error as JSON lines (every line must be one)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]
