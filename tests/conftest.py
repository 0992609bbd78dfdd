"""Shared fixtures: a recording backend, simulators in either profile, a JSON-RPC client."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.app import create_app as create_broker_app
from agentkeys_kit.broker.config import config_from_env as broker_config_from_env
from agentkeys_kit.broker.server import BrokerServer
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import Database, migrations, open_database
from agentkeys_kit.omni_sim.config import SimConfig, config_from_env
from agentkeys_kit.omni_sim.keystore import load_auth_token_key, load_pkcs1_der, load_shielding_key
from agentkeys_kit.omni_sim.server import SimServer
from agentkeys_kit.protocol.tee_jwt import AuthTokenClaims, encode_auth_token
from fixtures.postgres import Postgres, PostgresUnavailable
from fixtures.postgres import provide as provide_postgres
from fixtures.recording_backend import RecordingBackend


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
        "OE_WILDMETA_API_URL": backend_url,
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


# --------------------------------------------------------------------------- broker fixtures

TEE_KEY_PATH = Path(__file__).parent.parent / "fixtures" / "keys" / "auth_token_key.test.bin"
# What the broker pins: the public half only (a broker holding the private key is refused).
TEE_PUBLIC_KEY_PATH = TEE_KEY_PATH.with_name("tee_jwt_public_key.test.pem")


@pytest.fixture(scope="session")
def tee_key() -> rsa.RSAPrivateKey:
    """The TEE JWT key the broker pins in tests (the worker's own file format)."""
    return load_pkcs1_der(TEE_KEY_PATH)


# --------------------------------------------------------------------------- PostgreSQL
# Chosen once per run, right after collection and only if a collected test needs it
# (`fixtures/postgres.py`: BROKER_TEST_PG_DSN, else 127.0.0.1:5432, else a server of our own).

_postgres: list[Postgres] = []


def _uses_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    on_pg = callspec is not None and callspec.params.get("db_url") == "postgresql"
    return on_pg or "pg_dsn" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if _postgres or not any(_uses_postgres(item) for item in items):
        return
    try:
        _postgres.append(provide_postgres())
    except PostgresUnavailable as exc:
        raise pytest.UsageError(f"PostgreSQL: {exc}") from None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(_postgres[0].describe())


def pytest_unconfigure(config: pytest.Config) -> None:
    while _postgres:
        _postgres.pop().stop()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The DSN of this run's PostgreSQL (never skipped: a run without one is a usage error)."""
    assert _postgres, "PostgreSQL was not provisioned for a test that needs it"
    return _postgres[0].dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """Every broker test runs on both databases; PostgreSQL gets a schema of its own, dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.sqlite3'}", None
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield dsn, schema
    asyncio.run(_drop_schema(dsn, schema))


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


class BrokerHandle:
    """A running broker on a free loopback port, with the state tests inspect."""

    def __init__(self, app: web.Application, served: BrokerServer) -> None:
        self.app = app
        self.served = served
        self.url = served.url

    async def stop(self) -> None:
        await self.served.close()

    @property
    def state(self) -> BrokerState:
        return self.app[STATE]


BrokerFactory = Callable[..., Awaitable[BrokerHandle]]


@pytest.fixture
async def make_broker(
    db_url: tuple[str, str | None], tee_key: rsa.RSAPrivateKey, tmp_path: Path
) -> AsyncIterator[BrokerFactory]:
    started: list[BrokerHandle] = []

    async def factory(
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        routes: list[tuple[str, str, Any]] | None = None,
    ) -> BrokerHandle:
        """A broker on a free port; `routes` adds test-only handlers (method, path, handler)."""
        url, schema = db_url
        values = {
            "BROKER_DB_URL": url,
            "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY_PATH),
            "BROKER_OIDC_KEYPAIR_PATH": str(tmp_path / "oidc-keypair.json"),
            # one key per test, shared by the test's brokers (replicas share theirs), never in $HOME
            "BROKER_SESSION_KEYPAIR_PATH": str(tmp_path / "session-keypair.json"),
            **(env or {}),
        }
        if schema is not None:
            values["BROKER_DB_SCHEMA"] = schema
        config = broker_config_from_env(values)
        app = create_broker_app(config, clock=clock)
        for method, path, handler in routes or []:
            app.router.add_route(method, path, handler)
        served = BrokerServer(config, port=0)  # the server `agentkeys-broker run` uses, limits included
        await served.start(app)
        handle = BrokerHandle(app, served)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        await handle.stop()


async def open_database_at(version: int, db_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Database:
    """The database opened by a release whose last migration was `version` (migrated that far)."""
    url, schema = db_url
    module, name = (
        ("postgres", "POSTGRES_MIGRATIONS") if url.startswith("postgres") else ("sqlite", "SQLITE_MIGRATIONS")
    )
    with monkeypatch.context() as patch:
        patch.setattr(f"agentkeys_kit.broker.storage.{module}.{name}", getattr(migrations, name)[:version])
        db = open_database(url, schema=schema)
        await db.open()
    return db


def mint_tee_token(
    key: rsa.RSAPrivateKey, sub: str, aud: str = "agentkeys", typ: str = "access", exp: int | None = None
) -> str:
    """A token exactly as the worker mints it (header and claim order included)."""
    expires = exp if exp is not None else int(time.time()) + 7 * 24 * 3600
    return encode_auth_token(AuthTokenClaims(sub=sub, typ=typ, exp=expires, aud=aud), key)


# --------------------------------------------------------------------------- AWS STS (moto's server)


@pytest.fixture(scope="session")
def moto_sts() -> Iterator[Any]:
    """moto's STS server on a free loopback port, for the whole run (`tests/mint_support.py`)."""
    from mint_support import MotoSts

    server = MotoSts()
    yield server
    server.stop()


@pytest.fixture
def sts(moto_sts: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """moto's STS with an operator principal in the environment (any key: moto does not check
    them unless asked), and no AWS file of this machine's user read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-accepts-any-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto_sts
