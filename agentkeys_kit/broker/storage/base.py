"""Storage behind one interface, two drivers (SQLite, PostgreSQL).

Each operation is written once, as a generator that yields `Query` objects and receives their
results; a driver runs the generator inside one transaction. The SQLite driver runs the whole
generator on its own database thread (one hop per transaction); the PostgreSQL driver awaits each
query on an asyncpg connection. SQL is written with ``?`` placeholders; the PostgreSQL driver
numbers them.

`Database.run` reruns an operation when the database says that rerunning is right and safe:
a unique-key race (two replicas adding a wallet slot at once, at most `RETRIES` times), a deadlock
or serialisation failure (the database rolled the transaction back; at most `CONFLICT_RETRIES`
times, with a growing random pause), and a connection that broke before anything could commit
(once, on a fresh connection). Anything else is a `StorageError` the caller turns into a 503.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")
RETRIES = 5
CONFLICT_RETRIES = 6
CONFLICT_PAUSE = 0.005  # seconds; attempt n waits a random time below CONFLICT_PAUSE * 2**n
OUTAGE_SUMMARY_EVERY = 30.0  # seconds between "still unavailable" lines

log = logging.getLogger("agentkeys_kit.broker.storage")


class Fetch(Enum):
    ONE = "one"  # first row as a dict, or None
    ALL = "all"  # every row as dicts
    ROWCOUNT = "rowcount"  # rows affected


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    args: tuple[Any, ...] = ()
    fetch: Fetch = Fetch.ROWCOUNT
    #: the whole operation is this one statement (atomic by itself): a driver may run it without
    #: BEGIN/COMMIT, saving two round trips on PostgreSQL.
    whole: bool = False

    @classmethod
    def one(cls, sql: str, *args: Any) -> Query:
        return cls(sql, args, Fetch.ONE)

    @classmethod
    def only_statement(cls, sql: str, *args: Any) -> Query:
        return cls(sql, args, Fetch.ONE, whole=True)

    @classmethod
    def run_alone(cls, sql: str, *args: Any) -> Query:
        """A statement that is the whole operation, answering its row count (an INSERT that
        needs nothing before it: on PostgreSQL one round trip instead of three)."""
        return cls(sql, args, Fetch.ROWCOUNT, whole=True)

    @classmethod
    def all(cls, sql: str, *args: Any) -> Query:
        return cls(sql, args, Fetch.ALL)

    @classmethod
    def run(cls, sql: str, *args: Any) -> Query:
        return cls(sql, args, Fetch.ROWCOUNT)


Operation = Generator[Query, Any, T]


class StorageError(RuntimeError):
    """The database failed (unreachable, or a constraint the operation could not resolve)."""


class UniqueViolation(StorageError):
    """A unique constraint fired; `Database.run` reruns the operation."""


class ValueRefused(StorageError):
    """The database cannot store a value of the operation (a NUL byte, a lone surrogate, an
    integer out of range): the request's fault, not the database's; nothing was written."""


class Conflict(StorageError):
    """A deadlock or serialisation failure: the database rolled the transaction back, and running
    it again is the documented remedy; `Database.run` does, a bounded number of times."""


class ConnectionLost(StorageError):
    """The connection to the database broke. `safe`: it broke before anything was sent that could
    have committed, so the operation can run again on a fresh connection."""

    def __init__(self, message: str, *, safe: bool) -> None:
        super().__init__(message)
        self.safe = safe


class OutageLog:
    """What an operator reads while the database is down: one line when operations start failing,
    a summary every `every` seconds while they keep failing, one line when one succeeds again.
    Each failed request is also one line where it is served (no traceback): the summary is what
    is left to read when a flood of them scrolls by."""

    def __init__(self, every: float = OUTAGE_SUMMARY_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._since: float | None = None
        self._failures = 0
        self._reported_at = 0.0
        self._reported_failures = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        self._failures += 1
        if self._since is None:
            self._since = self._reported_at = now
            self._reported_failures = 1
            log.error("database unavailable: %s", one_line(exc))
        elif now - self._reported_at >= self.every:
            log.error(
                "database still unavailable after %.0f s: %d operations failed in the last %.0f s (last: %s)",
                now - self._since,
                self._failures - self._reported_failures,
                now - self._reported_at,
                one_line(exc),
            )
            self._reported_at, self._reported_failures = now, self._failures

    def succeeded(self) -> None:
        if self._since is None:
            return
        log.warning(
            "database available again after %.1f s; %d operations failed meanwhile",
            self.clock() - self._since,
            self._failures,
        )
        self._since, self._failures = None, 0


def one_line(exc: BaseException) -> str:
    """An exception as one short log line: its type and first line, never a traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class Database(abc.ABC):
    """A driver: runs operations transactionally."""

    dialect: str

    def __init__(self) -> None:
        self.outage = OutageLog()

    @abc.abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect; with `migrate`, create the schema and bring it to `LATEST_SCHEMA_VERSION`.
        Without it nothing is created: a database or schema that does not exist, or is at
        another version, is a `StorageError` that says so (the operator's commands)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    @abc.abstractmethod
    async def _run_once(self, operation: Operation[T]) -> T: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    async def _connection_lost(self) -> None:  # noqa: B027 - a driver with nothing to drop keeps it
        """A connection broke: the driver drops the others it holds too (a restarted or failed-over
        server has closed them all), so the next operations connect afresh."""

    async def run(self, make_operation: Any, *args: Any) -> Any:
        """Run `make_operation(*args)` in one transaction, rerunning it where that is safe."""
        races = conflicts = 0
        reconnected = False
        while True:
            try:
                result = await self._run_once(make_operation(*args))
            except ValueRefused:
                raise
            except UniqueViolation:
                races += 1
                if races >= RETRIES:
                    raise
            except Conflict:
                conflicts += 1
                if conflicts >= CONFLICT_RETRIES:
                    raise
                await asyncio.sleep(random.uniform(0, CONFLICT_PAUSE * 2**conflicts))
            except ConnectionLost as exc:
                await self._connection_lost()
                if reconnected or not exc.safe:
                    self.outage.failed(exc)
                    raise
                reconnected = True
            except StorageError as exc:
                self.outage.failed(exc)
                raise
            else:
                self.outage.succeeded()
                return result
