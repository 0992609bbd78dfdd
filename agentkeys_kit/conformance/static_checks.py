"""What a suite file gets wrong that the JSON Schema cannot see, found when the file loads.

* an unknown ``$`` key: every mapping key that starts with ``$`` must be a function of `expr` or a
  matcher of `matchers` (matchers may also be bound with ``let`` and used in an ``expect`` later);
* an unknown field in a callback expectation: ``expect`` is matched against the callback as the
  receiver records it (`CALLBACK_FIELDS`), and a ``capture`` path starts with ``request.<field>``
  or ``response.<status|body>``;
* an undefined variable: ``${name…}`` must name a variable that exists when the value is
  evaluated — the harness's own (`BUILTIN_VARIABLES`), an earlier ``let`` entry, or an earlier
  ``capture`` — in the order the runner evaluates a step: its body and every callback's ``api`` and
  ``reply`` before the call; each callback's ``expect`` after the captures of the callbacks before
  it; the step's ``expect`` after every callback capture; the step's own ``capture`` last.

Each problem is a `StaticProblem` with the case, the step (from 1) and a sentence; `load_suite`
turns the first ones into a `SuiteError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agentkeys_kit.conformance.expr import FUNCTIONS
from agentkeys_kit.conformance.matchers import MATCHER_NAMES

BUILTIN_VARIABLES = frozenset({"tee", "broker", "case", "oauth2"})
#: what a callback expectation is matched against (`receiver.ObservedCallback.request_view`)
CALLBACK_FIELDS = ("api", "op", "method", "path", "query", "raw_query", "headers", "body", "body_text")
CALLBACK_REPLY_FIELDS = ("status", "body")
_VARIABLE = re.compile(r"\$\{([^{}]+)\}")


@dataclass(frozen=True, slots=True)
class StaticProblem:
    case: str
    step: int | None  # from 1
    problem: str

    def __str__(self) -> str:
        where = f"case {self.case}" + (f", step {self.step}" if self.step is not None else "")
        return f"{where}: {self.problem}"


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def dollar_keys(value: Any, where: str = "") -> Iterator[str]:
    """A sentence for every unknown ``$`` key in `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.startswith("$") and key not in FUNCTIONS and key not in MATCHER_NAMES:
                known = sorted([*FUNCTIONS, *MATCHER_NAMES])
                yield f"{where}unknown function or matcher {key}{_suggest(key, known)}"
            yield from dollar_keys(item, where)
    elif isinstance(value, list):
        for item in value:
            yield from dollar_keys(item, where)


def variables(value: Any) -> Iterator[str]:
    """The head name of every ``${…}`` reference in `value` (strings, keys and nested values)."""
    if isinstance(value, str):
        for found in _VARIABLE.finditer(value):
            yield found.group(1).strip().split(".")[0]
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from variables(key)
            yield from variables(item)
    elif isinstance(value, list):
        for item in value:
            yield from variables(item)


def _undefined(value: Any, defined: set[str], where: str) -> Iterator[str]:
    for name in variables(value):
        if name not in defined:
            hint = _suggest(name, sorted(defined))
            yield f"{where}${{{name}}} is not defined by any earlier step{hint}"


def check_case(case_id: str, steps: list[dict[str, Any]], kinds: list[str]) -> list[StaticProblem]:
    problems: list[StaticProblem] = []
    defined = set(BUILTIN_VARIABLES)
    for number, (spec, kind) in enumerate(zip(steps, kinds, strict=True), start=1):
        found: list[str] = []
        body = spec.get(kind)
        found += dollar_keys(body, f"{kind}: ")
        found += dollar_keys(spec.get("expect"), "expect: ")
        if kind == "let" and isinstance(body, dict):
            for name, value in body.items():
                found += _undefined(value, defined, f"let {name}: ")
                defined.add(str(name))
        else:
            found += _undefined(body, defined, f"{kind}: ")
        local = set(defined)
        for index, callback in enumerate(spec.get("callbacks") or [], start=1):
            label = f"callback {index}: "
            found += _undefined({"api": callback.get("api"), "reply": callback.get("reply")}, defined, label)
            found += dollar_keys(callback.get("reply"), label + "reply: ")
            found += dollar_keys(callback.get("expect"), label + "expect: ")
            found += _callback_fields(callback, label)
            found += _undefined(callback.get("expect"), local, label + "expect: ")
            local |= {str(name) for name in (callback.get("capture") or {})}
        found += _undefined(spec.get("expect"), local, "expect: ")
        defined = local | {str(name) for name in (spec.get("capture") or {})}
        problems += [StaticProblem(case_id, number, sentence) for sentence in found]
    return problems


def _callback_fields(callback: dict[str, Any], label: str) -> Iterator[str]:
    expect = callback.get("expect") or {}
    if isinstance(expect, dict):
        for name in expect:
            if name not in CALLBACK_FIELDS and not str(name).startswith("$"):
                yield (
                    f"{label}expect: a callback has no field {name!r}{_suggest(str(name), list(CALLBACK_FIELDS))} "
                    f"(fields: {', '.join(CALLBACK_FIELDS)})"
                )
    for name, path in (callback.get("capture") or {}).items():
        head, _, rest = str(path).partition(".")
        field = rest.split(".")[0]
        fields = {"request": CALLBACK_FIELDS, "response": CALLBACK_REPLY_FIELDS}.get(head)
        if fields is None or field not in fields:
            yield (
                f"{label}capture {name}: {path!r} is not a field of the callback "
                f"(request.<{'|'.join(CALLBACK_FIELDS)}> or response.<status|body>)"
            )
