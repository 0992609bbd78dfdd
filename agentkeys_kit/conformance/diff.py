"""What two workers did on every leg of the same suites: ``diff.md`` and ``diff.json``.

Both runs record the exchanges of every case (see `conformance.runner`). Values that differ from
run to run by design cannot be compared literally, so each exchange is normalised first:

* a JWT (bare or ``Bearer …``) becomes its decoded header and claims, without the values of
  ``exp``, ``iat``, ``nbf`` and ``jti`` (times and nonces) and without the signature, plus the
  order of its claims (which the contract fixes);
* ``0x`` + 40 / 64 hex digits become ``<hex40>`` / ``<hex64>`` (wallets, OmniAccounts); broker user
  ids ``usr_…`` become ``<uid>``; other runs of 12 or more hex digits (``$fresh`` e-mails and
  handles, grant ids) ``<hex>``; base58 of 32 to 50 characters in mixed case (Solana and Substrate
  addresses) ``<base58>``; 6- or 8-digit codes ``<code>``; a token shaped like a JWT that does not
  decode (a tampered one) ``<token>``; the port of a loopback URL ``<port>``; an integer that is a
  Unix time in seconds or milliseconds (2017–2128) ``<time>``, and so are 10- or 13-digit times
  inside text (the ``timestamp`` of a ``business_json``) and RFC 3339 instants in UTC (a Sign-In
  with Ethereum message's ``Issued At`` and ``Expiration Time``);
* a string the case recorded under a field that is random by design (`RANDOM_FIELDS`: OAuth2
  ``state``, ``nonce`` and ``code``, passkey challenges, credential ids and WebAuthn structures,
  signatures) becomes ``<random>``, wherever it appears in the case's exchanges (in a URL's
  query, in a message), and so does the credential id in the worker's passkey messages;
* headers every HTTP client adds (Host, Content-Length, …), the raw ``body_text`` next to the
  parsed body, the JSON-RPC ``id`` the harness chose and the time of a mail are dropped.

Exchanges are aligned by (leg, step, summary), so a callback one worker makes and the other does
not shows as "only in A" without shifting everything after it.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

from agentkeys_kit.conformance.reports import (
    ICONS,
    KIT_NAME,
    VERDICT_WORDS,
    counts_text,
    fenced,
    overall_verdict,
    run_date,
    split_bearer_jwt,
    without_noise,
    write_text,
)
from agentkeys_kit.conformance.runner import CaseResult, Exchange, RunResult, Verdict
from agentkeys_kit.conformance.targets import KIT_VERSION

VOLATILE_CLAIMS = frozenset({"exp", "iat", "nbf", "jti"})
_HEX64 = re.compile(r"0x[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_HEX40 = re.compile(r"0x[0-9a-fA-F]{40}(?![0-9a-fA-F])")
_UID = re.compile(r"usr_[A-Za-z0-9]+")
_PREFIXED_HEX = re.compile(r"0x[0-9a-fA-F]{12,}(?![0-9a-fA-F])")  # signatures and other long values
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{12,}(?![0-9A-Za-z])")
_BASE58 = re.compile(r"(?<![0-9A-Za-z])[1-9A-HJ-NP-Za-km-z]{32,50}(?![0-9A-Za-z])")
_CODE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9]{8}|[0-9]{6})(?![0-9A-Za-z])")
_TOKEN = re.compile(r"^((?:[A-Za-z][A-Za-z0-9_-]* )*)[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*$")
_LOOPBACK_PORT = re.compile(r"(127\.0\.0\.1|localhost|\[::1\]|0\.0\.0\.0):[0-9]{1,5}")
_UNIX_SECONDS = (1_500_000_000, 5_000_000_000)
#: an RFC 3339 instant in UTC (the `Issued At` / `Expiration Time` of a Sign-In with Ethereum message)
_RFC3339 = re.compile(r"(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z")
_UNIX_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])1[5-9][0-9]{8}(?:[0-9]{3})?(?![0-9A-Za-z])")
#: fields whose string values are random by design: a fresh draw on every run
RANDOM_FIELDS = frozenset(
    {
        "state",
        "nonce",
        "code",
        "challenge",
        "credential_id",
        "alias_name",
        "attestation_object",
        "client_data_json",
        "auth_data",
        "signature",
    }
)
_RANDOM_MIN_LENGTH = 8  # shorter values (a 0x, a test literal) are compared as they are
#: the credential id in the worker's passkey messages (attach, remove, rename), which the case never
#: sends as a field (it travels inside the CBOR attestation)
_PASSKEY_MESSAGE_ID = re.compile(
    r"(?<=Passkey \()[A-Za-z0-9_-]{8,}(?=\))|(?<=Passkey )[A-Za-z0-9_-]{8,}(?= successfully)"
    r"|(?<=for credential )[A-Za-z0-9_-]{8,}(?= successfully)"
)


def _base58(found: re.Match[str]) -> str:
    text = found.group()
    mixed = any(c.isupper() for c in text) and any(c.islower() for c in text)
    return "<base58>" if mixed else text


def _is_unix_time(value: int) -> bool:
    low, high = _UNIX_SECONDS
    return low <= value < high or low * 1000 <= value < high * 1000


ABSENT = "(absent)"


def random_strings(value: Any) -> set[str]:
    """The strings `value` holds under `RANDOM_FIELDS`, at any depth."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key in RANDOM_FIELDS and isinstance(item, str) and len(item) >= _RANDOM_MIN_LENGTH:
                found.add(item)
            else:
                found |= random_strings(item)
    elif isinstance(value, list):
        for item in value:
            found |= random_strings(item)
    return found


