"""SQLite driver: WAL, schema created and migrated on first start.

Transactions are short, so they run directly on the event loop on a connection that never waits
for a lock (``busy_timeout=0``): one `post_heima_login` is three statements that take well under a
millisecond. If another process (the operator command, a second broker) holds the write lock, the
operation goes instead to a worker thread whose connection waits for it.

Durability: an operation that wrote returns only once its transaction is on disk. SQLite's
``synchronous=FULL`` would fsync the WAL inside every COMMIT, on the event loop: every request would
wait for the disk, one fsync per transaction. Instead the connections run ``synchronous=NORMAL``
(COMMIT writes the WAL frames without syncing them) and the driver then fsyncs the WAL file on a
thread of its own before the operation returns; one fsync covers every transaction committed before
it started (group commit). That is exactly what FULL adds to NORMAL in WAL mode ("an additional
sync operation of the WAL file happens after each transaction commit",
https://sqlite.org/pragma.html#pragma_synchronous), done off the loop and shared by concurrent
commits. ``synchronous="normal"`` (`BROKER_SQLITE_SYNCHRONOUS=normal`) skips it: faster, and a power
loss can roll back the last acknowledged writes. A failed fsync stops the database (later fsyncs
may report success for pages the kernel already dropped).

WAL size: automatic checkpoints are off on the loop connection (one would stall every request
while it copies). A task looks at the WAL file every `CHECKPOINT_INTERVAL` seconds and after every
`CHECK_EVERY` committed writes: up to `wal_limit` bytes it runs a PASSIVE checkpoint on the thread
(which blocks nobody); beyond it a TRUNCATE checkpoint, while new transactions queue on the thread
behind it. A PASSIVE checkpoint beside a steady writer never completes, so the WAL never restarts
and grows without bound (4 GB in 60 s under a flood of refused requests); the TRUNCATE makes the
writers wait for it instead, which bounds the WAL whatever the write rate. `journal_size_limit`
trims a WAL that restarted after a PASSIVE checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from agentkeys_kit.broker.storage.base import (
    Database,
    Fetch,
    Operation,
    StorageError,
    UniqueViolation,
    ValueRefused,
)
from agentkeys_kit.broker.storage.migrations import (
    SCHEMA_MIGRATIONS_TABLE,
    SQLITE_MIGRATIONS,
    Migration,
    require_migrated,
)

T = TypeVar("T")
log = logging.getLogger("agentkeys_kit.broker.storage")

CHECKPOINT_INTERVAL = 1.0  # seconds
CHECK_EVERY = 200  # committed writes between two looks at the WAL's size
WAL_LIMIT = 16 * 1024 * 1024  # bytes; beyond it a TRUNCATE checkpoint makes writers wait
CHECKPOINT_BUSY_MS = 100  # how long a TRUNCATE checkpoint (writers waiting) waits for another process
BLOCKED_RETRY = 5.0  # seconds before a TRUNCATE checkpoint blocked by another process is tried again
THREAD_BUSY_MS = 30_000
SYNCHRONOUS_MODES = ("full", "normal")
#: deleted and overwritten content is zeroed (a replaced TOTP secret does not linger in free space),
#: whatever the build's default: SQLite's own is OFF, Debian's is ON.
SECURE_DELETE = "ON"


def _create_private(path: Path) -> None:
    """A new database file is created 0600 (its WAL and shared-memory files take the database's
    mode): it holds bearer hashes, login nonces and PKCE verifiers."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _warn_if_shared(path: Path) -> None:
    """An existing database readable by others is left as it is, with a warning (once it opened)."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning(
            "the SQLite database %s is readable by others (mode %04o): chmod 600 it and its -wal and -shm files",
            path,
            stat.S_IMODE(mode),
        )


def _connect(path: Path, *, busy_ms: int, create: bool = True) -> sqlite3.Connection:
    target = str(path) if create else f"file:{quote(str(path))}?mode=rw"
    conn = sqlite3.connect(
        target, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000, uri=not create
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA secure_delete={SECURE_DELETE}")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    return conn


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _execute(conn: sqlite3.Connection, operation: Operation[T], *, begun: bool = False) -> tuple[T, bool]:
    """Run `operation` in one transaction on `conn` (BEGIN IMMEDIATE unless `begun`); returns its
    result and whether it wrote anything."""
    changes = conn.total_changes
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
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise StorageError(str(exc)) from exc
        return done.value, conn.total_changes != changes
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        if "UNIQUE" in str(exc):
            raise UniqueViolation(str(exc)) from exc
        raise StorageError(str(exc)) from exc
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise StorageError(str(exc)) from exc
    except (UnicodeEncodeError, OverflowError) as exc:  # raised by sqlite3 binding a parameter
        conn.execute("ROLLBACK")
        raise ValueRefused(str(exc)) from exc
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _applied(conn: sqlite3.Connection, version: int) -> bool:
    return conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone() is not None


def _record(conn: sqlite3.Connection, migration: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, int(time.time())),
    )


def _why(path: Path, exc: BaseException) -> str:
    """What is wrong with `path`, in the operator's words rather than SQLite's."""
    if path.is_dir():
        return "it is a directory"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a directory"
            break
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(
        self, path: Path, *, synchronous: str = "full", wal_limit: int = WAL_LIMIT, check_every: int = CHECK_EVERY
    ) -> None:
        super().__init__()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = path
        self.synchronous = synchronous
        self.wal_limit = wal_limit
        self.check_every = check_every
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-sqlite")
        self._sync_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-sqlite-fsync")
        self._thread_conn: sqlite3.Connection | None = None  # used only on the worker thread
        self._loop_conn: sqlite3.Connection | None = None  # used only on the event loop
        self._checkpoints: asyncio.Task[None] | None = None
        self._wal_fd: int | None = None
        self._committed = 0  # write transactions committed (their WAL frames written)
        self._synced = 0  # … of which the WAL has been fsynced after
        self._sync_task: asyncio.Future[None] | None = None
        self._broken: str | None = None  # a failed fsync: nothing more is acknowledged
        self._writes_since_check = 0
        self._check_now = asyncio.Event()
        self._to_thread = False  # a TRUNCATE checkpoint is due: transactions queue behind it
        self._blocked_checkpoint_reported = False
        self._truncate_after = 0.0  # monotonic time before which no TRUNCATE is tried (blocked)
        self._closed = False

    # ------------------------------------------------------------------ open, migrate, close

    async def open(self, *, migrate: bool = True) -> None:
        try:
            await self._call(lambda: self._open_sync(migrate))
            conn = _connect(self.path, busy_ms=0, create=False)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._loop_conn = conn
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            _sync_directory(self.path.parent)  # the WAL's directory entry, once
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StorageError(
                f"cannot open the SQLite database {self.path} (BROKER_DB_URL): {_why(self.path, exc)}"
            ) from None
        except BaseException:
            await self.close()
            raise
        self._checkpoints = asyncio.create_task(self._checkpoint_forever(), name="broker-sqlite-checkpoint")

    def _open_sync(self, migrate: bool) -> None:
        if migrate:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
            self._thread_conn = _connect(self.path, busy_ms=THREAD_BUSY_MS)
            self._migrate_sync(self._thread_conn)
            _warn_if_shared(self.path)
            return
        if not self.path.exists():
            raise StorageError(f"no broker database at {self.path} (BROKER_DB_URL); nothing was created")
        conn = self._thread_conn = _connect(self.path, busy_ms=THREAD_BUSY_MS, create=False)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone():
            require_migrated(
                int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0), self.where
            )
        else:
            raise StorageError(f"{self.path} holds no broker tables (BROKER_DB_URL); nothing was created")

    @property
    def where(self) -> str:
        return f"SQLite database {self.path}"

    def _migrate_sync(self, conn: sqlite3.Connection) -> None:
        """Each migration in its own transaction, under the write lock. A migration that `scrubs`
        runs its (idempotent) statements, then VACUUM, then records its version: a crash in
        between runs it again at the next start."""
        for migration in SQLITE_MIGRATIONS:
            with _immediate(conn):
                conn.execute(SCHEMA_MIGRATIONS_TABLE)
                if _applied(conn, migration.version):
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                if not migration.scrubs:
                    _record(conn, migration)
            if migration.scrubs:
                self._scrub_sync(conn)
                with _immediate(conn):
                    if not _applied(conn, migration.version):
                        _record(conn, migration)

    def _scrub_sync(self, conn: sqlite3.Connection) -> None:
        """Leave no byte of deleted rows in the files: VACUUM rebuilds the database from its live
        rows into fresh pages (free space and freed pages included), and a TRUNCATE checkpoint
        moves it into the database file and empties the WAL, where older page images lived."""
        conn.execute("VACUUM")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("%s: the WAL could not be emptied after VACUUM (another process reads it)", self.where)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpoints is not None:
            self._check_now.set()
            await self._checkpoints
            self._checkpoints = None
        if self._sync_task is not None:
            with contextlib.suppress(StorageError):
                await asyncio.shield(self._sync_task)
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

        def close_sync() -> None:
            if self._thread_conn is not None:
                with contextlib.suppress(sqlite3.Error):  # a courtesy: never stall another process for it
                    self._thread_conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
                    self._thread_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._thread_conn.close()
                self._thread_conn = None

        await self._call(close_sync)
        self._executor.shutdown(wait=True)
        self._sync_executor.shutdown(wait=True)
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda: self._thread().execute("SELECT 1").fetchone()[0] == 1))
        except (sqlite3.Error, StorageError, RuntimeError):
            return False

    async def schema_version(self) -> int:
        try:
            row = await self._call(
                lambda: self._thread().execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            )
        except (sqlite3.Error, RuntimeError) as exc:
            raise StorageError(str(exc)) from exc
        return int(row[0] or 0)

    def _thread(self) -> sqlite3.Connection:
        if self._thread_conn is None:
            raise StorageError("SQLite database is not open")
        return self._thread_conn

    async def _call(self, fn: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    # ------------------------------------------------------------------ operations

    async def _run_once(self, operation: Operation[T]) -> T:
        if self._broken is not None:
            raise StorageError(self._broken)
        conn = self._loop_conn
        if conn is None:
            raise StorageError("SQLite database is not open")
        result: T
        wrote: bool
        if self._to_thread:
            result, wrote = await self._call(lambda: _execute(self._thread(), operation))
        else:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StorageError(str(exc)) from exc
                # Someone else writes: wait for the lock on the thread, never on the loop.
                result, wrote = await self._call(lambda: _execute(self._thread(), operation))
            else:
                result, wrote = _execute(conn, operation, begun=True)
        if wrote:
            await self._durable()
            self._writes_since_check += 1
            if self._writes_since_check >= self.check_every:
                self._check_now.set()
        return result

    async def _durable(self) -> None:
        """Return once the WAL has been fsynced after this transaction committed."""
        if self.synchronous == "normal":
            return
        self._committed += 1
        mine = self._committed
        while self._synced < mine:
            if self._sync_task is None:
                self._sync_task = asyncio.ensure_future(self._sync_wal())
            await asyncio.shield(self._sync_task)

    async def _sync_wal(self) -> None:
        covers = self._committed  # every transaction counted so far has written its frames
        try:
            if self._wal_fd is None:
                raise StorageError("SQLite database is not open")
            await asyncio.get_running_loop().run_in_executor(self._sync_executor, os.fsync, self._wal_fd)
        except OSError as exc:
            self._broken = (
                f"the SQLite WAL of {self.path} could not be synced to disk ({exc.strerror}): restart the broker"
            )
            log.critical("%s; no write is acknowledged from now on", self._broken)
            raise StorageError(self._broken) from exc
        finally:
            self._sync_task = None
        self._synced = max(self._synced, covers)

    # ------------------------------------------------------------------ checkpoints

    async def _checkpoint_forever(self) -> None:
        # Stopped by `close` through `_closed` and the event, not by cancellation: Python 3.11's
        # wait_for can swallow a cancel that lands as its timeout fires, and close would wait forever.
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECKPOINT_INTERVAL):
                    await self._check_now.wait()
            if self._closed:
                return
            self._check_now.clear()
            self._writes_since_check = 0
            try:
                await self.checkpoint()
            except (OSError, sqlite3.Error, StorageError) as exc:
                log.warning("%s: checkpoint failed: %s", self.where, exc)

    def wal_size(self) -> int:
        return 0 if self._wal_fd is None else os.fstat(self._wal_fd).st_size

    async def checkpoint(self) -> None:
        """PASSIVE while the WAL is within `wal_limit`, else TRUNCATE with the writers waiting.

        Only another process can block a TRUNCATE (a reader holding an old snapshot, a writer):
        it is then given up after `CHECKPOINT_BUSY_MS`, PASSIVE checkpoints go on, and it is tried
        again after `BLOCKED_RETRY` seconds, so such a reader slows writes by at most 2% and the
        operator is told once why the WAL grows."""
        size = self.wal_size()
        if size <= self.wal_limit or time.monotonic() < self._truncate_after:
            await self._call(lambda: self._thread().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            return
        self._to_thread = True
        try:
            busy, _, _ = await self._call(self._truncate_sync)
        finally:
            self._to_thread = False
        if busy:
            self._truncate_after = time.monotonic() + BLOCKED_RETRY
        if busy and not self._blocked_checkpoint_reported:
            log.warning(
                "%s: the WAL is %.0f MB and cannot be checkpointed: another connection keeps reading it",
                self.where,
                size / 1e6,
            )
        self._blocked_checkpoint_reported = bool(busy)

    def _truncate_sync(self) -> tuple[int, int, int]:
        conn = self._thread()
        conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
        try:
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={THREAD_BUSY_MS}")
        return int(row[0]), int(row[1]), int(row[2])


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
