"""`conformance run SUITES… --tee sim|URL [--tee-profile …] [--tee-key …] --broker local|URL --report DIR`.

Exit status 0 only when every applicable case passed (known deviations must fail as listed;
one that passes fails the run, so the lists cannot go stale). `conformance diff` runs the same
suites against two workers and writes what each did on every leg. `conformance schema` prints
the suite JSON Schema.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from agentkeys_kit.conformance.model import SuiteError, load_suites, published_schema
from agentkeys_kit.conformance.reports import console_line, console_summary, write_reports
from agentkeys_kit.conformance.runner import CaseResult, Harness, RunResult
from agentkeys_kit.conformance.targets import TargetError, broker_target, tee_target

SUITES_DIR = Path(__file__).with_name("suites")
DEVIATIONS_DIR = Path(__file__).with_name("deviations")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance", description="AgentKeys ↔ Heima callback-contract suites")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run suites against a worker and a broker")
    _target_args(run)
    run.add_argument("--report", default="reports", help="directory for every report")
    diff = sub.add_parser("diff", help="run suites against two workers and diff every leg")
    _target_args(diff)
    diff.add_argument("--tee2", required=True, help="the second worker: sim or URL")
    diff.add_argument("--tee2-profile", default=None, help="profile of the second worker")
    diff.add_argument("--tee2-key", default=None)
    diff.add_argument("--report", default="reports")
    sub.add_parser("schema", help="print the suite JSON Schema")
    return parser


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suites", nargs="*", type=Path, default=[SUITES_DIR], help="suite files or directories")
    parser.add_argument("--tee", default="sim", help="'sim' (in-process) or the worker's URL")
    parser.add_argument("--tee-profile", default="agentkeys-patch", choices=["upstream", "agentkeys-patch"])
    parser.add_argument("--tee-key", default=None, help="the worker's JWT public key or auth_token_key.bin")
    parser.add_argument("--broker", default="local", help="'local' (in-process), 'none' or the broker's URL")
    parser.add_argument("--deviations", type=Path, default=None, help="known-deviation file for this target")
    parser.add_argument("-k", dest="select", default=None, help="only cases whose id contains this text")


@dataclass(frozen=True, slots=True)
class Deviations:
    reasons: dict[str, str]
    steps: dict[str, int]
    path: Path | None


def load_deviations(path: Path | None, tee: str, profile: str, known_cases: set[str]) -> Deviations:
    """The target's known-deviation file: ``deviations: [{case, reason, step?}]``. Every listed
    case must exist; `step` (1-based) pins where the case must fail."""
    if path is None:
        name = f"sim-{profile}.yaml" if tee == "sim" else f"worker-{profile}.yaml"
        path = DEVIATIONS_DIR / name
        if not path.exists():
            return Deviations({}, {}, None)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        entries = document.get("deviations", [])
        reasons = {str(entry["case"]): str(entry.get("reason", "")) for entry in entries}
        steps = {str(entry["case"]): int(entry["step"]) for entry in entries if "step" in entry}
    except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise SuiteError(f"{path}: not a deviation file: {exc}") from None
    unknown = sorted(set(reasons) - known_cases)
    if unknown:
        raise SuiteError(f"{path}: lists cases no suite has: {', '.join(unknown)}")
    return Deviations(reasons, steps, path)


async def execute(args: argparse.Namespace, tee_spec: str, profile: str, key: str | None) -> RunResult:
    suites = load_suites(args.suites)
    # a deviation may name a case of a shipped suite that this run did not select
    known = {case.id for suite in [*suites, *load_suites([SUITES_DIR])] for case in suite.cases}
    if args.select:
        suites = [
            type(suite)(
                suite.name,
                suite.title,
                suite.path,
                tuple(c for c in suite.cases if args.select in c.id),
                suite.description,
            )
            for suite in suites
        ]
    deviations = load_deviations(args.deviations, tee_spec, profile, known)
    tee = tee_target(tee_spec, profile, key)
    broker = broker_target(args.broker)
    async with Harness(tee, broker, deviations.reasons, deviations.steps) as harness:
        print(f"worker: {tee.label}   broker: {broker.label}")
        if deviations.path is not None:
            print(f"known deviations: {deviations.path} ({len(deviations.reasons)} cases)")
        print("the harness serves (a real worker under test is configured with these):" if tee.kind != "sim"
              else "the harness serves:")  # fmt: skip
        for name, value in harness.addresses().items():
            print(f"  {name}={value}")
        return await harness.run(suites, on_result=_print_result)


def _print_result(result: CaseResult) -> None:
    print(console_line(result), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        sys.stdout.write(published_schema())
        return 0
    try:
        if args.command == "run":
            result = asyncio.run(execute(args, args.tee, args.tee_profile, args.tee_key))
            paths = write_reports(result, Path(args.report))
            print(console_summary(result))
            print("reports: " + ", ".join(str(p) for p in paths))
            return 0 if result.ok else 1
        first = asyncio.run(execute(args, args.tee, args.tee_profile, args.tee_key))
        second = asyncio.run(execute(args, args.tee2, args.tee2_profile or args.tee_profile, args.tee2_key))
        from agentkeys_kit.conformance.diff import write_diff

        path = write_diff(first, second, Path(args.report))
        print(f"diff: {path}")
        return 0
    except (SuiteError, TargetError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
