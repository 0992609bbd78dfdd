"""Reports of a conformance run (JUnit, Markdown, summary) and the diff of two runs.

Most tests build results by hand, with every verdict and every leg; one runs the harness
in-process on a tiny suite against the simulator in both profiles and the local broker.
"""

from __future__ import annotations

import base64
import json
import random
import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentkeys_kit.conformance.diff import compare, diff_legs, normalise_value, write_diff
from agentkeys_kit.conformance.model import Case, Step, load_suite
from agentkeys_kit.conformance.reports import junit_xml, markdown_report, mermaid_label, sequence_diagram, write_reports
from agentkeys_kit.conformance.runner import CaseResult, Exchange, Harness, RunResult, StepResult, Verdict
from agentkeys_kit.conformance.targets import KIT_VERSION, broker_target, tee_target
from agentkeys_kit.omni_sim.profiles import PATCH_CLAUSES

STARTED = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=").decode()


def jwt(claims: dict[str, Any]) -> str:
    return f"{b64({'typ': 'JWT', 'alg': 'RS256'})}.{b64(claims)}.{secrets.token_urlsafe(32)}"


def case(
    case_id: str,
    *,
    suite: str = "tee",
    clause: str | None = None,
    profile: str | None = None,
    tags: tuple[str, ...] = (),
    only: str | None = None,
) -> Case:
    steps = (
        Step(0, "let", {"let": {"alice": {"$wallet": {"kind": "evm"}}}}),
        Step(1, "rpc", {"rpc": {"method": "omni_getWeb3SignInMessage"}}),
        Step(2, "rpc", {"rpc": {"method": "omni_userLogin"}}),
    )
    return Case(
        id=case_id,
        clause=clause or f"clause of {case_id}: the worker does what the contract says",
        suite=suite,
        steps=steps,
        profile=profile,
        only=only,
        tags=tags,
        source=f"conformance/suites/{suite}.yaml",
    )


def login_exchanges(
    *,
    seed: int | None = None,
    client_id: str = "agentkeys",
    forwarded: bool = True,
    with_callback: bool = True,
    error: bool = False,
) -> list[Exchange]:
    """A login as the harness records it; every random value is fresh unless `seed` fixes it."""
    rng = random.Random(seed)
    wallet = "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))
    account = "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(64))
    code = "".join(rng.choice("0123456789") for _ in range(8))
    uid = "usr_" + "".join(rng.choice("0123456789abcdef") for _ in range(24))
    exp = 1_800_000_000 + rng.randrange(100_000)
    access = jwt({"sub": account, "typ": "access", "exp": exp, "aud": client_id})
    reply = {"code": 10000, "message": "OK", "data": {"user_id": uid}}
    tokens = {"access_token": access, "id_token": jwt({"sub": account, "typ": "id", "exp": exp})}
    result: dict[str, Any] = (
        {"error": {"code": -32602, "message": "Invalid params"}}
        if error
        else {"result": {**tokens, "backend_response": reply}}
    )
    exchanges = [
        Exchange(
            "client→worker",
            1,
            "omni_getWeb3SignInMessage",
            {"transport": "rpc", "summary": "omni_getWeb3SignInMessage"},
            {"jsonrpc": "2.0", "id": rng.randrange(100), "result": {"omni_account": account, "message_code": code}},
        ),
        Exchange(
            "client→worker",
            2,
            "omni_userLogin",
            {"transport": "rpc", "summary": "omni_userLogin"},
            {"jsonrpc": "2.0", "id": rng.randrange(100), **result},
        ),
    ]
    if with_callback:
        body = {"userId": {"type": "evm", "value": wallet}, "clientId": client_id, "heimaLoginSuccess": True}
        exchanges.append(
            Exchange(
                "worker→broker" if forwarded else "worker→harness",
                2,
                "POST /agentkeys/v3/account/post_heima_login",
                {
                    "api": "agentkeys",
                    "op": "post_heima_login",
                    "method": "POST",
                    "path": "/agentkeys/v3/account/post_heima_login",
                    "headers": {
                        "Host": f"127.0.0.1:{rng.randrange(30000, 60000)}",
                        "Authorization": f"Bearer {access}",
                        "Content-Length": str(rng.randrange(100, 200)),
                    },
                    "body": body,
                    "body_text": json.dumps(body),
                },
                {"status": 200, "body": reply},
            )
        )
    return exchanges


def every_leg() -> list[Exchange]:
    return [
        *login_exchanges(),
        Exchange("worker→harness", 2, "POST /pumpx/v3/account/add_wallet",
                 {"api": "pumpx", "op": "add_wallet", "method": "POST"}, {"status": None, "body": None}),
        Exchange("harness→broker", 2, "GET /v1/users/me", {"method": "GET"}, {"status": 401, "body": {"code": 401}}),
        Exchange("harness→broker (as worker)", 2, "POST /v3/account/add_wallet", {}, {"status": 200, "body": {}}),
        Exchange("worker→harness (smtp)", 2, "mail to bob@example.com", {"to": ["bob@example.com"]}, {"code": "12345"}),
    ]  # fmt: skip


