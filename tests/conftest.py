"""Shared fixtures: a recording backend, simulators in either profile, a JSON-RPC client."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fixtures.recording_backend import RecordingBackend
from omni_sim.config import SimConfig, config_from_env
from omni_sim.keystore import load_auth_token_key, load_shielding_key
from omni_sim.server import SimServer


@pytest.fixture(scope="session")
def sim_local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One keystore for the whole run: RSA-3072 generation is too slow to repeat per test."""
    local = tmp_path_factory.mktemp("sim-local")
    load_auth_token_key(local)
    load_shielding_key(local)
    return local


@pytest.fixture
async def backend() -> AsyncIterator[RecordingBackend]:
    async with RecordingBackend() as recording:
        yield recording


def sim_env(backend_url: str, **extra: str) -> dict[str, str]:
    return {
        "OE_PUMPX_API_BASE_URL": backend_url,
        "OE_AGENTKEYS_API_BASE_URL": backend_url + "agentkeys/",
        "OE_MAILER_TYPE_WILDMETA": "console",
        "OE_MAILER_TYPE_AGENTKEYS": "console",
        "OE_SIM_CALLBACK_TIMEOUT_SECONDS": "2",
        **extra,
    }


SimFactory = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def make_sim(backend: RecordingBackend, sim_local_dir: Path) -> AsyncIterator[SimFactory]:
    started: list[SimServer] = []

    async def factory(
        profile: str = "upstream",
        error_era: str = "current",
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> SimServer:
        config: SimConfig = config_from_env(
            sim_env(backend.url, **(env or {})),
            host="127.0.0.1",
            port=0,
            profile=profile,
            error_era=error_era,
            local_dir=sim_local_dir,
        )
        server = SimServer(config, **kwargs)
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


_ids = itertools.count(1)


async def rpc(
    http: aiohttp.ClientSession,
    url: str,
    method: str,
    params: Any = None,
    *,
    token: str | None = None,
    raw_params: bool = False,
) -> dict[str, Any]:
    """One JSON-RPC call over HTTP; returns the whole response object."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
    if params is not None or raw_params:
        request["params"] = params
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.post(url, json=request, headers=headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    assert body["id"] == request["id"]
    return body
