"""Broker storage: one interface (`Database` running `store` operations), SQLite and PostgreSQL."""

from __future__ import annotations

from agentkeys_kit.broker.config import sqlite_path
from agentkeys_kit.broker.storage.base import Database, StorageError, UniqueViolation, ValueRefused
from agentkeys_kit.broker.storage.records import AuditEvent, GrantRecord, UserRecord, WalletRecord


def open_database(
    db_url: str, *, schema: str | None = None, sqlite_synchronous: str = "full", pool_size: int = 8
) -> Database:
    """A driver for `db_url` (not yet opened): ``sqlite:///PATH`` or ``postgresql://…``;
    `schema` (PostgreSQL only) keeps the tables in that schema, for isolated test runs;
    `sqlite_synchronous` (SQLite only): ``full`` acknowledges only what is on disk, ``normal`` may
    lose the last acknowledged writes to a power loss (see `storage/sqlite.py`); `pool_size`
    (PostgreSQL only): connections held at most."""
    if db_url.startswith(("postgresql://", "postgres://")):
        from agentkeys_kit.broker.storage.postgres import PostgresDatabase

        return PostgresDatabase(db_url, schema=schema, min_size=min(4, pool_size), max_size=pool_size)
    from agentkeys_kit.broker.storage.sqlite import SqliteDatabase

    return SqliteDatabase(sqlite_path(db_url), synchronous=sqlite_synchronous)


__all__ = [
    "AuditEvent",
    "Database",
    "GrantRecord",
    "StorageError",
    "UniqueViolation",
    "UserRecord",
    "ValueRefused",
    "WalletRecord",
    "open_database",
]
