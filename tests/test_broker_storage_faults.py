"""The database failing under the broker (issue 11, findings 7, 10 and the outage part of 13), on
PostgreSQL: connections dropped by the server, an outage and its recovery seen through a TCP proxy
the test cuts, and many replicas starting together on a new schema."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from broker_client import ADD_WALLET, GRANT_LIST, LOGIN, assert_refused, call, login, login_body
from conftest import BrokerFactory, BrokerHandle, _drop_schema, mint_tee_token
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage import migrations
from agentkeys_kit.broker.storage.base import OutageLog
from agentkeys_kit.broker.storage.postgres import PostgresDatabase
from agentkeys_kit.protocol.identity import IdentityKind, omni_account_of

MASTER = "0x" + "3c" * 20


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    asyncio.run(_drop_schema(pg_dsn, schema))


@pytest.fixture
def db_url(pg_dsn: str, pg_schema: str) -> tuple[str, str | None]:
    """These faults are PostgreSQL's: the brokers of this module run on it only."""
    return pg_dsn, pg_schema


async def terminate_broker_connections(dsn: str, schema: str) -> int:
    """pg_terminate_backend on every connection of the brokers on `schema` (and only theirs)."""
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                f"agentkeys-broker/{schema}",
            )
        )
    finally:
        await connection.close()


async def mixed_requests(http: aiohttp.ClientSession, broker: BrokerHandle, token: str) -> list[int]:
    """Logins, wallet slots and grant lists at once, with a token a login already recorded (the
    grant endpoints accept only a recorded TEE token, `broker/bearer.py`)."""
    calls = [call(http, broker, LOGIN, token=token, json_body=login_body("evm", MASTER)) for _ in range(10)]
    calls += [call(http, broker, ADD_WALLET, token=token) for _ in range(10)]
    calls += [call(http, broker, GRANT_LIST, method="GET", token=token) for _ in range(10)]
    return [reply.status for reply in await asyncio.gather(*calls)]


async def test_requests_after_postgresql_drops_every_connection_are_served(
    make_broker: BrokerFactory, pg_dsn: str, pg_schema: str, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """Finding 7: after pg_terminate_backend on all of the broker's connections an asyncpg error
    escaped as a 500. A connection found broken before anything could commit is replaced and the
    operation rerun once; every request here succeeds."""
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    for _ in range(3):
        assert await mixed_requests(http, broker, token) == [200] * 30  # every pool connection in use
        assert await terminate_broker_connections(pg_dsn, pg_schema) >= 1
        statuses = await mixed_requests(http, broker, token)
        assert statuses == [200] * 30, statuses


async def test_connections_dropped_mid_request_give_200_or_503_never_500(
    make_broker: BrokerFactory, pg_dsn: str, pg_schema: str, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """Dropped while requests are in flight: an operation whose COMMIT may have reached the server
    is not rerun (it might run twice) and answers 503 in the envelope; nothing is a 500."""
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, MASTER)
    statuses: list[int] = []
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02):

        async def terminate_soon(wait: float = delay) -> None:
            await asyncio.sleep(wait)
            await terminate_broker_connections(pg_dsn, pg_schema)

        replies, _ = await asyncio.gather(mixed_requests(http, broker, token), terminate_soon())
        statuses += replies
    assert set(statuses) <= {200, 503}, statuses
    assert await mixed_requests(http, broker, token) == [200] * 30