def normalise_value(value: Any, random: frozenset[str] = frozenset()) -> Any:
    """The comparable form of a recorded value (see the module docstring); `random` are the strings
    that are random by design in this case."""
    if isinstance(value, dict):
        return {key: normalise_value(item, random) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise_value(item, random) for item in value]
    if isinstance(value, str):
        for drawn in sorted(random, key=len, reverse=True):
            if drawn in value:
                value = value.replace(drawn, "<random>")
        jwt = split_bearer_jwt(value)
        if jwt is not None:
            prefix, header, claims = jwt
            decoded = {
                "header": normalise_value(header, random),
                "claims": normalise_value({k: v for k, v in claims.items() if k not in VOLATILE_CLAIMS}, random),
                "claims_order": list(claims),
            }
            if prefix == "Bearer ":
                return {"$bearer": {"$jwt": decoded}}
            return {"$prefix": prefix, "$jwt": decoded} if prefix else {"$jwt": decoded}
        token = _TOKEN.match(value)
        if token is not None:
            return f"{token.group(1) or ''}<token>"
        text = _HEX64.sub("<hex64>", value)
        text = _HEX40.sub("<hex40>", text)
        text = _UID.sub("<uid>", text)
        text = _PREFIXED_HEX.sub("<hex>", text)
        text = _HEX.sub("<hex>", text)
        text = _BASE58.sub(_base58, text)
        text = _PASSKEY_MESSAGE_ID.sub("<random>", text)
        text = _UNIX_IN_TEXT.sub("<time>", text)
        text = _RFC3339.sub("<time>", text)
        text = _CODE.sub("<code>", text)
        return _LOOPBACK_PORT.sub(r"\1:<port>", text)
    if isinstance(value, int) and not isinstance(value, bool) and _is_unix_time(value):
        return "<time>"
    return value


def normalise_exchange(exchange: Exchange, random: frozenset[str] = frozenset()) -> dict[str, Any]:
    request = without_noise(exchange.request)
    response = without_noise(exchange.response)
    if exchange.leg == "client→worker" and isinstance(response, dict):
        response = {key: value for key, value in response.items() if key != "id"}  # the harness's counter
    if exchange.leg == "client→worker" and isinstance(request, dict) and isinstance(request.get("json"), dict):
        request = {**request, "json": {k: v for k, v in request["json"].items() if k != "id"}}
    if exchange.leg.startswith(("worker→harness (smtp", "worker→harness (sendgrid")) and isinstance(response, dict):
        response = {key: value for key, value in response.items() if key != "at"}
    return {
        "leg": exchange.leg,
        "step": exchange.step + 1,
        "summary": normalise_value(exchange.summary, random),
        "request": normalise_value(request, random),
        "response": normalise_value(response, random),
    }


def _signature(record: dict[str, Any]) -> tuple[str, int, str]:
    return record["leg"], record["step"], json.dumps(record["summary"], sort_keys=True)


@dataclass(slots=True)
class FieldDifference:
    path: str
    a: Any
    b: Any


@dataclass(slots=True)
class LegDifference:
    kind: str  # "changed", "only in A", "only in B"
    a: dict[str, Any] | None
    b: dict[str, Any] | None
    fields: list[FieldDifference] = field(default_factory=list)

    @property
    def title(self) -> str:
        record = self.a or self.b or {}
        summary = record.get("summary", "")
        return f"step {record.get('step', '?')} · {record.get('leg', '?')} · {summary}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "fields": [{"path": f.path, "a": f.a, "b": f.b} for f in self.fields],
        }


@dataclass(slots=True)
class CaseDiff:
    case_id: str
    clause: str
    a: CaseResult
    b: CaseResult
    legs: list[LegDifference]

    @property
    def legs_differ(self) -> bool:
        return bool(self.legs)

    @property
    def same(self) -> bool:
        return not self.legs and self.a.verdict is self.b.verdict

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.case_id,
            "clause": self.clause,
            "verdict_a": self.a.verdict.value,
            "verdict_b": self.b.verdict.value,
            "reason_a": self.a.reason,
            "reason_b": self.b.reason,
            "same": self.same,
            "legs_differ": self.legs_differ,
            "differences": [leg.to_json() for leg in self.legs],
        }


