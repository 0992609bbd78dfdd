"""The suites have teeth: seeded faults in copies of the simulator and the broker are caught.

Each fault is patched into this process's simulator or broker code (the harness runs both
in-process), then the shipped suites run against them until a case fails. A fault no case
catches fails this test, naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

import agentkeys_kit.broker.callbacks as broker_callbacks
import agentkeys_kit.broker.errors as broker_errors
from agentkeys_kit.conformance.model import load_suites
from agentkeys_kit.conformance.pytest_plugin import SUITES_DIR
from agentkeys_kit.conformance.runner import Harness, Verdict
from agentkeys_kit.conformance.targets import broker_target, tee_target
from agentkeys_kit.omni_sim.backend_api import BackendApi
from agentkeys_kit.omni_sim.context import SimContext
from agentkeys_kit.omni_sim.stores import VerificationCodeStore

# `omni_sim.methods` re-exports the method functions under the module names, so fetch the module itself.
user_login = importlib.import_module("agentkeys_kit.omni_sim.methods.user_login")


def _snake_case_body(user_id: Any, client_id: str, client_auth: Any) -> dict[str, Any]:
    return {"user_id": user_id, "client_id": client_id, "client_auth": client_auth, "heima_login_success": True}


def _without_bearer(original: Callable[..., Any]) -> Callable[..., Any]:
    async def call(self: BackendApi, *args: Any, **kwargs: Any) -> Any:
        kwargs["token"] = None
        return await original(self, *args, **kwargs)

    return call


def _wrong_audience(original: Callable[..., str]) -> Callable[..., str]:
    def mint(self: SimContext, account_hex: str, token_type: str, client_id: str, expires_at: int) -> str:
        return original(self, account_hex, token_type, "heima", expires_at)

    return mint


def _twice(original: Callable[..., Any]) -> Callable[..., Any]:
    async def post(self: BackendApi, access_token: str, body: dict[str, Any]) -> Any:
        await original(self, access_token, body)
        return await original(self, access_token, body)

    return post


FAULTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "callback body in snake_case": lambda mp: mp.setattr(user_login, "post_heima_login_body", _snake_case_body),
    "bearer missing on callbacks": lambda mp: mp.setattr(BackendApi, "_call", _without_bearer(BackendApi._call)),
    "wrong audience in TEE tokens": lambda mp: mp.setattr(
        SimContext, "mint_token", _wrong_audience(SimContext.mint_token)
    ),
    "verification code not consumed": lambda mp: mp.setattr(
        VerificationCodeStore, "remove", lambda self, account: None
    ),
    "sub not checked by the broker": lambda mp: mp.setattr(
        broker_callbacks, "require_token_proves_identity", lambda claims, account, client_id: None
    ),
    "envelope success code wrong": lambda mp: mp.setattr(broker_errors, "SUCCESS", 0),
    "post_heima_login sent twice": lambda mp: mp.setattr(
        BackendApi, "post_heima_login", _twice(BackendApi.post_heima_login)
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_seeded_fault_is_caught_by_a_suite_case(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [case for suite in load_suites([SUITES_DIR]) for case in suite.cases if case.only != "upstream"]
    FAULTS[fault](monkeypatch)
    async with Harness(tee_target("sim", "agentkeys-patch", None), broker_target("local")) as harness:
        for case in cases:
            result = await harness.run_case(case)
            if result.verdict is Verdict.FAILED:
                print(f"{fault}: caught by {case.id}: {result.reason}")
                return
    pytest.fail(f"no conformance case caught the seeded fault: {fault}")