FAILURE_REPORT = """conformance/suites/tee.yaml :: tee.login.agentkeys.dispatched :: step 3
- rpc:
    method: omni_userLogin   # a comment; with ``` backticks
problems:
  - callback 1 (agentkeys post_heima_login): expected 1 call(s), the worker made 0"""


def make_run(tee: str = "sim (agentkeys-patch)") -> RunResult:
    failing_steps = [
        StepResult(0, "let", True),
        StepResult(1, "rpc omni_getWeb3SignInMessage", True),
        StepResult(2, "rpc omni_userLogin", False, ["callback 1 (agentkeys post_heima_login): #1; made 0"]),
    ]
    results = [
        CaseResult(case("tee.login.evm.wildmeta", tags=("login",)), Verdict.PASSED, exchanges=login_exchanges(
            client_id="wildmeta", forwarded=False), duration=0.5),
        CaseResult(case("tee.login.agentkeys.e2e", tags=("e2e",), profile="agentkeys-patch"), Verdict.PASSED,
                   exchanges=login_exchanges(), duration=0.6),
        CaseResult(case("tee.login.agentkeys.dispatched", profile="agentkeys-patch"), Verdict.FAILED,
                   "step 3 (rpc omni_userLogin): callback 1 (agentkeys post_heima_login): made 0", failing_steps,
                   every_leg(), FAILURE_REPORT, 0.7),
        CaseResult(case("tee.broker.down"), Verdict.ERROR, "targets did not start: OSError('port in use')"),
        CaseResult(case("tee.upstream.only", only="upstream"), Verdict.NOT_APPLICABLE, "only for upstream targets"),
        CaseResult(case("broker.grants.listed", suite="broker"), Verdict.EXPECTED_FAILURE,
                   "step 3 (rpc omni_userLogin): no grant", failing_steps, login_exchanges(error=True),
                   "broker.yaml :: broker.grants.listed :: step 3", 0.2, deviation="grants are not in v1"),
        CaseResult(case("broker.grants.stale", suite="broker", profile="agentkeys-patch"), Verdict.UNEXPECTED_PASS,
                   "listed as a known deviation (old) but it passed: update the deviation file",
                   exchanges=login_exchanges(), deviation="old"),
    ]  # fmt: skip
    return RunResult(tee, "omni_sim 0.1.0", "local (in-process, SQLite)", STARTED, 3.2, results, {"X": "y"})


def junit_of(run: RunResult, tmp_path: Path) -> ET.Element:
    write_reports(run, tmp_path)
    return ET.parse(tmp_path / "junit.xml").getroot()  # noqa: S314 — the test's own output


def junit_case(root: ET.Element, name: str) -> ET.Element:
    found = [element for element in root.iter("testcase") if element.get("name") == name]
    assert len(found) == 1, name
    return found[0]


# ---------------------------------------------------------------------------------------------- files


def test_write_reports_writes_every_file(tmp_path: Path) -> None:
    paths = write_reports(make_run(), tmp_path / "out")
    assert [p.name for p in paths] == ["transcript.json", "junit.xml", "report.md", "summary.txt"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    transcript = json.loads((tmp_path / "out" / "transcript.json").read_text(encoding="utf-8"))
    assert len(transcript["cases"]) == 7
    assert sum(len(c["exchanges"]) for c in transcript["cases"]) == sum(len(r.exchanges) for r in make_run().results)


def test_summary_has_the_console_summary_and_one_line_per_case(tmp_path: Path) -> None:
    run = make_run()
    write_reports(run, tmp_path)
    summary = (tmp_path / "summary.txt").read_text(encoding="utf-8")
    assert summary.startswith("NOT OK: 7 cases")
    for result in run.results:
        assert re.search(rf"^\S+\s+{re.escape(result.case.id)}\b", summary, re.M), result.case.id
    assert "XFAIL broker.grants.listed" in summary and "XPASS broker.grants.stale" in summary


# ---------------------------------------------------------------------------------------------- JUnit


def test_junit_parses_and_counts(tmp_path: Path) -> None:
    root = junit_of(make_run(), tmp_path)
    assert root.tag == "testsuites"
    # failures: FAILED + UNEXPECTED_PASS; errors: ERROR; skipped: N/A and known deviations (never passes).
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "7",
        "failures": "2",
        "errors": "1",
        "skipped": "2",
    }
    assert float(root.get("time", "x")) == pytest.approx(2.0, abs=0.01)
    suites = {suite.get("name"): suite for suite in root.iter("testsuite")}
    assert set(suites) == {"tee", "broker"}
    assert suites["tee"].get("tests") == "5" and suites["broker"].get("tests") == "2"
    assert suites["broker"].get("failures") == "1" and suites["broker"].get("errors") == "0"
    for suite in suites.values():
        assert suite.get("time") is not None and suite.get("skipped") is not None


def test_junit_one_testcase_per_case_with_suite_as_classname(tmp_path: Path) -> None:
    run = make_run()
    root = junit_of(run, tmp_path)
    cases = list(root.iter("testcase"))
    assert [(c.get("classname"), c.get("name")) for c in cases] == [(r.case.suite, r.case.id) for r in run.results]


