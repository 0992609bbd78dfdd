"""Versioned migrations: a database at an older version is brought forward at start, data kept."""

from __future__ import annotations

import pytest

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
