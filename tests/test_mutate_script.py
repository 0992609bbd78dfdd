"""`scripts/mutate.py`'s choice of mutants: the seeded sample and the open survivors a re-run takes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutate.py"


@pytest.fixture
def mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _names(count: int) -> list[str]:
    return [
        f"agentkeys_kit.{package}.m.x_f__mutmut_{i}"
        for package in ("protocol", "omni_sim", "broker")
        for i in range(count)
    ]


def test_the_sample_depends_only_on_the_names_and_the_seed(mutate: ModuleType) -> None:
    names = _names(30)
    first = mutate.sample(sorted(names), 5, 4242)
    assert first == mutate.sample(sorted(reversed(names)), 5, 4242)
    assert first != mutate.sample(sorted(names), 5, 4243)
    assert [mutate.package_of(name) for name in first] == ["protocol"] * 5 + ["omni_sim"] * 5 + ["broker"] * 5


def test_open_survivors_are_neither_killed_nor_accepted(mutate: ModuleType) -> None:
    chosen = ["a", "b", "c", "d", "e"]
    codes = {"a": 1, "b": 0, "c": 33, "d": None, "e": 0}
    assert mutate.open_survivors(chosen, codes, {"e": "equivalent"}) == ["b", "c", "d"]


def test_last_survivors_draw_the_saved_seed_again_on_the_current_mutants(
    mutate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _names(12)
    sample_file = tmp_path / "mutate-sample.json"
    monkeypatch.setattr(mutate, "SAMPLE_FILE", sample_file)
    monkeypatch.setattr(mutate, "accepted_survivors", lambda: {})
    chosen = mutate.sample(sorted(names), 3, 7)
    sample_file.write_text(json.dumps({"seed": 7, "per_package": 3, "chosen": ["stale"]}), encoding="utf-8")
    codes: dict[str, int | None] = dict.fromkeys(names, 1)
    codes[chosen[0]] = 0
    codes[chosen[4]] = None
    assert mutate.last_survivors(codes) == [chosen[0], chosen[4]]
    sample_file.unlink()
    with pytest.raises(SystemExit, match="no earlier sampled run"):
        mutate.last_survivors(codes)
