"""The conformance command: validation, applicability, known deviations, the published schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentkeys_kit.conformance.cli import DEVIATIONS_DIR, SUITES_DIR, main
from agentkeys_kit.conformance.model import SCHEMA_PATH, SuiteError, load_suite, load_suites, published_schema

HEALTH_CASE = {
    "id": "tiny.health",
    "clause": "omni_getHealth answers OK",
    "steps": [{"rpc": {"method": "omni_getHealth"}, "expect": {"result": {"$exact": "OK"}}}],
}
BROKER_CASE = {
    "id": "tiny.broker-ready",
    "clause": "the broker reports ready",
    "needs": ["broker"],
    "steps": [{"broker": {"method": "GET", "path": "/readyz"}, "expect": {"status": 200}}],
}


def write_suite(tmp_path: Path, *cases: dict[str, object], name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"suite": name, "title": "tiny", "cases": list(cases)}), encoding="utf-8")
    return path


def test_the_published_schema_file_is_the_schema_the_runner_validates_with() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == published_schema()


def test_every_shipped_suite_is_valid() -> None:
    assert sum(len(suite.cases) for suite in load_suites([SUITES_DIR])) >= 100


@pytest.mark.parametrize(
    ("case", "complaint"),
    [
        ({**HEALTH_CASE, "steps": [{"rpc": {"method": "x"}, "expect": {}, "callbacks": [{"op": "nope"}]}]}, "nope"),
        ({**HEALTH_CASE, "stpes": []}, "stpes"),
        ({**HEALTH_CASE, "needs": ["time-travel"]}, "time-travel"),
        ({"id": "BAD ID", "clause": "a clause here", "steps": [{"let": {}}]}, "BAD ID"),
    ],
)
def test_an_invalid_suite_is_refused_before_anything_runs(
    tmp_path: Path, case: dict[str, object], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_suite(tmp_path, case)
    with pytest.raises(SuiteError, match=str(path.name)):
        load_suite(path)
    assert main(["run", str(path), "--report", str(tmp_path / "r")]) == 2
    assert complaint in capsys.readouterr().err


BROKEN_YAML = "suite: tiny\ncases:\n  - id: [tiny.health\n    clause: x\n"
BROKEN_AT = (
    ", line 4, column 11: not YAML: expected ',' or ']', but got ':' "
    "(while parsing a flow sequence at line 3, column 9)"
)


def test_a_suite_file_that_is_not_yaml_is_one_line_naming_the_file_and_the_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(BROKEN_YAML, encoding="utf-8")
    for command in (["check", str(path)], ["run", str(path), "--report", str(tmp_path / "r")]):
        assert main(command) == 2
        assert capsys.readouterr().err == f"conformance: {path}{BROKEN_AT}\n"


def test_a_deviation_file_that_is_not_yaml_or_lacks_a_case_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path, HEALTH_CASE)
    deviations = tmp_path / "deviations.yaml"
    deviations.write_text("deviations:\n\t- case: tiny.health\n", encoding="utf-8")
    args = ["run", str(suite), "--deviations", str(deviations), "--report", str(tmp_path / "r")]
    assert main(args) == 2
    problem = "found character '\\t' that cannot start any token (while scanning for the next token)"
    assert capsys.readouterr().err == f"conformance: {deviations}, line 2, column 1: not YAML: {problem}\n"
    deviations.write_text("deviations:\n  - reason: no case named\n", encoding="utf-8")
    assert main(args) == 2
    assert capsys.readouterr().err == f"conformance: {deviations}: not a deviation file: an entry has no 'case'\n"


def test_a_case_the_target_cannot_run_is_not_applicable_never_passed(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, HEALTH_CASE, BROKER_CASE)
    assert main(["run", str(suite), "--broker", "none", "--report", str(tmp_path / "r")]) == 0
    summary = (tmp_path / "r" / "summary.txt").read_text(encoding="utf-8")
    assert "1 passed" in summary and "1 not applicable" in summary
    assert "N/A   tiny.broker-ready" in summary


def test_a_listed_deviation_that_passes_fails_the_run(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, HEALTH_CASE)
    deviations = tmp_path / "deviations.yaml"
    deviations.write_text(yaml.safe_dump({"deviations": [{"case": "tiny.health", "reason": "was broken"}]}))
    assert main(["run", str(suite), "--deviations", str(deviations), "--report", str(tmp_path / "r")]) == 1
    assert "XPASS tiny.health" in (tmp_path / "r" / "summary.txt").read_text(encoding="utf-8")


def test_a_listed_deviation_that_fails_keeps_the_run_green(tmp_path: Path) -> None:
    failing = {**HEALTH_CASE, "steps": [{"rpc": {"method": "omni_getHealth"}, "expect": {"result": "NOT OK"}}]}
    suite = write_suite(tmp_path, failing)
    deviations = tmp_path / "deviations.yaml"
    deviations.write_text(yaml.safe_dump({"deviations": [{"case": "tiny.health", "reason": "known"}]}))
    assert main(["run", str(suite), "--deviations", str(deviations), "--report", str(tmp_path / "r")]) == 0
    assert main(["run", str(suite), "--report", str(tmp_path / "r2")]) == 1


def test_the_upstream_deviation_file_lists_exactly_the_patch_clauses() -> None:
    document = yaml.safe_load((DEVIATIONS_DIR / "sim-upstream.yaml").read_text(encoding="utf-8"))
    listed = {entry["case"] for entry in document["deviations"]}
    patch_clauses = {case.id for suite in load_suites([SUITES_DIR]) for case in suite.cases if case.is_patch_clause}
    assert listed == patch_clauses
    assert all(entry["reason"].startswith("patch clause") for entry in document["deviations"])


def test_diff_runs_the_suite_against_two_workers_and_writes_the_diff(tmp_path: Path) -> None:
    agentkeys_login = {
        "id": "tiny.agentkeys-login-refused-or-not",
        "clause": "omni_userLogin for agentkeys with a bad code",
        "steps": [
            {
                "rpc": {
                    "method": "omni_userLogin",
                    "params": {
                        "user_id": {"type": "email", "value": "a@b.io"},
                        "user_auth": {"type": "email", "value": "000000"},
                        "client_id": "agentkeys",
                    },
                }
            }
        ],
    }
    suite = write_suite(tmp_path, HEALTH_CASE, agentkeys_login)
    args = ["diff", str(suite), "--tee-profile", "upstream", "--tee2", "sim", "--tee2-profile", "agentkeys-patch"]
    assert main([*args, "--report", str(tmp_path / "d")]) == 0
    diff = (tmp_path / "d" / "diff.md").read_text(encoding="utf-8")
    assert "tiny.health" in diff and "tiny.agentkeys-login-refused-or-not" in diff
    assert "sim (upstream)" in diff and "sim (agentkeys-patch)" in diff


def _deviation_file(tmp_path: Path, entry: dict[str, object]) -> Path:
    path = tmp_path / "deviations.yaml"
    path.write_text(yaml.safe_dump({"deviations": [entry]}), encoding="utf-8")
    return path


TWO_STEP_FAILING_AT_2 = {
    "id": "tiny.fails-at-two",
    "clause": "the second step fails",
    "steps": [
        {"rpc": {"method": "omni_getHealth"}, "expect": {"result": "OK"}},
        {"rpc": {"method": "omni_getHealth"}, "expect": {"result": "NOT OK"}},
    ],
}


def test_a_deviation_must_fail_at_the_step_it_names(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, TWO_STEP_FAILING_AT_2)
    right = _deviation_file(tmp_path, {"case": "tiny.fails-at-two", "reason": "r", "step": 2})
    assert main(["run", str(suite), "--deviations", str(right), "--report", str(tmp_path / "a")]) == 0
    wrong = _deviation_file(tmp_path, {"case": "tiny.fails-at-two", "reason": "r", "step": 1})
    assert main(["run", str(suite), "--deviations", str(wrong), "--report", str(tmp_path / "b")]) == 1
    assert "expects a failure at step 1, not at step 2" in (tmp_path / "b" / "summary.txt").read_text()


def test_a_deviation_never_excuses_a_suite_error(tmp_path: Path) -> None:
    # `tee` exists when the suite loads; only at run time does it turn out to have no `nope`
    broken = {**HEALTH_CASE, "steps": [{"rpc": {"method": "${tee.nope}"}}]}
    suite = write_suite(tmp_path, broken)
    listed = _deviation_file(tmp_path, {"case": "tiny.health", "reason": "r"})
    assert main(["run", str(suite), "--deviations", str(listed), "--report", str(tmp_path / "r")]) == 1
    assert "ERROR tiny.health" in (tmp_path / "r" / "summary.txt").read_text()


def test_a_deviation_for_a_case_no_suite_has_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path, HEALTH_CASE)
    ghost = _deviation_file(tmp_path, {"case": "tiny.ghost", "reason": "r"})
    assert main(["run", str(suite), "--deviations", str(ghost), "--report", str(tmp_path / "r")]) == 2
    assert "tiny.ghost" in capsys.readouterr().err


async def test_a_worker_answering_null_fails_instead_of_skipping_checks(tmp_path: Path) -> None:
    from aiohttp import web

    from agentkeys_kit.conformance.model import load_suite as load
    from agentkeys_kit.conformance.runner import Harness, Verdict
    from agentkeys_kit.conformance.targets import broker_target, tee_target
    from agentkeys_kit.omni_sim.server import ServedApp

    async def null_worker(request: web.Request) -> web.Response:
        return web.Response(text="null", content_type="application/json")

    app = web.Application()
    app.router.add_post("/", null_worker)
    served = ServedApp()
    await served.start(app)
    try:
        key = Path(__file__).parent.parent / "fixtures" / "keys" / "tee_jwt_public_key.test.pem"
        tee = tee_target(served.url, "agentkeys-patch", str(key))
        case = load(write_suite(tmp_path, HEALTH_CASE)).cases[0]
        async with Harness(tee, broker_target("none")) as harness:
            result = await harness.run_case(case)
        assert result.verdict is Verdict.FAILED, result.reason
    finally:
        await served.close()