def field_differences(a: Any, b: Any, path: str = "") -> list[FieldDifference]:
    """Where two normalised values differ; a subtree present on one side only is one entry."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[FieldDifference] = []
        for key in [*a.keys(), *(k for k in b if k not in a)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in b:
                found.append(FieldDifference(where, a[key], ABSENT))
            elif key not in a:
                found.append(FieldDifference(where, ABSENT, b[key]))
            else:
                found += field_differences(a[key], b[key], where)
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = []
        for index, (left, right) in enumerate(zip(a, b, strict=True)):
            found += field_differences(left, right, f"{path}[{index}]")
        return found
    return [] if a == b else [FieldDifference(path or "(whole)", a, b)]


def diff_legs(a: list[Exchange], b: list[Exchange]) -> list[LegDifference]:
    random = frozenset(
        drawn for exchange in (*a, *b) for drawn in random_strings([exchange.request, exchange.response])
    )
    left = [normalise_exchange(exchange, random) for exchange in a]
    right = [normalise_exchange(exchange, random) for exchange in b]
    matcher = difflib.SequenceMatcher(None, [_signature(r) for r in left], [_signature(r) for r in right], False)
    found: list[LegDifference] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for one, two in zip(left[i1:i2], right[j1:j2], strict=True):
                fields = field_differences(one, two)
                if fields:
                    found.append(LegDifference("changed", one, two, fields))
            continue
        for one, two in zip_longest(left[i1:i2], right[j1:j2]):
            if one is not None and two is not None and one["leg"] == two["leg"]:
                found.append(LegDifference("changed", one, two, field_differences(one, two)))
            else:
                if one is not None:
                    found.append(LegDifference("only in A", one, None))
                if two is not None:
                    found.append(LegDifference("only in B", None, two))
    return found


@dataclass(slots=True)
class RunDiff:
    first: RunResult
    second: RunResult
    cases: list[CaseDiff]
    only_a: list[CaseResult]
    only_b: list[CaseResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "kit_version": KIT_VERSION,
            "a": _stamp_json(self.first),
            "b": _stamp_json(self.second),
            "cases": [case.to_json() for case in self.cases],
            "only_in_a": [result.case.id for result in self.only_a],
            "only_in_b": [result.case.id for result in self.only_b],
        }


def _stamp_json(run: RunResult) -> dict[str, Any]:
    return {
        "tee": run.tee,
        "deviations": run.deviations,
        "declared": run.declared,
        "tee_version": run.tee_version,
        "broker": run.broker,
        "started_at": run.started_at,
        "ok": run.ok,
        "counts": {verdict.value: run.count(verdict) for verdict in Verdict if run.count(verdict)},
    }


def compare(first: RunResult, second: RunResult) -> RunDiff:
    by_id = {result.case.id: result for result in second.results}
    in_first = {result.case.id for result in first.results}
    cases = [
        CaseDiff(result.case.id, result.case.clause, result, by_id[result.case.id], diff_legs(
            result.exchanges, by_id[result.case.id].exchanges))
        for result in first.results
        if result.case.id in by_id
    ]  # fmt: skip
    only_a = [result for result in first.results if result.case.id not in by_id]
    only_b = [result for result in second.results if result.case.id not in in_first]
    return RunDiff(first, second, cases, only_a, only_b)


def write_diff(first: RunResult, second: RunResult, directory: Path) -> Path:
    """Write ``diff.md`` and ``diff.json`` into `directory`; return the path of ``diff.md``."""
    directory.mkdir(parents=True, exist_ok=True)
    result = compare(first, second)
    write_text(directory / "diff.json", json.dumps(result.to_json(), indent=2, ensure_ascii=False, default=str) + "\n")
    path = directory / "diff.md"
    write_text(path, diff_markdown(result))
    return path


# ---------------------------------------------------------------------------------------------- Markdown


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")


def _cell(text: str) -> str:
    return _html(" ".join(text.split()))


def _code_cell(value: Any, limit: int = 160) -> str:
    if value == ABSENT:
        return "*(absent)*"
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"<code>{_html(text)}</code>"


def _verdict(result: CaseResult) -> str:
    return f"{ICONS[result.verdict]} {VERDICT_WORDS[result.verdict]}"


HOW_TO_READ = """\
The same suites ran against two workers, **A** and **B**, with the same harness and broker. For \
every case both ran, the exchanges on every leg (client→worker, worker→harness or worker→broker \
callbacks, harness→broker calls, mails) are compared after normalising what differs by design from \
run to run: JWTs are compared by their decoded header and claims (without `exp`/`iat`/`nbf`/`jti` \
and signature), 6/8-digit codes become `<code>`, `0x` hex of 40/64 digits `<hex40>`/`<hex64>` \
(wallets, OmniAccounts), broker user ids `<uid>`, other long hex ids `<hex>`, Solana/Substrate \
addresses `<base58>`, Unix times and RFC 3339 instants `<time>`, loopback ports `<port>`; client \
headers such as Host and \
Content-Length and the harness's JSON-RPC ids are dropped. A case is **same** when both workers did the same on every \
leg and got the same verdict.\
"""


