#!/usr/bin/env python3
"""Mutation testing of the conformance suites: how many seeded faults turn the main command red.

    python3 scripts/dev.py mutate [--per-package N] [--seed S] [--keep] [--max-children K]
    python3 scripts/dev.py mutate --only NAME... | --last-survivors   # re-run a few mutants

The tool is mutmut (pinned in the ``mutate`` extra; configured under ``[tool.mutmut]`` in
pyproject.toml): it mutates ``agentkeys_kit/protocol/``, ``agentkeys_kit/omni_sim/`` and the
broker's handlers (``broker/callbacks.py``, ``broker/grants.py``), and its test command is the
conformance suites collected by pytest with ``--conformance-runs e2e`` — what ``dev.py e2e`` runs:
every case against the patched and the upstream simulator (the upstream deviation file judging)
and in the legacy error era, with a local broker. mutmut runs, for each mutant, only the cases
that executed the mutated function (it records them once), and stops at the first red one.

The full set (about 8,000 mutants) takes far longer than a working session, so this script takes
a sample: `--per-package` mutants from each package (protocol, omni_sim, broker), drawn with a
seeded random generator from the sorted mutant names (the seed is printed; the same seed and the
same sources give the same sample). It prints, per package and overall, the mutants killed
(a red case, or a run that timed out) against those that survived or that no case executes, the
score, and every surviving mutant with the command that shows its diff. Survivors accepted as
equivalent or out of reach are listed with their reasons in
``agentkeys_kit/conformance/mutation_survivors.yaml`` and left out of the score (and printed as
such); a listed mutant that is now killed is reported, so the list cannot go stale unnoticed.

To work on survivors without the whole sample: ``--only NAME...`` runs exactly those mutants and
``--last-survivors`` the open survivors (not killed, not accepted, never run) of the last run's
sample, drawn again with its seed (kept in ``mutants/mutate-sample.json``) on the current sources.
Both bring ``mutants/`` up to date first; mutmut keeps the results of functions whose source did
not change and records which cases run a function for new cases, but for a new function only in a
full collection: add ``--fresh-stats`` after such a change. The results are written where the
sample's are, so ``--report-only --seed S`` afterwards prints the sample's score, re-run mutants
included (a kill recorded earlier stands only as long as no case it relied on was weakened).

Only the mutant generation calls into mutmut's module (its CLI has no "generate only" command);
the runs go through its CLI, and the results are read from the ``.meta`` files it writes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
SAMPLE_FILE = MUTANTS / "mutate-sample.json"
SURVIVORS_FILE = ROOT / "agentkeys_kit" / "conformance" / "mutation_survivors.yaml"
PACKAGES = {
    "protocol": "agentkeys_kit.protocol.",
    "omni_sim": "agentkeys_kit.omni_sim.",
    "broker": "agentkeys_kit.broker.",
}
# mutmut.stats.status_by_exit_code, reduced to what the score needs
KILLED = {1, 3, 36, -24, 24, 152, 255, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}


def package_of(name: str) -> str:
    return next(package for package, prefix in PACKAGES.items() if name.startswith(prefix))


def generate() -> None:
    """Copy the sources into mutants/ and write every mutant (mutmut's own first step of `run`)."""
    import os

    os.chdir(ROOT)
    from mutmut import __main__ as mm  # the pinned mutmut's own functions, in the order `run` calls them

    mm.set_mutant_under_test("mutant_generation")
    MUTANTS.mkdir(exist_ok=True)
    mm.copy_src_dir()
    mm.copy_also_copy_files()
    mm.setup_source_paths()
    mm.store_lines_covered_by_tests()
    mm.create_mutants(2)


def meta_files() -> list[Path]:
    return sorted(MUTANTS.rglob("*.py.meta"))


def exit_codes() -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in meta_files():
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return codes


def sample(names: list[str], per_package: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    chosen: list[str] = []
    for package in PACKAGES:
        pool = sorted(name for name in names if package_of(name) == package)
        chosen += rng.sample(pool, min(per_package, len(pool)))
    return chosen


def save_sample(chosen: list[str], seed: int, per_package: int) -> None:
    document = {"seed": seed, "per_package": per_package, "chosen": chosen}
    SAMPLE_FILE.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def open_survivors(chosen: list[str], codes: dict[str, int | None], accepted: dict[str, str]) -> list[str]:
    """The mutants of `chosen` that a score counts against the suites: not killed, not accepted."""
    return [name for name in chosen if codes.get(name) not in KILLED and name not in accepted]


def last_survivors(codes: dict[str, int | None]) -> list[str]:
    """The open survivors of the last run's sample, drawn again with its seed from the mutants of
    the current sources (the same sample when the sources are unchanged)."""
    if not SAMPLE_FILE.exists():
        raise SystemExit(f"no earlier sampled run: {SAMPLE_FILE} is missing")
    document = json.loads(SAMPLE_FILE.read_text(encoding="utf-8"))
    chosen = sample(sorted(codes), int(document["per_package"]), int(document["seed"]))
    return open_survivors(chosen, codes, accepted_survivors())


def accepted_survivors() -> dict[str, str]:
    if not SURVIVORS_FILE.exists():
        return {}
    document = yaml.safe_load(SURVIVORS_FILE.read_text(encoding="utf-8")) or {}
    return {str(entry["mutant"]): str(entry["reason"]) for entry in document.get("accepted", [])}


def report(chosen: list[str], codes: dict[str, int | None], what: str, command: str, elapsed: float) -> int:
    accepted = accepted_survivors()
    rows: dict[str, Counter[str]] = {package: Counter() for package in PACKAGES}
    survivors: list[tuple[str, str]] = []
    stale: list[str] = []
    for name in chosen:
        code = codes.get(name)
        package = package_of(name)
        if code in KILLED:
            rows[package]["killed"] += 1
            if name in accepted:
                stale.append(name)
        elif name in accepted:
            rows[package]["accepted"] += 1
        elif code in SURVIVED or code in NO_TESTS:
            kind = "survived" if code in SURVIVED else "no case runs it"
            rows[package]["survived"] += 1
            survivors.append((name, kind))
        else:
            rows[package]["unchecked"] += 1
            survivors.append((name, f"not checked (exit code {code})"))
    print(f"\nmutation score of the conformance suites ({what}, {elapsed / 60:.1f} min)")
    print(f"reproduce: {command}")
    print(f"{'package':<10} {'killed':>7} {'survived':>9} {'accepted':>9} {'score':>7}")
    total = Counter[str]()
    for package, row in rows.items():
        total.update(row)
        print(_line(package, row))
    print(_line("overall", total))
    if survivors:
        print("\nsurviving mutants (show one with: .venv/bin/mutmut show NAME):")
        for name, kind in survivors:
            print(f"  {name}  [{kind}]")
    listed = [name for name in chosen if name in accepted and codes.get(name) not in KILLED]
    if listed:
        print(f"\naccepted survivors in this sample ({SURVIVORS_FILE.relative_to(ROOT)}):")
        for name in listed:
            print(f"  {name}: {accepted[name]}")
    if stale:
        print("\nlisted as accepted but now killed (remove them from the list):")
        for name in stale:
            print(f"  {name}")
    return 0


def _line(label: str, row: Counter[str]) -> str:
    decided = row["killed"] + row["survived"] + row["unchecked"]
    score = f"{100 * row['killed'] / decided:.1f}%" if decided else "-"
    return f"{label:<10} {row['killed']:>7} {row['survived'] + row['unchecked']:>9} {row['accepted']:>9} {score:>7}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-package", type=int, default=40, help="mutants sampled per package (default 40)")
    parser.add_argument("--seed", type=int, default=None, help="sample seed (default: drawn and printed)")
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ and mutmut's recorded stats")
    parser.add_argument("--max-children", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--report-only", action="store_true", help="print the score of the last run's sample")
    chosen_by_name = parser.add_mutually_exclusive_group()
    chosen_by_name.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run exactly these mutants (mutants/ brought up to date), not a sample",
    )
    chosen_by_name.add_argument(
        "--last-survivors",
        action="store_true",
        help="run the open survivors of the last run's sample (its seed, the current sources)",
    )
    parser.add_argument(
        "--fresh-stats",
        action="store_true",
        help="with --only/--last-survivors: record again which cases run each function (after a source change)",
    )
    args = parser.parse_args()
    if args.only or args.last_survivors:
        return rerun(args.only, args.max_children, fresh_stats=args.fresh_stats)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    command = f"python3 scripts/dev.py mutate --per-package {args.per_package} --seed {seed}"
    started = time.monotonic()
    if not args.keep and not args.report_only and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    if not args.report_only:
        print(f"seed {seed}: generating mutants", flush=True)
        generate()
    names = sorted(exit_codes())
    counts = Counter(package_of(name) for name in names)
    print("mutants: " + ", ".join(f"{package} {counts[package]}" for package in PACKAGES), flush=True)
    chosen = sample(names, args.per_package, seed)
    if MUTANTS.exists():
        save_sample(chosen, seed, args.per_package)
    if not args.report_only:
        run_mutmut(chosen, args.max_children)
    what = f"seed {seed}, {len(chosen)} sampled mutants"
    return report(chosen, exit_codes(), what, command, time.monotonic() - started)


def rerun(only: list[str] | None, max_children: int, *, fresh_stats: bool) -> int:
    """Run the named mutants (or the last sample's open survivors) on mutants/ brought up to date
    with the sources (mutmut keeps the results of functions that did not change)."""
    started = time.monotonic()
    if not MUTANTS.exists():
        raise SystemExit("no mutants/ yet: run a sample first (python3 scripts/dev.py mutate --seed S)")
    if fresh_stats:  # mutmut records the cases of a function it has never seen only in a full collection
        (MUTANTS / "mutmut-stats.json").unlink(missing_ok=True)
    generate()
    codes = exit_codes()
    chosen = only if only is not None else last_survivors(codes)
    unknown = sorted(set(chosen) - set(codes))
    if unknown:
        raise SystemExit("no such mutant: " + ", ".join(unknown))
    if not chosen:
        print("the last run's sample has no open survivor")
        return 0
    run_mutmut(chosen, max_children)
    command = "python3 scripts/dev.py mutate --only " + " ".join(chosen)
    what = f"{len(chosen)} named mutants, not a sample"
    return report(chosen, exit_codes(), what, command, time.monotonic() - started)


def run_mutmut(chosen: list[str], max_children: int) -> None:
    mutmut = Path(sys.executable).with_name("mutmut")
    run = [str(mutmut), "run", "--max-children", str(max_children), *chosen]
    log = MUTANTS / "mutmut-run.log"
    print(f"running {len(chosen)} mutants with mutmut ({max_children} at once); its output: {log}", flush=True)
    with log.open("wb") as out:
        subprocess.run(run, cwd=ROOT, check=False, stdout=out, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    raise SystemExit(main())
