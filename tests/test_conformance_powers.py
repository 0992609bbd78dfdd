"""The harness powers the suites use, each tested on its own: the error era of a target, the
broker audit step, the TOTP enrolment step, the absolute clock, per-API base URLs, scripted
failures on every API the worker calls back, and the pytest plugin's e2e runs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentkeys_kit.broker.state import STATE
from agentkeys_kit.broker.storage import AuditEvent, store
from agentkeys_kit.broker.totp import totp
from agentkeys_kit.conformance import runner
from agentkeys_kit.conformance.cli import build_parser
from agentkeys_kit.conformance.expr import ExprError, Keys, Scope, totp_code
from agentkeys_kit.conformance.model import SuiteError, load_suite
from agentkeys_kit.conformance.runner import CaseResult, Harness, Verdict
from agentkeys_kit.conformance.target_file import load_target_file
from agentkeys_kit.conformance.targets import (
    TargetError,
    base_url,
    broker_target,
    tee_target,
)
from agentkeys_kit.omni_sim.clock import SimClock

T = 1893456000  # 2030-01-01T00:00:00Z


def suite_file(tmp_path: Path, *cases: dict[str, Any]) -> Path:
    full = [{"clause": "a clause of at least eight characters", **case} for case in cases]
    path = tmp_path / "powers.yaml"
    path.write_text(yaml.safe_dump({"suite": "powers", "title": "powers", "cases": full}, sort_keys=False))
    return path


async def run_cases(
    tmp_path: Path, *cases: dict[str, Any], era: str = "current", profile: str = "agentkeys-patch"
) -> list[CaseResult]:
    suite = load_suite(suite_file(tmp_path, *cases))
    async with Harness(tee_target("sim", profile, None, error_era=era), broker_target("local")) as harness:
        return [await harness.run_case(case) for case in suite.cases]


def login_steps() -> list[dict[str, Any]]:
    """A wildmeta EVM login whose post_heima_login the receiver answers with the default envelope."""
    return [
        {"let": {"w": {"$wallet": {"kind": "evm"}}}},
        {"let": {"account": {"$omni_account": {"type": "evm", "value": "${w.address}", "client_id": "wildmeta"}}}},
        {
            "within": 0,
            "rpc": {
                "method": "omni_getWeb3SignInMessage",
                "params": {"client_id": "wildmeta", "omni_account": "${account}"},
            },
            "capture": {"message": "result"},
        },
        {"let": {"auth": {"$sign": {"wallet": "${w}", "message": {"$json": "${message}"}}}}},
    ]


def login_rpc(callback: dict[str, Any], expect: Any) -> dict[str, Any]:
    return {
        "within": 0,
        "rpc": {
            "method": "omni_userLogin",
            "params": {"user_id": "${w.user_id}", "user_auth": "${auth}", "client_id": "wildmeta"},
        },
        "callbacks": [callback],
        "expect": expect,
    }


def broker_login(token_claims: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    claims = token_claims or {"exp": {"$now": 604800}}
    return [
        {
            "let": {
                "alice": {"$wallet": {"kind": "evm"}},
            }
        },
        {
            "let": {
                "account": {"$omni_account": {"type": "evm", "value": "${alice.address}", "client_id": "agentkeys"}},
            }
        },
        {
            "let": {
                "token": {"$mint_jwt": {"claims": {"sub": "${account}", "typ": "access", **claims, "aud": "agentkeys"}}}
            }
        },
        {
            "callback": {
                "op": "post_heima_login",
                "token": "${token}",
                "json": {
                    "userId": "${alice.user_id}",
                    "clientId": "agentkeys",
                    "clientAuth": None,
                    "heimaLoginSuccess": True,
                },
            },
            "expect": {"status": 200, "json": {"code": 10000}},
            "capture": {"uid": "json.data.user_id"},
        },
    ]


# ---------------------------------------------------------------------------------------------- error era


def test_the_error_era_is_a_target_option_of_the_simulator_and_declared_for_a_url(tmp_path: Path) -> None:
    sim = tee_target("sim", "upstream", None, error_era="legacy")
    assert sim.error_era == "legacy" and "legacy era" in sim.label
    assert sim.declared()["error era"] == "legacy"
    assert tee_target("sim", "upstream", None).error_era == "current"
    with pytest.raises(TargetError, match="error era 'ancient'"):
        tee_target("sim", "upstream", None, error_era="ancient")
    key = tmp_path / "key.pem"
    from cryptography.hazmat.primitives import serialization

    key.write_bytes(
        sim.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    url = tee_target("http://127.0.0.1:9/", "upstream", key, error_era="legacy")
    assert url.declared()["error era"] == "legacy"
    args = build_parser().parse_args(["run", "--tee-error-era", "legacy"])
    assert args.tee_error_era == "legacy"
    target = tmp_path / "target.yaml"
    target.write_text("worker: {url: sim, error_era: legacy}\n")
    assert load_target_file(target).worker.error_era == "legacy"
    target.write_text("worker: {url: sim, error_era: newest}\n")
    with pytest.raises(ValueError, match="error_era"):
        load_target_file(target)


async def test_a_case_of_one_era_is_not_applicable_to_a_target_of_the_other(tmp_path: Path) -> None:
    health = {
        "within": 0,
        "rpc": {"method": "omni_getOmniAccount", "params": {"client_id": "wildmeta", "user_email": "a@b.co"}},
    }
    cases = [
        {"id": "only.legacy", "era": "legacy", "steps": [{**health, "expect": {"result": {"$type": "string"}}}]},
        {"id": "only.current", "era": "current", "steps": [{**health, "expect": {"error": {"code": -32601}}}]},
    ]
    legacy = await run_cases(tmp_path, *cases, era="legacy")
    assert [r.verdict for r in legacy] == [Verdict.PASSED, Verdict.NOT_APPLICABLE]
    assert "current error era" in legacy[1].reason and "follows legacy" in legacy[1].reason
    current = await run_cases(tmp_path, *cases, era="current")
    assert [r.verdict for r in current] == [Verdict.NOT_APPLICABLE, Verdict.PASSED]


async def test_the_simulator_started_by_the_harness_answers_in_the_targets_era(tmp_path: Path) -> None:
    failing = {"api": "pumpx", "op": "post_heima_login", "reply": {"status": 500}}
    case = {"id": "era.login", "steps": [*login_steps(), login_rpc(failing, {"error": {"$any": True}})]}
    answers = {}
    for era in ("current", "legacy"):
        (result,) = await run_cases(tmp_path, case, era=era)
        assert result.verdict is Verdict.PASSED, result.reason
        answers[era] = [e.response for e in result.exchanges if e.leg == "client→worker"][-1]["error"]
    assert answers["legacy"] == {"code": -32041, "message": "Server error"}
    assert answers["current"]["code"] == -32161


# ---------------------------------------------------------------------------------------------- clock


def test_the_simulator_clock_can_be_set_to_an_instant_where_it_stands() -> None:
    clock = SimClock()
    clock.advance(100)
    assert clock.set(T) == T and clock.now() == T and clock.frozen and clock.offset == 0
    assert clock.advance(5) == T + 5


async def test_sim_clock_endpoint_sets_and_refuses_a_bad_instant(tmp_path: Path) -> None:
    cases = [
        {
            "id": "clock.set",
            "needs": ["sim-clock"],
            "steps": [
                {"clock": {"set": T}, "expect": {"status": 200, "json": {"now": T, "frozen": True}}},
                {"clock": {"set": T, "advance": 7}, "expect": {"json": {"now": T + 7}}},
                {"let": {"when": {"$add": [T, 60]}}},
                {"clock": {"set": "${when}"}, "expect": {"json": {"now": T + 60}}},
            ],
        },
        {
            "id": "broker-clock.set",
            "needs": ["broker", "broker-clock"],
            "steps": [
                {"clock": {"target": "broker", "set": T}, "expect": {"json": {"now": T}}},
                {"clock": {"target": "broker", "advance": 30}, "expect": {"json": {"now": T + 30}}},
            ],
        },
        {"id": "clock.bad", "steps": [{"let": {"x": "no"}}, {"clock": {"set": "${x}"}}]},
    ]
    results = await run_cases(tmp_path, *cases)
    assert [r.verdict for r in results] == [Verdict.PASSED, Verdict.PASSED, Verdict.ERROR], [r.reason for r in results]
    assert "not a unix time" in results[2].reason


async def test_the_broker_clock_set_decides_token_expiry_at_the_instant(tmp_path: Path) -> None:
    steps = [{"clock": {"target": "broker", "set": T}}, *broker_login({"exp": T})]
    again = {**steps[-1], "expect": {"status": 401}}
    del again["capture"]
    case = {
        "id": "expiry",
        "needs": ["broker", "broker-clock", "tee-signing-key"],
        "steps": [*steps, {"clock": {"target": "broker", "advance": 1}}, again],
    }
    (result,) = await run_cases(tmp_path, case)
    assert result.verdict is Verdict.PASSED, result.reason


# ---------------------------------------------------------------------------------------------- audit


async def test_the_audit_step_matches_rows_by_event_outcome_account_and_bearer_hash(tmp_path: Path) -> None:
    case = {
        "id": "audit.ok",
        "needs": ["broker", "broker-internals", "tee-signing-key"],
        "steps": [
            *broker_login(),
            {
                "audit": {
                    "event": "post_heima_login",
                    "outcome": "ok",
                    "omni_account": "${account}",
                    "bearer": "${token}",
                },
                "expect": {"count": 1, "rows": [{"client_id": "agentkeys", "bearer_sha256": {"$sha256": "${token}"}}]},
            },
            {"audit": {"event": "post_heima_login", "bearer": "not-the-token"}, "expect": {"count": 0}},
            {"audit": {"event": "add_wallet"}, "expect": {"count": 0, "rows": []}},
        ],
    }
    (result,) = await run_cases(tmp_path, case)
    assert result.verdict is Verdict.PASSED, result.reason
    leg = [e for e in result.exchanges if e.leg == "harness→broker (internals)"]
    assert (leg and leg[0].request["match"]["bearer_sha256"] == hashlib.sha256(b"not-the-token").hexdigest()) or leg


async def test_the_audit_step_fails_when_a_raw_bearer_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that wrote the raw bearer (here: into an audit row's detail) fails the step,
    whatever the step expects."""
    original = runner._CaseRun.step_audit

    async def leaky(self: Any, step: Any) -> Any:
        assert self.broker is not None and self.broker.app is not None
        token = self.scope.values["token"]
        event = AuditEvent(event="leak", outcome="ok", occurred_at=T, detail=token)
        await self.broker.app[STATE].db.run(store.write_audit, event)
        return await original(self, step)

    monkeypatch.setattr(runner._CaseRun, "step_audit", leaky)
    case = {
        "id": "audit.leak",
        "needs": ["broker", "broker-internals", "tee-signing-key"],
        "steps": [*broker_login(), {"audit": {"event": "post_heima_login", "bearer": "${token}"}}],
    }
    (result,) = await run_cases(tmp_path, case)
    assert result.verdict is Verdict.FAILED
    assert "raw secret" in result.reason and "broker.sqlite3" in result.reason


