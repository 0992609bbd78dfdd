"""Run cases against the chosen targets and record every exchange on every leg.

Legs recorded (the transcript and the sequence diagrams come from them):

* ``client→worker`` — a JSON-RPC call the harness makes as the client (HTTP or WebSocket);
* ``worker→harness`` — a callback the worker made, with the harness's scripted reply, or
  ``worker→broker`` when the harness forwarded it to the broker and relayed the broker's reply;
* ``harness→broker`` — an HTTP call to the broker, or a callback sent as the worker would;
* ``worker→harness (sendgrid)`` / ``(smtp)`` — a verification mail the worker sent to the harness;
* ``harness→broker (internals)`` — what an ``audit`` or ``totp`` step read or wrote in the local
  broker's database (the harness runs the broker in-process and uses its storage directly).

Cases run one after the other; against a URL target they share the one worker, which is why
suites use fresh wallets and addresses in every case.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization

from agentkeys_kit.broker.state import STATE
from agentkeys_kit.broker.storage import store
from agentkeys_kit.conformance.expr import ExprError, Keys, Scope, totp_code
from agentkeys_kit.conformance.fuzz import EDGE_PAYLOADS, generate_payloads
from agentkeys_kit.conformance.mail_sink import Mailbox
from agentkeys_kit.conformance.matchers import Mismatch, match
from agentkeys_kit.conformance.model import Case, Step, Suite
from agentkeys_kit.conformance.parties import OAUTH2_CLIENTS, Parties, PartyAddresses
from agentkeys_kit.conformance.receiver import BROKER_PATHS, CallbackReceiver, CallbackScript
from agentkeys_kit.conformance.targets import (
    BrokerLogin,
    BrokerSession,
    BrokerTarget,
    TeeSession,
    TeeTarget,
    missing_reason,
    start_broker,
    start_tee,
    stop_broker,
)
from agentkeys_kit.conformance.worker_client import transport_problem

DEFAULT_CALLBACK_GRACE = 0.3  # seconds to wait for callbacks still owed after the reply
DEFAULT_EMAIL_WAIT = 5.0
REQUEST_TIMEOUT = 15.0
_VARIABLE = re.compile(r"\$\{([^{}.]+)")


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    NOT_APPLICABLE = "not_applicable"
    EXPECTED_FAILURE = "expected_failure"  # listed as a known deviation, and it did fail
    UNEXPECTED_PASS = "unexpected_pass"  # listed as a known deviation, but it passed: stale list


@dataclass(slots=True)
class Exchange:
    leg: str
    step: int
    summary: str
    request: Any
    response: Any
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "leg": self.leg,
            "step": self.step,
            "summary": self.summary,
            "request": self.request,
            "response": self.response,
            "at": self.at,
        }


@dataclass(slots=True)
class StepResult:
    index: int
    name: str
    passed: bool
    mismatches: list[str] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "passed": self.passed,
            "mismatches": self.mismatches,
            "error": self.error,
            "duration_ms": round(self.duration * 1000, 2),
        }


@dataclass(slots=True)
class CaseResult:
    case: Case
    verdict: Verdict
    reason: str = ""
    steps: list[StepResult] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    failure_report: str = ""  # the failing step as written, with its variables
    duration: float = 0.0
    deviation: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict in (Verdict.PASSED, Verdict.NOT_APPLICABLE, Verdict.EXPECTED_FAILURE)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "suite": self.case.suite,
            "clause": self.case.clause,
            "profile": self.case.profile,
            "only": self.case.only,
            "needs": list(self.case.needs),
            "tags": list(self.case.tags),
            "patch_clause": self.case.patch_clause,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "deviation": self.deviation,
            "duration_ms": round(self.duration * 1000, 2),
            "steps": [step.to_json() for step in self.steps],
            "failure_report": self.failure_report,
            "exchanges": [exchange.to_json() for exchange in self.exchanges],
        }


@dataclass(slots=True)
class RunResult:
    tee: str
    tee_version: str
    broker: str
    started_at: float
    duration: float
    results: list[CaseResult]
    #: the `OE_*` variables the worker needs to reach the harness's parties
    environment: dict[str, str]
    #: "sim" (the harness configured its in-process simulator itself) or "url" (someone else did)
    tee_kind: str = "sim"
    profile: str = ""
    #: what the run was told about the worker (key, mailer, clock), never assumed
    declared: dict[str, str] = field(default_factory=dict)
    #: every party and the URL the worker reaches it at
    served: dict[str, str] = field(default_factory=dict)
    #: the preflight's checks (URL targets): name, ok, detail
    preflight: list[dict[str, Any]] = field(default_factory=list)
    deviations: str = "none"
    #: a URL target that answered ``/_sim/info`` as the kit's simulator: its name, profile and error era
    #: (`preflight.identify_simulator`); empty for a worker and for the in-process simulator
    sim_info: dict[str, str] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        """The target is the kit's simulator (in-process, or an ``omni-sim`` at a URL), not a worker."""
        return self.tee_kind == "sim" or bool(self.sim_info)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    def count(self, verdict: Verdict) -> int:
        return sum(1 for result in self.results if result.verdict is verdict)


