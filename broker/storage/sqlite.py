"""SQLite driver: one connection on one dedicated thread, WAL, schema created on first start."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from broker.storage.base import Database, Fetch, Operation, StorageError, UniqueViolation
from broker.storage.migrations import SCHEMA_MIGRATIONS_TABLE, SQLITE_MIGRATIONS

T = TypeVar("T")


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._call(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        self._conn = conn
        self._migrate_sync(conn)

    def _migrate_sync(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(SCHEMA_MIGRATIONS_TABLE)
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in SQLITE_MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, int(time.time())),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def close_sync() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._call(close_sync)
        self._executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda: self._connection().execute("SELECT 1").fetchone()[0] == 1))
        except (sqlite3.Error, StorageError):
            return False

    async def schema_version(self) -> int:
        row = await self._call(
            lambda: self._connection().execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        )
        return int(row[0] or 0)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("SQLite database is not open")
        return self._conn

    async def _call(self, fn: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    async def _run_once(self, operation: Operation[T]) -> T:
        result: T = await self._call(lambda: self._run_sync(operation))
        return result

    def _run_sync(self, operation: Operation[T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            query = next(operation)
            while True:
                cursor = conn.execute(query.sql, query.args)
                if query.fetch is Fetch.ONE:
                    row = cursor.fetchone()
                    answer: Any = None if row is None else dict(row)
                elif query.fetch is Fetch.ALL:
                    answer = [dict(row) for row in cursor.fetchall()]
                else:
                    answer = cursor.rowcount
                query = operation.send(answer)
        except StopIteration as done:
            conn.execute("COMMIT")
            return done.value  # type: ignore[no-any-return]
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            if "UNIQUE" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise StorageError(str(exc)) from exc
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StorageError(str(exc)) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