def test_junit_verdicts_map_to_elements(tmp_path: Path) -> None:
    root = junit_of(make_run(), tmp_path)
    passed = junit_case(root, "tee.login.evm.wildmeta")
    assert [child.tag for child in passed if child.tag != "properties"] == []

    failed = junit_case(root, "tee.login.agentkeys.dispatched")
    failure = failed.find("failure")
    assert failure is not None and "made 0" in failure.get("message", "")
    assert failure.text is not None and FAILURE_REPORT.splitlines()[0] in failure.text

    error = junit_case(root, "tee.broker.down").find("error")
    assert error is not None and "targets did not start" in error.get("message", "")

    not_applicable = junit_case(root, "tee.upstream.only")
    skipped = not_applicable.find("skipped")
    assert skipped is not None and skipped.get("message") == "only for upstream targets"
    assert not_applicable.find("failure") is None

    expected = junit_case(root, "broker.grants.listed")
    assert expected.find("failure") is None and expected.find("error") is None
    deviation = expected.find("skipped")
    assert deviation is not None and deviation.get("type") == "known_deviation"
    assert deviation.get("message") == "known deviation: grants are not in v1"
    properties = {p.get("name"): p.get("value") for p in expected.find("properties") or []}
    assert properties["known_deviation"] == "grants are not in v1"
    out = expected.find("system-out")
    assert out is not None and out.text is not None and out.text.startswith("known deviation: grants are not in v1")

    stale = junit_case(root, "broker.grants.stale").find("failure")
    assert stale is not None and "update the deviation file" in stale.get("message", "")


def test_junit_stamps_targets_and_kit_version(tmp_path: Path) -> None:
    root = junit_of(make_run(), tmp_path)
    suite = root.find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.find("properties") or []}
    assert properties["tee"] == "sim (agentkeys-patch)"
    assert properties["tee_version"] == "omni_sim 0.1.0"
    assert properties["broker"] == "local (in-process, SQLite)"
    assert properties["kit_version"] == KIT_VERSION


def test_junit_survives_characters_xml_cannot_carry() -> None:
    run = make_run()
    run.results[2].failure_report = 'payload \x00\x1b\x7f \udcff ok & <tag> "quoted"'
    run.results[2].reason = "bad \x01 reason"
    root = ET.fromstring(junit_xml(run))  # noqa: S314 — the test's own output
    failure = junit_case(root, "tee.login.agentkeys.dispatched").find("failure")
    assert failure is not None and failure.text is not None
    assert "ok & <tag>" in failure.text and "\\x{0}" in failure.text
    assert failure.get("message") == "bad \\x{1} reason"


