"""PostgreSQL driver (asyncpg): a connection pool shared by broker replicas' worth of requests."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import asyncpg

from agentkeys_kit.broker.storage.base import Database, Fetch, Operation, StorageError, UniqueViolation
from agentkeys_kit.broker.storage.migrations import POSTGRES_MIGRATIONS, SCHEMA_MIGRATIONS_TABLE

T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\?")
_MIGRATION_LOCK = 0x6167_6B65  # "agke": advisory lock key for migrations
_sql_cache: dict[str, str] = {}


def numbered(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (the SQL here never contains a literal ``?``)."""
    cached = _sql_cache.get(sql)
    if cached is None:
        counter = iter(range(1, 10_000))
        cached = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
        _sql_cache[sql] = cached
    return cached


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, dsn: str, *, min_size: int = 4, max_size: int = 8, schema: str | None = None) -> None:
        self.dsn = dsn
        # Callers wait for a connection in arrival order: asyncpg's pool lets a newcomer take a
        # connection released while older callers still wait, which stretches the latency tail.
        self._turns = asyncio.Semaphore(max_size)
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            if self.schema is not None:
                connection = await asyncpg.connect(self.dsn)
                try:
                    await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await connection.close()
            settings = {"search_path": self.schema} if self.schema is not None else None
            # The broker keeps no session state on a connection (no LISTEN, temp tables or SET),
            # so asyncpg's reset round trip on every release is skipped.
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=30,
                server_settings=settings,
                reset=_no_reset,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
        await self._migrate()

    async def _migrate(self) -> None:
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
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

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StorageError("PostgreSQL pool is not open")
        async with self._turns, self._pool.acquire() as connection:
            yield connection

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> bool:
        try:
            async with self._acquire() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except (OSError, asyncpg.PostgresError, StorageError):
            return False

    async def schema_version(self) -> int:
        async with self._acquire() as conn:
            return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    async def _run_once(self, operation: Operation[T]) -> T:
        try:
            query = next(operation)
            if query.whole:
                async with self._acquire() as conn:
                    row = await conn.fetchrow(numbered(query.sql), *query.args)
                try:
                    operation.send(None if row is None else dict(row))
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                raise StorageError("an operation marked as one statement yielded another")
            async with self._acquire() as conn, conn.transaction():
                while True:
                    sql = numbered(query.sql)
                    if query.fetch is Fetch.ONE:
                        row = await conn.fetchrow(sql, *query.args)
                        answer: Any = None if row is None else dict(row)
                    elif query.fetch is Fetch.ALL:
                        answer = [dict(row) for row in await conn.fetch(sql, *query.args)]
                    else:
                        status = await conn.execute(sql, *query.args)
                        answer = int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
                    try:
                        query = operation.send(answer)
                    except StopIteration as done:
                        return done.value  # type: ignore[no-any-return]
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(str(exc)) from exc
