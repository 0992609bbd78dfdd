"""The reviewers' document (``conformance run --review`` and ``conformance review``), made from real runs.

The module's runs are `conformance` processes against the simulator: the OAuth2, passkey and
user-operation suites in both profiles with ``--review``, one tiny run where a finding's case is not
applicable, then ``conformance review`` over report directories. Every assertion about the
document's content compares it with what the runs' transcripts recorded.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from processes import clean_env, script

from agentkeys_kit.conformance.model import load_suites
from agentkeys_kit.conformance.review import CLAUSE_CHANGES, FINDINGS
from agentkeys_kit.omni_sim.profiles import PATCH_CLAUSES

SUITES = Path(__file__).parent.parent / "agentkeys_kit" / "conformance" / "suites"
RUN_SUITES = [str(SUITES / name) for name in ("tee-oauth2.yaml", "tee-passkey.yaml", "tee-user-op.yaml")]
CITATION = re.compile(r"[\w./-]+\.rs@[0-9a-f]{8}")


def conformance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*script("conformance"), *args], env=clean_env(), capture_output=True, text=True, timeout=600, check=False
    )


@dataclass(frozen=True)
class Runs:
    patched: Path
    upstream: Path
    not_applicable: Path
    combined: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("review")
    for profile in ("agentkeys-patch", "upstream"):
        done = conformance(
            "run", *RUN_SUITES, "--tee", "sim", "--tee-profile", profile, "--report", str(root / profile), "--review"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert str(root / profile / "review.md") in done.stdout
    # the e-mail disclosure case is for today's worker only: on the patched profile it cannot demonstrate anything
    done = conformance(
        "run", str(SUITES / "tee.yaml"), "-k", "email-code-disclosed", "--tee", "sim",
        "--tee-profile", "agentkeys-patch", "--report", str(root / "n-a"), "--review",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    combined = root / "review.md"
    done = conformance("review", str(root / "agentkeys-patch"), str(root / "upstream"), "--out", str(combined))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"review: {combined} (2 run(s); " in done.stdout
    return Runs(root / "agentkeys-patch", root / "upstream", root / "n-a", combined)


def transcript(report: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((report / "transcript.json").read_text(encoding="utf-8"))
    return document


def case_of(report: Path, case_id: str) -> dict[str, Any]:
    return next(case for case in transcript(report)["cases"] if case["id"] == case_id)


def section(document: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = document.index(heading)
    rest = document[start + len(heading) :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)]
    return heading + (rest[: ends[0]] if ends else rest)


def finding_block(document: str, case_id: str) -> str:
    number = next(i for i, finding in enumerate(FINDINGS, start=1) if finding.case == case_id)
    return section(document, f"### {number}. ")


# ---------------------------------------------------------------------------------------------- the catalogue


def test_every_clause_names_its_change_in_the_worker_with_a_citation() -> None:
    assert sorted(CLAUSE_CHANGES) == [clause.number for clause in PATCH_CLAUSES]
    for number, changes in CLAUSE_CHANGES.items():
        assert changes, number
        for change in changes:
            assert CITATION.search(change.where), (number, change.where)


def test_every_finding_case_is_shipped_and_every_shipped_finding_is_in_the_document() -> None:
    shipped = {case.id: case for suite in load_suites([SUITES]) for case in suite.cases}
    assert all(finding.case in shipped for finding in FINDINGS)
    tagged = {case_id for case_id, case in shipped.items() if "finding" in case.tags}
    assert tagged <= {finding.case for finding in FINDINGS}
    for finding in FINDINGS:
        assert CITATION.search(finding.source), finding.title
        assert shipped[finding.case].profile is None, "a finding is today's behaviour, never a patch clause"


# ---------------------------------------------------------------------------------------------- the document


def test_each_clause_has_its_verdict_on_each_run_and_its_change(runs: Runs) -> None:
    document = runs.combined.read_text(encoding="utf-8")
    for clause in PATCH_CLAUSES:
        block = section(document, f"### Clause {clause.number}. ")
        assert "**Change in the worker:**" in block and CITATION.search(block)
        run_rows = [line for line in block.splitlines() if re.match(r"\| [12]\. sim", line)]
        patched_row, upstream_row = run_rows
        ran = [c for c in transcript(runs.patched)["cases"] if c["patch_clause"] == clause.number]
        if not ran:  # the suites of these runs have no case of this clause
            assert "➖ not run on this target" in patched_row and "➖ not run on this target" in upstream_row
            continue
        patch_cases = [c for c in ran if c["profile"] == "agentkeys-patch" and c["verdict"] != "not_applicable"]
        assert f"✅ done ({len(patch_cases)}/{len(patch_cases)} patch cases passed)" in patched_row
        assert "🟡 not done, as the deviation file expects" in upstream_row
        for case in ran:
            assert f"`{case['id']}`" in block
    # the clauses these suites test
    assert {c["patch_clause"] for c in transcript(runs.patched)["cases"] if c["patch_clause"]} >= {4, 7, 8, 9}


def test_a_demonstrated_finding_shows_what_its_run_recorded(runs: Runs) -> None:
    document = runs.combined.read_text(encoding="utf-8")
    block = finding_block(document, "tee-oauth2.user-login.wildmeta-subject-unbound")
    assert "- **Observed:** demonstrated on sim (upstream)" in block
    recorded = case_of(runs.upstream, "tee-oauth2.user-login.wildmeta-subject-unbound")
    assert recorded["verdict"] == "passed"
    callback = next(e for e in recorded["exchanges"] if "post_heima_login" in e["summary"])
    victim = callback["request"]["body"]["userId"]["value"]
    bearer_claims = json.loads(_b64(callback["request"]["headers"]["Authorization"].split(".")[1]))
    assert victim in block and bearer_claims["sub"] in block
    assert "**Evidence**" in block and "`conformance run --tee sim --tee-profile upstream -k " in block


def test_a_finding_whose_case_did_not_run_is_not_asserted(runs: Runs) -> None:
    document = runs.combined.read_text(encoding="utf-8")
    for case_id in ("tee.request-jwt.wildmeta", "tee.code.email-code-disclosed-upstream"):
        block = finding_block(document, case_id)
        assert "- **Observed:** not run: no run in this document selected the case" in block
        assert "**Evidence**" not in block
    counted = sum(1 for finding in FINDINGS if case_of_any(runs, finding.case) == "passed")
    assert f"{counted} of {len(FINDINGS)} demonstrated by these runs" in document


def case_of_any(runs: Runs, case_id: str) -> str | None:
    verdicts = [
        c["verdict"] for r in (runs.patched, runs.upstream) for c in transcript(r)["cases"] if c["id"] == case_id
    ]
    return "passed" if "passed" in verdicts else (verdicts[0] if verdicts else None)


def test_a_finding_whose_case_was_not_applicable_says_why(runs: Runs) -> None:
    recorded = case_of(runs.not_applicable, "tee.code.email-code-disclosed-upstream")
    assert recorded["verdict"] == "not_applicable"
    block = finding_block((runs.not_applicable / "review.md").read_text(encoding="utf-8"), recorded["id"])
    assert f"- **Observed:** not demonstrated: not applicable on sim (agentkeys-patch) ({recorded['reason']})" in block
    assert "**Evidence**" not in block
    report = (runs.not_applicable / "report.md").read_text(encoding="utf-8")
    assert "## Upstream gaps (findings)" in report and "➖ not demonstrated: not applicable" in report


def test_a_finding_whose_case_failed_is_reported_as_failed_not_asserted(runs: Runs, tmp_path: Path) -> None:
    edited = transcript(runs.upstream)
    for case in edited["cases"]:
        if case["id"] == "tee-passkey.list-unauthenticated":
            case["verdict"], case["reason"] = "failed", "step 7 (rpc omni_listPasskey): error -32003"
    (tmp_path / "transcript.json").write_text(json.dumps(edited), encoding="utf-8")
    done = conformance("review", str(tmp_path))
    assert done.returncode == 0, done.stderr
    block = finding_block((tmp_path / "review.md").read_text(encoding="utf-8"), "tee-passkey.list-unauthenticated")
    assert "not demonstrated: the case FAILED on sim (upstream) (step 7 (rpc omni_listPasskey): error -32003)" in block
    assert "**Evidence**" not in block


def test_an_omni_sim_at_a_url_is_named_as_the_simulator_not_as_a_worker(runs: Runs, tmp_path: Path) -> None:
    """A run against an ``omni-sim run`` process (its preflight saw ``/_sim/info``) demonstrates the
    source reading on the simulator, not "that worker's own behaviour"."""
    url = "http://127.0.0.1:22101/"
    edited = transcript(runs.upstream)
    edited.update(tee=f"{url} (upstream)", tee_kind="url")
    for name, sim_info in (("sim", {"simulator": "omni_sim", "profile": "upstream"}), ("worker", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "transcript.json").write_text(json.dumps({**edited, "sim_info": sim_info}), "utf-8")
        assert conformance("review", str(tmp_path / name)).returncode == 0
    simulated = (tmp_path / "sim" / "review.md").read_text(encoding="utf-8")
    block = finding_block(simulated, "tee-oauth2.user-login.wildmeta-subject-unbound")
    assert f"- **Observed:** demonstrated on the kit's simulator omni-sim at {url} (upstream)" in block
    assert f"demonstrated on {url}" not in simulated
    assert f"1. **the kit's simulator omni-sim at {url} (upstream)** — the kit's simulator omni-sim at a URL (it " in (
        simulated
    )
    assert "not a worker; profile `upstream`" in simulated
    worker = (tmp_path / "worker" / "review.md").read_text(encoding="utf-8")
    assert f"- **Observed:** demonstrated on {url} (upstream)" in worker and "omni-sim at" not in worker
    assert f"1. **{url} (upstream)** — a worker at a URL; profile `upstream`" in worker


def test_run_review_writes_the_document_and_report_md_lists_the_findings(runs: Runs) -> None:
    single = (runs.upstream / "review.md").read_text(encoding="utf-8")
    assert "| 1 | sim (upstream) | PASS |" in single
    report = (runs.upstream / "report.md").read_text(encoding="utf-8")
    findings = section(report, "## Upstream gaps (findings)")
    shown = [
        f for f in FINDINGS if _ran(runs.upstream, f.case) and case_of(runs.upstream, f.case)["verdict"] == "passed"
    ]
    assert len(shown) >= 7
    for finding in shown:
        assert f"`{finding.case}` | ✅ demonstrated on sim (upstream)" in findings
    # after what the patch must do, before what needs attention
    assert (
        report.index("## What the agentkeys patch must do")
        < report.index("## Upstream gaps")
        < report.index("## Cases that need attention")
    )


def test_review_of_a_directory_without_a_transcript_is_one_error(tmp_path: Path) -> None:
    done = conformance("review", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"conformance: {tmp_path / 'transcript.json'}: cannot read: No such file or directory"
    (tmp_path / "transcript.json").write_text('{"cases": 1}', encoding="utf-8")
    done = conformance("review", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    transcript = tmp_path / "transcript.json"
    assert done.stderr == f"conformance: {transcript}: not a conformance transcript: it has no field 'tee'\n"
    transcript.write_text('{"tee": ', encoding="utf-8")
    done = conformance("review", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == (
        f"conformance: {transcript}: not a conformance transcript: not JSON (Expecting value at line 1, column 9)\n"
    )
    assert not (tmp_path / "review.md").exists()


def test_a_review_that_cannot_be_written_is_one_error(runs: Runs, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    done = conformance("review", str(runs.upstream), "--out", str(blocker / "review.md"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"conformance: {blocker / 'review.md'}: cannot write:")


def _ran(report: Path, case_id: str) -> bool:
    return any(case["id"] == case_id for case in transcript(report)["cases"])


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