def test_every_file_survives_a_lone_surrogate(tmp_path: Path) -> None:
    run = make_run()
    run.results[2].failure_report += "\nbody: caf\udce9"
    run.results[2].exchanges[0].response = {"body": "\udcff raw"}
    write_reports(run, tmp_path)
    transcript = json.loads((tmp_path / "transcript.json").read_text(encoding="utf-8"))
    assert transcript["cases"][2]["exchanges"][0]["response"] == {"body": "\udcff raw"}
    run.results[2].failure_report += "\x00"
    write_reports(run, tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "caf\\udce9" in report and "\\x{0}" in report and "\x00" not in report
    ET.parse(tmp_path / "junit.xml")  # noqa: S314 — the test's own output


# ---------------------------------------------------------------------------------------------- Markdown


def test_report_md_reads_top_down_verdict_then_the_patch_then_attention_then_the_rest(tmp_path: Path) -> None:
    run = make_run()
    write_reports(run, tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings == [
        "## What the agentkeys patch must do",
        "## Cases that need attention",
        "## Everything else",
        "## How the worker was reached",
        "## The happy path",
        "## How to read this",
    ]
    header = report.split("## What the agentkeys patch must do")[0]
    assert header.startswith(
        "# Conformance report: sim (agentkeys-patch)\n\n**Verdict: FAIL — 3 case(s) need attention**"
    )
    for stamp in ("sim (agentkeys-patch)", "omni_sim 0.1.0", "local (in-process, SQLite)", KIT_VERSION, "2026-01-01"):
        assert stamp in header, stamp
    for result in run.results:
        assert result.case.clause in report, result.case.clause
    assert "### Suite `tee`" in report and "### Suite `broker`" in report
    assert "not applicable (only for upstream targets)" in report
    assert "known deviation (failed as listed)" in report and "UNEXPECTED PASS" in report


def test_report_md_patch_section_is_numbered_as_the_profile_clauses_each_with_its_cases() -> None:
    run = make_run()
    run.results[1].case = replace(run.results[1].case, patch_clause=1)
    run.results[2].case = replace(run.results[2].case, patch_clause=1)
    run.results[4].case = replace(run.results[4].case, patch_clause=6)  # today's behaviour, only upstream
    section = markdown_report(run).split("## What the agentkeys patch must do")[1].split("\n## ")[0]
    blocks = re.findall(r"^### (.*)$", section, re.M)
    assert blocks == [
        f"1. {PATCH_CLAUSES[0].title} — ❌ not done on this target",
        f"6. {PATCH_CLAUSES[5].title} — not run on this target",
        "Other patch cases (no clause number) — ❌ not done on this target",
    ]
    first = section.split("### 1.")[1].split("### ")[0]
    assert "tee.login.agentkeys.e2e" in first and "tee.login.agentkeys.dispatched" in first and "FAILED" in first
    assert "tee.upstream.only" in section.split("### 6.")[1] and "*(today)*" in section
    assert "broker.grants.stale" in section.split("### Other")[1]
    assert "tee.login.evm.wildmeta" not in section
    assert "1 of 3 applicable patch cases passed" in section


def test_known_deviations_are_collapsed_and_not_listed_as_needing_attention() -> None:
    report = markdown_report(make_run())
    attention = report.split("## Cases that need attention")[1].split("\n## ")[0]
    assert "broker.grants.listed" not in attention
    known = report.split("### Known deviations")[1].split("\n### ")[0]
    assert "<details><summary><code>broker.grants.listed</code> — grants are not in v1</summary>" in known
    assert "broker.yaml :: broker.grants.listed :: step 3" in known


def test_the_report_never_claims_what_a_url_worker_was_configured_with() -> None:
    run = make_run("http://10.0.0.5:2100/ (upstream)")
    run.tee_kind = "url"
    run.served = {"callback receiver": "http://10.0.0.1:8701/"}
    run.preflight = [
        {"name": "callbacks (pumpx API)", "ok": True, "detail": "post_heima_login arrived", "fatal": True},
        {"name": "callbacks (agentkeys API)", "ok": True, "detail": "refuses agentkeys", "fatal": False},
    ]
    section = markdown_report(run).split("## How the worker was reached")[1].split("\n## ")[0]
    assert "configured with" not in section.replace("when configured with", "")
    assert "the harness cannot see its configuration" in section
    assert "✅ **callbacks (pumpx API)**: post_heima_login arrived" in section
    assert "http://10.0.0.1:8701/" in section and "`X` = `y`" in section


def test_a_url_target_that_is_the_simulator_is_named_so_up_front(tmp_path: Path) -> None:
    url = "http://127.0.0.1:22101/"
    run = upstream_run(f"{url} (upstream)", "url")
    plain = markdown_report(run)
    assert "omni-sim" not in plain and "not a Heima worker" not in plain
    run.sim_info = {"simulator": "omni_sim", "profile": "upstream", "error_era": "current"}
    write_reports(run, tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    target = (
        f"the kit's simulator omni-sim at {url} (profile `upstream`; it answers `{url}_sim/info`), not a Heima worker"
    )
    header = report.split("## What the agentkeys patch must do")[0]
    assert f"**The target is {target}**: these verdicts describe the simulator" in header
    assert header.splitlines()[2].endswith("the agentkeys patch is not in this simulator profile**")
    assert f"The target was {target}." in report.split("## How the worker was reached")[1]
    assert json.loads((tmp_path / "transcript.json").read_text(encoding="utf-8"))["sim_info"] == run.sim_info


def test_the_report_says_up_front_which_cases_a_public_key_could_not_run() -> None:
    run = make_run()
    reason = "needs the worker's private key (--tee-key auth_token_key.bin): the case signs tokens as the worker"
    run.results.append(CaseResult(case("broker.token.expired", suite="broker"), Verdict.NOT_APPLICABLE, reason))
    header = markdown_report(run).split("## What the agentkeys patch must do")[0]
    assert "With the worker's public key only, 1 case(s) could not run" in header and "`broker.token.expired`" in header
    assert "could not run" not in markdown_report(make_run()).split("## What the agentkeys patch must do")[0]


def test_extra_sections_follow_the_patch_section() -> None:
    report = markdown_report(make_run(), extra_sections=[lambda run: ["## Reviewers' findings", "", "none", ""]])
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[:3] == [
        "## What the agentkeys patch must do",
        "## Reviewers' findings",
        "## Cases that need attention",
    ]


def test_report_md_details_a_failing_case_with_evidence_and_a_sequence_diagram() -> None:
    report = markdown_report(make_run())
    details = report.split("## Cases that need attention")[1].split("\n## ")[0]
    failing = details.split("### `tee.login.agentkeys.dispatched`")[1].split("\n### ")[0]
    assert "callback 1 (agentkeys post_heima_login)" in failing
    assert "````text" in failing  # the report holds ``` so the fence is longer
    assert "**Evidence:**" in failing and "omni_userLogin" in failing
    assert "<JWT RS256 sub=0x" in failing and "Host" not in failing  # JWTs decoded, client noise dropped
    diagram = re.search(r"```mermaid\n(.*?)\n```", failing, re.S)
    assert diagram is not None
    lines = diagram.group(1).splitlines()
    assert lines[0] == "sequenceDiagram"
    assert [line.strip() for line in lines[1:5]] == [
        f"participant {p}" for p in ("Client", "Worker", "Harness", "Broker")
    ]
    body = [line.strip() for line in lines[5:]]
    assert "Client->>Worker: omni_userLogin" in body and "Worker-->>Client: result" in body
    forwarded = body.index("Worker->>Harness: POST agentkeys post_heima_login")
    assert body[forwarded + 1 : forwarded + 4] == [
        "Harness->>Broker: forwarded",
        "Broker-->>Harness: 200 code 10000",
        "Harness-->>Worker: 200 code 10000",
    ]
    assert "Harness-->>Worker: no reply (dropped)" in body
    assert "Harness->>Broker: GET /v1/users/me" in body and "Broker-->>Harness: 401 code 401" in body
    assert "Harness->>Broker: POST /v3/account/add_wallet (as worker)" in body
    assert "Worker->>Harness: mail to bob@example.com" in body
    assert any(line.startswith("Note over Client,Broker: step 3 failed") for line in body)
    for line in body:
        label = line.split(":", 1)[1]
        assert not set(label) & set(";#:\"'{}[]<>`"), line
    for case_id in ("tee.broker.down", "broker.grants.stale"):
        assert f"### `{case_id}`" in details
    for case_id in ("tee.login.evm.wildmeta", "tee.upstream.only", "broker.grants.listed"):
        assert f"### `{case_id}`" not in details


def test_report_md_shows_the_happy_path_of_e2e_cases() -> None:
    happy = markdown_report(make_run()).split("## The happy path")[1]
    assert "### `tee.login.agentkeys.e2e`" in happy and "```mermaid" in happy
    assert "tee.login.evm.wildmeta" not in happy  # e2e cases first


def test_happy_path_falls_back_to_passing_cases_with_callbacks() -> None:
    run = make_run()
    run.results[1] = CaseResult(case("tee.other"), Verdict.FAILED, "x", exchanges=login_exchanges())
    happy = markdown_report(run).split("## The happy path")[1]
    assert "### `tee.login.evm.wildmeta`" in happy and "Harness-->>Worker: 200 code 10000" in happy


def upstream_run(tee: str = "sim (upstream)", tee_kind: str = "sim") -> RunResult:
    """A green run of an upstream target: the patch's cases failed as listed, today's refusal passed."""
    deviation = "the agentkeys patch is not applied"
    results = [
        CaseResult(case("e2e.login.evm", tags=("e2e",), profile="agentkeys-patch"), Verdict.EXPECTED_FAILURE,
                   "step 3: callback 1: the worker made 0", exchanges=login_exchanges(with_callback=False, error=True),
                   deviation=deviation),
        CaseResult(case("tee.login.agentkeys.dispatched", profile="agentkeys-patch"), Verdict.EXPECTED_FAILURE,
                   "step 3: refused", exchanges=login_exchanges(with_callback=False, error=True), deviation=deviation),
        CaseResult(case("e2e.upstream.agentkeys-refused", tags=("e2e",), only="upstream"), Verdict.PASSED,
                   exchanges=login_exchanges(with_callback=False, error=True)),
        CaseResult(case("tee.login.evm.wildmeta", tags=("login",)), Verdict.PASSED,
                   exchanges=login_exchanges(client_id="wildmeta", forwarded=False)),
        CaseResult(case("tee.needs.bundler"), Verdict.NOT_APPLICABLE, "needs the simulator's bundler"),
    ]  # fmt: skip
    run = RunResult(tee, "omni_sim 0.1.0", "local", STARTED, 1.0, results, {}, tee_kind=tee_kind, profile="upstream")
    run.deviations = "sim-upstream"
    return run


def test_a_green_upstream_run_says_in_its_headline_that_no_patch_case_passed() -> None:
    """ "Verdict: PASS" alone reads as "this worker does what AgentKeys needs"."""
    headline = markdown_report(upstream_run()).splitlines()[2]
    assert headline == (
        "**Verdict: PASS for the declared profile `upstream` (2 passed, 1 not applicable, 2 known deviations): "
        "0 of 2 agentkeys-patch cases passed — the agentkeys patch is not in this simulator profile**"
    )
    worker = upstream_run("http://10.0.0.5:2100/ (upstream)", "url")
    assert markdown_report(worker).splitlines()[2].endswith("— the agentkeys patch is not in this worker**")
    patched = upstream_run()
    patched.profile = "agentkeys-patch"
    for result in patched.results[:2]:
        result.verdict, result.deviation = Verdict.PASSED, None
    patched.results[2].verdict, patched.results[2].reason = Verdict.NOT_APPLICABLE, "only for upstream targets"
    assert markdown_report(patched).splitlines()[2] == (
        "**Verdict: PASS for the declared profile `agentkeys-patch` (3 passed, 2 not applicable): "
        "all 2 agentkeys-patch cases passed**"
    )
    assert markdown_report(make_run()).splitlines()[2] == "**Verdict: FAIL — 3 case(s) need attention**"


def test_the_happy_path_of_an_upstream_run_is_not_a_refusal_and_says_the_patch_flow_is_refused() -> None:
    happy = markdown_report(upstream_run()).split("## The happy path")[1].split("\n## ")[0]
    assert "e2e.upstream.agentkeys-refused" not in happy and "e2e.login.evm" not in happy
    assert "### `tee.login.evm.wildmeta`" in happy
    assert "Harness-->>Worker: 200 code 10000" in happy
    assert (
        "Under the declared profile `upstream` the happy path of the agentkeys patch (client `agentkeys` signs in "
        "and the worker's callbacks reach the broker) is refused: its 2 case(s) are known deviations"
    ) in happy
    # a patched run shows its e2e case and no such note
    patched = markdown_report(make_run()).split("## The happy path")[1]
    assert "### `tee.login.agentkeys.e2e`" in patched and "is refused" not in patched


def test_sequence_diagram_without_exchanges_still_renders() -> None:
    diagram = sequence_diagram(CaseResult(case("tee.broker.down"), Verdict.ERROR, "targets did not start: x"))
    assert "Note over Client,Broker: no exchange was recorded" in diagram
    assert "failed - targets did not start" in diagram


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("omni_userLogin", "omni_userLogin"),
        ("a;b #c: {d} \"e\" 'f' <g>", "a b c d e f g"),
        ("x" * 100, "x" * 45 + "..."),
        (";;;", "-"),
    ],
)
def test_mermaid_label_is_safe_and_short(text: str, label: str) -> None:
    assert mermaid_label(text) == label


# ---------------------------------------------------------------------------------------------- diff


def test_normalise_value_hides_what_changes_by_design() -> None:
    token = jwt({"sub": "0x" + "ab" * 32, "typ": "access", "exp": 1_800_000_123, "aud": "agentkeys"})
    assert normalise_value(f"Bearer {token}") == {
        "$bearer": {
            "$jwt": {
                "header": {"typ": "JWT", "alg": "RS256"},
                "claims": {"sub": "<hex64>", "typ": "access", "aud": "agentkeys"},
                "claims_order": ["sub", "typ", "exp", "aud"],
            }
        }
    }
    # a JWT after another scheme word (a refused "Token …" header) is decoded the same way, its prefix kept
    other = jwt({"sub": "0x" + "cd" * 32, "typ": "access", "exp": 1_800_000_999, "aud": "agentkeys"})
    assert normalise_value(f"Token {token}") == normalise_value(f"Token {other}")
    assert normalise_value(f"Token {token}")["$prefix"] == "Token "
    assert normalise_value(f"Token {token}") != normalise_value(f"Bearer {token}")
    assert normalise_value({"code": "12345678", "otp": "123456", "n": "1234567", "port": 43433}) == {
        "code": "<code>",
        "otp": "<code>",
        "n": "1234567",
        "port": 43433,
    }
    assert normalise_value(["0x" + "1f" * 20, "usr_d8b9ca852fe46f6c0a0bb75a", "your code is 654321."]) == [
        "<hex40>",
        "<uid>",
        "your code is <code>.",
    ]
    siwe = "Issued At: 2026-12-01T04:40:58Z\nExpiration Time: 2026-12-01T05:25:58.5Z\nNot a time: 2026-12-01"
    assert normalise_value(siwe) == "Issued At: <time>\nExpiration Time: <time>\nNot a time: 2026-12-01"
    assert normalise_value(
        {
            "email": "connect-80ab12f3c4f1@example.com",  # {$fresh: …}
            "grant_id": "grn_3b9a7066e1bf0ca28145ea15",
            "solana": "J2fhaA6RritMRpXd8PEBW9N4hATj7a9xKCBFKAs8KtTA",
            "ss58": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
            "tampered": "Bearer x" + token,
            "reason": 'reqwest::Error { url: "http://127.0.0.1:46873/pumpx/v3" }',
            "created_at": 1_795_867_760,
            "at_ms": 1_795_867_760_123,
            "code": 10000,
            "flag": True,
            "op": "check_hyper_agent_address",
        }
    ) == {
        "email": "connect-<hex>@example.com",
        "grant_id": "grn_<hex>",
        "solana": "<base58>",
        "ss58": "<base58>",
        "tampered": "Bearer <token>",
        "reason": 'reqwest::Error { url: "http://127.0.0.1:<port>/pumpx/v3" }',
        "created_at": "<time>",
        "at_ms": "<time>",
        "code": 10000,
        "flag": True,
        "op": "check_hyper_agent_address",
    }


def test_diff_of_two_equivalent_runs_is_all_same(tmp_path: Path) -> None:
    first, second = make_run(), make_run("sim (agentkeys-patch), again")  # fresh random values in each
    assert first.results[2].exchanges != second.results[2].exchanges
    path = write_diff(first, second, tmp_path)
    assert path == tmp_path / "diff.md"
    report = path.read_text(encoding="utf-8")
    assert "7 case(s) ran on both: 7 same, 0 different." in report
    assert "None: both workers did the same on every leg of every case." in report
    assert "sim (agentkeys-patch), again" in report and "omni_sim 0.1.0" in report
    assert "| case | verdict A | verdict B | legs differ? |" in report
    data = json.loads((tmp_path / "diff.json").read_text(encoding="utf-8"))
    assert all(entry["same"] for entry in data["cases"]) and len(data["cases"]) == 7
    assert data["a"]["tee"] == "sim (agentkeys-patch)" and data["b"]["tee"] == "sim (agentkeys-patch), again"


def oauth2_and_passkey_exchanges(scope: str = "openid email") -> list[Exchange]:
    """An OAuth2 authorisation and a passkey attach, with the random values a worker draws on each run."""
    state, nonce, credential = secrets.token_hex(16), secrets.token_urlsafe(24), secrets.token_urlsafe(16)
    url = f"https://accounts.google.com/o/oauth2/v2/auth?response_type=code&scope={scope}&state={state}&nonce={nonce}"
    id_token = jwt({"aud": "wildmeta-conformance", "nonce": nonce})
    attached = secrets.token_urlsafe(16)  # in the CBOR attestation only, never a field of its own
    business = json.dumps({"action": "trade", "timestamp": random.randrange(1_700_000_000, 1_900_000_000)})
    return [
        Exchange("client→worker", 0, "omni_getOAuth2AuthorizationData", {"json": {"id_token": id_token}},
                 {"result": {"authorize_url": url, "state": state, "nonce": nonce, "scope": scope}}),
        Exchange("client→worker", 1, "omni_attachPasskey",
                 {"json": {"params": {"attestation_object": secrets.token_urlsafe(90),
                                      "client_data_json": secrets.token_urlsafe(60)}}},
                 {"result": {"success": True, "message": f"Passkey ({attached}) successfully attached"}}),
        Exchange("client→worker", 2, "omni_listPasskey", {"json": {}},
                 {"result": {"passkeys": [{"credential_id": credential, "alias_name": credential}]}}),
        Exchange("client→worker", 3, "omni_submitUserOpWithAuth", {"json": {"business_json": business}}, {"error": {}}),
    ]  # fmt: skip


def test_diff_hides_the_values_a_worker_draws_at_random_but_not_a_real_difference() -> None:
    a, b = oauth2_and_passkey_exchanges(), oauth2_and_passkey_exchanges()
    assert diff_legs(a, b) == []
    changed = diff_legs(a, oauth2_and_passkey_exchanges(scope="email"))
    assert {f.path for leg in changed for f in leg.fields} == {"response.result.authorize_url", "response.result.scope"}


def test_diff_detects_a_changed_leg(tmp_path: Path) -> None:
    first, second = make_run(), make_run("sim (upstream)")
    second.results[1] = CaseResult(
        first.results[1].case, Verdict.PASSED, exchanges=login_exchanges(client_id="wildmeta")
    )
    result = compare(first, second)
    changed = next(c for c in result.cases if c.case_id == "tee.login.agentkeys.e2e")
    assert not changed.same and changed.legs_differ
    paths = {f.path for leg in changed.legs for f in leg.fields}
    assert "request.body.clientId" in paths
    assert "request.headers.Authorization.$bearer.$jwt.claims.aud" in paths
    assert [c.case_id for c in result.cases if not c.same] == ["tee.login.agentkeys.e2e"]

    write_diff(first, second, tmp_path)
    report = (tmp_path / "diff.md").read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| `tee.login.agentkeys.e2e`"))
    assert "**yes**" in row
    assert "#### step 3 · worker→broker · POST /agentkeys/v3/account/post_heima_login — changed" in report
    assert '| `request.body.clientId` | <code>"agentkeys"</code> | <code>"wildmeta"</code> |' in report


def test_diff_shows_a_callback_made_by_one_worker_only_and_the_verdicts(tmp_path: Path) -> None:
    first, second = make_run(), make_run("sim (upstream)")
    second.results[1] = CaseResult(
        first.results[1].case,
        Verdict.FAILED,
        "step 3 (rpc omni_userLogin): callback 1: the worker made 0",
        exchanges=login_exchanges(with_callback=False, error=True),
    )
    del second.results[6]
    result = compare(first, second)
    changed = next(c for c in result.cases if c.case_id == "tee.login.agentkeys.e2e")
    assert [leg.kind for leg in changed.legs] == ["changed", "only in A"]
    assert {f.path for f in changed.legs[0].fields} == {"response.result", "response.error"}
    assert [r.case.id for r in result.only_a] == ["broker.grants.stale"]

    report = write_diff(first, second, tmp_path).read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| `tee.login.agentkeys.e2e`"))
    assert "passed" in row and "FAILED" in row and "**yes** (2 exchange(s))" in row
    assert "— only in A" in report and "only in A (⚠️ UNEXPECTED PASS" in report


# ---------------------------------------------------------------------------------------------- real run

TINY_SUITE = """\
suite: tiny
title: A tiny suite for the report tests
cases:
  - id: tiny.vector
    clause: the newest worker answers omni_getOmniAccount with Method not found
    steps:
      - rpc:
          method: omni_getOmniAccount
          params: {client_id: wildmeta, user_email: hello.world@test.com}
        expect:
          error: {$exact: {code: -32601, message: Method not found}}
  - id: tiny.upstream-only
    clause: only an upstream target runs this clause
    only: upstream
    steps:
      - rpc: {method: omni_getShieldingKey}
  - id: tiny.login.agentkeys
    clause: omni_userLogin for agentkeys calls post_heima_login on the agentkeys API, answered by the broker
    profile: agentkeys-patch
    needs: [broker]
    tags: [e2e]
    steps:
      - let:
          bob: {$wallet: {kind: evm}}
          account: {$omni_account: {type: evm, value: "${bob.address}", client_id: agentkeys}}
      - rpc:
          method: omni_getWeb3SignInMessage
          params: {client_id: agentkeys, omni_account: "${account}"}
        capture: {message: result}
      - rpc:
          method: omni_userLogin
          params:
            user_id: "${bob.user_id}"
            user_auth: {$sign: {wallet: "${bob}", message: {$json: "${message}"}}}
            client_id: agentkeys
        within: 0
        callbacks:
          - api: agentkeys
            op: post_heima_login
            expect:
              body: {userId: "${bob.user_id}", clientId: agentkeys, heimaLoginSuccess: true}
            reply: {forward: broker}
            capture: {broker_reply: response.body}
        expect:
          result: {backend_response: "${broker_reply}"}
"""


async def run_tiny(tmp_path: Path, profile: str, deviations: dict[str, str] | None = None) -> RunResult:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE, encoding="utf-8")
    async with Harness(tee_target("sim", profile, None), broker_target("local"), deviations) as harness:
        return await harness.run([load_suite(path)])


