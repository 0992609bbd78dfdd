"""The reviewer flow, end to end, as the README's "For Litentry reviewers" section runs it.

Every program is a separate process started from the console scripts. The workers are `omni-sim
run` processes configured only with the lines `conformance serve` printed — as a real worker
would be — one with the agentkeys patch and one without. Then `conformance run` for both profiles,
with the worker's private key file and with its public key only, and a `diff` between the two
workers. Every case must pass, fail as a listed known deviation, or be not applicable with a
reason; none may fail, and none for a configuration reason.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from processes import SimProcess, clean_env, free_port, free_port_base, parse_env_lines, script

ALLOWED = {"passed", "not_applicable", "expected_failure"}


def conformance(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script("conformance"), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def verdicts_of(report: Path) -> list[dict[str, str]]:
    transcript = json.loads((report / "transcript.json").read_text(encoding="utf-8"))
    return [{"id": c["id"], "verdict": c["verdict"], "reason": c["reason"]} for c in transcript["cases"]]


def assert_nothing_failed(report: Path) -> dict[str, int]:
    cases = verdicts_of(report)
    bad = [c for c in cases if c["verdict"] not in ALLOWED]
    assert not bad, bad
    assert all(c["reason"] for c in cases if c["verdict"] == "not_applicable")
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    return counts


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[SimProcess]]:
    started: list[SimProcess] = []
    yield started
    for sim in started:
        sim.stop()


def test_the_reviewer_flow_against_two_separately_running_workers(tmp_path: Path, workers: list[SimProcess]) -> None:
    patched_port, upstream_port = free_port(), free_port()
    patched_dir, upstream_dir = tmp_path / "patched-worker", tmp_path / "upstream-worker"
    target = tmp_path / "target.yaml"
    base = free_port_base()
    target.write_text(
        f"""\
listen: 127.0.0.1
ports: {{receiver: {base}, sendgrid: {base + 1}, smtp: {base + 2}, google: {base + 3}}}
worker:
  url: http://127.0.0.1:{patched_port}/
  profile: agentkeys-patch
  key: patched-worker/keystore/auth_token_key.bin
  mailer: sendgrid
  deviations: none           # a simulator: worker-agentkeys-patch lists the real worker's differences
worker2:
  url: http://127.0.0.1:{upstream_port}/
  profile: upstream
  key: upstream-public.pem
  deviations: sim-upstream   # the workers here are simulators: worker-upstream is for the real one
