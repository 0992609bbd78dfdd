"""Run the simulator inside another program (tests, the conformance harness, benchmarks).

async with SimServer(config) as sim:
    sim.url        # http://127.0.0.1:<port>/
    sim.ws_url     # ws://127.0.0.1:<port>/
    sim.context    # the live SimContext (stores, clock, journal, outbox)
"""

from __future__ import annotations

from types import TracebackType

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from omni_sim.app import SIM_CONTEXT, create_app
from omni_sim.clock import SimClock
from omni_sim.config import SimConfig
from omni_sim.context import SimContext


class SimServer:
    def __init__(
        self,
        config: SimConfig,
        *,
        clock: SimClock | None = None,
        jwt_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.config = config
        self.app = create_app(config, clock=clock, jwt_key=jwt_key)
        self._runner: web.AppRunner | None = None
        self.port = config.port

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the bound port when 0 was asked for

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    @property
    def context(self) -> SimContext:
        return self.app[SIM_CONTEXT]
