"""Reports of one run: console lines and summary, and the files ``write_reports`` leaves in a directory.

* ``transcript.json`` — every exchange of every case, as recorded (the raw evidence);
* ``junit.xml`` — one ``<testcase>`` per case, for CI dashboards;
* ``report.md`` — for a reviewer who has never seen the project, top down: the verdict and the
  stamp; what the agentkeys patch must do, clause by clause as `omni_sim.profiles.PATCH_CLAUSES`
  numbers them, each with its cases; every case that needs attention with the failing step, the
  exchanges and a Mermaid sequence diagram of the legs; then everything else — known deviations
  collapsed, not-applicable cases grouped by reason, every suite's clauses, how the worker was
  reached (what the preflight verified, never a claim about the worker's configuration) and how
  to read the report;
* ``summary.txt`` — the console summary and one console line per case.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agentkeys_kit.conformance.runner import CaseResult, Exchange, RunResult, Verdict
from agentkeys_kit.conformance.targets import KIT_VERSION
from agentkeys_kit.omni_sim.profiles import PATCH_CLAUSES

KIT_NAME = "agentkeys-heima-kit"

SYMBOLS = {
    Verdict.PASSED: "PASS",
    Verdict.FAILED: "FAIL",
    Verdict.ERROR: "ERROR",
    Verdict.NOT_APPLICABLE: "N/A ",
    Verdict.EXPECTED_FAILURE: "XFAIL",
    Verdict.UNEXPECTED_PASS: "XPASS",
}

VERDICT_WORDS = {
    Verdict.PASSED: "passed",
    Verdict.FAILED: "FAILED",
    Verdict.ERROR: "ERROR",
    Verdict.NOT_APPLICABLE: "not applicable",
    Verdict.EXPECTED_FAILURE: "known deviation (failed as listed)",
    Verdict.UNEXPECTED_PASS: "UNEXPECTED PASS (listed as a deviation)",
}

SUMMARY_WORDS = {
    Verdict.PASSED: "passed",
    Verdict.FAILED: "failed",
    Verdict.ERROR: "error",
    Verdict.NOT_APPLICABLE: "not applicable",
    Verdict.EXPECTED_FAILURE: "known deviation",
    Verdict.UNEXPECTED_PASS: "unexpected pass",
}

ICONS = {
    Verdict.PASSED: "✅",
    Verdict.FAILED: "❌",
    Verdict.ERROR: "💥",
    Verdict.NOT_APPLICABLE: "➖",
    Verdict.EXPECTED_FAILURE: "🟡",
    Verdict.UNEXPECTED_PASS: "⚠️",
}

# Headers every HTTP client adds; they say nothing about the contract.
NOISE_HEADERS = frozenset({"host", "accept", "accept-encoding", "content-length", "user-agent", "connection", "date"})

# "Bearer Bearer <jwt>" and "bearer <jwt>" too: the bearer-stripping cases send odd schemes on purpose
#: a JWT, bare or after an authorization scheme (``Bearer``, or any other word: ``Token …``)
_JWT = re.compile(r"^((?:[A-Za-z][A-Za-z0-9_-]* )*)([A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)$")
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9 _./@=,()+\-]+")


# ---------------------------------------------------------------------------------------------- console


def console_line(result: CaseResult) -> str:
    line = f"{SYMBOLS[result.verdict]:<5} {result.case.id}"
    if result.verdict is not Verdict.PASSED and result.reason:
        line += f"  — {result.reason}"
    if result.verdict in (Verdict.FAILED, Verdict.ERROR) and result.failure_report:
        line += "\n" + "\n".join("      " + row for row in result.failure_report.splitlines())
    return line


#: the plural of a summary word that has one
SUMMARY_PLURALS = {
    Verdict.ERROR: "errors",
    Verdict.EXPECTED_FAILURE: "known deviations",
    Verdict.UNEXPECTED_PASS: "unexpected passes",
}


def summary_count(run: RunResult, verdict: Verdict) -> str:
    count = run.count(verdict)
    return f"{count} {SUMMARY_PLURALS.get(verdict, SUMMARY_WORDS[verdict]) if count != 1 else SUMMARY_WORDS[verdict]}"


def console_summary(run: RunResult) -> str:
    counts = ", ".join(summary_count(run, v) for v in Verdict if run.count(v))
    verdict = "OK" if run.ok else "NOT OK"
    return f"\n{verdict}: {len(run.results)} cases in {run.duration:.1f}s — {counts}"


def summary_text(run: RunResult) -> str:
    lines = [console_summary(run).strip(), ""]
    lines += [console_line(result) for result in run.results]
    return "\n".join(lines) + "\n"


def transcript(run: RunResult) -> dict[str, object]:
    return {
        "tee": run.tee,
        "tee_version": run.tee_version,
        "broker": run.broker,
        "kit_version": KIT_VERSION,
        "started_at": run.started_at,
        "duration_s": round(run.duration, 3),
        "ok": run.ok,
        "tee_kind": run.tee_kind,
        "profile": run.profile,
        "declared": run.declared,
        "deviations": run.deviations,
        "served": run.served,
        "environment": run.environment,
        "preflight": run.preflight,
        "sim_info": run.sim_info,
        "cases": [result.to_json() for result in run.results],
    }


def write_text(path: Path, text: str) -> None:
    """UTF-8; a lone surrogate (raw bodies are sent with surrogateescape) is written as a backslash
    escape — inside a JSON string that is a valid ``\\u`` escape — instead of failing the run."""
    path.write_text(text, encoding="utf-8", errors="backslashreplace")


def write_reports(run: RunResult, directory: Path, extra_sections: Sequence[Section] = ()) -> list[Path]:
    """Every report file; `extra_sections` go into report.md (`markdown_report`)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    path = directory / "transcript.json"
    write_text(path, json.dumps(transcript(run), indent=2, ensure_ascii=False, default=str))
    written.append(path)

    path = directory / "junit.xml"
    path.write_bytes(junit_xml(run))
    ET.parse(path)  # noqa: S314 — our own output: it must parse back, or the run says so loudly
    written.append(path)

    path = directory / "report.md"
    write_text(path, markdown_report(run, extra_sections))
    written.append(path)

    path = directory / "summary.txt"
    write_text(path, summary_text(run))
    written.append(path)
    return written


