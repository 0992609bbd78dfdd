#!/usr/bin/env python3
"""The kit as a user installs it: build the wheel, install it with no extras into a fresh venv, and
run every console script from there, outside the source tree.

    python3 scripts/install_check.py [--keep]      # also: python3 scripts/dev.py install-check

Checks, each failing with one line that says what is wrong:

1. the wheel installs one top-level name, ``agentkeys_kit`` (no ``fixtures``, ``protocol``, ``tests``
   or other name that belongs to another PyPI project), and carries the package data the harness
   reads at run time (the suite schema, the suites, the deviation files);
2. it installs with no extras, and the test extras (pytest, hypothesis) are not there;
3. ``omni-sim``, ``agentkeys-broker``, ``conformance`` and ``agentkeys`` answer ``--help``; ``conformance check``
   validates the installed suites; ``omni-sim run`` and ``agentkeys-broker run`` serve until stopped;
   ``conformance run`` runs every installed suite — the generated negative cases included —
   against the in-process simulator and a local broker, and passes.

pip may fetch the dependencies from the registry (or its cache): allow a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = (
    "agentkeys_kit/conformance/suite.schema.json",
    "agentkeys_kit/conformance/suites/tee.yaml",
    "agentkeys_kit/conformance/suites/broker.yaml",
    "agentkeys_kit/conformance/suites/e2e.yaml",
    "agentkeys_kit/conformance/suites/negative.yaml",
    "agentkeys_kit/conformance/deviations/sim-upstream.yaml",
    "agentkeys_kit/conformance/deviations/worker-upstream.yaml",
    "agentkeys_kit/conformance/deviations/worker-agentkeys-patch.yaml",
)


class CheckFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"== {title}", flush=True)


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    completed = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        shown = (completed.stdout + completed.stderr)[-4000:]
        raise CheckFailed(f"{' '.join(str(a) for a in argv)} exited {completed.returncode}:\n{shown}")
    return completed.stdout


def build_wheel(work: Path) -> Path:
    step("build the wheel")
    dist = work / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-w",
        dist,
        ROOT,
        cwd=work,
    )
    wheels = sorted(dist.glob("agentkeys_heima_kit-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one agentkeys_heima_kit wheel in {dist}, found {wheels}")
    return wheels[0]


def check_wheel_contents(wheel: Path) -> None:
    step(f"inspect {wheel.name}")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith((".dist-info", ".data"))}
    if top != {"agentkeys_kit"}:
        raise CheckFailed(f"the wheel installs top-level names {sorted(top)}; only agentkeys_kit is ours")
    missing = [path for path in PACKAGE_DATA if path not in names]
    if missing:
        raise CheckFailed(f"the wheel lacks package data the harness reads: {missing}")
    print(f"   top-level: agentkeys_kit only; {len(names)} files, package data present")


def fresh_venv(work: Path, wheel: Path) -> Path:
    step("install the wheel, no extras, into a fresh venv")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    run(python, "-m", "pip", "install", "--disable-pip-version-check", "-q", wheel, cwd=work, timeout=1800)
    for test_only in ("pytest", "hypothesis"):
        probe = subprocess.run([python, "-c", f"import {test_only}"], cwd=work, capture_output=True, check=False)
        if probe.returncode == 0:
            raise CheckFailed(f"{test_only} is installed without extras: a runtime dependency pulls in a test tool")
    print("   installed; pytest and hypothesis absent")
    return bin_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, body: bytes | None, seconds: float, process: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise CheckFailed(f"the server exited with {process.returncode} before answering {url}")
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise CheckFailed(f"nothing answered at {url} within {seconds:g} s") from None
            time.sleep(0.3)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise CheckFailed("a server did not stop on SIGTERM") from None


def check_scripts(bin_dir: Path, work: Path) -> None:
    cwd = work / "elsewhere"  # not the source tree: nothing may be imported from it
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OE_", "BROKER_", "PYTHON"))}
    for name in ("omni-sim", "agentkeys-broker", "conformance", "agentkeys"):
        step(f"{name} --help")
        run(bin_dir / name, "--help", cwd=cwd, env=env)
    step("conformance check")
    run(bin_dir / "conformance", "check", cwd=cwd, env=env)

    step("omni-sim run (a separate process)")
    port = free_port()
    sim = subprocess.Popen(
        [bin_dir / "omni-sim", "run", "--port", str(port), "--local-dir", cwd / "sim"],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        health = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "omni_getHealth"}).encode()
        answer = json.loads(wait_http(f"http://127.0.0.1:{port}/", health, 120, sim))
        if answer.get("result") != "OK":
            raise CheckFailed(f"omni_getHealth answered {answer}")
        public_key = wait_http(f"http://127.0.0.1:{port}/_sim/jwt-public-key", None, 10, sim)
    finally:
        stop(sim)
    print("   omni_getHealth OK")

    step("agentkeys-broker run (a separate process)")
    (cwd / "tee_jwt_public_key.pem").write_bytes(public_key)
    port = free_port()
    broker_env = {
        **env,
        "BROKER_TEE_JWT_PUBLIC_KEY": str(cwd / "tee_jwt_public_key.pem"),
        "BROKER_DB_URL": f"sqlite:///{cwd / 'broker.sqlite3'}",
    }
    broker = subprocess.Popen(
        [bin_dir / "agentkeys-broker", "run", "--port", str(port)],
        cwd=cwd, env=broker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", None, 60, broker)
    finally:
        stop(broker)
    print("   /readyz OK")

    step("conformance run: every installed suite, in-process simulator (agentkeys-patch), local broker")
    output = run(
        bin_dir / "conformance",
        "run",
        "--tee",
        "sim",
        "--broker",
        "local",
        "--report",
        cwd / "reports",
        cwd=cwd,
        env=env,
    )
    summary = next((line for line in output.splitlines() if line.startswith(("OK:", "NOT OK:"))), "")
    if not summary.startswith("OK:") or "negative.fuzz" not in output:
        raise CheckFailed(f"conformance run did not pass every suite: {summary or output[-2000:]}")
    print(f"   {summary}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the build, the venv and the reports")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kit-install-check-"))
    try:
        wheel = build_wheel(work)
        check_wheel_contents(wheel)
        bin_dir = fresh_venv(work, wheel)
        check_scripts(bin_dir, work)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"install check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("install check passed: the wheel installs alone and every console script works")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