async def test_reports_and_diff_of_real_runs(tmp_path: Path) -> None:
    patched = await run_tiny(tmp_path, "agentkeys-patch")
    again = await run_tiny(tmp_path, "agentkeys-patch")
    upstream = await run_tiny(tmp_path, "upstream", {"tiny.login.agentkeys": "the patch is not applied"})
    verdicts = {r.case.id: r.verdict for r in upstream.results}
    assert [r.verdict for r in patched.results] == [Verdict.PASSED, Verdict.NOT_APPLICABLE, Verdict.PASSED]
    assert verdicts == {
        "tiny.vector": Verdict.PASSED,
        "tiny.upstream-only": Verdict.PASSED,
        "tiny.login.agentkeys": Verdict.EXPECTED_FAILURE,
    }

    write_reports(upstream, tmp_path / "upstream")
    root = ET.parse(tmp_path / "upstream" / "junit.xml").getroot()  # noqa: S314 — the test's own output
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("3", "0", "0", "1")
    skipped = junit_case(root, "tiny.login.agentkeys").find("skipped")
    assert skipped is not None and skipped.get("message") == "known deviation: the patch is not applied"
    report = (tmp_path / "upstream" / "report.md").read_text(encoding="utf-8")
    assert report.startswith(
        "# Conformance report: sim (upstream)\n\n**Verdict: PASS for the declared profile `upstream` "
        "(2 passed, 1 known deviation): 0 of 1 agentkeys-patch cases passed — the agentkeys patch is not in "
        "this simulator profile**\n"
    )
    known = report.split("### Known deviations")[1]
    assert "<code>tiny.login.agentkeys</code> — the patch is not applied" in known

    write_reports(patched, tmp_path / "patched")
    report = (tmp_path / "patched" / "report.md").read_text(encoding="utf-8")
    assert "**Verdict: PASS for the declared profile `agentkeys-patch` (2 passed, 1 not applicable): all 1 " in report
    happy = report.split("## The happy path")[1]
    assert "Harness->>Broker: forwarded" in happy and "Broker-->>Harness: 200 code 10000" in happy

    same = compare(patched, again)
    assert [c.same for c in same.cases] == [True, True, True], [c.to_json() for c in same.cases if not c.same]

    differ = compare(patched, upstream)
    by_id = {c.case_id: c for c in differ.cases}
    assert by_id["tiny.vector"].same
    assert not by_id["tiny.upstream-only"].same  # N/A on one side, run on the other
    login = by_id["tiny.login.agentkeys"]
    assert login.legs_differ and "only in A" in [leg.kind for leg in login.legs]
    assert write_diff(patched, upstream, tmp_path / "diff").is_file()


def test_the_console_summary_counts_in_words_that_agree() -> None:
    from agentkeys_kit.conformance.reports import console_summary

    verdicts = [Verdict.PASSED, Verdict.EXPECTED_FAILURE, Verdict.EXPECTED_FAILURE, Verdict.ERROR]
    results = [CaseResult(case(f"tee.c{i}"), verdict) for i, verdict in enumerate(verdicts)]
    run = RunResult("sim", "omni_sim 0.1.0", "local", STARTED, 1.0, results, {})
    assert console_summary(run).endswith("— 1 passed, 1 error, 2 known deviations")
    results.append(CaseResult(case("tee.c9"), Verdict.ERROR))
    assert console_summary(run).endswith("— 1 passed, 2 errors, 2 known deviations")