# ---------------------------------------------------------------------------------------------- shared


def run_date(run: RunResult) -> str:
    return datetime.fromtimestamp(run.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def counts_text(run: RunResult) -> str:
    return ", ".join(f"{run.count(v)} {VERDICT_WORDS[v]}" for v in Verdict if run.count(v)) or "no cases"


def overall_verdict(run: RunResult) -> str:
    """One line. A PASS names the declared profile, the counts and what it means for the patch:
    against an upstream target every agentkeys-patch case is a known deviation, and "PASS" alone
    reads as "this worker does what AgentKeys needs"."""
    if not run.ok:
        attention = sum(1 for result in run.results if not result.ok)
        return f"FAIL — {attention} case(s) need attention"
    if not run.profile:
        return "PASS — every applicable case passed (known deviations failed as listed)"
    counts = ", ".join(
        f"{count} {word}"
        for verdict, word in (
            (Verdict.PASSED, "passed"),
            (Verdict.NOT_APPLICABLE, "not applicable"),
            (
                Verdict.EXPECTED_FAILURE,
                "known deviations" if run.count(Verdict.EXPECTED_FAILURE) != 1 else "known deviation",
            ),
        )
        if (count := run.count(verdict))
    )
    return f"PASS for the declared profile `{run.profile}` ({counts or 'no cases'}){_patch_outcome(run)}"


def _patch_outcome(run: RunResult) -> str:
    patch = [r for r in run.results if r.case.is_patch_clause and r.verdict is not Verdict.NOT_APPLICABLE]
    if not patch:
        return ""
    passed = sum(1 for r in patch if r.verdict is Verdict.PASSED)
    if passed == len(patch):
        return f": all {len(patch)} agentkeys-patch cases passed"
    if passed:
        return f": {passed} of {len(patch)} agentkeys-patch cases passed, the others are known deviations"
    where = "this simulator profile" if run.simulated else "this worker"
    return f": 0 of {len(patch)} agentkeys-patch cases passed — the agentkeys patch is not in {where}"


def target_description(run: RunResult) -> str:
    """What was tested, in words: the kit's simulator (in-process or an ``omni-sim`` at a URL) or a worker."""
    if run.tee_kind == "sim":
        return f"the kit's simulator omni-sim, started in-process by the harness (profile `{run.profile or '?'}`)"
    url = run.tee.split(" ")[0]
    if run.sim_info:
        return (
            f"the kit's simulator omni-sim at {url} (profile `{run.sim_info.get('profile', '?')}`; "
            f"it answers `{url}_sim/info`), not a Heima worker"
        )
    return f"a worker at {url}"


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and claims of a compact JWS, without any check; None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    decoded: list[dict[str, Any]] = []
    for part in parts[:2]:
        try:
            value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        decoded.append(value)
    return decoded[0], decoded[1]


def split_bearer_jwt(text: str) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """``(prefix, header, claims)`` when `text` is a JWT, or one after scheme words (``Bearer <JWT>``)."""
    found = _JWT.match(text)
    if found is None:
        return None
    decoded = decode_jwt(found.group(2))
    if decoded is None:
        return None
    return found.group(1) or "", decoded[0], decoded[1]


def _clean_headers(headers: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in headers.items() if name.lower() not in NOISE_HEADERS}


def without_noise(value: Any) -> Any:
    """Drop what every HTTP client adds and what is recorded twice (``body_text`` next to ``body``)."""
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if key == "headers" and isinstance(item, dict):
                cleaned[key] = without_noise(_clean_headers(item))
            elif key == "body_text" and value.get("body") is not None:
                continue
            else:
                cleaned[key] = without_noise(item)
        return cleaned
    if isinstance(value, list):
        return [without_noise(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------- JUnit


def _xml_text(text: object) -> str:
    """XML 1.0 cannot carry control characters or lone surrogates (fuzz payloads have both)."""
    return _XML_ILLEGAL.sub(lambda found: f"\\x{{{ord(found.group()):x}}}", str(text))


def _failure_text(result: CaseResult) -> str:
    parts = [result.reason] if result.reason else []
    if result.failure_report:
        parts.append(result.failure_report)
    if result.exchanges:
        parts.append("exchanges:\n" + "\n".join(f"  step {e.step + 1} {e.leg} {e.summary}" for e in result.exchanges))
    return "\n\n".join(parts)


def junit_xml(run: RunResult) -> bytes:
    """JUnit XML: one testsuite per suite, one testcase per case (classname = suite, name = case id).

    FAILED and UNEXPECTED_PASS are failures, ERROR an error, NOT_APPLICABLE skipped; an expected
    failure (a listed known deviation that did fail) is skipped with the deviation as its message
    (``type="known_deviation"``, and a ``known_deviation`` property), never a pass.
    """
    timestamp = datetime.fromtimestamp(run.started_at, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element("testsuites", {"name": "agentkeys-heima conformance", "timestamp": timestamp})
    suites: dict[str, list[CaseResult]] = {}
    for result in run.results:
        suites.setdefault(result.case.suite, []).append(result)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for name, results in suites.items():
        counts = junit_counts(results)
        suite_time = sum(r.duration for r in results)
        total_time += suite_time
        for key, count in counts.items():
            totals[key] += count
        element = ET.SubElement(
            root,
            "testsuite",
            {
                "name": _xml_text(name),
                **{key: str(value) for key, value in counts.items()},
                "time": f"{suite_time:.3f}",
                "timestamp": timestamp,
            },
        )
        properties = ET.SubElement(element, "properties")
        stamp = {
            "tee": run.tee,
            "tee_version": run.tee_version,
            "broker": run.broker,
            "kit": KIT_NAME,
            "kit_version": KIT_VERSION,
            **{f"environment.{key}": value for key, value in run.environment.items()},
        }
        for key, text in stamp.items():
            ET.SubElement(properties, "property", {"name": _xml_text(key), "value": _xml_text(text)})
        for result in results:
            _junit_case(element, result)
    root.set("time", f"{total_time:.3f}")
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def _junit_case(parent: ET.Element, result: CaseResult) -> None:
    case = ET.SubElement(
        parent,
        "testcase",
        {
            "classname": _xml_text(result.case.suite),
            "name": _xml_text(result.case.id),
            "time": f"{result.duration:.3f}",
        },
    )
    clause = ET.SubElement(case, "properties")
    ET.SubElement(clause, "property", {"name": "clause", "value": _xml_text(result.case.clause)})
    if result.case.profile:
        ET.SubElement(clause, "property", {"name": "profile", "value": _xml_text(result.case.profile)})
    verdict = result.verdict
    if verdict in (Verdict.FAILED, Verdict.UNEXPECTED_PASS):
        failure = ET.SubElement(
            case,
            "failure",
            {"message": _xml_text(result.reason or VERDICT_WORDS[verdict]), "type": verdict.value},
        )
        failure.text = _xml_text(_failure_text(result) or VERDICT_WORDS[verdict])
    elif verdict is Verdict.ERROR:
        error = ET.SubElement(case, "error", {"message": _xml_text(result.reason or "error"), "type": verdict.value})
        error.text = _xml_text(_failure_text(result) or "error")
    elif verdict is Verdict.NOT_APPLICABLE:
        ET.SubElement(case, "skipped", {"message": _xml_text(result.reason or "not applicable to this target")})
    elif verdict is Verdict.EXPECTED_FAILURE:
        # Skipped with the reason, not passed: the target does not do what the clause says.
        note = f"known deviation: {result.deviation or '(no reason given)'}"
        ET.SubElement(case, "skipped", {"message": _xml_text(note), "type": "known_deviation"})
        ET.SubElement(clause, "property", {"name": "known_deviation", "value": _xml_text(result.deviation or "")})
        out = ET.SubElement(case, "system-out")
        out.text = _xml_text("\n\n".join(part for part in (note, result.reason, result.failure_report) if part))


# ---------------------------------------------------------------------------------------------- Markdown


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, no pipe, no HTML."""
    flat = " ".join(text.split())
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def fenced(text: str, info: str = "") -> str:
    """A fenced block whose fence is longer than any run of backticks inside; control characters escaped."""
    text = _CONTROL.sub(lambda found: f"\\x{{{ord(found.group()):x}}}", text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def _anchor(case_id: str) -> str:
    return "case-" + re.sub(r"[^a-z0-9-]", "-", case_id.lower())


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact_value(value: Any, claim_limit: int = 24) -> Any:
    """Readable evidence: JWTs decoded (each claim cut to `claim_limit` characters), long strings shortened."""
    if isinstance(value, dict):
        return {key: _compact_value(item, claim_limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_compact_value(item, claim_limit) for item in value]
    if isinstance(value, str):
        jwt = split_bearer_jwt(value)
        if jwt is not None:
            prefix, header, claims = jwt
            fields = " ".join(f"{key}={_shorten(str(item), claim_limit)}" for key, item in claims.items())
            return f"{prefix}<JWT {header.get('alg', '?')} {fields}>"
        if len(value) > 120:
            return f"{value[:100]}…(+{len(value) - 100} chars)"
    return value


def compact_json(value: Any, limit: int = 1200, claim_limit: int = 24) -> str:
    compacted = _compact_value(without_noise(value), claim_limit)
    text = json.dumps(compacted, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[:limit] + f" …(+{len(text) - limit} chars, see transcript.json)"


def _suite_titles(run: RunResult) -> dict[str, str]:
    """Suite titles, read back from the suite files (the results carry only the names)."""
    titles: dict[str, str] = {}
    for result in run.results:
        suite, source = result.case.suite, result.case.source
        if suite in titles or not source:
            continue
        try:
            document = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(document, dict) and isinstance(document.get("title"), str):
            titles[suite] = document["title"]
    return titles


# -- Mermaid


def mermaid_label(text: object, limit: int = 48) -> str:
    """A message label Mermaid cannot choke on: no ``;``, ``#``, ``:``, quotes or brackets, and short."""
    label = " ".join(_MERMAID_UNSAFE.sub(" ", str(text)).split())
    if len(label) > limit:
        label = label[: limit - 3].rstrip() + "..."
    return label or "-"


def _envelope_code(body: Any) -> str:
    if isinstance(body, dict) and "code" in body and not isinstance(body["code"], dict | list):
        return f" code {body['code']}"
    return ""


def _rpc_reply_label(response: Any) -> str:
    if not isinstance(response, dict):
        return "no JSON reply" if response is None else "non-JSON reply"
    if "http_status" in response:
        body = response.get("body")
        error = body.get("error") if isinstance(body, dict) else None
        code = f" error {error.get('code')}" if isinstance(error, dict) else ""
        return f"HTTP {response['http_status']}{code}"
    if "status" in response and "body" in response:  # raw body step
        body = response["body"]
        error = body.get("error") if isinstance(body, dict) else None
        code = f" error {error.get('code')}" if isinstance(error, dict) else ""
        return f"HTTP {response['status']}{code}"
    if isinstance(response.get("error"), dict):
        return f"error {response['error'].get('code')}"
    if "result" in response:
        return "result"
    if "failures" in response:
        return f"{response['failures']} failures"
    return "reply"


def _http_reply_label(response: Any) -> str:
    if not isinstance(response, dict) or response.get("status") is None:
        return "no reply (dropped)"
    return f"{response['status']}{_envelope_code(response.get('body'))}"


def _callback_label(exchange: Exchange) -> str:
    request = exchange.request if isinstance(exchange.request, dict) else {}
    op = request.get("op")
    if isinstance(op, str) and op and op != "unknown":
        return f"{request.get('method', 'POST')} {request.get('api', '')} {op}"
    return exchange.summary


def mermaid_lines(exchange: Exchange) -> list[str]:
    leg = exchange.leg
    if leg == "client→worker":
        return [
            f"Client->>Worker: {mermaid_label(exchange.summary)}",
            f"Worker-->>Client: {mermaid_label(_rpc_reply_label(exchange.response))}",
        ]
    if leg == "worker→harness":
        return [
            f"Worker->>Harness: {mermaid_label(_callback_label(exchange))}",
            f"Harness-->>Worker: {mermaid_label(_http_reply_label(exchange.response))}",
        ]
    if leg == "worker→broker":
        reply = mermaid_label(_http_reply_label(exchange.response))
        return [
            f"Worker->>Harness: {mermaid_label(_callback_label(exchange))}",
            "Harness->>Broker: forwarded",
            f"Broker-->>Harness: {reply}",
            f"Harness-->>Worker: {reply}",
        ]
    if leg.startswith("harness→broker"):
        suffix = " (as worker)" if "as worker" in leg else ""
        return [
            f"Harness->>Broker: {mermaid_label(exchange.summary + suffix)}",
            f"Broker-->>Harness: {mermaid_label(_http_reply_label(exchange.response))}",
        ]
    if leg.startswith(("worker→harness (smtp", "worker→harness (sendgrid")):
        return [f"Worker->>Harness: {mermaid_label('mail ' + exchange.summary.removeprefix('mail '))}"]
    return [f"Note over Client,Broker: {mermaid_label(leg + ' ' + exchange.summary)}"]


def _step_names(result: CaseResult) -> dict[int, str]:
    names = {step.index: step.name for step in result.case.steps}
    names.update({step.index: step.name for step in result.steps})
    return names


def sequence_diagram(result: CaseResult) -> str:
    lines = ["sequenceDiagram", "    participant Client", "    participant Worker", "    participant Harness"]
    lines.append("    participant Broker")
    names = _step_names(result)
    current: int | None = None
    for exchange in result.exchanges:
        if exchange.step != current:
            current = exchange.step
            label = mermaid_label(f"step {current + 1} {names.get(current, '')}", 60)
            lines.append(f"    Note over Client,Worker: {label}")
        lines += [f"    {line}" for line in mermaid_lines(exchange)]
    if not result.exchanges:
        lines.append(f"    Note over Client,Broker: {mermaid_label('no exchange was recorded')}")
    if result.verdict in (Verdict.FAILED, Verdict.ERROR, Verdict.EXPECTED_FAILURE):
        failed = next((step for step in result.steps if not step.passed), None)
        if failed is not None:
            problem = failed.error or (failed.mismatches[0] if failed.mismatches else "")
            note = f"step {failed.index + 1} failed - {problem}"
        else:
            note = f"failed - {result.reason}"
        lines.append(f"    Note over Client,Broker: {mermaid_label(note, 110)}")
    return fenced("\n".join(lines), "mermaid")


def _evidence(result: CaseResult) -> list[str]:
    if not result.exchanges:
        return ["No exchange was recorded before the case stopped."]
    names = _step_names(result)
    out = [
        f"{len(result.exchanges)} exchange(s); JWTs are shown decoded (signature omitted), client headers and "
        "long values are trimmed; `transcript.json` has everything.",
        "",
    ]
    for number, exchange in enumerate(result.exchanges, start=1):
        step = f"step {exchange.step + 1} ({names.get(exchange.step, '?')})"
        out.append(f"{number}. **{exchange.leg}** · {_cell(exchange.summary)} · {_cell(step)}")
        out.append("")
        body = f"request:  {compact_json(exchange.request)}\nresponse: {compact_json(exchange.response)}"
        out += ["   " + line if line else "" for line in fenced(body, "text").splitlines()]
        out.append("")
    return out


def _has_callbacks(result: CaseResult) -> bool:
    return any(e.leg.startswith("worker→") for e in result.exchanges)


def happy_path_cases(run: RunResult, limit: int = 3) -> list[CaseResult]:
    """Passing cases whose worker called back, end-to-end ones first. A passing case without a
    callback is a refusal that went as specified (``e2e.upstream.agentkeys-refused``): not a happy path."""
    passed = [r for r in run.results if r.verdict is Verdict.PASSED and _has_callbacks(r)]
    tagged = [r for r in passed if "e2e" in r.case.tags]
    return (tagged or passed)[:limit]


HOW_TO_READ = """\
This kit checks the callback contract between a Heima TEE worker (the omni-executor) and the \
backend it calls back after a login — the AgentKeys broker, or a stand-in. Each **case** tests one \
**clause** of the contract: the harness plays the client (JSON-RPC to the worker), plays the \
backend the worker calls back (it records every callback, answers it as scripted, or forwards it \
to the real broker), and checks what came back on every leg. Verdicts: **passed**; **FAILED** (the \
target did something the clause forbids, or did not do what it requires); **ERROR** (the case \
could not run); **not applicable** (the clause is for another kind of target, or needs something \
this target lacks — the reason says what); **known deviation** (listed in the target's deviation \
file and failed where the file says — not counted against the run); **UNEXPECTED PASS** (listed as \
a deviation but passed: the list is stale). Clauses marked **(patch)** are what the agentkeys patch \
to the worker adds: today's upstream worker is expected to fail them. Diagrams use four \
participants: Client and Broker as named, Worker = the worker under test, Harness = this kit's \
callback receiver and mail stand-ins.\
"""

#: a section of report.md: the run in, Markdown lines out
Section = Callable[[RunResult], list[str]]


def markdown_report(run: RunResult, extra_sections: Sequence[Section] = ()) -> str:
    """report.md, top down: the verdict, what the patch must do, what needs attention, then
    everything else. `extra_sections` (e.g. reviewers' findings) come right after the patch."""
    sections: list[Section] = [
        _verdict_section,
        _patch_section,
        *extra_sections,
        _attention_section,
        _everything_else_section,
        _configuration_section,
        _happy_path_section,
        _how_to_read_section,
    ]
    out = [line for section in sections for line in section(run)]
    return "\n".join(out).rstrip() + "\n"


def _verdict_section(run: RunResult) -> list[str]:
    return [
        f"# Conformance report: {_cell(run.tee)}",
        "",
        f"**Verdict: {_cell(overall_verdict(run))}**",
        "",
        "| | |",
        "|---|---|",
        f"| **Worker (TEE)** | {_cell(run.tee)} — version: {_cell(run.tee_version)} |",
        *(f"| **{_cell(name)}** | {_cell(value)} |" for name, value in run.declared.items()),
        f"| **Broker** | {_cell(run.broker)} |",
        f"| **Known deviations** | {_cell(run.deviations)} |",
        f"| **Kit** | {KIT_NAME} {KIT_VERSION} |",
        f"| **Date** | {run_date(run)} (took {run.duration:.1f} s) |",
        f"| **Cases** | {len(run.results)}: {_cell(counts_text(run))} |",
        "",
        "Full evidence is in `transcript.json`, CI results in `junit.xml` next to this file; "
        "[how to read this report](#how-to-read-this) is at the end.",
        "",
        *_simulator_note(run),
        *_key_note(run),
    ]


def _simulator_note(run: RunResult) -> list[str]:
    """A URL target that is the kit's simulator: the verdicts are the simulator's, not a worker's."""
    if run.tee_kind == "sim" or not run.sim_info:
        return []
    return [
        f"**The target is {_cell(target_description(run))}**: these verdicts describe the simulator, the kit's "
        "executable specification of the worker, not the behaviour of any Heima worker.",
        "",
    ]


def _key_note(run: RunResult) -> list[str]:
    """With the worker's public key only, say at once which cases that left out."""
    unsigned = [r.case.id for r in run.results if r.verdict is Verdict.NOT_APPLICABLE and "private key" in r.reason]
    if not unsigned:
        return []
    listed = ", ".join(f"`{case_id}`" for case_id in unsigned)
    return [
        f"With the worker's public key only, {len(unsigned)} case(s) could not run: they sign tokens as the "
        f"worker and need its `auth_token_key.bin` as `--tee-key`: {listed}.",
        "",
    ]


def _case_link(result: CaseResult) -> str:
    linked = result.verdict not in (Verdict.PASSED, Verdict.NOT_APPLICABLE)
    return f"[`{result.case.id}`](#{_anchor(result.case.id)})" if linked else f"`{result.case.id}`"


def _verdict_cell(result: CaseResult) -> str:
    verdict = f"{ICONS[result.verdict]} {VERDICT_WORDS[result.verdict]}"
    if result.verdict is Verdict.NOT_APPLICABLE and result.reason:
        verdict += f" ({_cell(result.reason)})"
    elif result.verdict is Verdict.EXPECTED_FAILURE and result.deviation:
        verdict += f": {_cell(result.deviation)}"
    return verdict


def _patch_section(run: RunResult) -> list[str]:
    out = ["## What the agentkeys patch must do", ""]
    related = [r for r in run.results if r.case.is_patch_clause or r.case.patch_clause is not None]
    if not related:
        return [*out, "No case in this run checks a clause of the agentkeys patch.", ""]
    patch = [r for r in related if r.case.is_patch_clause]
    applicable = [r for r in patch if r.verdict is not Verdict.NOT_APPLICABLE]
    done = sum(1 for r in applicable if r.verdict is Verdict.PASSED)
    out += [
        "The Rust patch adds these clauses to the worker for the `agentkeys` client (numbered as in "
        "`agentkeys_kit/omni_sim/profiles.py`). A patched worker passes every **(patch)** case; today's "
        "worker fails them, as its deviation file lists, and passes the *(today)* cases that pin the "
        f"behaviour the patch changes. On this target: {done} of {len(applicable)} applicable patch cases passed.",
        "",
    ]
    for clause in PATCH_CLAUSES:
        cases = [r for r in related if r.case.patch_clause == clause.number]
        if cases:
            out += _clause_block(f"{clause.number}. {clause.title}", cases)
    unnumbered = [r for r in related if r.case.patch_clause not in {c.number for c in PATCH_CLAUSES}]
    if unnumbered:
        out += _clause_block("Other patch cases (no clause number)", unnumbered)
    return out


def _clause_block(title: str, results: list[CaseResult]) -> list[str]:
    patch = [r for r in results if r.case.is_patch_clause and r.verdict is not Verdict.NOT_APPLICABLE]
    if not patch:
        state = "not run on this target"
    elif all(r.verdict is Verdict.PASSED for r in patch):
        state = "✅ done on this target"
    elif all(r.verdict is Verdict.EXPECTED_FAILURE for r in patch):
        state = "🟡 not done on this target (known deviation: expected of today's worker)"
    else:
        state = "❌ not done on this target"
    out = [f"### {_cell(title)} — {state}", "", "| case | checks | verdict on this target |", "|---|---|---|"]
    for result in results:
        mark = " **(patch)**" if result.case.is_patch_clause else " *(today)*" if result.case.only else ""
        out.append(f"| {_case_link(result)}{mark} | {_cell(result.case.clause)} | {_verdict_cell(result)} |")
    return [*out, ""]


def _attention_section(run: RunResult) -> list[str]:
    flagged = [r for r in run.results if not r.ok]
    out = ["## Cases that need attention", ""]
    if not flagged:
        return [*out, "None: every applicable case passed or failed as a listed known deviation.", ""]
    out += [f"{len(flagged)} case(s): failed, could not run, or passed although listed as a deviation.", ""]
    for result in flagged:
        out += _case_details(result)
    return out


def _everything_else_section(run: RunResult) -> list[str]:
    out = ["## Everything else", ""]
    out += _known_deviations_block(run)
    out += _not_applicable_block(run)
    titles = _suite_titles(run)
    suites: dict[str, list[CaseResult]] = {}
    for result in run.results:
        suites.setdefault(result.case.suite, []).append(result)
    for suite, results in suites.items():
        title = f" — {_cell(titles[suite])}" if suite in titles else ""
        counts = ", ".join(
            f"{sum(1 for r in results if r.verdict is v)} {VERDICT_WORDS[v]}"
            for v in Verdict
            if any(r.verdict is v for r in results)
        )
        out += [f"### Suite `{suite}`{title}", "", f"{len(results)} cases: {_cell(counts)}.", ""]
        out += ["<details><summary>Every clause of this suite</summary>", ""]
        out += ["| clause | case | verdict |", "|---|---|---|"]
        for result in results:
            clause = _cell(result.case.clause) + (" **(patch)**" if result.case.is_patch_clause else "")
            if result.case.only:
                clause += f" *(only {_cell(result.case.only)})*"
            out.append(f"| {clause} | {_case_link(result)} | {_verdict_cell(result)} |")
        out += ["", "</details>", ""]
    return out


def _known_deviations_block(run: RunResult) -> list[str]:
    listed = [r for r in run.results if r.verdict is Verdict.EXPECTED_FAILURE]
    out = ["### Known deviations", ""]
    if not listed:
        return [*out, "None in this run.", ""]
    out += [
        f"{len(listed)} case(s) failed exactly as the deviation file ({_cell(run.deviations)}) says; "
        "they do not count against the run.",
        "",
    ]
    for result in listed:
        out += [
            f'<a id="{_anchor(result.case.id)}"></a>',
            f"<details><summary><code>{_cell(result.case.id)}</code> — {_cell(result.deviation or '')}</summary>",
            "",
            f"- **Clause:** {_cell(result.case.clause)}",
            f"- **How it failed:** {_cell(result.reason or '(none recorded)')}",
            "",
        ]
        if result.failure_report:
            out += [fenced(result.failure_report, "text"), ""]
        out += ["</details>", ""]
    return out


def _not_applicable_block(run: RunResult) -> list[str]:
    skipped = [r for r in run.results if r.verdict is Verdict.NOT_APPLICABLE]
    out = ["### Not applicable to this target", ""]
    if not skipped:
        return [*out, "None: every case applied.", ""]
    by_reason: dict[str, list[str]] = {}
    for result in skipped:
        by_reason.setdefault(result.reason or "(no reason)", []).append(result.case.id)
    for reason, ids in by_reason.items():
        out += [f"- **{_cell(reason)}** ({len(ids)}): " + ", ".join(f"`{i}`" for i in ids)]
    return [*out, ""]


def _configuration_section(run: RunResult) -> list[str]:
    out = ["## How the worker was reached", ""]
    if run.tee_kind == "sim":
        out += ["The harness started the simulator itself for every case, with these variables:", ""]
        out += [f"- `{name}` = `{value}`" for name, value in run.environment.items()]
        return [*out, ""]
    if run.sim_info:
        out += [f"The target was {_cell(target_description(run))}.", ""]
    out += ["The harness's parties listened at:", ""]
    out += [f"- {_cell(name)}: `{url}`" for name, url in run.served.items()]
    out += [
        "",
        "A worker reaches them when configured with these variables (the harness cannot see its configuration):",
        "",
    ]
    out += [f"- `{name}` = `{value}`" for name, value in run.environment.items()]
    out += ["", "What the preflight checked before any case ran:", ""]
    if not run.preflight:
        out.append("- nothing: no preflight ran")
    for check in run.preflight:
        mark = "✅" if check.get("ok") else ("❌" if check.get("fatal", True) else "ℹ️")
        out.append(f"- {mark} **{_cell(str(check.get('name')))}**: {_cell(str(check.get('detail')))}")
    return [*out, ""]


def _how_to_read_section(run: RunResult) -> list[str]:
    return ["## How to read this", "", HOW_TO_READ, ""]


def _case_details(result: CaseResult) -> list[str]:
    case = result.case
    out = [
        f'<a id="{_anchor(case.id)}"></a>',
        "",
        f"### `{case.id}` — {ICONS[result.verdict]} {VERDICT_WORDS[result.verdict]}",
        "",
        f"- **Clause:** {_cell(case.clause)}" + (" **(patch)**" if case.is_patch_clause else ""),
        f"- **Suite:** `{case.suite}`" + (f" (`{case.source}`)" if case.source else ""),
    ]
    if case.description:
        out.append(f"- **About:** {_cell(case.description)}")
    if result.deviation is not None:
        out.append(f"- **Known deviation:** {_cell(result.deviation or '(no reason given)')}")
    out += [f"- **Reason:** {_cell(result.reason or '(none recorded)')}", ""]
    if result.failure_report:
        out += ["**Failing step** (as written in the suite, with the values of its variables):", ""]
        out += [fenced(result.failure_report, "text"), ""]
    out += ["**Evidence:**", "", *_evidence(result)]
    out += ["**Sequence:**", "", sequence_diagram(result), ""]
    return out


def _happy_path_section(run: RunResult) -> list[str]:
    cases = happy_path_cases(run)
    out = ["## The happy path", ""]
    patch = [r for r in run.results if r.case.is_patch_clause]
    refused = [r for r in patch if r.verdict is Verdict.EXPECTED_FAILURE]
    if refused and not any(r.verdict is Verdict.PASSED for r in patch):
        out += [
            f"Under the declared profile `{_cell(run.profile or '?')}` the happy path of the agentkeys patch "
            "(client `agentkeys` signs in and the worker's callbacks reach the broker) is refused: its "
            f"{len(refused)} case(s) are known deviations (see [Known deviations](#known-deviations)). "
            "Shown below: passing cases of the flows this target does serve.",
            "",
        ]
    if not cases:
        return [*out, "No passing case with callbacks in this run to show.", ""]
    out += ["How the legs look when a case passes:", ""]
    for result in cases:
        out += [f"### `{result.case.id}` — {_cell(result.case.clause)}", "", sequence_diagram(result), ""]
        out += ["<details><summary>Exchanges</summary>", "", *_evidence(result), "</details>", ""]
    return out


def junit_counts(results: Iterable[CaseResult]) -> dict[str, int]:
    """Counts as junit.xml reports them (for callers that want to check one against the other)."""
    listed = list(results)
    return {
        "tests": len(listed),
        "failures": sum(1 for r in listed if r.verdict in (Verdict.FAILED, Verdict.UNEXPECTED_PASS)),
        "errors": sum(1 for r in listed if r.verdict is Verdict.ERROR),
        "skipped": sum(1 for r in listed if r.verdict in (Verdict.NOT_APPLICABLE, Verdict.EXPECTED_FAILURE)),
    }
