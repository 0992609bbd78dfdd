"""Writing suites: what is refused when a file loads, and the commands that only read suites.

A suite that cannot work must fail before anything runs, with one message that names the file,
the case, the step (counted from 1, as failures count them) and the offending key or name.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentkeys_kit.conformance.cli import SUITES_DIR, main
from agentkeys_kit.conformance.fuzz import generate_payloads
from agentkeys_kit.conformance.model import SuiteError, load_suite, load_suites

ROOT = Path(__file__).parent.parent
HEALTH = {"rpc": {"method": "omni_getHealth"}, "expect": {"result": "OK"}}


def suite_file(tmp_path: Path, *steps: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    case = {"id": "tiny.case", "clause": "a clause of at least eight characters", "steps": list(steps), **(extra or {})}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"suite": "tiny", "title": "tiny", "cases": [case]}, sort_keys=False))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(SuiteError) as raised:
        load_suite(path)
    return str(raised.value)


# ---------------------------------------------------------------------------------------------- README


def readme_suite() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("Writing a suite: a whole file", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None, "the README has a YAML example after 'Writing a suite'"
    return found.group(1)


def test_the_readme_example_is_a_whole_valid_suite_file(tmp_path: Path) -> None:
    path = tmp_path / "readme.yaml"
    path.write_text(readme_suite(), encoding="utf-8")
    suite = load_suite(path)
    assert suite.cases and all(case.steps for case in suite.cases)


def test_the_readme_example_runs_and_passes_against_the_patched_simulator(tmp_path: Path) -> None:
    path = tmp_path / "readme.yaml"
    path.write_text(readme_suite(), encoding="utf-8")
    assert main(["run", str(path), "--report", str(tmp_path / "r")]) == 0
    summary = (tmp_path / "r" / "summary.txt").read_text(encoding="utf-8")
    assert "FAIL" not in summary and "ERROR" not in summary and "passed" in summary


# ---------------------------------------------------------------------------------------------- schema messages


@pytest.mark.parametrize(
    ("steps", "extra", "expected"),
    [
        ([HEALTH, {"rpc": {"method": "x", "parms": {}}}], {}, "case tiny.case, step 2, rpc: unknown key 'parms'"),
        ([{"rpc": {"method": "x"}, "expct": {}}], {}, "case tiny.case, step 1: unknown key 'expct'"),
        ([{"rcp": {"method": "x"}}], {}, "case tiny.case, step 1: no step kind"),
        (
            [{"rpc": {"method": "x"}, "raw": {"body": "{}"}}],
            {},
            "step 1: one step kind per step, this one has rpc and raw",
        ),
        ([HEALTH, HEALTH, {"clock": {"advance": -1}}], {}, "case tiny.case, step 3, clock.advance: -1 is less than"),
        ([{"rpc": {"method": "x"}, "callbacks": [{"op": "nope"}]}], {}, "step 1, callbacks.1.op: 'nope' is not one of"),
        ([HEALTH], {"needs": ["time-travel"]}, "case tiny.case, needs.1: 'time-travel' is not one of"),
        ([HEALTH], {"stpes": []}, "case tiny.case: unknown key 'stpes'"),
    ],
)
def test_a_schema_error_names_the_case_the_step_from_one_and_the_key(
    tmp_path: Path, steps: list[dict[str, Any]], extra: dict[str, Any], expected: str
) -> None:
    message = refusal(suite_file(tmp_path, *steps, extra=extra))
    assert message.startswith(str(tmp_path / "tiny.yaml") + ": ")
    assert expected in message


# ---------------------------------------------------------------------------------------------- static checks


def test_an_unknown_function_is_refused_when_the_suite_loads(tmp_path: Path) -> None:
    path = suite_file(tmp_path, {"let": {"w": {"$walet": {"kind": "evm"}}}})
    message = refusal(path)
    assert "case tiny.case, step 1: let: unknown function or matcher $walet (did you mean $wallet?)" in message


def test_an_unknown_matcher_under_expect_is_refused(tmp_path: Path) -> None:
    path = suite_file(tmp_path, {"rpc": {"method": "omni_getHealth"}, "expect": {"result": {"$regexp": "OK"}}})
    assert "step 1: expect: unknown function or matcher $regexp (did you mean $regex?)" in refusal(path)


def test_an_unknown_callback_field_is_refused(tmp_path: Path) -> None:
    step = {"rpc": {"method": "x"}, "callbacks": [{"op": "post_heima_login", "expect": {"header": {}}}]}
    message = refusal(suite_file(tmp_path, step))
    assert "step 1: callback 1: expect: a callback has no field 'header' (did you mean headers?)" in message


def test_a_callback_capture_must_name_a_field_of_the_callback(tmp_path: Path) -> None:
    step = {"rpc": {"method": "x"}, "callbacks": [{"op": "add_wallet", "capture": {"b": "request.bdy"}}]}
    assert "callback 1: capture b: 'request.bdy' is not a field of the callback" in refusal(suite_file(tmp_path, step))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([{"rpc": {"method": "${nobody}"}}], "step 1: rpc: ${nobody} is not defined by any earlier step"),
        ([{"let": {"a": 1}}, {"rpc": {"method": "${b}"}}], "step 2: rpc: ${b} is not defined"),
        ([{"let": {"b": "${a}", "a": 1}}], "step 1: let b: ${a} is not defined"),
        ([{"rpc": {"method": "x"}, "capture": {"c": "result"}, "expect": {"result": "${c}"}}], "step 1: expect: ${c}"),
        (
            [
                {
                    "rpc": {"method": "x"},
                    "callbacks": [
                        {"op": "add_wallet", "reply": {"json": "${later}"}, "capture": {"later": "request.body"}}
                    ],
                }
            ],
            "step 1: callback 1: ${later} is not defined",
        ),
    ],
)
def test_an_undefined_variable_is_refused_when_the_suite_loads(
    tmp_path: Path, steps: list[dict[str, Any]], expected: str
) -> None:
    assert expected in refusal(suite_file(tmp_path, *steps))


def test_variables_defined_in_the_order_the_runner_evaluates_them_load(tmp_path: Path) -> None:
    steps = [
        {"let": {"a": 1, "b": "${a}"}},
        {
            "rpc": {"method": "${tee.url}"},
            "callbacks": [
                {"op": "post_heima_login", "capture": {"first": "request.body"}},
                {"op": "add_wallet", "expect": {"body": "${first}"}, "capture": {"second": "response.status"}},
            ],
            "expect": {"result": "${second}"},
            "capture": {"third": "result"},
        },
        {"let": {"d": "${third} ${b} ${case.id} ${broker.url}"}},
    ]
    assert len(load_suite(suite_file(tmp_path, *steps)).cases) == 1


def test_a_patch_clause_must_exist_in_the_profile(tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, HEALTH, extra={"profile": "agentkeys-patch", "patch_clause": 99}))
    assert "case tiny.case: patch_clause 99: the agentkeys-patch profile has clauses 1, 2, 3, 4, 5, 6" in message


def test_smtp_is_still_accepted_as_the_old_name_of_mail(tmp_path: Path) -> None:
    case = load_suite(suite_file(tmp_path, HEALTH, extra={"needs": ["smtp", "broker"]})).cases[0]
    assert case.needs == ("mail", "broker")


def test_every_shipped_patch_case_names_its_clause() -> None:
    cases = [case for suite in load_suites([SUITES_DIR]) for case in suite.cases if case.is_patch_clause]
    assert cases and all(case.patch_clause is not None for case in cases), [c.id for c in cases if not c.patch_clause]


# ---------------------------------------------------------------------------------------------- commands


def test_list_shows_every_case_with_its_clause_and_marks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "-k", "tee.login.evm.agentkeys"]) == 0
    out = capsys.readouterr().out
    assert "tee.login.evm.agentkeys  [patch clause 1; profile agentkeys-patch]" in out
    assert "tee.login.evm.agentkeys-upstream  [patch clause 1; only upstream]" in out
    assert out.rstrip().endswith("2 cases in 1 suite(s)")


def test_check_validates_suites_and_deviation_files_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "worker-upstream.yaml (45 cases): valid" in out and "suite tee" in out


def test_check_refuses_a_broken_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(suite_file(tmp_path, {"rpc": {"method": "${x}"}}))]) == 2
    assert "${x} is not defined" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "list", "check"])
def test_k_that_selects_nothing_is_an_error(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [command, "-k", "no-such-case-anywhere"] + (["--report", str(tmp_path / "r")] if command == "run" else [])
    assert main(args) == 2
    assert "-k 'no-such-case-anywhere' selects no case" in capsys.readouterr().err


def test_a_failure_caused_by_an_error_reply_shows_the_reply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    step = {
        "rpc": {"method": "omni_getWeb3SignInMessage", "params": {"client_id": "wildmeta"}},
        "expect": {"result": {}},
    }
    assert main(["run", str(suite_file(tmp_path, step)), "--broker", "none", "--report", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert 'the worker answered: {"code":-32700,"message":"Parse error"' in out


# ---------------------------------------------------------------------------------------------- fuzz


def test_the_fuzz_payloads_are_the_same_for_a_seed_and_differ_between_seeds() -> None:
    first = generate_payloads(60, 7)
    assert first == generate_payloads(60, 7)
    assert first != generate_payloads(60, 8)
    assert len(first) == 60
    assert any(isinstance(p, dict) and {"user_id", "client_id"} & p.keys() for p in first)  # near-miss shapes
    assert any(not isinstance(p, dict) for p in first)  # and arbitrary JSON


def test_the_fuzz_payloads_of_seed_zero_are_pinned() -> None:
    # Two installations, two workers and both sides of a diff must send these exact payloads.
    digest = hashlib.sha256(json.dumps(generate_payloads(50, 0)).encode()).hexdigest()
    assert digest == "27c5c6dd1a617c11feb178f6521f9d4b44808de8ea188e314df0be442602fafd"
