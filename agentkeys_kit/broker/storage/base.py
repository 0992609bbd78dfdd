"""Storage behind one interface, two drivers (SQLite, PostgreSQL).

Each operation is written once, as a generator that yields `Query` objects and receives their
results; a driver runs the generator inside one transaction. The SQLite driver runs the whole
generator on its own database thread (one hop per transaction); the PostgreSQL driver awaits each
query on an asyncpg connection. SQL is written with ``?`` placeholders; the PostgreSQL driver
numbers them. A unique-constraint race (two replicas adding a wallet slot at once) reruns the
operation, at most `RETRIES` times.
"""

from __future__ import annotations

import abc
from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")
RETRIES = 5


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
    def all(cls, sql: str, *args: Any) -> Query:
        return cls(sql, args, Fetch.ALL)

    @classmethod
    def run(cls, sql: str, *args: Any) -> Query:
        return cls(sql, args, Fetch.ROWCOUNT)


Operation = Generator[Query, Any, T]


class StorageError(RuntimeError):
    """The database failed (unreachable, or a constraint the operation could not resolve)."""


class UniqueViolation(StorageError):
    """A unique constraint fired; drivers rerun the operation."""


class Database(abc.ABC):
    """A driver: runs operations transactionally."""

    dialect: str

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    @abc.abstractmethod
    async def _run_once(self, operation: Operation[T]) -> T: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    async def run(self, make_operation: Any, *args: Any) -> Any:
        """Run `make_operation(*args)` in one transaction, rerunning it on a unique-key race."""
        for attempt in range(RETRIES):
            try:
                return await self._run_once(make_operation(*args))
            except UniqueViolation:
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")
