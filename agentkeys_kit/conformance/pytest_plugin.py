"""pytest collects the YAML suites: one test per case, so CI runs them with the unit tests.

Each case runs against the simulator in the profile it applies to (``agentkeys-patch`` unless
it says ``only: upstream``) and a local broker. Every patch clause (``profile:
agentkeys-patch``) is also run against the ``upstream`` simulator, where it must fail: that is
the proof the suite tells today's worker from the patched one. Nothing is skipped.

Enabled with ``-p agentkeys_kit.conformance.pytest_plugin`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentkeys_kit.conformance.model import Case, load_suite
from agentkeys_kit.conformance.runner import CaseResult, Harness, Verdict
from agentkeys_kit.conformance.targets import broker_target, tee_target

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

    def harness(self, profile: str) -> Harness:
        if profile not in self.harnesses:
            harness = Harness(tee_target("sim", profile, None), broker_target("local"))
            self.run(harness.__aenter__())
            self.harnesses[profile] = harness
        return self.harnesses[profile]

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
        suite = load_suite(self.path)
        for case in suite.cases:
            profile = case.only or "agentkeys-patch"
            yield CaseItem.from_parent(self, name=f"{case.id}[{profile}]", case=case, profile=profile, must_fail=False)
            if case.is_patch_clause:
                yield CaseItem.from_parent(
                    self, name=f"{case.id}[upstream-must-fail]", case=case, profile="upstream", must_fail=True
                )


class CaseFailed(Exception):
    pass


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, profile: str, must_fail: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.profile = profile
        self.must_fail = must_fail
        self.result: CaseResult | None = None

    def runtest(self) -> None:
        loop = _shared_loop()
        harness = loop.harness(self.profile)
        self.result = loop.run(harness.run_case(self.case))
        verdict = self.result.verdict
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
        return self.path, 0, f"conformance case {self.case.id} ({self.profile}): {self.case.clause}"
