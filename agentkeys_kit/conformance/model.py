"""Suites as files: YAML validated against the published JSON Schema before anything runs.

A suite file::

    suite: tee                      # name, also the id prefix of its cases
    title: The worker's contract
    cases:
      - id: tee.login.evm.wildmeta  # unique across suites
        clause: omni_userLogin for wildmeta calls post_heima_login with the access token
        profile: agentkeys-patch    # optional: a clause of the agentkeys patch
        patch_clause: 1             # optional: its number in `omni_sim.profiles.PATCH_CLAUSES`
        only: upstream              # optional: applies to targets of this profile only
        needs: [mail]               # optional: capabilities the target must have
        era: legacy                 # optional: applies to targets of this error era only
        base_urls: {pumpx: prefix}  # optional: where the in-process simulator calls each API
        steps: [ … ]

Step kinds (one per step): ``let``, ``rpc``, ``raw``, ``broker``, ``callback``, ``email``,
``clock``, ``fuzz``, ``audit`` (the local broker's audit rows), ``totp`` (enrol or remove a
user's second factor at the local broker). See the schema (`conformance/suite.schema.json`) for every field.

A file is refused before anything runs when it breaks the schema, and also (`static_checks`) when
it calls an unknown ``$`` function or matcher, expects an unknown field of a callback, or uses a
variable no earlier step defines. Every message names the file, the case and the step, with steps
numbered from 1 as failures number them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agentkeys_kit.conformance.expr import function_reference
from agentkeys_kit.conformance.static_checks import StaticProblem, check_case
from agentkeys_kit.omni_sim.profiles import PATCH_CLAUSES

PATCH_CLAUSE_NUMBERS = frozenset(clause.number for clause in PATCH_CLAUSES)

SCHEMA_PATH = Path(__file__).with_name("suite.schema.json")
STEP_KINDS = ("let", "rpc", "raw", "broker", "callback", "email", "clock", "fuzz", "audit", "totp")
CAPABILITIES = (
    "sim-clock",
    "mail",
    "tee-signing-key",
    "broker",
    "broker-clock",
    "broker-login-heima",
    "broker-login-local",
    "sim-internals",
    "oauth2-provider",
    "broker-internals",
    "sim-config",
)
ERAS = ("current", "legacy")
BASE_URL_FORMS = ("prefix/", "prefix", "root/", "root")
#: older names still accepted in `needs`: `smtp` was the name of `mail` when mail only came over SMTP
CAPABILITY_ALIASES = {"smtp": "mail"}
PROFILES = ("upstream", "agentkeys-patch")

_ANY: dict[str, Any] = {}
_MAP: dict[str, Any] = {"type": "object"}
_CAPTURE = {"type": "object", "additionalProperties": {"type": "string"}}
_REPLY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "json": _ANY,
        "raw": {"type": "string"},
        "delay": {"type": "number", "minimum": 0, "maximum": 30},
        "drop": {"type": "boolean"},
        "forward": {"enum": ["broker"]},
    },
}
_CALLBACK_OPS: dict[str, Any] = {
    "enum": [
        "post_heima_login",
        "add_wallet",
        "get_account_user_id",
        "user_connect",
        "verify_google_code",
        "check_hyper_agent_address",
    ]
}
#: what a step may expect the worker to call: the callbacks, the mail API, the token endpoint
_EXPECTED_OPS: dict[str, Any] = {"enum": [*_CALLBACK_OPS["enum"], "mail_send", "token"]}
_CALLBACK_EXPECTATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["op"],
    "properties": {
        "api": {
            "anyOf": [
                {"enum": ["pumpx", "agentkeys", "wildmeta", "root", "sendgrid", "google", "any"]},
                {"type": "string", "pattern": "^\\$\\{.+\\}$"},
            ]
        },
        "op": _EXPECTED_OPS,
        "times": {"type": "integer", "minimum": 0, "maximum": 10},
        "expect": _MAP,
        "reply": _REPLY,
        "capture": _CAPTURE,
    },
}
_COMMON = {
    "name": {"type": "string"},
    "expect": _ANY,
    "capture": _CAPTURE,
    "within": {"type": "number", "minimum": 0, "maximum": 60},
}


def _step(kind: str, body: dict[str, Any], *, callbacks: bool = False) -> dict[str, Any]:
    properties = {**_COMMON, kind: body}
    if callbacks:
        properties["callbacks"] = {"type": "array", "items": _CALLBACK_EXPECTATION}
    return {"type": "object", "additionalProperties": False, "required": [kind], "properties": properties}


STEP_SCHEMAS: dict[str, dict[str, Any]] = {
    "let": _step("let", _MAP),
    "rpc": _step(
        "rpc",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["method"],
            "properties": {
                "method": {"type": "string"},
                "params": _ANY,
                "id": _ANY,
                "transport": {"enum": ["http", "ws"]},
                "token": _ANY,
                "headers": _MAP,
            },
        },
        callbacks=True,
    ),
    "raw": _step(
        "raw",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["body"],
            "properties": {
                "body": {"type": "string"},
                "content_type": {"type": "string"},
                "method": {"enum": ["GET", "POST", "PUT"]},
                "pad_to": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 16 * 1024 * 1024,
                    "description": "Send the body followed by spaces (JSON whitespace) up to this many bytes: "
                    "a request of a given size (e.g. just above the worker's 10 MiB limit) without writing it out; "
                    "reports show the body as written and the size.",
                },
            },
        },
        callbacks=True,
    ),
    "broker": _step(
        "broker",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["method", "path"],
            "properties": {
                "method": {"enum": ["GET", "POST", "PUT", "DELETE"]},
                "path": {"type": "string"},
                "headers": _MAP,
                "query": _MAP,
                "json": _ANY,
                "body": {"type": "string"},
                "token": _ANY,
            },
        },
    ),
    "callback": _step(
        "callback",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["op"],
            "properties": {
                "op": _CALLBACK_OPS,
                "token": _ANY,
                "json": _ANY,
                "body": {"type": "string"},
                "query": _MAP,
                "headers": _MAP,
                "prefix": {"type": "string"},
            },
        },
    ),
    "email": _step(
        "email",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["to"],
            "properties": {"to": {"type": "string"}},
        },
    ),
    "clock": _step(
        "clock",
        {
            "type": "object",
            "additionalProperties": False,
            "description": (
                "Move the worker's (`tee`, needs sim-clock) or the local broker's (`broker`, needs broker-clock) "
                "clock: `advance` by seconds, or `set` it to an instant (unix seconds, or a `${…}` value) where it "
                "then stands, so a boundary is checked at exactly the instant; with both, `set` comes first."
            ),
            "anyOf": [{"required": ["advance"]}, {"required": ["set"]}],
            "properties": {
                "advance": {"type": "integer", "minimum": 0},
                "set": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^\\$\\{.+\\}$"}]},
                "target": {"enum": ["tee", "broker"]},
            },
        },
    ),
    "fuzz": _step(
        "fuzz",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["target", "examples"],
            "properties": {
                "target": {"enum": ["tee", "broker"]},
                "method": {"type": "string"},
                "op": {"type": "string"},
                "examples": {"type": "integer", "minimum": 1, "maximum": 500},
                "seed": {"type": "integer"},
                "token": _ANY,
            },
        },
    ),
    "audit": _step(
        "audit",
        {
            "type": "object",
            "additionalProperties": False,
            "description": (
                "Read the local broker's audit rows (needs broker-internals) whose event, outcome, client_id, "
                "omni_account and detail equal the given ones; "
                "`bearer` is a token the harness hashes (SHA-256, hex) to match `bearer_sha256`. The view is "
                "{count, rows: [{event, outcome, client_id, omni_account, bearer_sha256, remote_addr, detail, "
                "repeat_count}], oldest first}. The step fails, whatever `expect` says, when the raw text of a "
                "given `bearer` or of any `secrets` entry is stored anywhere in the broker's database files."
            ),
            "properties": {
                "event": _ANY,
                "outcome": _ANY,
                "client_id": _ANY,
                "omni_account": _ANY,
                "detail": _ANY,
                "bearer": _ANY,
                "secrets": {"type": "array"},
            },
        },
    ),
    "totp": _step(
        "totp",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["user_id"],
            "description": (
                "Enrol (`secret`: base32) or remove (`remove: true`) the TOTP second factor of a local broker user "
                "(its `userId`), as an operator would; needs broker-internals. The view is {found, enrolled, now, "
                "code}: whether the user exists, whether a factor is now enrolled, the broker's clock, and the "
                "code the harness computes (RFC 6238, its own implementation) for that clock."
            ),
            "oneOf": [{"required": ["secret"]}, {"required": ["remove"]}],
            "properties": {
                "user_id": _ANY,
                "secret": {"type": "string"},
                "remove": {"const": True},
            },
        },
    ),
}


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://agentkeys.dev/conformance/suite.schema.json",
    "title": "AgentKeys ↔ Heima conformance suite",
    "type": "object",
    "additionalProperties": False,
    "required": ["suite", "title", "cases"],
    "properties": {
        "suite": {"type": "string", "pattern": "^[a-z][a-z0-9_-]*$"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "cases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "clause", "steps"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
                    "clause": {"type": "string", "minLength": 8},
                    "description": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "profile": {"enum": list(PROFILES)},
                    "patch_clause": {"type": "integer", "minimum": 1},
                    "only": {"enum": list(PROFILES)},
                    "needs": {"type": "array", "items": {"enum": [*CAPABILITIES, *CAPABILITY_ALIASES]}},
                    "era": {
                        "enum": list(ERAS),
                        "description": "applies only to targets of this error era (--tee-error-era)",
                    },
                    "base_urls": {
                        "type": "object",
                        "additionalProperties": False,
                        "description": (
                            "where the in-process simulator calls each API (needs sim-config): `prefix/` "
                            "(the receiver's /pumpx/ etc., the default), `prefix` (the same without the trailing "
                            "slash: Url::join then drops the last segment and the call lands at the receiver's "
                            "root), `root/` or `root` (the receiver's root)"
                        ),
                        "properties": {
                            api: {"enum": list(BASE_URL_FORMS)} for api in ("pumpx", "agentkeys", "wildmeta")
                        },
                    },
                    "steps": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"oneOf": [STEP_SCHEMAS[kind] for kind in STEP_KINDS]},
                    },
                },
            },
        },
    },
}


class SuiteError(ValueError):
    """A suite file that is not valid; the message names the file and the failing path."""


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What follows a file's name: ``, line 3, column 10: not YAML: expected ',' or ']', but got ':'
    (while parsing a flow sequence at line 2, column 8)``, one line, counted from 1 as editors do.
    PyYAML's own text spans several lines and points at ``"<unicode string>"``, not the file."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = exc.context or ""
        started = exc.context_mark
        if context and started is not None and (started.line, started.column) != (mark.line, mark.column):
            context += f" at line {started.line + 1}, column {started.column + 1}"
        problem = exc.problem or "not valid here"
        return f", line {mark.line + 1}, column {mark.column + 1}: not YAML: {problem}" + (
            f" ({context})" if context else ""
        )
    return ": not YAML: " + " ".join(str(exc).replace('"<unicode string>"', "the file").split())


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    kind: str
    spec: dict[str, Any]  # the whole step mapping, as written

    @property
    def name(self) -> str:
        if self.spec.get("name"):
            return str(self.spec["name"])
        body = self.spec[self.kind]
        detail = body.get("method") or body.get("op") or body.get("path") or "" if isinstance(body, dict) else ""
        return f"{self.kind} {detail}".strip()


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    clause: str
    suite: str
    steps: tuple[Step, ...]
    profile: str | None = None
    only: str | None = None
    needs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    description: str = ""
    source: str = ""
    patch_clause: int | None = None  # its number in `omni_sim.profiles.PATCH_CLAUSES`
    era: str | None = None  # applies to targets of this error era only
    base_urls: tuple[tuple[str, str], ...] = ()  # (API, form): where the in-process simulator calls

    @property
    def is_patch_clause(self) -> bool:
        return self.profile == "agentkeys-patch"


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    title: str
    path: Path
    cases: tuple[Case, ...]
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


SCHEMA["$defs"] = {
    "function_call": {
        "description": (
            "Anywhere a value is expected, a mapping with one key that starts with `$` calls a harness "
            "function (agentkeys_kit/conformance/expr.py); `${path}` refers to a variable or capture."
        ),
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": [name],
                "properties": {name: {"description": doc}},
            }
            for name, doc in function_reference().items()
        ],
    }
}

_validator = jsonschema.Draft202012Validator(SCHEMA)


def published_schema() -> str:
    return json.dumps(SCHEMA, indent=2, ensure_ascii=False) + "\n"


def load_suite(path: Path) -> Suite:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}{yaml_problem(exc)}") from None
    problem = schema_problem(document)
    if problem is not None:
        raise SuiteError(f"{path}: {problem}")
    cases = []
    found: list[StaticProblem] = []
    for raw_case in document["cases"]:
        kinds = [next(kind for kind in STEP_KINDS if kind in spec) for spec in raw_case["steps"]]
        steps = tuple(Step(i, kind, spec) for i, (kind, spec) in enumerate(zip(kinds, raw_case["steps"], strict=True)))
        found += check_case(raw_case["id"], raw_case["steps"], kinds)
        found += _clause_problems(raw_case)
        cases.append(
            Case(
                id=raw_case["id"],
                clause=raw_case["clause"],
                suite=document["suite"],
                steps=steps,
                profile=raw_case.get("profile"),
                only=raw_case.get("only"),
                needs=tuple(dict.fromkeys(CAPABILITY_ALIASES.get(n, n) for n in raw_case.get("needs", ()))),
                tags=tuple(raw_case.get("tags", ())),
                description=raw_case.get("description", ""),
                source=str(path),
                patch_clause=raw_case.get("patch_clause"),
                era=raw_case.get("era"),
                base_urls=tuple(sorted((raw_case.get("base_urls") or {}).items())),
            )
        )
    if found:
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise SuiteError(f"{path}: " + f"\n{path}: ".join(str(p) for p in found[:5]) + more)
    return Suite(document["suite"], document["title"], path, tuple(cases), document.get("description", ""), document)


def _clause_problems(raw_case: dict[str, Any]) -> list[StaticProblem]:
    number = raw_case.get("patch_clause")
    if number is None or number in PATCH_CLAUSE_NUMBERS:
        return []
    known = ", ".join(str(n) for n in sorted(PATCH_CLAUSE_NUMBERS))
    sentence = f"patch_clause {number}: the agentkeys-patch profile has clauses {known} (omni_sim/profiles.py)"
    return [StaticProblem(raw_case["id"], None, sentence)]


# ---------------------------------------------------------------------------------------------- schema errors


def schema_problem(document: Any) -> str | None:
    """The first schema violation, as one sentence that names the case, the step (from 1) and the key."""
    errors = list(_validator.iter_errors(document))
    if not errors:
        return None
    error = min(errors, key=lambda e: list(map(str, e.absolute_path)))
    path = list(error.absolute_path)
    if error.validator == "oneOf" and len(path) == 4 and path[0] == "cases" and path[2] == "steps":
        return _step_problem(document, path, error.instance)
    return f"{_location(document, path)}{_sentence(error)}"


def _step_problem(document: Any, path: list[Any], step: Any) -> str:
    where = _location(document, path)
    if not isinstance(step, dict):
        return f"{where}a step is a mapping with one of {', '.join(STEP_KINDS)}"
    kinds = [kind for kind in STEP_KINDS if kind in step]
    if not kinds:
        unknown = ", ".join(repr(k) for k in step if k not in _COMMON and k != "callbacks")
        return f"{where}no step kind (one of {', '.join(STEP_KINDS)})" + (f"; unknown key {unknown}" if unknown else "")
    if len(kinds) > 1:
        return f"{where}one step kind per step, this one has {' and '.join(kinds)}"
    inner = jsonschema.Draft202012Validator(STEP_SCHEMAS[kinds[0]]).iter_errors(step)
    error = min(inner, key=lambda e: list(map(str, e.absolute_path)))
    return f"{_location(document, path + list(error.absolute_path))}{_sentence(error)}"


def _location(document: Any, path: list[Any]) -> str:
    """``case <id>, step <n>, <key path>: `` for a path into the document."""
    parts: list[str] = []
    rest = list(path)
    if len(rest) >= 2 and rest[0] == "cases" and isinstance(rest[1], int):
        raw = document["cases"][rest[1]]
        case_id = raw.get("id") if isinstance(raw, dict) else None
        parts.append(f"case {case_id}" if isinstance(case_id, str) else f"case #{rest[1] + 1}")
        rest = rest[2:]
        if len(rest) >= 2 and rest[0] == "steps" and isinstance(rest[1], int):
            parts.append(f"step {rest[1] + 1}")
            rest = rest[2:]
    if rest:
        parts.append(".".join(str(p + 1) if isinstance(p, int) else str(p) for p in rest))
    return (", ".join(parts) + ": ") if parts else ""


def _sentence(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [key for key in error.instance if key not in allowed]
        keys = ", ".join(repr(key) for key in extra)
        return f"unknown key {keys} (allowed: {', '.join(allowed)})"
    if error.validator == "required":
        return str(error.message).replace("is a required property", "is missing")
    return str(error.message)


def load_suites(paths: list[Path]) -> list[Suite]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    suites = [load_suite(file) for file in files]
    seen: dict[str, str] = {}
    for suite in suites:
        for case in suite.cases:
            if case.id in seen:
                raise SuiteError(f"{suite.path}: case id {case.id!r} is also in {seen[case.id]}")
            seen[case.id] = str(suite.path)
    return suites
