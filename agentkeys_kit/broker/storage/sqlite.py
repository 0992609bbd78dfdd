"""SQLite driver: WAL, schema created and migrated on first start.

Transactions are short, so they run directly on the event loop on a connection that never waits
for a lock (``busy_timeout=0``): one `post_heima_login` is three statements that take well under a
millisecond with ``synchronous=NORMAL`` (a commit in WAL mode does not sync the disk). If another
process (the operator command, a second broker) holds the write lock, the operation goes instead to
a worker thread whose connection waits for it. Checkpoints are taken off the loop: automatic
checkpoints are off on the loop connection and a PASSIVE checkpoint runs on the thread every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agentkeys_kit.broker.storage.base import Database, Fetch, Operation, StorageError, UniqueViolation
from agentkeys_kit.broker.storage.migrations import SCHEMA_MIGRATIONS_TABLE, SQLITE_MIGRATIONS

T = TypeVar("T")
CHECKPOINT_INTERVAL = 1.0


class _LockBusy(Exception):
    """Another connection holds the write lock."""


def _connect(path: Path, *, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


def _execute(conn: sqlite3.Connection, operation: Operation[T], *, begun: bool = False) -> T:
    """Run `operation` in one transaction on `conn` (BEGIN IMMEDIATE unless `begun`)."""
    if not begun:
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


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-sqlite")
        self._thread_conn: sqlite3.Connection | None = None  # used only on the worker thread
        self._loop_conn: sqlite3.Connection | None = None  # used only on the event loop
        self._checkpoints: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._call(self._open_sync)
        conn = _connect(self.path, busy_ms=0)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._loop_conn = conn
        self._checkpoints = asyncio.create_task(self._checkpoint_forever(), name="broker-sqlite-checkpoint")

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, busy_ms=30_000)
        self._thread_conn = conn
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

    async def _checkpoint_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            with contextlib.suppress(sqlite3.Error, StorageError):
                await self._call(lambda: self._thread().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

        def close_sync() -> None:
            if self._thread_conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._thread_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._thread_conn.close()
                self._thread_conn = None

        await self._call(close_sync)
        self._executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda: self._thread().execute("SELECT 1").fetchone()[0] == 1))
        except (sqlite3.Error, StorageError):
            return False

    async def schema_version(self) -> int:
        row = await self._call(lambda: self._thread().execute("SELECT MAX(version) FROM schema_migrations").fetchone())
        return int(row[0] or 0)

    def _thread(self) -> sqlite3.Connection:
        if self._thread_conn is None:
            raise StorageError("SQLite database is not open")
        return self._thread_conn

    async def _call(self, fn: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    async def _run_once(self, operation: Operation[T]) -> T:
        conn = self._loop_conn
        if conn is None:
            raise StorageError("SQLite database is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise StorageError(str(exc)) from exc
            # Someone else writes: wait for the lock on the thread, never on the loop.
            result: T = await self._call(lambda: _execute(self._thread(), operation))
            return result
        return _execute(conn, operation, begun=True)
