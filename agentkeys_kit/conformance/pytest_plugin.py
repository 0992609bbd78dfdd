"""pytest collects the YAML suites: one test per case, so CI runs them with the unit tests.

Each case runs against the simulator in the profile it applies to (``agentkeys-patch`` unless
it says ``only: upstream``) and the error era it applies to (``current`` unless it says ``era:
legacy``), and a local broker. Every patch clause (``profile: agentkeys-patch``) is also run
against the ``upstream`` simulator, where it must fail: that is the proof the suite tells today's
worker from the patched one. Nothing is skipped.

``--conformance-runs e2e`` collects what ``dev.py e2e`` runs instead: every case against the
patched and the upstream simulator (judged with the shipped deviation files: a listed case must
fail where the list says, any other must pass) and, in the patched profile, in the legacy error era
as well; a case that does not apply to a run is not collected for it. `dev.py mutate` uses it as
the mutation test command.

Under mutmut (``dev.py mutate``) each mutant's worker is forked from a process that has already
imported the kit, so code that runs at import time (decorators such as the broker's
``@callback``, tables built from functions) would keep the unmutated behaviour. When pytest starts
in such a worker (``MUTANT_UNDER_TEST`` names a mutant), this plugin first drops every
``agentkeys_kit`` module from ``sys.modules``, so the run imports them afresh with the mutant
active; that is why it reaches the rest of the kit only through `_kit` at call time.

Enabled with ``-p agentkeys_kit.conformance.pytest_plugin`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from agentkeys_kit.conformance.known_deviations import Deviations
    from agentkeys_kit.conformance.model import Case
    from agentkeys_kit.conformance.runner import CaseResult, Harness

#: what mutmut sets MUTANT_UNDER_TEST to when no mutant is active
_MUTMUT_PHASES = frozenset({"", "stats", "fail", "mutant_generation", "list_all_tests"})


def _kit(module: str) -> Any:
    """A module of the harness, resolved when used (it may have been imported afresh)."""
    return importlib.import_module(f"agentkeys_kit.conformance.{module}")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("MUTANT_UNDER_TEST", "") in _MUTMUT_PHASES:
        return
    for name in [n for n in sys.modules if n.split(".")[0] == "agentkeys_kit" and n != __name__]:
        del sys.modules[name]


T = TypeVar("T")
SUITES_DIR = Path(__file__).with_name("suites")


class _Loop:
    """One event loop on a thread for the whole session, with one harness per profile."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="conformance-harness", daemon=True)
        self.thread.start()
        self.harnesses: dict[str, Harness] = {}

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=300)

    def harness(self, profile: str, era: str = "current", deviations: Deviations | None = None) -> Harness:
        key = f"{profile}/{era}/{'deviations' if deviations else 'strict'}"
        if key not in self.harnesses:
            found = deviations or _kit("known_deviations").Deviations()
            targets = _kit("targets")
            target = targets.tee_target("sim", profile, None, error_era=era)
            harness: Harness = _kit("runner").Harness(
                target, targets.broker_target("local"), found.reasons, found.steps
            )
            self.run(harness.__aenter__())
            self.harnesses[key] = harness
        return self.harnesses[key]

    def close(self) -> None:
        for harness in self.harnesses.values():
            self.run(harness.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


_LOOP: _Loop | None = None


def _shared_loop() -> _Loop:
    global _LOOP
    if _LOOP is None:
        _LOOP = _Loop()
    return _LOOP


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--conformance-runs",
        choices=["main", "e2e"],
        default="main",
        help="main: each case in its own profile and era (default); e2e: also what dev.py e2e runs "
        "(every case against the upstream simulator with its deviation file, and in the legacy era)",
    )


_UPSTREAM_DEVIATIONS: Deviations | None = None


def _upstream_deviations() -> Deviations:
    global _UPSTREAM_DEVIATIONS
    if _UPSTREAM_DEVIATIONS is None:
        known = {case.id for suite in _kit("model").load_suites([SUITES_DIR]) for case in suite.cases}
        _UPSTREAM_DEVIATIONS = _kit("known_deviations").load_deviations(None, "sim", "upstream", known)
    return _UPSTREAM_DEVIATIONS


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _LOOP
    if _LOOP is not None:
        _LOOP.close()
        _LOOP = None


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix == ".yaml" and file_path.parent == SUITES_DIR:
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        suite = _kit("model").load_suite(self.path)
        e2e = self.config.getoption("--conformance-runs", "main") == "e2e"
        for case in suite.cases:
            profile = case.only or "agentkeys-patch"
            era = case.era or "current"
            suffix = "" if era == "current" else f",{era}"
            yield CaseItem.from_parent(
                self, name=f"{case.id}[{profile}{suffix}]", case=case, profile=profile, era=era, must_fail=False
            )
            if case.is_patch_clause:
                yield CaseItem.from_parent(
                    self,
                    name=f"{case.id}[upstream-must-fail{suffix}]",
                    case=case,
                    profile="upstream",
                    era=era,
                    must_fail=True,
                )
            if not e2e:
                continue
            if case.only is None and not case.is_patch_clause:
                yield CaseItem.from_parent(
                    self,
                    name=f"{case.id}[upstream{suffix}]",
                    case=case,
                    profile="upstream",
                    era=era,
                    must_fail=False,
                    deviations=_upstream_deviations(),
                )
            if case.era is None and case.only in (None, "agentkeys-patch"):
                yield CaseItem.from_parent(
                    self, name=f"{case.id}[{profile},legacy]", case=case, profile=profile, era="legacy", must_fail=False
                )


class CaseFailed(Exception):
    pass


class CaseItem(pytest.Item):
    def __init__(
        self,
        *,
        case: Case,
        profile: str,
        must_fail: bool,
        era: str = "current",
        deviations: Deviations | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.profile = profile
        self.era = era
        self.must_fail = must_fail
        self.deviations = deviations
        self.result: CaseResult | None = None

    def runtest(self) -> None:
        loop = _shared_loop()
        harness = loop.harness(self.profile, self.era, self.deviations)
        self.result = loop.run(harness.run_case(self.case))
        verdict = self.result.verdict
        Verdict = _kit("runner").Verdict
        if self.deviations is not None and verdict is Verdict.EXPECTED_FAILURE:
            return
        if self.must_fail:
            if verdict is not Verdict.FAILED:
                raise CaseFailed(
                    f"patch clause {self.case.id} did not fail against the upstream simulator ({verdict.value}): "
                    "the suite cannot tell today's worker from the patched one"
                )
            return
        if verdict is not Verdict.PASSED:
            raise CaseFailed(f"{verdict.value}: {self.result.reason}\n\n{self.result.failure_report}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"conformance case {self.case.id} ({self.profile}, {self.era}): {self.case.clause}"
