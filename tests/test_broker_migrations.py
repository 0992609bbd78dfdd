"""Versioned migrations: a database at an older version is brought forward at start, data kept."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import asyncpg
import pytest
from conftest import open_database_at

from agentkeys_kit.broker.storage import migrations as m
from agentkeys_kit.broker.storage import open_database, store
from agentkeys_kit.broker.storage.base import Operation, Query
from agentkeys_kit.broker.storage.records import AuditEvent, UserRecord


def _insert_v1_user_with_wallets(slots: int) -> Operation[None]:
    yield Query.run(
        "INSERT INTO users (user_uid, client_id, identity_type, identity_value, omni_account, pumpx_omni_account, "
        "created_at) VALUES ('usr_old', 'agentkeys', 'evm', '0x01', '0xaa', '0xbb', 1)"
    )
    user = yield Query.one("SELECT id FROM users WHERE user_uid = 'usr_old'")
    for slot in range(slots):
        yield Query.run("INSERT INTO wallets (user_id, wallet_index, created_at) VALUES (?, ?, 1)", user["id"], slot)


async def test_v1_database_is_migrated_and_the_next_wallet_slot_follows_the_stored_ones(
    db_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, schema = db_url
    dialect_list = "POSTGRES_MIGRATIONS" if url.startswith("postgresql") else "SQLITE_MIGRATIONS"
    full = getattr(m, dialect_list)
    with monkeypatch.context() as patch:  # a broker of the first release
        patch.setattr(
            f"agentkeys_kit.broker.storage.{'postgres' if 'POSTGRES' in dialect_list else 'sqlite'}.{dialect_list}",
            full[:1],
        )
        old = open_database(url, schema=schema)
        await old.open()
        assert await old.schema_version() == 1
        await old.run(_insert_v1_user_with_wallets, 3)
        await old.close()

    new = open_database(url, schema=schema)
    await new.open()
    try:
        assert await new.schema_version() == m.LATEST_SCHEMA_VERSION
        user: UserRecord | None = await new.run(store.find_user_by_uid, "usr_old")
        assert user is not None
        audit = AuditEvent(event="add_wallet", outcome="ok", occurred_at=2)
        wallet = await new.run(lambda: store.add_wallet(user=user, audit=audit))
        assert wallet.wallet_index == 3
        assert await new.run(store.list_wallets, user.id) == [0, 1, 2, 3]
    finally:
        await new.close()


# --------------------------------------------------------------------------- v4: no bearer left in the files


def _store_v2_bearers(bearers: list[str], rounds: int) -> Operation[None]:
    """tee_tokens as a v2 broker kept them, bearer included; each account logs in `rounds` times,
    so old row versions hold the earlier bearers too."""
    per_round = len(bearers) // rounds
    for round_ in range(rounds):
        for n, bearer in enumerate(bearers[round_ * per_round : (round_ + 1) * per_round]):
            yield Query.run(
                "INSERT INTO tee_tokens (omni_account, token_type, client_id, token, token_sha256, expires_at, "
                "updated_at) VALUES (?, 'access', 'agentkeys', ?, ?, ?, ?) ON CONFLICT (omni_account, token_type) "
                "DO UPDATE SET token = excluded.token, token_sha256 = excluded.token_sha256",
                f"0x{n:064x}",
                bearer,
                hashlib.sha256(bearer.encode()).hexdigest(),
                2_000_000_000,
                round_,
            )


def _leaked(data: bytes, bearers: list[str]) -> list[str]:
    """The bearers of which any 24-byte piece is still in `data`."""
    return [b for b in bearers if any(b[i : i + 24].encode() in data for i in range(0, len(b) - 24, 12))]


async def _postgres_table_file(dsn: str, schema: str, table: str) -> tuple[str, bytes]:
    """(path, bytes) of `table`'s main file as it is on disk after a CHECKPOINT, read by the server
    (pg_read_binary_file, superuser), so it works wherever the test runs; TOAST included."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
        relation = f'"{schema}".{table}'
        path = await connection.fetchval("SELECT pg_relation_filepath($1::regclass)", relation)
        data = await _read_server_file(connection, path)
        toast = await connection.fetchval(
            "SELECT pg_relation_filepath(reltoastrelid) FROM pg_class WHERE oid = $1::regclass", relation
        )
        if toast:
            data += await _read_server_file(connection, toast)
        return str(path), data
    finally:
        await connection.close()


async def _read_server_file(connection: asyncpg.Connection, path: str) -> bytes:
    """A file under the server's data directory; b"" if it is gone."""
    if await connection.fetchval("SELECT pg_stat_file($1, true) IS NULL", path):
        return b""
    return bytes(await connection.fetchval("SELECT pg_read_binary_file($1)", path))


async def _postgres_file(dsn: str, path: str) -> bytes:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
        return await _read_server_file(connection, path)
    finally:
        await connection.close()


def _sqlite_files(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


@pytest.mark.parametrize("ran_v3", [False, True], ids=["from_v2", "v3_already_applied"])
async def test_the_bearers_v3_dropped_are_gone_from_the_table_files(
    db_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch, ran_v3: bool
) -> None:
    """Finding 6: v3's DROP COLUMN left every stored bearer readable in the table file. After v4
    none of them, nor any 24-byte piece of one, is left in the files: on PostgreSQL the table's
    file and the file it had before, on SQLite the database and its WAL."""
    url, schema = db_url
    bearers = [secrets.token_urlsafe(450) for _ in range(60)]  # like RS256 JWTs: ~600 random bytes
    v2 = await open_database_at(2, db_url, monkeypatch)
    await v2.run(_store_v2_bearers, bearers, 3)
    await v2.close()
    if url.startswith("postgresql"):
        assert schema is not None
        old_path, before = await _postgres_table_file(url, schema, "tee_tokens")
    else:
        sqlite = Path(url.removeprefix("sqlite:///"))
        before = _sqlite_files(sqlite)
    live = bearers[-20:]  # each account's last bearer; PostgreSQL also keeps the older row versions
    assert set(_leaked(before, bearers)) >= set(live), "the check must see the bearers where they are"
    if ran_v3:  # a database that ran v3 before v4 existed: the bearers are dropped but still there
        with monkeypatch.context() as patch:  # SQLite: as built without SECURE_DELETE (sqlite.org's default)
            patch.setattr("agentkeys_kit.broker.storage.sqlite.SECURE_DELETE", "OFF")
            v3 = await open_database_at(3, db_url, patch)
            await v3.close()
        dropped = (await _postgres_table_file(url, schema, "tee_tokens"))[1] if schema else _sqlite_files(sqlite)
        assert _leaked(dropped, bearers), "v3 alone leaves dropped bearers in the files (the finding)"

    latest = open_database(url, schema=schema)
    await latest.open()
    assert await latest.schema_version() == m.LATEST_SCHEMA_VERSION
    rows = await latest.run(lambda: (yield Query.all("SELECT omni_account, token_sha256 FROM tee_tokens")))
    await latest.close()
    assert len(rows) == 20, "the rows themselves survive, without the bearer"
    if schema is not None:
        new_path, after = await _postgres_table_file(url, schema, "tee_tokens")
        assert new_path != old_path
        assert _leaked(after, bearers) == []
        assert _leaked(await _postgres_file(url, old_path), bearers) == []
    else:
        assert _leaked(_sqlite_files(sqlite), bearers) == []