class Proxy:
    """A TCP proxy on loopback in front of PostgreSQL that the test can cut and restore."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop accepting and drop every connection (the database went away)."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[Proxy]:
    proxied = Proxy(urlsplit(pg_dsn).port or 5432)
    await proxied.start()
    yield proxied
    with contextlib.suppress(AssertionError):
        await proxied.cut()


async def test_an_outage_is_503s_one_line_each_and_one_summary_then_recovery(
    make_broker: BrokerFactory,
    pg_dsn: str,
    proxy: Proxy,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 13: during an outage every request logged a 60-line traceback. Now each failed
    request is a 503 in the envelope and one log line, the storage log says once that the
    database is unavailable, and once that it is back."""
    dsn = urlsplit(pg_dsn)
    through_proxy = dsn._replace(netloc=f"{dsn.username}@127.0.0.1:{proxy.port}").geturl()
    broker = await make_broker(env={"BROKER_DB_URL": through_proxy})
    _, token = await login(http, broker, tee_key, MASTER)
    caplog.clear()
    caplog.set_level(logging.INFO)
    await proxy.cut()
    statuses = await mixed_requests(http, broker, token)
    assert set(statuses) == {503}, statuses
    reply = await call(http, broker, GRANT_LIST, method="GET", token=mint_tee_token(tee_key, "0x" + "00" * 32))
    assert_refused_503(reply)
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)  # asyncpg's too
    records = [r for r in caplog.records if r.name.startswith("agentkeys_kit")]
    per_request = [r for r in records if "storage failed while serving" in r.getMessage()]
    assert len(per_request) == 31
    assert [r.getMessage().split(":")[0] for r in records if r.levelno >= logging.ERROR] == ["database unavailable"]

    await proxy.start()  # the database is back, on the same address
    caplog.clear()
    assert await mixed_requests(http, broker, token) == [200] * 30
    back = [r.getMessage() for r in caplog.records if "available again" in r.getMessage()]
    assert len(back) == 1 and "operations failed meanwhile" in back[0]


def assert_refused_503(reply: Any) -> None:
    assert reply.status == 503
    assert reply.body["code"] == 50300 and reply.body["data"]["error"] == "storage_unavailable"


def test_the_outage_summary_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = OutageLog(every=30.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="agentkeys_kit.broker.storage")
    for second in range(0, 95):
        now[0] = 100.0 + second
        for _ in range(50):
            outage.failed(ConnectionRefusedError(111, "Connect call failed\nsecond line"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "database unavailable: ConnectionRefusedError: [Errno 111] Connect call failed"
    assert [line.split(" after")[0] for line in lines[1:]] == ["database still unavailable"] * 3
    assert "1500 operations failed in the last 30 s" in lines[1]
    outage.succeeded()
    outage.succeeded()
    assert caplog.records[-1].getMessage() == "database available again after 94.0 s; 4750 operations failed meanwhile"
    assert len(caplog.records) == 5


async def test_many_replicas_starting_together_on_a_new_schema_all_come_up(pg_dsn: str, pg_schema: str) -> None:
    """Finding 10: replicas raced in CREATE SCHEMA IF NOT EXISTS before taking the migration lock
    (2 of 60 failed). 24 start at once here, each on its own connection."""
    replicas = [PostgresDatabase(pg_dsn, schema=pg_schema, min_size=1, max_size=1) for _ in range(24)]
    started = time.monotonic()
    results = await asyncio.gather(*(db.open() for db in replicas), return_exceptions=True)
    try:
        assert [r for r in results if r is not None] == []
        assert {await db.schema_version() for db in replicas} == {migrations.LATEST_SCHEMA_VERSION}
        assert time.monotonic() - started < 60
    finally:
        await asyncio.gather(*(db.close() for db in replicas))
    connection = await asyncpg.connect(pg_dsn)
    try:
        versions = await connection.fetch(f'SELECT version FROM "{pg_schema}".schema_migrations ORDER BY 1')  # noqa: S608
    finally:
        await connection.close()
    assert [row["version"] for row in versions] == [mig.version for mig in migrations.POSTGRES_MIGRATIONS]


async def test_a_broken_request_is_a_4xx_not_a_5xx_after_the_retry(
    make_broker: BrokerFactory, pg_dsn: str, pg_schema: str, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    """A refusal still reads as one after the connections were dropped (the retry reruns only
    the storage operation, the request's rules are not bypassed)."""
    broker = await make_broker()
    await terminate_broker_connections(pg_dsn, pg_schema)
    token = mint_tee_token(tee_key, omni_account_of(IdentityKind.EVM, MASTER, "agentkeys"))
    assert_refused(await call(http, broker, ADD_WALLET, token=token), 404, "unknown_user")