""",
        encoding="utf-8",
    )

    # 1. serve prints the lines; the patched worker is started with exactly those; serve checks it
    serve = subprocess.Popen(
        [*script("conformance"), "serve", "--target", str(target), "--wait", "120"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert serve.stdout is not None
        printed = ""
        while "waiting up to" not in printed:
            line = serve.stdout.readline()
            assert line, printed
            printed += line
        lines = parse_env_lines(printed)
        assert set(lines) >= {"OE_PUMPX_API_BASE_URL", "OE_AGENTKEYS_API_BASE_URL", "OE_MAILER_API_HOST_AGENTKEYS"}
        patched_dir.mkdir()
        workers.append(SimProcess(lines, patched_port, "agentkeys-patch", patched_dir, tmp_path / "patched.log"))
        rest, _ = serve.communicate(timeout=180)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, printed + rest
    assert "is configured for this harness" in rest

    # 2. today's worker, configured with the same lines; the reviewer has only its public key
    upstream_dir.mkdir()
    upstream = SimProcess(lines, upstream_port, "upstream", upstream_dir, tmp_path / "upstream.log")
    workers.append(upstream)
    import asyncio

    asyncio.run(upstream.wait_ready())
    private = serialization.load_der_private_key((upstream_dir / "keystore" / "auth_token_key.bin").read_bytes(), None)
    (tmp_path / "upstream-public.pem").write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    # 3. run, patched profile, private key (from the target file)
    patched = conformance("run", "--target", str(target), "--report", str(tmp_path / "patched"))
    assert patched.returncode == 0, patched.stdout + patched.stderr
    counts = assert_nothing_failed(tmp_path / "patched")
    assert counts.get("passed", 0) > 100 and "expected_failure" not in counts
    transcript = json.loads((tmp_path / "patched" / "transcript.json").read_text(encoding="utf-8"))
    assert transcript["tee_kind"] == "url" and transcript["declared"]["mailer"] == "sendgrid"
    assert {check["name"] for check in transcript["preflight"] if check["ok"]} >= {
        "health",
        "JWT key",
        "mail (agentkeys)",
    }

    # 4. run, patched profile, public key only: the signing cases are not applicable, with the reason
    public = tmp_path / "patched-public.pem"
    private_patched = serialization.load_der_private_key(
        (patched_dir / "keystore" / "auth_token_key.bin").read_bytes(), None
    )
    public.write_bytes(
        private_patched.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    public_run = conformance(
        "run", "--target", str(target), "--tee-key", str(public), "--report", str(tmp_path / "pub")
    )
    assert public_run.returncode == 0, public_run.stdout + public_run.stderr
    assert_nothing_failed(tmp_path / "pub")
    signing = [c for c in verdicts_of(tmp_path / "pub") if "needs the worker's private key" in c["reason"]]
    assert len(signing) >= 10
    report = (tmp_path / "pub" / "report.md").read_text(encoding="utf-8")
    assert "needs the worker's private key (--tee-key auth_token_key.bin)" in report

    # 5. run, upstream profile, against today's worker with its public key: patch clauses are known deviations
    upstream_run = conformance(
        "run", "--target", str(target), "--tee", upstream.url, "--tee-profile", "upstream",
        "--tee-key", str(tmp_path / "upstream-public.pem"), "--deviations", "sim-upstream",
        "--report", str(tmp_path / "upstream"),
    )  # fmt: skip
    assert upstream_run.returncode == 0, upstream_run.stdout + upstream_run.stderr
    counts = assert_nothing_failed(tmp_path / "upstream")
    assert counts.get("expected_failure", 0) >= 15

    # 6. diff: the two workers differ (exit 1), and each side stays clean
    diff = conformance("diff", "--target", str(target), "--report", str(tmp_path / "diff"))
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "the workers differ on" in diff.stdout
    result = json.loads((tmp_path / "diff" / "diff.json").read_text(encoding="utf-8"))
    assert result["a"]["ok"] and result["b"]["ok"]
    assert "sim-upstream" in result["b"]["deviations"] and result["a"]["deviations"] == "none"
    differing = {c["id"] for c in result["cases"] if not c["same"]}
    assert "tee.login.evm.agentkeys" in differing and "tee.sign-in-message.shape" not in differing

    # 7. the review document from the runs of today's worker and the patched one
    review = conformance(
        "review", str(tmp_path / "upstream"), str(tmp_path / "patched"), "--out", str(tmp_path / "review.md")
    )
    assert review.returncode == 0, review.stdout + review.stderr
    document = (tmp_path / "review.md").read_text(encoding="utf-8")
    # both workers are omni-sim processes: they answer /_sim/info, so the document names them as the simulator
    simulator = "the kit's simulator omni-sim at "
    today = f"{simulator}{upstream.url} (upstream)"
    patched_label = f"{simulator}http://127.0.0.1:{patched_port}/ (agentkeys-patch)"
    assert f"| 1. {today} | 🟡 not done, as the deviation file expects" in document
    assert f"| 2. {patched_label} | ✅ done" in document
    # shown on today's worker, with what it answered; not shown where the worker cannot offer what the case needs
    upstream_cases = {c["id"]: c for c in verdicts_of(tmp_path / "upstream")}
    assert upstream_cases["tee-user-op.wildmeta-hl.timestamp-burned-before-link-check"]["verdict"] == "passed"
    assert f"demonstrated on {today}" in document
    oauth2 = upstream_cases["tee-oauth2.user-login.wildmeta-subject-unbound"]
    assert oauth2["verdict"] == "not_applicable"
    assert f"not demonstrated: not applicable on {today} ({oauth2['reason']})" in document

    # 8. the same worker on both sides of a diff: no difference (exit 0)
    same = conformance(
        "diff", "--target", str(target), "--tee2", f"http://127.0.0.1:{patched_port}/", "--tee2-profile",
        "agentkeys-patch", "--tee2-key", str(patched_dir / "keystore" / "auth_token_key.bin"), "--tee2-deviations",
        "none", "--report", str(tmp_path / "same"),
    )  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert "the workers did the same on every leg of every case" in same.stdout
