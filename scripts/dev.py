#!/usr/bin/env python3
"""One entry point for a fresh clone; needs nothing but Python 3.11+.

    python3 scripts/dev.py e2e      # the main job: end to end against the simulator, with a report
    python3 scripts/dev.py test     # every check: ruff (lint and format), mypy, the whole pytest suite
    python3 scripts/dev.py lint     # ruff + mypy only
    python3 scripts/dev.py bench    # benchmarks (prints figures)
    python3 scripts/dev.py mutate   # mutation score of the suites (sampled, seeded; see scripts/mutate.py)
    python3 scripts/dev.py install-check   # build the wheel, install it alone in a fresh venv, run its scripts

The first run creates `.venv/` and installs the project with its test and lint extras; later runs
reinstall only when `pyproject.toml` changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("KIT_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".kit-installed"


def ensure_env() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - say so instead of failing obscurely
        sys.exit(f"Python 3.11+ is required, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[test,lint]"], check=True)
    STAMP.write_text(digest)


def run(*argv: str) -> int:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=ROOT).returncode


def lint() -> int:
    return (
        run(str(PYTHON), "-m", "ruff", "check", ".")
        or run(str(PYTHON), "-m", "ruff", "format", "--check", ".")
        or run(str(PYTHON), "-m", "mypy")
    )


def main() -> int:
    command, *rest = sys.argv[1:] or ["test"]
    if command == "install-check":  # needs no project venv: it builds its own, from the wheel
        return run(sys.executable, str(ROOT / "scripts" / "install_check.py"), *rest)
    ensure_env()
    if command == "test":
        return lint() or run(str(PYTHON), "-m", "pytest", "-q", *rest)
    if command == "lint":
        return lint()
    if command == "e2e":
        # Every suite against the patched simulator (all must pass), then against today's
        # worker, where exactly the patch clauses listed as known deviations must fail.
        conformance = [str(PYTHON), "-m", "agentkeys_kit.conformance.cli", "run", "--tee", "sim", "--broker", "local"]
        patched = run(*conformance, "--tee-profile", "agentkeys-patch", "--report", "reports/agentkeys-patch", *rest)
        upstream = run(*conformance, "--tee-profile", "upstream", "--report", "reports/upstream", *rest)
        # every error path in the other era too: the era-A worker's answers (cases marked era: legacy)
        legacy = run(
            *conformance,
            "--tee-profile",
            "agentkeys-patch",
            "--tee-error-era",
            "legacy",
            "--report",
            "reports/agentkeys-patch-legacy",
            *rest,
        )
        # the reviewers' document for Litentry, from both runs' transcripts
        review = [str(PYTHON), "-m", "agentkeys_kit.conformance.cli", "review", "reports/agentkeys-patch"]
        reviewed = run(*review, "reports/upstream", "--out", "reports/review.md")
        print(
            "\nreports: reports/agentkeys-patch/report.md, reports/upstream/report.md, "
            "reports/agentkeys-patch-legacy/report.md (legacy error era); "
            "for Litentry: reports/review.md (what the patch must do, the upstream gaps)"
        )
        return patched or upstream or legacy or reviewed
    if command == "bench":
        return run(str(PYTHON), str(ROOT / "scripts" / "bench_sim.py"), *rest) or run(
            str(PYTHON), str(ROOT / "scripts" / "bench_broker.py"), *rest
        )
    if command == "mutate":
        if subprocess.run([str(PYTHON), "-c", "import mutmut"], capture_output=True).returncode != 0:
            pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
            subprocess.run([*pip, "install", "-e", f"{ROOT}[test,lint,mutate]"], check=True)
        return run(str(PYTHON), str(ROOT / "scripts" / "mutate.py"), *rest)
    sys.exit(f"unknown command {command!r}: expected test, lint, e2e, bench, mutate or install-check")


if __name__ == "__main__":
    raise SystemExit(main())
