"""PostgreSQL driver (asyncpg): a connection pool shared by broker replicas' worth of requests.

Replicas share one schema. Starting together, they serialise on an advisory lock taken before
anything is created (the schema included), so each migration is applied once and every replica
comes up. Connections carry ``application_name = agentkeys-broker/<schema>`` so an operator can
tell them apart in ``pg_stat_activity``. The DSN's password never appears in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg

from agentkeys_kit.broker.storage.base import (
    Conflict,
    ConnectionLost,
    Database,
    Fetch,
    Operation,
    Query,
    StorageError,
    UniqueViolation,
    ValueRefused,
    one_line,
)
from agentkeys_kit.broker.storage.migrations import POSTGRES_MIGRATIONS, SCHEMA_MIGRATIONS_TABLE, require_migrated

T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\?")
_MIGRATION_LOCK = 0x6167_6B65  # "agke": advisory lock key for migrations (every schema, every release)
CONNECT_TIMEOUT = 5.0  # seconds; asyncpg's default (60 s) would hold each request that long in an outage
_sql_cache: dict[str, str] = {}

#: The connection is gone: closed by the server (shutdown, pg_terminate_backend, crash, restart)
#: or by the network, or it could not be opened.
_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)
#: The connection is in a state where it cannot run a query: a server message arrived while it was
#: idle (``InternalClientError: cannot switch to state …; another operation is in progress``, how
#: asyncpg meets a backend terminated between two uses) or asyncpg lost track of it. The
#: connection is dropped; nothing was sent, or the server rolls back what was.
_BROKEN = (*_CONNECTION_ERRORS, asyncpg.InterfaceError, asyncpg.InternalClientError)
#: A value the server refuses (class 22, e.g. a NUL byte in text) or asyncpg cannot encode (its
#: client-side DataError is a ValueError, e.g. an integer beyond BIGINT): the request's fault.
_VALUE_ERRORS = (asyncpg.DataError, ValueError)
#: Anything the driver raises.
_DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class _OneLineAtMostEvery(logging.Filter):
    """asyncpg's pool logs a full traceback each time it fails to reconnect its connection floor,
    which is many times a second while the server is down. Its records are cut to one line (the
    exception's type and message) and let through at most once per `every` seconds; the
    broker's own storage log says when the outage starts, lasts and ends."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last = -every

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {one_line(record.exc_info[1])}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLineAtMostEvery())