# ---------------------------------------------------------------------------------------------- TOTP


def test_the_harness_totp_is_rfc_6238_and_agrees_with_the_broker() -> None:
    scope = Scope(Keys(None, None))  # type: ignore[arg-type]
    # RFC 6238 appendix B, SHA-1 secret "12345678901234567890": 94287082 at 59 s (last 6 digits)
    rfc_secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    assert totp_code(scope, {"secret": rfc_secret, "at": 59}) == "287082"
    assert totp_code(scope, {"secret": rfc_secret, "at": 1111111109}) == "081804"
    for at in (0, T - 31, T - 30, T, T + 29, T + 59):
        assert totp_code(scope, {"secret": "JBSWY3DPEHPK3PXP", "at": at}) == totp("JBSWY3DPEHPK3PXP", at)
    with pytest.raises(ExprError):
        totp_code(scope, {"secret": "JBSWY3DPEHPK3PXP"})


async def test_the_totp_step_enrols_and_removes_a_second_factor(tmp_path: Path) -> None:
    connect = {
        "op": "user_connect",
        "token": "${token}",
        "json": {"email": "${email}", "inviteCode": None, "googleCode": "${code}", "userId": "${uid}"},
    }
    case = {
        "id": "totp",
        "needs": ["broker", "broker-internals", "broker-clock", "tee-signing-key"],
        "steps": [
            {"clock": {"target": "broker", "set": T}},
            {"let": {"email": "totp-power@example.com", "code": "123456"}},
            {
                "callback": {"op": "get_account_user_id", "query": {"email": "${email}"}},
                "capture": {"uid": "json.data.userId"},
            },
            {"let": {"pumpx": {"$omni_account": {"type": "pumpx", "value": "${uid}", "client_id": "agentkeys"}}}},
            {
                "let": {
                    "token": {
                        "$mint_jwt": {"claims": {"sub": "${pumpx}", "typ": "access", "exp": T + 60, "aud": "agentkeys"}}
                    }
                }
            },
            {"callback": connect, "expect": {"json": {"data": {"googleAuthCheck": True}}}},
            {
                "totp": {"user_id": "${uid}", "secret": "JBSWY3DPEHPK3PXP"},
                "expect": {"found": True, "enrolled": True, "now": T, "code": totp("JBSWY3DPEHPK3PXP", T)},
                "capture": {"right": "code"},
            },
            {"callback": connect, "expect": {"json": {"data": {"googleAuthCheck": False}}}},
            {"let": {"code": "${right}"}},
            {"callback": connect, "expect": {"json": {"data": {"googleAuthCheck": True}}}},
            {"totp": {"user_id": "${uid}", "remove": True}, "expect": {"found": True, "enrolled": False, "code": None}},
            {"let": {"code": "000000"}},
            {"callback": connect, "expect": {"json": {"data": {"googleAuthCheck": True}}}},
            {"totp": {"user_id": "usr_nobody", "secret": "JBSWY3DPEHPK3PXP"}, "expect": {"found": False}},
        ],
    }
    (result,) = await run_cases(tmp_path, case)
    assert result.verdict is Verdict.PASSED, result.failure_report


