"""Suites as files: YAML validated against the published JSON Schema before anything runs.

A suite file::

    suite: tee                      # name, also the id prefix of its cases
    title: The worker's contract
    cases:
      - id: tee.login.evm.wildmeta  # unique across suites
        clause: omni_userLogin for wildmeta calls post_heima_login with the access token
        profile: agentkeys-patch    # optional: a clause of the agentkeys patch
        only: upstream              # optional: applies to targets of this profile only
        needs: [smtp]               # optional: capabilities the target must have
        steps: [ … ]

Step kinds (one per step): ``let``, ``rpc``, ``raw``, ``broker``, ``callback``, ``email``,
``clock``, ``fuzz``. See the schema (`conformance/suite.schema.json`) for every field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agentkeys_kit.conformance.expr import function_reference

SCHEMA_PATH = Path(__file__).with_name("suite.schema.json")
STEP_KINDS = ("let", "rpc", "raw", "broker", "callback", "email", "clock", "fuzz")
CAPABILITIES = ("sim-clock", "smtp", "tee-signing-key", "broker", "broker-clock", "sim-internals", "oauth2-provider")
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
_CALLBACK_EXPECTATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["op"],
    "properties": {
        "api": {
            "anyOf": [
                {"enum": ["pumpx", "agentkeys", "wildmeta", "any"]},
                {"type": "string", "pattern": "^\\$\\{.+\\}$"},
            ]
        },
        "op": _CALLBACK_OPS,
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
                    "only": {"enum": list(PROFILES)},
                    "needs": {"type": "array", "items": {"enum": list(CAPABILITIES)}},
                    "steps": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "oneOf": [
                                _step("let", _MAP),
                                _step(
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
                                _step(
                                    "raw",
                                    {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["body"],
                                        "properties": {
                                            "body": {"type": "string"},
                                            "content_type": {"type": "string"},
                                            "method": {"enum": ["GET", "POST", "PUT"]},
                                        },
                                    },
                                    callbacks=True,
                                ),
                                _step(
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
                                _step(
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
                                _step(
                                    "email",
                                    {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["to"],
                                        "properties": {"to": {"type": "string"}},
                                    },
                                ),
                                _step(
                                    "clock",
                                    {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["advance"],
                                        "properties": {
                                            "advance": {"type": "integer", "minimum": 0},
                                            "target": {"enum": ["tee", "broker"]},
                                        },
                                    },
                                ),
                                _step(
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
                            ]
                        },
                    },
                },
            },
        },
    },
}


class SuiteError(ValueError):
    """A suite file that is not valid; the message names the file and the failing path."""


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
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: cannot read YAML: {exc}") from None
    errors = sorted(_validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        worst = jsonschema.exceptions.best_match(errors)
        where = "/".join(str(p) for p in worst.absolute_path) or "(root)"
        raise SuiteError(f"{path}: {where}: {worst.message}")
    cases = []
    for raw_case in document["cases"]:
        steps = tuple(
            Step(i, next(kind for kind in STEP_KINDS if kind in spec), spec) for i, spec in enumerate(raw_case["steps"])
        )
        cases.append(
            Case(
                id=raw_case["id"],
                clause=raw_case["clause"],
                suite=document["suite"],
                steps=steps,
                profile=raw_case.get("profile"),
                only=raw_case.get("only"),
                needs=tuple(raw_case.get("needs", ())),
                tags=tuple(raw_case.get("tags", ())),
                description=raw_case.get("description", ""),
                source=str(path),
            )
        )
    return Suite(document["suite"], document["title"], path, tuple(cases), document.get("description", ""), document)


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