def numbered(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (the SQL here never contains a literal ``?``)."""
    cached = _sql_cache.get(sql)
    if cached is None:
        counter = iter(range(1, 10_000))
        cached = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
        _sql_cache[sql] = cached
    return cached


def redacted(dsn: str) -> str:
    """Where the DSN points, without its password or parameters, for messages and logs."""
    try:
        parts = urlsplit(dsn)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "BROKER_DB_URL (not a valid URL)"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


def _scrubbed(message: str, dsn: str) -> str:
    """`message` with the DSN's password (as written and URL-decoded) replaced by ``***``."""
    found = re.search(r"://[^/@]*?:([^/@]+)@", dsn)
    if found:
        for secret in {found.group(1), unquote(found.group(1))}:
            message = message.replace(secret, "***")
    return message


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


async def _fetch(conn: asyncpg.Connection, query: Query) -> Any:
    sql = numbered(query.sql)
    if query.fetch is Fetch.ONE:
        row = await conn.fetchrow(sql, *query.args)
        return None if row is None else dict(row)
    if query.fetch is Fetch.ALL:
        return [dict(row) for row in await conn.fetch(sql, *query.args)]
    status = await conn.execute(sql, *query.args)
    return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, dsn: str, *, min_size: int = 4, max_size: int = 8, schema: str | None = None) -> None:
        super().__init__()
        self.dsn = dsn
        # Callers wait for a connection in arrival order: asyncpg's pool lets a newcomer take a
        # connection released while older callers still wait, which stretches the latency tail.
        self._turns = asyncio.Semaphore(max_size)
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    @property
    def where(self) -> str:
        return f'{redacted(self.dsn)} schema "{self.schema or "public"}"'

    async def open(self, *, migrate: bool = True) -> None:
        settings = {"application_name": f"agentkeys-broker/{self.schema or 'public'}"[:63]}
        if self.schema is not None:
            settings["search_path"] = f'"{self.schema}"'
        try:
            # The broker keeps no session state on a connection (no LISTEN, temp tables or SET),
            # so asyncpg's reset round trip on every release is skipped.
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=30,
                timeout=CONNECT_TIMEOUT,
                server_settings=settings,
                reset=_no_reset,
            )
        except Exception as exc:  # asyncpg's DSN parser raises ValueError, TypeError, …: all are "cannot connect"
            message = _scrubbed(one_line(exc), self.dsn)
            raise StorageError(
                f"cannot connect to PostgreSQL at {redacted(self.dsn)} (BROKER_DB_URL): {message}"
            ) from None
        try:
            await (self._migrate() if migrate else self._check_schema())
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        try:
            async with self._acquire() as conn, conn.transaction():
                # The lock comes first: two replicas creating one new schema at once would
                # otherwise race in CREATE SCHEMA IF NOT EXISTS (a unique violation in pg_namespace).
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                if self.schema is not None and not await self._schema_exists(conn):
                    await conn.execute(f'CREATE SCHEMA "{self.schema}"')
                    await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
                await conn.execute(SCHEMA_MIGRATIONS_TABLE)
                applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
                for migration in POSTGRES_MIGRATIONS:
                    if migration.version in applied:
                        continue
                    for statement in migration.statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        int(time.time()),
                    )
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"cannot migrate {self.where}: {one_line(exc)}") from exc

    async def _schema_exists(self, conn: asyncpg.Connection) -> bool:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", self.schema))

    async def _check_schema(self) -> None:
        """The operator's commands: the schema exists, holds the broker's tables, at this version."""
        try:
            async with self._acquire() as conn:
                if self.schema is not None and not await self._schema_exists(conn):
                    raise StorageError(
                        f'PostgreSQL schema "{self.schema}" does not exist (BROKER_DB_SCHEMA): '
                        "no broker has run on it; nothing was created"
                    )
                if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                    raise StorageError(f"no broker tables in {self.where}; nothing was created")
                found = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"cannot read {self.where}: {one_line(exc)}") from exc
        require_migrated(int(found), self.where)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StorageError("PostgreSQL pool is not open")
        async with self._turns, self._pool.acquire() as connection:
            yield connection

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except _DRIVER_ERRORS:
                pool.terminate()

    async def _connection_lost(self) -> None:
        if self._pool is not None:
            await self._pool.expire_connections()

    async def ping(self) -> bool:
        try:
            async with self._acquire() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except (*_DRIVER_ERRORS, StorageError):
            return False

    async def schema_version(self) -> int:
        try:
            async with self._acquire() as conn:
                return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))
        except _DRIVER_ERRORS as exc:
            raise StorageError(one_line(exc)) from exc

    async def _run_once(self, operation: Operation[T]) -> T:
        committing = False  # from here on, a broken connection leaves the outcome unknown
        try:
            query = next(operation)
            async with self._acquire() as conn:
                try:
                    if conn.is_closed():
                        raise ConnectionLost("the pool handed out a closed connection", safe=True)
                    if query.whole:
                        committing = True
                        answer = await _fetch(conn, query)
                        try:
                            operation.send(answer)
                        except StopIteration as done:
                            return done.value  # type: ignore[no-any-return]
                        raise StorageError("an operation marked as one statement yielded another")
                    return await self._in_transaction(conn, operation, query)
                except _VALUE_ERRORS:
                    raise
                except (*_BROKEN, CommitUnknown):
                    conn.terminate()  # never back to the pool as it is
                    raise
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            raise Conflict(one_line(exc)) from exc
        except _VALUE_ERRORS as exc:
            raise ValueRefused(one_line(exc)) from exc
        except _BROKEN as exc:
            # asyncpg refuses to start a query on a connection in a wrong state before sending it
            unsent = isinstance(exc, asyncpg.InternalClientError)
            raise ConnectionLost(one_line(exc), safe=unsent or not committing) from exc
        except CommitUnknown as exc:
            raise ConnectionLost(one_line(exc.__cause__ or exc), safe=False) from exc.__cause__
        except _DRIVER_ERRORS as exc:
            raise StorageError(one_line(exc)) from exc

    async def _in_transaction(self, conn: asyncpg.Connection, operation: Operation[T], query: Query) -> T:
        """`operation` from its first `query` inside BEGIN … COMMIT; a failure before COMMIT rolls
        back (the server does the same when the connection is gone, so rerunning is safe)."""
        transaction = conn.transaction()
        await transaction.start()
        try:
            while True:
                answer = await _fetch(conn, query)
                try:
                    query = operation.send(answer)
                except StopIteration as done:
                    result: T = done.value
                    break
        except BaseException:
            try:
                await transaction.rollback()
            except Exception:  # the connection is broken: it must not go back to the pool as it is
                conn.terminate()
            raise
        try:
            await transaction.commit()
        except _BROKEN as exc:
            raise CommitUnknown("the connection broke during COMMIT") from exc
        return result


class CommitUnknown(Exception):
    """The connection broke while COMMIT was in flight: the transaction may or may not have committed."""