class StepFailed(Exception):
    def __init__(self, mismatches: list[str]) -> None:
        super().__init__("; ".join(mismatches))
        self.mismatches = mismatches


def _path_get(value: Any, path: str) -> Any:
    current = value
    for part in path.split("."):
        if part == "":
            continue
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit() and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            raise KeyError(path)
    return current


def _compact(value: Any, limit: int = 400) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


class Harness:
    """Owns the parties and the targets; runs cases one after the other, against one worker.

    Everything it writes (the simulator's keystore, each local broker's database, the pinned
    public key) lives in one temporary directory, removed when the harness closes."""

    def __init__(
        self,
        tee: TeeTarget,
        broker: BrokerTarget,
        deviations: dict[str, str] | None = None,
        deviation_steps: dict[str, int] | None = None,
        *,
        parties: PartyAddresses | None = None,
        deviations_label: str = "none",
    ) -> None:
        self.tee = tee
        self.broker = broker
        self.deviations = deviations or {}
        #: case id → the step (1-based) where the listed deviation makes it fail
        self.deviation_steps = deviation_steps or {}
        self.deviations_label = deviations_label
        self.parties = Parties(parties)
        self.keys = Keys(tee.private_key, tee.public_key)
        self.preflight_checks: list[dict[str, Any]] = []
        #: set by the preflight when the URL target is an omni-sim (`preflight.identify_simulator`)
        self.sim_info: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._workdir: Path | None = None
        self._ids = itertools.count(1)
        self._brokers = itertools.count(1)

    @property
    def receiver(self) -> CallbackReceiver:
        return self.parties.receiver

    @property
    def mailbox(self) -> Mailbox:
        return self.parties.mailbox

    @property
    def capabilities(self) -> set[str]:
        return self.tee.capabilities | self.broker.capabilities

    @property
    def workdir(self) -> Path:
        assert self._workdir is not None, "the harness is not open"
        return self._workdir

    @property
    def key_file(self) -> Path:
        return self.workdir / "tee_jwt_public_key.pem"

    async def __aenter__(self) -> Harness:
        self._workdir = Path(tempfile.mkdtemp(prefix="conformance-"))
        try:
            if self.tee.kind == "sim":
                self.tee.local_dir = self._workdir / "sim"
            self.key_file.write_bytes(
                self.tee.public_key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            await self.parties.start()
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.parties.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)  # the simulator's keys are in it
            self._workdir = None

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the harness is not open"
        return self._session

    def addresses(self) -> dict[str, str]:
        """What a worker must be configured with to call this harness (for its declared mailer)."""
        if self.tee.kind == "sim":
            return self.parties.worker_env("sendgrid", oauth2_provider=True)
        return self.parties.worker_env(self.tee.mailer, oauth2_provider=self.tee.oauth2_provider)

    # ------------------------------------------------------------------ running

    async def run(self, suites: list[Suite], *, on_result: Callable[[CaseResult], None] | None = None) -> RunResult:
        started = time.time()
        results = []
        for suite in suites:
            for case in suite.cases:
                result = await self.run_case(case)
                results.append(result)
                if on_result is not None:
                    on_result(result)
        version = self.tee.version
        if self.sim_info:
            version = "omni_sim, the kit's simulator (it answers /_sim/info; no version RPC)"
        return RunResult(
            tee=self.tee.label,
            tee_version=version,
            broker=self.broker.label,
            started_at=started,
            duration=time.time() - started,
            results=results,
            environment=self.addresses(),
            tee_kind=self.tee.kind,
            profile=self.tee.profile,
            declared=self.tee.declared(),
            served=self.parties.served(),
            preflight=list(self.preflight_checks),
            deviations=self.deviations_label,
            sim_info=dict(self.sim_info),
        )

    def applicability(self, case: Case) -> str | None:
        if case.only is not None and case.only != self.tee.profile:
            return f"only for {case.only} targets"
        if case.era is not None and case.era != self.tee.error_era:
            return f"only for targets of the {case.era} error era (this one follows {self.tee.error_era})"
        needs = list(case.needs) + (["sim-config"] if case.base_urls and "sim-config" not in case.needs else [])
        missing = [need for need in needs if need not in self.capabilities]
        return "; ".join(missing_reason(need, self.tee, self.broker) for need in missing) if missing else None

    def new_broker_dir(self) -> Path:
        return self.workdir / f"broker-{next(self._brokers)}"

    async def run_case(self, case: Case) -> CaseResult:
        started = time.monotonic()
        deviation = self.deviations.get(case.id)
        not_applicable = self.applicability(case)
        if not_applicable is not None:
            return CaseResult(case, Verdict.NOT_APPLICABLE, not_applicable, deviation=deviation)
        run = _CaseRun(self, case)
        try:
            await run.execute()
        finally:
            await run.teardown()
        verdict = run.verdict
        mismatch_note = ""
        if deviation is not None:
            verdict, mismatch_note = self._judge_deviation(case.id, verdict, run.steps)
        result = CaseResult(
            case,
            verdict,
            run.reason,
            run.steps,
            run.exchanges,
            run.failure_report,
            time.monotonic() - started,
            deviation,
        )
        if verdict is Verdict.UNEXPECTED_PASS:
            result.reason = f"listed as a known deviation ({deviation}) but it passed: update the deviation file"
        elif mismatch_note:
            result.reason = f"{mismatch_note}; {result.reason}"
        return result

    def _judge_deviation(self, case_id: str, verdict: Verdict, steps: list[StepResult]) -> tuple[Verdict, str]:
        """A listed case must fail, and fail where the list says; an error is never excused."""
        if verdict is Verdict.PASSED:
            return Verdict.UNEXPECTED_PASS, ""
        if verdict is not Verdict.FAILED:
            return verdict, ""
        expected_step = self.deviation_steps.get(case_id)
        failed_step = next((step.index + 1 for step in steps if not step.passed), None)
        if expected_step is not None and failed_step != expected_step:
            return Verdict.FAILED, f"the deviation expects a failure at step {expected_step}, not at step {failed_step}"
        return Verdict.EXPECTED_FAILURE, ""