def test_a_totp_step_needs_a_secret_or_remove(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="step 1"):
        load_suite(suite_file(tmp_path, {"id": "t", "steps": [{"totp": {"user_id": "u"}}]}))


# ---------------------------------------------------------------------------------------------- base URLs


def test_base_url_forms() -> None:
    root = "http://127.0.0.1:8701/"
    assert base_url(root, "pumpx", "prefix/") == "http://127.0.0.1:8701/pumpx/"
    assert base_url(root, "pumpx", "prefix") == "http://127.0.0.1:8701/pumpx"
    assert base_url(root, "pumpx", "root/") == "http://127.0.0.1:8701/"
    assert base_url(root, "pumpx", "root") == "http://127.0.0.1:8701"
    with pytest.raises(TargetError):
        base_url(root, "pumpx", "elsewhere")


@pytest.mark.parametrize(
    ("form", "path"),
    [("prefix/", "/pumpx/v3/account/post_heima_login"), ("prefix", "/v3/account/post_heima_login"),
     ("root/", "/v3/account/post_heima_login"), ("root", "/v3/account/post_heima_login")],
)  # fmt: skip
async def test_the_receiver_answers_at_its_root_and_under_a_prefix(tmp_path: Path, form: str, path: str) -> None:
    callback = {"api": "pumpx", "op": "post_heima_login", "expect": {"path": path}}
    case = {
        "id": "url",
        "base_urls": {"pumpx": form},
        "steps": [*login_steps(), login_rpc(callback, {"result": {"$any": True}})],
    }
    (result,) = await run_cases(tmp_path, case)
    assert result.verdict is Verdict.PASSED, result.failure_report


