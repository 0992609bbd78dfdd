"""Run the simulator inside another program (tests, the conformance harness, benchmarks).

async with SimServer(config) as sim:
    sim.url        # http://127.0.0.1:<port>/
    sim.ws_url     # ws://127.0.0.1:<port>/
    sim.context    # the live SimContext (stores, clock, journal, outbox)
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.omni_sim.app import SIM_CONTEXT, create_app
from agentkeys_kit.omni_sim.clock import SimClock
from agentkeys_kit.omni_sim.config import SimConfig
from agentkeys_kit.omni_sim.context import SimContext


class Service:
    """The lifecycle the simulator and the test services share: `start`, `close`, `async with`."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ServedApp:
    """An aiohttp application served on `host`:`port` (port 0: a free one), opened and closed in one
    place. The simulator, the harness's receiver and the test fixtures all serve through it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the bound port when 0 was asked for
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"


class SimServer(Service):
    def __init__(
        self,
        config: SimConfig,
        *,
        clock: SimClock | None = None,
        jwt_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.config = config
        self.app = create_app(config, clock=clock, jwt_key=jwt_key)
        self._served = ServedApp(config.host, config.port)

    @property
    def port(self) -> int:
        return self._served.port

    async def start(self) -> None:
        await self._served.start(self.app)

    async def close(self) -> None:
        await self._served.close()

    @property
    def url(self) -> str:
        return self._served.url

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    @property
    def context(self) -> SimContext:
        return self.app[SIM_CONTEXT]