class _CaseRun:
    """The state of one case while it runs."""

    def __init__(self, harness: Harness, case: Case) -> None:
        self.h = harness
        self.case = case
        self.scope = Scope(harness.keys, google=harness.parties.google)
        self.steps: list[StepResult] = []
        self.exchanges: list[Exchange] = []
        self.verdict = Verdict.PASSED
        self.reason = ""
        self.failure_report = ""
        self.tee: TeeSession | None = None
        self.broker: BrokerSession | None = None
        self._mail_baseline = 0

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.h.http

    async def setup(self) -> None:
        self.h.receiver.observed.clear()
        self._mail_baseline = len(self.h.mailbox.mails())
        base_urls = dict(self.case.base_urls)
        # an API whose base URL is not the prefix with its slash is called at the receiver's root
        at_root = [api for api, form in base_urls.items() if form != "prefix/" and api != "wildmeta"]
        self.h.receiver.root_api = at_root[0] if len(at_root) == 1 else None
        self.tee = await start_tee(self.h.tee, self.h.parties, base_urls)
        if "broker" in self.case.needs:  # only cases that say so get a broker (and pay its start)
            login = BrokerLogin(
                backend="local" if "broker-login-local" in self.case.needs else "heima",
                worker_url=self.tee.url,
                smtp_url=self.h.parties.smtp.url,
            )
            self.broker = await start_broker(self.h.broker, self.h.key_file, self.h.new_broker_dir(), login)
        self.h.receiver.broker_url = self.broker.url if self.broker else None
        self.scope.values.update(
            {
                "tee": {**self.tee.info(), "profile": self.h.tee.profile, "error_era": self.h.tee.error_era},
                "broker": {"url": self.broker.url if self.broker else None},
                "case": {"id": self.case.id},
                # the OAuth2 clients registered at the fake Google for each worker client
                "oauth2": {
                    "redirect_uri": self.h.parties.oauth2_redirect_uri,
                    **{client: oauth_id for client, (oauth_id, _) in OAUTH2_CLIENTS.items()},
                },
            }
        )

    async def teardown(self) -> None:
        self.h.receiver.close_window()
        self.h.receiver.root_api = None
        if self.tee is not None and self.tee.sim is not None:
            await self.tee.sim.close()
        await stop_broker(self.broker)

    async def execute(self) -> None:
        try:
            await self.setup()
        except Exception as exc:  # a target that does not start is an error of the run, not a pass
            self.verdict, self.reason = Verdict.ERROR, f"targets did not start: {transport_problem(exc)}"
            return
        for step in self.case.steps:
            started = time.monotonic()
            try:
                await self.run_step(step)
            except StepFailed as failed:
                self._fail(step, Verdict.FAILED, failed.mismatches, None, started)
                return
            except (ExprError, KeyError) as exc:
                self._fail(step, Verdict.ERROR, [], f"suite error: {exc}", started)
                return
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = transport_problem(exc, REQUEST_TIMEOUT)
                self._fail(step, Verdict.FAILED, [f"transport: {problem}"], None, started)
                return
            self.steps.append(StepResult(step.index, step.name, True, duration=time.monotonic() - started))
        unexpected = [o for o in self.h.receiver.observed if o.expectation is None]
        if unexpected:
            self.verdict = Verdict.FAILED
            self.reason = "unexpected callbacks: " + ", ".join(f"{o.method} {o.path}" for o in unexpected)

    def _fail(self, step: Step, verdict: Verdict, mismatches: list[str], error: str | None, started: float) -> None:
        self.verdict = verdict
        self.reason = f"step {step.index + 1} ({step.name}): " + (error or "; ".join(mismatches[:3]))
        self.steps.append(StepResult(step.index, step.name, False, mismatches, error, time.monotonic() - started))
        self.failure_report = self._describe(step, mismatches, error)

    def _describe(self, step: Step, mismatches: list[str], error: str | None) -> str:
        """Tavern-style: the step as written, then every variable it uses with its value."""
        written = yaml.safe_dump([step.spec], sort_keys=False, allow_unicode=True, width=100).rstrip()
        names = sorted(set(_VARIABLE.findall(json.dumps(step.spec))))
        variables = []
        for name in names:
            value = self.scope.values.get(name, "<unset>")
            text = json.dumps(value, ensure_ascii=False)
            variables.append(f"  {name} = {text if len(text) < 300 else text[:297] + '...'}")
        lines = [f"{self.case.source} :: {self.case.id} :: step {step.index + 1}", written]
        if variables:
            lines += ["variables:", *variables]
        lines += ["problems:", *(f"  - {m}" for m in mismatches)] if mismatches else []
        if error:
            lines.append(f"error: {error}")
        reply = self._error_reply(step)
        if reply:
            lines.append(reply)
        return "\n".join(lines)

    def _error_reply(self, step: Step) -> str | None:
        """The error the step got back, when it got one: often the cause of the failure."""
        for exchange in reversed(self.exchanges):
            if exchange.step != step.index:
                continue
            response = exchange.response if isinstance(exchange.response, dict) else {}
            if exchange.leg == "client→worker":
                status = response.get("http_status", response.get("status"))
                body = response.get("body") if status is not None else response
                if isinstance(body, dict) and "error" in body:
                    return f"the worker answered: {_compact(body['error'])}"
                if isinstance(status, int) and status >= 400:
                    return f"the worker answered HTTP {status}: {_compact(body)}"
            elif exchange.leg.startswith("harness→broker"):
                status = response.get("status")
                if isinstance(status, int) and status >= 400:
                    return f"the broker answered HTTP {status}: {_compact(response.get('body'))}"
        return None

    # ------------------------------------------------------------------ steps

    async def run_step(self, step: Step) -> None:
        handler = getattr(self, f"step_{step.kind}")
        view = await handler(step)  # every step kind gives a view; a JSON null answer is matched too
        problems: list[Mismatch] = []
        if "expect" in step.spec:
            problems = match(self.scope.evaluate(step.spec["expect"]), view, self.h.tee.public_key)
        if problems:
            raise StepFailed([str(p) for p in problems])
        self._capture(step.spec.get("capture", {}), view)

    def _capture(self, capture: dict[str, str], view: Any) -> None:
        for name, path in capture.items():
            try:
                self.scope.values[name] = _path_get(view, path)
            except KeyError:
                raise StepFailed([f"capture {name}: nothing at {path!r}"]) from None

    async def step_let(self, step: Step) -> dict[str, Any]:
        """Bind values; the step's `expect` (if any) then checks them, e.g. that two legs agree."""
        bound = {}
        for name, value in step.spec["let"].items():
            bound[name] = self.scope.values[name] = self.scope.evaluate(value)
        return bound

    async def step_rpc(self, step: Step) -> Any:
        spec = self.scope.evaluate({k: v for k, v in step.spec["rpc"].items()})
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": spec.get("id", next(self.h._ids)), "method": spec["method"]}
        if "params" in spec:
            request["params"] = spec["params"]
        headers = dict(spec.get("headers") or {})
        if spec.get("token") is not None:
            headers["Authorization"] = f"Bearer {spec['token']}"
        body = json.dumps(request, ensure_ascii=False).encode()
        transport = spec.get("transport", "http")
        record = {"transport": transport, "headers": headers, "json": request}
        return await self._with_callbacks(
            step, lambda: self._send_rpc(body, headers, transport), f"{spec['method']}", record
        )

    async def _send_rpc(self, body: bytes, headers: dict[str, str], transport: str) -> Any:
        assert self.tee is not None
        if transport == "ws":
            async with self.http.ws_connect(self.tee.ws_url, headers=headers) as ws:
                await ws.send_str(body.decode())
                message = await ws.receive(timeout=REQUEST_TIMEOUT)
                return _json_or_text(message.data.encode() if isinstance(message.data, str) else b"")
        async with self.http.post(
            self.tee.url, data=body, headers={"Content-Type": "application/json", **headers}
        ) as response:
            raw = await response.read()
        answer = _json_or_text(raw)
        if response.status != 200:
            return {"http_status": response.status, "body": answer}
        return answer

    async def step_raw(self, step: Step) -> Any:
        spec = self.scope.evaluate(step.spec["raw"])
        assert self.tee is not None
        tee = self.tee

        body = spec["body"].encode("utf-8", errors="surrogateescape")
        if "pad_to" in spec:
            body += b" " * (int(spec["pad_to"]) - len(body))

        async def send() -> Any:
            if "pad_to" in spec:
                # A large body goes over a connection of its own that is closed after the answer: a
                # server that answers before reading it all (413) would otherwise wait, lingering, for
                # the rest on a kept-alive connection (aiohttp: 10 s, delaying the simulator's close).
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            else:
                session = self.http
            try:
                async with session.request(
                    spec.get("method", "POST"),
                    tee.url,
                    data=body,
                    headers={"Content-Type": spec.get("content_type", "application/json")},
                ) as response:
                    raw = await response.read()
            finally:
                if session is not self.http:
                    await session.close()
                    await asyncio.sleep(0.1)  # time for the server to see the connection end
            return {"status": response.status, "body": _json_or_text(raw) if raw else None}

        record = {
            "transport": "http",
            "content_type": spec.get("content_type", "application/json"),
            "body": spec["body"],
        }
        if "pad_to" in spec:  # the padding is not written out in the reports
            record["padded_with_spaces_to_bytes"] = len(body)
        return await self._with_callbacks(step, send, "raw body", record)

    async def _with_callbacks(
        self, step: Step, send: Callable[[], Any], summary: str, request_record: dict[str, Any]
    ) -> Any:
        # How to answer is fixed before the call; what to expect is evaluated when each callback is
        # checked, in order, so an expectation may use a value captured from an earlier callback.
        expectations = list(step.spec.get("callbacks", []))
        scripts = [
            CallbackScript(
                str(self.scope.evaluate(cb.get("api", "any"))),
                cb["op"],
                int(cb.get("times", 1)),
                self.scope.evaluate(cb.get("reply") or {}),
            )
            for cb in expectations
        ]
        receiver = self.h.receiver
        already = len(receiver.observed)
        receiver.open_window(scripts)
        try:
            response = await asyncio.wait_for(send(), REQUEST_TIMEOUT)
            owed = sum(script.times for script in scripts)
            taken = sum(len(script.taken) for script in scripts)
            forbids = any(script.times == 0 for script in scripts)
            # Callbacks still owed get until `within` (default 2 s) to arrive; a step that says a
            # callback must NOT happen waits `within` (default 0.3 s) for one that should not come.
            if taken < owed:
                await receiver.wait_for(already + owed, time.monotonic() + float(step.spec.get("within", 2.0)))
            elif forbids:
                grace = float(step.spec.get("within", DEFAULT_CALLBACK_GRACE))
                await receiver.wait_for(already + owed + 1, time.monotonic() + grace)
        finally:
            receiver.close_window()
        self.exchanges.append(Exchange("client→worker", step.index, summary, request_record, response))
        for observed in receiver.observed[already:]:
            leg = "worker→broker" if observed.forwarded_to else "worker→harness"
            self.exchanges.append(
                Exchange(
                    leg,
                    step.index,
                    f"{observed.method} {observed.path}",
                    observed.request_view(),
                    observed.response_view(),
                )
            )
        problems = self._check_callbacks(expectations, scripts, receiver.observed[already:])
        if problems:
            raise StepFailed(problems)
        return response

    def _check_callbacks(
        self, expectations: list[dict[str, Any]], scripts: list[CallbackScript], observed: list[Any]
    ) -> list[str]:
        problems: list[str] = []
        for number, (expectation, script) in enumerate(zip(expectations, scripts, strict=True), start=1):
            label = f"callback {number} ({expectation.get('api', 'any')} {expectation['op']})"
            if len(script.taken) != script.times:
                problems.append(f"{label}: expected {script.times} call(s), the worker made {len(script.taken)}")
            for call in script.taken:
                view = {"request": call.request_view(), "response": call.response_view()}
                wanted = self.scope.evaluate(expectation.get("expect", {}))
                for mismatch in match({"request": wanted}, view, self.h.tee.public_key):
                    problems.append(f"{label}: {mismatch}")
                if not problems:
                    for name, path in expectation.get("capture", {}).items():
                        try:
                            self.scope.values[name] = _path_get(view, path)
                        except KeyError:
                            problems.append(f"{label}: capture {name}: nothing at {path!r}")
        for call in observed:
            if call.expectation is None:
                problems.append(f"unexpected callback {call.method} {call.path} (api {call.api}, op {call.op})")
        return problems

    async def step_broker(self, step: Step) -> Any:
        if self.broker is None:
            raise StepFailed(["no broker target"])
        spec = self.scope.evaluate(step.spec["broker"])
        headers = dict(spec.get("headers") or {})
        if spec.get("token") is not None:
            headers["Authorization"] = f"Bearer {spec['token']}"
        return await self._broker_request(step, spec["method"], spec["path"].lstrip("/"), headers, spec)

    async def step_callback(self, step: Step) -> Any:
        if self.broker is None:
            raise StepFailed(["no broker target"])
        spec = self.scope.evaluate(step.spec["callback"])
        op = spec["op"]
        method = "GET" if op == "get_account_user_id" else "POST"
        headers = {"X-Language": "en", **(spec.get("headers") or {})}
        if spec.get("token") is not None:
            headers["Authorization"] = f"Bearer {spec['token']}"
        path = spec.get("prefix", "").strip("/")
        path = f"{path}/{BROKER_PATHS[op]}" if path else BROKER_PATHS[op]
        return await self._broker_request(step, method, path, headers, spec, as_worker=True)

    async def _broker_request(
        self,
        step: Step,
        method: str,
        path: str,
        headers: dict[str, str],
        spec: dict[str, Any],
        *,
        as_worker: bool = False,
    ) -> Any:
        assert self.broker is not None
        data: bytes | None = None
        if "json" in spec:
            data = json.dumps(spec["json"], separators=(",", ":"), ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json")
        elif "body" in spec:
            data = str(spec["body"]).encode()
        async with self.http.request(
            method, self.broker.url + path, headers=headers, params=spec.get("query"), data=data
        ) as response:
            raw = await response.read()
        view = {
            "status": response.status,
            "json": _json_or_text(raw) if raw else None,
            "headers": dict(response.headers),
        }
        leg = "harness→broker (as worker)" if as_worker else "harness→broker"
        request = {"method": method, "path": "/" + path, "headers": headers, "body": spec.get("json", spec.get("body"))}
        self.exchanges.append(
            Exchange(leg, step.index, f"{method} /{path}", request, {"status": view["status"], "body": view["json"]})
        )
        return view

    async def step_email(self, step: Step) -> Any:
        spec = self.scope.evaluate(step.spec["email"])
        within = float(step.spec.get("within", DEFAULT_EMAIL_WAIT))
        mail = await self.h.mailbox.wait_for(spec["to"], self._mail_baseline, within)
        if mail is None:
            raise StepFailed([f"no e-mail to {spec['to']} within {within} s"])
        self._mail_baseline = self.h.mailbox.mails().index(mail) + 1
        view = mail.to_json()
        self.exchanges.append(
            Exchange(f"worker→harness ({mail.via})", step.index, f"mail to {spec['to']}", {"to": mail.to}, view)
        )
        return view

    async def step_clock(self, step: Step) -> Any:
        spec = self.scope.evaluate(step.spec["clock"])
        at = spec.get("set")
        if at is not None and (isinstance(at, bool) or not isinstance(at, int) or at < 0):
            raise ExprError(f"clock set: {at!r} is not a unix time")
        if spec.get("target", "tee") == "broker":
            if self.broker is None:
                raise StepFailed(["no broker target"])
            if at is not None:
                self.broker.set(at)
            self.broker.advance(spec.get("advance", 0))
            view = {"status": 200, "json": {"now": int(self.broker.now())}}
            self.exchanges.append(Exchange("harness→broker (internals)", step.index, "clock", spec, view["json"]))
            return view
        assert self.tee is not None
        body = {key: spec[key] for key in ("set", "advance") if key in spec}
        async with self.http.post(self.tee.url + "_sim/clock", json=body) as response:
            return {"status": response.status, "json": await response.json()}

    def _local_broker(self, what: str) -> Any:
        """The in-process broker's state (database, clock), for the steps that read or write it."""
        if self.broker is None or self.broker.app is None or STATE not in self.broker.app:
            raise StepFailed([f"{what}: needs the local broker (--broker local)"])
        return self.broker.app[STATE]

    async def step_audit(self, step: Step) -> Any:
        spec = self.scope.evaluate(step.spec["audit"])
        state = self._local_broker("audit")
        await state.refusals.flush()  # refusals counted rather than written are written now
        rows = list(reversed(await state.db.run(store.audit_rows, 100_000)))  # oldest first
        fields = ("event", "outcome", "client_id", "omni_account", "detail")
        wanted = {key: spec[key] for key in fields if key in spec}
        if "bearer" in spec:
            wanted["bearer_sha256"] = hashlib.sha256(str(spec["bearer"]).encode()).hexdigest()
        chosen = [
            {key: value for key, value in row.items() if key not in ("id", "occurred_at")}
            for row in rows
            if all(row.get(key) == value for key, value in wanted.items())
        ]
        secrets = [str(value) for value in [spec.get("bearer"), *spec.get("secrets", [])] if value]
        leaks = self._stored_secrets(secrets)
        view = {"count": len(chosen), "rows": chosen}
        self.exchanges.append(Exchange("harness→broker (internals)", step.index, "audit rows", {"match": wanted}, view))
        if leaks:
            raise StepFailed(leaks)
        return view

    def _stored_secrets(self, secrets: list[str]) -> list[str]:
        """Where the raw text of a secret is stored in the local broker's database files."""
        assert self.broker is not None and self.broker.directory is not None
        problems = []
        for path in sorted(self.broker.directory.glob("broker.sqlite3*")):  # the database, its WAL
            content = path.read_bytes()
            for secret in secrets:
                if secret.encode() in content:
                    problems.append(f"a raw secret ({secret[:12]}…) is stored in {path.name}")
        return problems

    async def step_totp(self, step: Step) -> Any:
        spec = self.scope.evaluate(step.spec["totp"])
        state = self._local_broker("totp")
        secret = None if spec.get("remove") else str(spec["secret"])
        found = await state.db.run(store.set_totp_secret, str(spec["user_id"]), secret)
        now = state.now()
        view = {
            "found": bool(found),
            "enrolled": bool(found) and secret is not None,
            "now": now,
            "code": totp_code(self.scope, {"secret": secret, "at": now}) if secret else None,
        }
        record = {"user_id": spec["user_id"], "action": "remove" if secret is None else "enrol"}
        self.exchanges.append(Exchange("harness→broker (internals)", step.index, "second factor", record, view))
        return view

    async def step_fuzz(self, step: Step) -> Any:
        spec = self.scope.evaluate(step.spec["fuzz"])
        generated = generate_payloads(int(spec["examples"]), int(spec.get("seed", 0)))
        payloads = generated + EDGE_PAYLOADS
        failures: list[str] = []
        for payload in payloads:
            if spec["target"] == "tee":
                problem = await self._fuzz_tee(spec.get("method", "omni_userLogin"), payload)
            else:
                problem = await self._fuzz_broker(spec.get("op", "post_heima_login"), payload, spec.get("token"))
            if problem:
                failures.append(f"{problem} for {json.dumps(payload)[:120]}")
        self.exchanges.append(
            Exchange("client→worker" if spec["target"] == "tee" else "harness→broker (as worker)", step.index,
                     f"{len(payloads)} generated payloads", {"examples": len(payloads)}, {"failures": len(failures)})
        )  # fmt: skip
        if failures:
            raise StepFailed(failures[:10])
        return {"examples": len(generated), "edge_cases": len(EDGE_PAYLOADS), "failures": 0}

    async def _fuzz_tee(self, method: str, params: Any) -> str | None:
        assert self.tee is not None
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.http.post(self.tee.url, json=request) as response:
            raw = await response.read()
        if response.status >= 500:
            return f"HTTP {response.status}"
        answer = _json_or_text(raw)
        if not isinstance(answer, dict) or ("result" in answer) == ("error" in answer):
            return f"malformed answer {str(answer)[:80]}"
        if answer.get("jsonrpc") != "2.0" or answer.get("id") != 1:
            return f"answer does not echo jsonrpc 2.0 and id 1: {str(answer)[:80]}"
        if "error" in answer and not (
            isinstance(answer["error"], dict) and isinstance(answer["error"].get("code"), int)
        ):
            return "error without an integer code"
        return None

    async def _fuzz_broker(self, op: str, body: Any, token: str | None) -> str | None:
        assert self.broker is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(self.broker.url + BROKER_PATHS[op], json=body, headers=headers) as response:
            raw = await response.read()
        if response.status >= 500:
            return f"HTTP {response.status}"
        answer = _json_or_text(raw)
        if not isinstance(answer, dict) or not {"code", "message", "data"} <= answer.keys():
            return f"not an envelope: {str(answer)[:80]}"
        return None
