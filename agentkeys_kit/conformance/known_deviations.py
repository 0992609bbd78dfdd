"""Known-deviation files: the cases a target is known to fail, each with its reason and step.

A file is ``deviations: [{case, reason, step?}]`` (YAML). Every listed case must exist in some
suite; `step` (1-based, the numbering failures use) pins where the case must fail. A listed case
that passes, or fails at another step, or errs, fails the run: the lists cannot go stale.

Which file applies (`--deviations`, and `--tee2-deviations` for the second worker of a diff):

* nothing given: the shipped file for the target — ``sim-<profile>.yaml`` for the in-process
  simulator, ``worker-<profile>.yaml`` for a URL — when it exists;
* ``none``: no file;
* the name of a shipped file (``sim-upstream``, ``worker-upstream``): that file;
* a path: that file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agentkeys_kit.conformance.model import SuiteError, yaml_problem

DEVIATIONS_DIR = Path(__file__).with_name("deviations")


@dataclass(frozen=True, slots=True)
class Deviations:
    reasons: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.path} ({len(self.reasons)} cases)" if self.path is not None else "none"


def shipped_names() -> list[str]:
    return sorted(path.stem for path in DEVIATIONS_DIR.glob("*.yaml"))


def resolve(spec: str | Path | None, tee_kind: str, profile: str) -> Path | None:
    if spec is None:
        default = DEVIATIONS_DIR / f"{'sim' if tee_kind == 'sim' else 'worker'}-{profile}.yaml"
        return default if default.exists() else None
    if str(spec) == "none":
        return None
    shipped = DEVIATIONS_DIR / f"{spec}.yaml"
    if "/" not in str(spec) and shipped.exists():
        return shipped
    path = Path(spec)
    if not path.exists():
        raise SuiteError(f"deviation file {spec}: no such file (shipped: {', '.join(shipped_names())}; or 'none')")
    return path


def load_deviations(spec: str | Path | None, tee_kind: str, profile: str, known_cases: set[str]) -> Deviations:
    path = resolve(spec, tee_kind, profile)
    if path is None:
        return Deviations()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}{yaml_problem(exc)}") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        entries = document.get("deviations", []) or []
        reasons = {str(entry["case"]): str(entry.get("reason", "")) for entry in entries}
        steps = {str(entry["case"]): int(entry["step"]) for entry in entries if "step" in entry}
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        why = f"an entry has no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
        raise SuiteError(f"{path}: not a deviation file: {why}") from None
    unknown = sorted(set(reasons) - known_cases)
    if unknown:
        raise SuiteError(f"{path}: lists cases no suite has: {', '.join(unknown)}")
    bad_steps = sorted(case for case, step in steps.items() if step < 1)
    if bad_steps:
        raise SuiteError(f"{path}: step must be 1 or more (steps count from 1) for {', '.join(bad_steps)}")
    return Deviations(reasons, steps, path)