async def test_base_urls_need_a_simulator_the_harness_configures(tmp_path: Path) -> None:
    suite = load_suite(
        suite_file(tmp_path, {"id": "url", "base_urls": {"pumpx": "prefix"}, "steps": [{"let": {"a": 1}}]})
    )
    key = tmp_path / "key.pem"
    target = tee_target("sim", "upstream", None)
    from cryptography.hazmat.primitives import serialization

    key.write_bytes(
        target.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    url = tee_target("http://127.0.0.1:9/", "upstream", key)
    harness = Harness(url, broker_target("none"))
    reason = harness.applicability(suite.cases[0])
    assert reason is not None and "in-process simulator" in reason


# ---------------------------------------------------------------------------------------------- scripted failures


@pytest.mark.parametrize(
    "reply",
    [{"status": 503}, {"drop": True}, {"raw": "not json"}, {"json": {"code": 10001, "message": "OK", "data": {}}}],
)
async def test_scripted_failures_reach_the_agentkeys_api_too(tmp_path: Path, reply: dict[str, Any]) -> None:
    steps = login_steps()
    steps[0] = {"let": {"w": {"$wallet": {"kind": "evm"}}}}
    steps[1] = {
        "let": {"account": {"$omni_account": {"type": "evm", "value": "${w.address}", "client_id": "agentkeys"}}}
    }
    steps[2]["rpc"]["params"]["client_id"] = "agentkeys"
    rpc = login_rpc(
        {"api": "agentkeys", "op": "post_heima_login", "reply": reply}, {"error": {"code": {"$type": "integer"}}}
    )
    rpc["rpc"]["params"]["client_id"] = "agentkeys"
    (result,) = await run_cases(tmp_path, {"id": "fail", "steps": [*steps, rpc]})
    assert result.verdict is Verdict.PASSED, result.failure_report
    observed = [e for e in result.exchanges if e.leg == "worker→harness"]
    assert observed and observed[0].request["api"] == "agentkeys"


# ---------------------------------------------------------------------------------------------- the pytest plugin


def test_the_plugin_collects_the_e2e_runs_on_request() -> None:
    suite = str(Path(runner.__file__).with_name("suites") / "tee-eras.yaml")
    main_ids = _collected(suite)
    e2e_ids = _collected(suite, "--conformance-runs", "e2e")
    assert "tee-eras.email.invalid-address.legacy[agentkeys-patch,legacy]" in main_ids
    assert "tee-eras.base-url.root[agentkeys-patch]" in main_ids
    assert "tee-eras.base-url.root[upstream]" in e2e_ids and "tee-eras.base-url.root[upstream]" not in main_ids
    assert "tee-eras.base-url.root[agentkeys-patch,legacy]" in e2e_ids
    assert set(main_ids) < set(e2e_ids)


def _collected(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split("::")[-1] for line in done.stdout.splitlines() if "::" in line]


def test_dev_e2e_runs_every_suite_in_the_legacy_era_too() -> None:
    dev = (Path(__file__).parent.parent / "scripts" / "dev.py").read_text()
    assert '"--tee-error-era",\n            "legacy",' in dev and "reports/agentkeys-patch-legacy" in dev


async def test_scripted_failures_reach_the_mail_api_and_only_while_a_step_asks(tmp_path: Path) -> None:
    request = {
        "within": 0,
        "rpc": {
            "method": "omni_requestEmailVerificationCode",
            "params": {"client_id": "wildmeta", "user_email": "${email}"},
        },
    }
    case = {
        "id": "mail",
        "needs": ["mail"],
        "steps": [
            {"let": {"email": "mail-power@example.org"}},
            {
                **request,
                "callbacks": [{"api": "sendgrid", "op": "mail_send", "reply": {"status": 503}}],
                "expect": {"error": {"code": -32162}},
            },
            {**request, "expect": {"result": None}},
            {"email": {"to": "${email}"}, "expect": {"code": {"$regex": "[0-9]{6}"}}},
        ],
    }
    (result,) = await run_cases(tmp_path, case)
    assert result.verdict is Verdict.PASSED, result.failure_report
    scripted = [e for e in result.exchanges if e.leg == "worker→harness"]
    assert len(scripted) == 1 and scripted[0].request["api"] == "sendgrid"
    assert scripted[0].response["status"] == 503