def diff_markdown(result: RunDiff) -> str:
    a, b = result.first, result.second
    out = [
        f"# Conformance diff: {_cell(a.tee)} vs {_cell(b.tee)}",
        "",
        "| | A | B |",
        "|---|---|---|",
        f"| **Worker (TEE)** | {_cell(a.tee)} | {_cell(b.tee)} |",
        f"| **Worker version** | {_cell(a.tee_version)} | {_cell(b.tee_version)} |",
        f"| **Broker** | {_cell(a.broker)} | {_cell(b.broker)} |",
        f"| **Known deviations** | {_cell(a.deviations)} | {_cell(b.deviations)} |",
        *(
            f"| **{_cell(name)}** | {_cell(a.declared.get(name, '—'))} | {_cell(b.declared.get(name, '—'))} |"
            for name in dict.fromkeys([*a.declared, *b.declared])
        ),
        f"| **Date** | {run_date(a)} | {run_date(b)} |",
        f"| **Cases** | {len(a.results)}: {_cell(counts_text(a))} | {len(b.results)}: {_cell(counts_text(b))} |",
        f"| **Verdict** | {_cell(overall_verdict(a))} | {_cell(overall_verdict(b))} |",
        "",
        f"Kit: {KIT_NAME} {KIT_VERSION}; diff written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}.",
        "",
        "## How to read this",
        "",
        HOW_TO_READ,
        "",
        "## Summary",
        "",
    ]
    same = [case for case in result.cases if case.same]
    differ = [case for case in result.cases if not case.same]
    out += [
        f"{len(result.cases)} case(s) ran on both: {len(same)} same, {len(differ)} different.",
        "",
        "| case | verdict A | verdict B | legs differ? |",
        "|---|---|---|---|",
    ]
    for case in result.cases:
        legs = f"**yes** ({len(case.legs)} exchange(s))" if case.legs_differ else "no"
        out.append(f"| `{case.case_id}` | {_verdict(case.a)} | {_verdict(case.b)} | {legs} |")
    out.append("")
    if result.only_a or result.only_b:
        out += ["Cases that ran on one side only:", ""]
        out += [f"- `{r.case.id}`: only in A ({_verdict(r)})" for r in result.only_a]
        out += [f"- `{r.case.id}`: only in B ({_verdict(r)})" for r in result.only_b]
        out.append("")
    out += ["## Same on both", ""]
    out += [f"- `{case.case_id}` — same" for case in same] or ["None."]
    out += ["", "## Differences", ""]
    if not differ:
        out += ["None: both workers did the same on every leg of every case.", ""]
    for case in differ:
        out += _case_section(case)
    return "\n".join(out).rstrip() + "\n"


def _case_section(case: CaseDiff) -> list[str]:
    out = [
        f"### `{case.case_id}`",
        "",
        f"- **Clause:** {_cell(case.clause)}" + (" **(patch)**" if case.a.case.is_patch_clause else ""),
        f"- **A:** {_verdict(case.a)}" + (f" — {_cell(case.a.reason)}" if case.a.reason else ""),
        f"- **B:** {_verdict(case.b)}" + (f" — {_cell(case.b.reason)}" if case.b.reason else ""),
        "",
    ]
    if not case.legs:
        return [*out, "Same exchanges on every leg; only the verdicts differ.", ""]
    for leg in case.legs:
        out += [f"#### {_cell(leg.title)} — {leg.kind}", ""]
        if leg.kind == "changed":
            out += ["| field | A | B |", "|---|---|---|"]
            for difference in leg.fields[:40]:
                out.append(f"| `{difference.path}` | {_code_cell(difference.a)} | {_code_cell(difference.b)} |")
            if len(leg.fields) > 40:
                out.append(f"| … | {len(leg.fields) - 40} more | see diff.json |")
            out += ["", "<details><summary>Both exchanges, normalised</summary>", ""]
            out += ["A:", "", fenced(_pretty(leg.a), "json"), "", "B:", "", fenced(_pretty(leg.b), "json"), ""]
            out += ["</details>", ""]
        else:
            side = leg.a if leg.a is not None else leg.b
            out += [fenced(_pretty(side), "json"), ""]
    return out


def _pretty(record: dict[str, Any] | None) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False, default=str)
