"""Reports: console lines and summary, JSON transcript (JUnit and Markdown come next)."""

from __future__ import annotations

import json
from pathlib import Path

from conformance.runner import CaseResult, RunResult, Verdict

SYMBOLS = {
    Verdict.PASSED: "PASS",
    Verdict.FAILED: "FAIL",
    Verdict.ERROR: "ERROR",
    Verdict.NOT_APPLICABLE: "N/A ",
    Verdict.EXPECTED_FAILURE: "XFAIL",
    Verdict.UNEXPECTED_PASS: "XPASS",
}


def console_line(result: CaseResult) -> str:
    line = f"{SYMBOLS[result.verdict]:<5} {result.case.id}"
    if result.verdict is not Verdict.PASSED and result.reason:
        line += f"  — {result.reason}"
    if result.verdict in (Verdict.FAILED, Verdict.ERROR) and result.failure_report:
        line += "\n" + "\n".join("      " + row for row in result.failure_report.splitlines())
    return line


def console_summary(run: RunResult) -> str:
    counts = ", ".join(f"{run.count(v)} {v.value.replace('_', ' ')}" for v in Verdict if run.count(v))
    verdict = "OK" if run.ok else "NOT OK"
    return f"\n{verdict}: {len(run.results)} cases in {run.duration:.1f}s — {counts}"


def transcript(run: RunResult) -> dict[str, object]:
    return {
        "tee": run.tee,
        "tee_version": run.tee_version,
        "broker": run.broker,
        "started_at": run.started_at,
        "duration_s": round(run.duration, 3),
        "ok": run.ok,
        "environment": run.environment,
        "cases": [result.to_json() for result in run.results],
    }


def write_reports(run: RunResult, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "transcript.json"
    path.write_text(json.dumps(transcript(run), indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return [path]
