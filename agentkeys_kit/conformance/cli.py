"""The ``conformance`` command.

    conformance run   [SUITES…] [TARGET] [--report DIR] [-k TEXT] [--wait-for-worker S] [--review]
    conformance review REPORT_DIR… [--out FILE]             # the reviewers' document from earlier runs
    conformance diff  [SUITES…] [TARGET] --tee2 sim|URL [--tee2-…] [--report DIR]
    conformance serve [TARGET] [--wait S] [--env-file FILE]   # configure a worker, then check it
    conformance env   [TARGET]                                # only the OE_* lines
    conformance list  [SUITES…] [-k TEXT]
    conformance check [SUITES…] [--deviations X]              # validate only
    conformance schema

TARGET is ``--target FILE`` (`target_file`) and/or flags: ``--tee sim|URL``, ``--tee-profile``,
``--tee-key``, ``--tee-mailer``, ``--tee-clock``, ``--tee-sim-endpoints``,
``--tee-oauth2-provider``, ``--deviations``,
``--broker``, ``--listen``, ``--advertise``, ``--port-base``.

Exit status: ``run`` — 0 when every applicable case passed or failed as a listed deviation, 1 when
a case needs attention, 2 for a usage, suite, target or deviation-file error, 3 when the worker was
unreachable or its preflight failed (no case ran). ``diff`` — 0 when the two workers did the same on
every leg of every case, 1 when they differ on at least one case (clause), 2 and 3 as for ``run``.
``serve`` — 0 when the worker passed the preflight, 2, 3. ``check``, ``list`` and ``review`` — 0 or 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from agentkeys_kit.conformance.known_deviations import DEVIATIONS_DIR, load_deviations, shipped_names
from agentkeys_kit.conformance.model import Suite, SuiteError, load_suites, published_schema
from agentkeys_kit.conformance.parties import MAILERS, Parties, PartiesError, PartyAddresses
from agentkeys_kit.conformance.preflight import (
    PreflightFailed,
    WorkerUnreachable,
    failure_message,
    run_preflight,
    wait_for_worker,
)
from agentkeys_kit.conformance.reports import console_line, console_summary, write_reports
from agentkeys_kit.conformance.review import (
    FINDINGS,
    REVIEW_FILE,
    ReviewError,
    findings_section,
    load_run,
    observe,
    write_review,
)
from agentkeys_kit.conformance.runner import CaseResult, Harness, RunResult
from agentkeys_kit.conformance.target_file import TargetFile, TargetFileError, WorkerSpec, load_target_file
from agentkeys_kit.conformance.targets import TargetError, TeeTarget, broker_target, tee_target
from agentkeys_kit.console import quiet_broken_pipe

SUITES_DIR = Path(__file__).with_name("suites")
__all__ = ["DEVIATIONS_DIR", "SUITES_DIR", "main"]

EXIT_OK, EXIT_CASES, EXIT_USAGE, EXIT_WORKER = 0, 1, 2, 3
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance", description="AgentKeys ↔ Heima callback-contract suites")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run suites against a worker and a broker")
    _suite_args(run)
    _target_args(run)
    run.add_argument("--report", metavar="DIR", default="reports", help="directory for every report (default: reports)")
    run.add_argument(
        "--review", action="store_true", help="also write review.md, the reviewers' document, from this run"
    )
    diff = sub.add_parser("diff", help="run suites against two workers and diff every leg")
    _suite_args(diff)
    _target_args(diff)
    _worker_args(diff, "tee2", "the second worker")
    diff.add_argument("--report", metavar="DIR", default="reports", help="directory for diff.md and diff.json")
    serve = sub.add_parser("serve", help="start the parties, print the worker's OE_* lines, wait for it, preflight")
    _target_args(serve, suites=False)
    serve.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the worker (default 300)")
    serve.add_argument("--env-file", type=Path, default=None, help="also write the OE_* lines to this file")
    env = sub.add_parser("env", help="print the OE_* lines a worker needs to reach the harness, and exit")
    _target_args(env, suites=False)
    listing = sub.add_parser("list", help="list the cases of the suites")
    _suite_args(listing)
    check = sub.add_parser("check", help="validate suites and deviation files without running anything")
    _suite_args(check)
    check.add_argument("--deviations", action="append", default=[], help="a deviation file (or shipped name) to check")
    review = sub.add_parser("review", help="write the reviewers' document from the reports of earlier runs")
    review.add_argument("reports", nargs="+", type=Path, metavar="REPORT_DIR", help="directories with transcript.json")
    review.add_argument("--out", type=Path, default=None, help="the document (default: review.md in the first DIR)")
    sub.add_parser("schema", help="print the suite JSON Schema")
    return parser


def _suite_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suites", nargs="*", type=Path, default=[SUITES_DIR], help="suite files or directories")
    parser.add_argument(
        "-k", dest="select", metavar="TEXT", default=None, help="only cases whose id contains this text"
    )


def _target_args(parser: argparse.ArgumentParser, *, suites: bool = True) -> None:
    parser.add_argument(
        "--target", type=Path, metavar="FILE", default=None, help="target file: parties' addresses and the worker"
    )
    _worker_args(parser, "tee", "the worker: 'sim' (in-process) or its URL")
    parser.add_argument(
        "--broker",
        metavar="local|none|URL",
        default=None,
        help="'local' (in-process, default), 'none' or the broker's URL",
    )
    parser.add_argument(
        "--broker-login",
        choices=("heima", "local"),
        default=None,
        help="declared BROKER_LOGIN_BACKEND of a URL broker (a local one is started as each case needs)",
    )
    parser.add_argument("--listen", metavar="HOST", default=None, help="address the parties bind (default 127.0.0.1)")
    parser.add_argument(
        "--advertise", metavar="HOST", default=None, help="host the worker reaches the parties at (default: --listen)"
    )
    parser.add_argument(
        "--port-base", type=int, metavar="N", default=None, help="parties on PORT..PORT+3 (default 8701..8704)"
    )
    if suites:
        parser.add_argument(
            "--wait-for-worker", type=float, default=0.0, metavar="S", help="wait up to S seconds for a URL worker"
        )


def _worker_args(parser: argparse.ArgumentParser, prefix: str, what: str) -> None:
    flag = f"--{prefix}"
    parser.add_argument(flag, metavar="sim|URL", default=None, help=what)
    parser.add_argument(
        f"{flag}-profile", default=None, choices=["upstream", "agentkeys-patch"], help="default agentkeys-patch"
    )
    parser.add_argument(
        f"{flag}-key", metavar="FILE", default=None, help="auth_token_key.bin (private) or the JWT public key"
    )
    parser.add_argument(f"{flag}-mailer", default=None, choices=list(MAILERS), help="declared mailer of a URL worker")
    parser.add_argument(f"{flag}-clock", default=None, choices=["sim", "none"], help="sim: its /_sim/clock may move")
    parser.add_argument(f"{flag}-sim-endpoints", action="store_true", default=None, help="it serves /_sim/ endpoints")
    parser.add_argument(
        f"{flag}-oauth2-provider",
        default=None,
        choices=["harness", "none"],
        help="harness: an omni-sim exchanging OAuth2 codes at the harness's fake Google (OE_SIM_* lines)",
    )
    parser.add_argument(
        f"{flag}-error-era",
        default=None,
        choices=["current", "legacy"],
        help="the worker revision whose error objects it follows: the simulator's --error-era; declared for a URL",
    )
    deviations = "--deviations" if prefix == "tee" else f"{flag}-deviations"
    parser.add_argument(
        deviations,
        dest=f"{prefix}_deviations",
        metavar="NAME|FILE|none",
        default=None,
        help="deviation file, shipped name or none",
    )


@dataclass(frozen=True, slots=True)
class WorkerChoice:
    spec: str
    profile: str
    key: str | None
    mailer: str | None
    clock: bool
    sim_endpoints: bool
    deviations: str | None
    oauth2_provider: bool = False
    error_era: str = "current"

    def target(self) -> TeeTarget:
        return tee_target(
            self.spec,
            self.profile,
            self.key,
            mailer=self.mailer,
            clock=self.clock,
            sim_endpoints=self.sim_endpoints,
            oauth2_provider=self.oauth2_provider,
            error_era=self.error_era,
        )


def _choose(args: argparse.Namespace, prefix: str, spec: WorkerSpec, fallback: WorkerChoice | None) -> WorkerChoice:
    def pick(name: str, default: Any) -> Any:
        value = getattr(args, f"{prefix}_{name}", None)
        if value is not None:
            return value
        from_file = getattr(spec, name)
        if from_file is not None:
            return from_file
        # the second worker of a diff shares the first one's declarations, never its key or deviations
        inherited = fallback is not None and name not in ("key", "deviations")
        return getattr(fallback, name) if inherited else default

    url = getattr(args, prefix, None) or spec.url or ("sim" if fallback is None else None)
    if url is None:
        raise TargetError(f"--{prefix}: which worker? ('sim' or its URL)")
    clock_flag = getattr(args, f"{prefix}_clock", None)
    clock = (clock_flag == "sim") if clock_flag is not None else pick("clock", False)
    provider_flag = getattr(args, f"{prefix}_oauth2_provider", None)
    provider = (provider_flag == "harness") if provider_flag is not None else pick("oauth2_provider", False)
    is_sim = url == "sim"
    return WorkerChoice(
        spec=url,
        profile=pick("profile", "agentkeys-patch"),
        key=pick("key", None),
        mailer=None if is_sim else pick("mailer", None),
        clock=False if is_sim else bool(clock),
        sim_endpoints=False if is_sim else bool(pick("sim_endpoints", False)),
        deviations=pick("deviations", None),
        oauth2_provider=False if is_sim else bool(provider),
        error_era=pick("error_era", "current"),
    )


def _parties(
    args: argparse.Namespace, target: TargetFile, *workers: WorkerChoice, fixed: bool = False
) -> PartyAddresses:
    chosen = args.target is not None or args.listen or args.advertise or args.port_base is not None
    if fixed or chosen or any(worker.spec != "sim" for worker in workers):
        return target.parties(args.listen, args.advertise, args.port_base)
    return PartyAddresses()  # only in-process simulators: free ports, nothing to configure


def _select(suites: list[Suite], text: str | None) -> list[Suite]:
    if not text:
        return suites
    chosen = [replace(suite, cases=tuple(c for c in suite.cases if text in c.id)) for suite in suites]
    if not any(suite.cases for suite in chosen):
        raise SuiteError(f"-k {text!r} selects no case")
    return [suite for suite in chosen if suite.cases]


def _known_cases(suites: list[Suite]) -> set[str]:
    # a deviation may name a case of a shipped suite that this run did not select
    return {case.id for suite in [*suites, *load_suites([SUITES_DIR])] for case in suite.cases}


# ---------------------------------------------------------------------------------------------- running


def _print(line: str = "") -> None:
    print(line, flush=True)


def _print_result(result: CaseResult) -> None:
    _print(console_line(result))


async def execute(
    worker: WorkerChoice,
    broker_spec: str | None,
    parties: PartyAddresses,
    suites: list[Suite],
    known: set[str],
    wait: float,
    broker_login: str | None = None,
) -> RunResult:
    broker = broker_target(broker_spec or "local", broker_login)
    deviations = load_deviations(worker.deviations, "sim" if worker.spec == "sim" else "url", worker.profile, known)
    health = None
    if worker.spec != "sim":
        _early_key_check(worker, wait)
        health = await _wait_for(worker.spec, wait)
    tee = worker.target()  # after the wait: a worker creates its key file on its first start
    harness = Harness(
        tee, broker, deviations.reasons, deviations.steps, parties=parties, deviations_label=deviations.label
    )
    async with harness:
        _print(f"worker: {tee.label}   broker: {broker.label}")
        _print(f"known deviations: {deviations.label}")
        for name, value in tee.declared().items():
            _print(f"  {name}: {value}")
        if tee.kind == "sim":
            _print("the harness serves:")
            for name, url in harness.parties.served().items():
                _print(f"  {name}: {url}")
        else:
            _print("the worker must be configured with (conformance env prints these lines):")
            for name, value in harness.addresses().items():
                _print(f"  {name}={value}")
            await _preflight(harness, health)
        return await harness.run(suites, on_result=_print_result)


def _early_key_check(worker: WorkerChoice, wait: float) -> None:
    """Say at once what cannot improve by waiting; a missing key file may still be written by the worker."""
    if worker.key is None:
        raise TargetError("--tee URL needs --tee-key: the worker's auth_token_key.bin or its JWT public key")
    if not Path(worker.key).exists() and wait <= 0:
        raise TargetError(f"--tee-key {worker.key}: no such file")


async def _wait_for(url: str, wait: float) -> Any:
    async with aiohttp.ClientSession() as http:
        return await wait_for_worker(http, url.rstrip("/") + "/", wait, announce=_print)


async def _preflight(harness: Harness, health: Any) -> None:
    url = harness.tee.url or ""
    checks = await run_preflight(harness, health)
    harness.preflight_checks = [check.to_json() for check in checks]
    _print("preflight:")
    for check in checks:
        _print(check.line)
    if any(not check.ok and check.fatal for check in checks):
        raise PreflightFailed(failure_message(url, checks))


async def serve(args: argparse.Namespace, target: TargetFile) -> int:
    worker = _choose(args, "tee", target.worker, None)
    if worker.spec == "sim":
        raise TargetError("serve is for a worker you run yourself: give --tee URL (or worker.url in the target file)")
    _early_key_check(worker, args.wait)
    parties = _parties(args, target, worker, fixed=True)
    mailer = worker.mailer or "none"
    lines = Parties(parties).worker_env(mailer, oauth2_provider=worker.oauth2_provider)
    url = worker.spec.rstrip("/") + "/"
    _print(f"configure the worker at {url} with these variables (one per line, ready for an env file):")
    _print()
    for name, value in lines.items():
        _print(f"{name}={value}")
    _print()
    if mailer not in ("sendgrid", "smtp"):
        _print("(no mailer lines: declare --tee-mailer sendgrid to run the e-mail cases against this worker)")
    _print(_BACKEND_KEY_NOTE)
    if worker.oauth2_provider:
        _print(_OE_SIM_NOTE)
    if args.env_file is not None:
        args.env_file.write_text("".join(f"{name}={value}\n" for name, value in lines.items()), encoding="utf-8")
        _print(f"(also written to {args.env_file})")
    health = await _wait_for(url, args.wait)
    async with Harness(worker.target(), broker_target("none"), parties=parties) as harness:
        await _preflight(harness, health)
    _print(f"the worker at {url} is configured for this harness; run the suites with the same target, e.g.")
    _print("  conformance run " + " ".join(_target_flags(args)))
    return EXIT_OK


def _target_flags(args: argparse.Namespace) -> list[str]:
    flags: list[str] = []
    for name in (
        "target",
        "tee",
        "tee_profile",
        "tee_key",
        "tee_mailer",
        "tee_clock",
        "tee_oauth2_provider",
        "tee_error_era",
        "listen",
        "advertise",
        "port_base",
    ):
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    if getattr(args, "tee_sim_endpoints", None):
        flags.append("--tee-sim-endpoints")
    return flags


_BACKEND_KEY_NOTE = (
    "(the *_BACKEND_ECDSA_PUBKEY lines are the harness's backend test key, whose secret is published "
    "with this kit: configure them only on a worker under test)"
)
_OE_SIM_NOTE = (
    "(the OE_SIM_* lines are read by omni-sim only: a real worker's OAuth2 endpoints are compiled in, "
    "so only an omni-sim can be declared --tee-oauth2-provider harness)"
)


def env_lines(args: argparse.Namespace, target: TargetFile) -> int:
    worker = _choose(args, "tee", target.worker, None)
    mailer = "sendgrid" if worker.spec == "sim" else worker.mailer or "none"
    parties = Parties(_parties(args, target, worker, fixed=True))  # addresses only: nothing is started
    for name, value in parties.worker_env(mailer, oauth2_provider=worker.oauth2_provider).items():
        _print(f"{name}={value}")
    if mailer not in ("sendgrid", "smtp"):
        print("(no mailer lines: declare --tee-mailer sendgrid to run the e-mail cases)", file=sys.stderr)
    print(_BACKEND_KEY_NOTE, file=sys.stderr)
    if worker.oauth2_provider:
        print(_OE_SIM_NOTE, file=sys.stderr)
    return EXIT_OK


def list_cases(args: argparse.Namespace) -> int:
    suites = _select(load_suites(args.suites), args.select)
    for suite in suites:
        _print(f"{suite.name} — {suite.title} ({suite.path})")
        for case in suite.cases:
            marks = [f"patch clause {case.patch_clause}" if case.patch_clause else ""]
            marks += [f"profile {case.profile}" if case.profile else "", f"only {case.only}" if case.only else ""]
            marks += [f"needs {', '.join(case.needs)}" if case.needs else ""]
            shown = "; ".join(mark for mark in marks if mark)
            _print(f"  {case.id}" + (f"  [{shown}]" if shown else ""))
            _print(f"      {case.clause}")
    _print(f"{sum(len(s.cases) for s in suites)} cases in {len(suites)} suite(s)")
    return EXIT_OK


def check_files(args: argparse.Namespace) -> int:
    suites = _select(load_suites(args.suites), args.select)
    known = _known_cases(suites)
    names = args.deviations or shipped_names()
    for name in names:
        deviations = load_deviations(name, "url", "upstream", known)
        _print(f"deviation file {deviations.label}: valid")
    for suite in suites:
        _print(f"suite {suite.name} ({suite.path}): {len(suite.cases)} cases, valid")
    return EXIT_OK


def run_command(args: argparse.Namespace, target: TargetFile) -> int:
    suites = _select(load_suites(args.suites), args.select)
    known = _known_cases(suites)
    worker = _choose(args, "tee", target.worker, None)
    parties = _parties(args, target, worker)
    broker = args.broker or target.broker
    result = _run(execute(worker, broker, parties, suites, known, args.wait_for_worker, args.broker_login))
    paths = write_reports(result, Path(args.report), extra_sections=[findings_section])
    if args.review:
        paths.append(write_review([result], Path(args.report) / REVIEW_FILE))
    _print(console_summary(result))
    _print("reports: " + ", ".join(str(p) for p in paths))
    return EXIT_OK if result.ok else EXIT_CASES


def review_command(args: argparse.Namespace) -> int:
    runs = [load_run(directory) for directory in args.reports]
    out = args.out if args.out is not None else args.reports[0] / REVIEW_FILE
    path = write_review(runs, out)
    demonstrated = sum(1 for finding in FINDINGS if observe(finding, runs).demonstrated)
    _print(f"review: {path} ({len(runs)} run(s); {demonstrated} of {len(FINDINGS)} findings demonstrated)")
    return EXIT_OK


def diff_command(args: argparse.Namespace, target: TargetFile) -> int:
    from agentkeys_kit.conformance.diff import compare, write_diff

    suites = _select(load_suites(args.suites), args.select)
    known = _known_cases(suites)
    first = _choose(args, "tee", target.worker, None)
    second = _choose(args, "tee2", target.worker2, first)
    parties = _parties(args, target, first, second)
    broker = args.broker or target.broker
    runs = []
    for label, worker in (("A", first), ("B", second)):
        _print(f"\n=== {label}: {worker.spec} ({worker.profile}) ===")
        runs.append(_run(execute(worker, broker, parties, suites, known, args.wait_for_worker, args.broker_login)))
        _print(console_summary(runs[-1]))
    path = write_diff(runs[0], runs[1], Path(args.report))
    compared = compare(runs[0], runs[1])
    differing = [case.case_id for case in compared.cases if not case.same]
    differing += [r.case.id for r in (*compared.only_a, *compared.only_b)]
    if differing:
        shown = ", ".join(differing[:12]) + (" …" if len(differing) > 12 else "")
        _print(f"\nthe workers differ on {len(differing)} case(s): {shown}")
    else:
        _print("\nthe workers did the same on every leg of every case")
    _print(f"diff: {path}")
    return EXIT_CASES if differing else EXIT_OK


# ---------------------------------------------------------------------------------------------- main


def _run(work: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, where SIGTERM (CI timeouts, `kill`) stops the work as Ctrl-C does: by cancelling
    it, so every `async with` closes and the harness removes its temporary directory (and the
    simulator's keys in it) before the process ends."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await work
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


@quiet_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        sys.stdout.write(published_schema())
        return EXIT_OK
    commands: dict[str, Callable[[], int]] = {
        "list": lambda: list_cases(args),
        "check": lambda: check_files(args),
        "review": lambda: review_command(args),
    }
    try:
        if args.command in commands:
            return commands[args.command]()
        target = load_target_file(args.target)
        if args.command == "env":
            return env_lines(args, target)
        if args.command == "serve":
            return _run(serve(args, target))
        if args.command == "run":
            return run_command(args, target)
        return diff_command(args, target)
    except (SuiteError, TargetError, TargetFileError, PartiesError, ReviewError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (WorkerUnreachable, PreflightFailed) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return EXIT_WORKER
    except KeyboardInterrupt:
        print("conformance: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
