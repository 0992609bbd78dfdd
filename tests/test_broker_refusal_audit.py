"""Refusal audit rows are bounded per source and never lose a refusal (issue 11, finding 1): a flood
of ``Authorization: Bearer garbage`` wrote one row per request and grew the SQLite WAL to 4 GB in a
minute. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from broker_client import ADD_WALLET, Reply, assert_refused, bearer
from conftest import BrokerFactory

from agentkeys_kit.broker.audit import ANY_SOURCE, PER_SOURCE, RefusalAudit, source_of
from agentkeys_kit.broker.storage import AuditEvent, Database, StorageError, open_database
from agentkeys_kit.broker.storage.base import Operation, Query


@pytest.fixture
async def db(db_url: tuple[str, str | None]) -> AsyncIterator[Database]:
    url, schema = db_url
    database = open_database(url, schema=schema)
    await database.open()
    yield database
    await database.close()


def refusal(remote: str, n: int, *, bearer: str | None = None, at: int = 1000) -> AuditEvent:
    return AuditEvent(
        event="add_wallet",
        outcome="refused:invalid_token",
        occurred_at=at + n,
        remote_addr=remote,
        bearer_sha256=bearer or hashlib.sha256(f"garbage{remote}{n}".encode()).hexdigest(),
        detail="not a JWT",
    )


def refusal_rows() -> Operation[list[dict[str, Any]]]:
    rows = yield Query.all(
        "SELECT remote_addr, outcome, bearer_sha256, detail, repeat_count, occurred_at FROM audit_log ORDER BY id"
    )
    return list(rows)


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for row in rows:
        counted[row["remote_addr"]] = counted.get(row["remote_addr"], 0) + row["repeat_count"]
    return counted


async def test_full_rows_within_the_budgets_then_one_counted_row_per_kind(db: Database) -> None:
    audit = RefusalAudit(db, per_source=3, overall=5)
    for n in range(20):
        await audit.record(refusal("10.0.0.1", n))
    for n in range(10):
        await audit.record(refusal("10.0.0.2", n))
    for remote in ("2001:db8::1", "2001:db8::2", "::ffff:10.0.0.2"):
        await audit.record(refusal(remote, 50))
    written = await db.run(refusal_rows)
    assert [row["remote_addr"] for row in written] == ["10.0.0.1"] * 3 + ["10.0.0.2"] * 2
    assert all(row["repeat_count"] == 1 for row in written)
    assert audit.pending == 33 - 5

    await audit.flush()
    rows = await db.run(refusal_rows)
    aggregated = {row["remote_addr"]: row for row in rows[5:]}
    assert {source: row["repeat_count"] for source, row in aggregated.items()} == {
        "10.0.0.1": 17,
        "10.0.0.2": 9,  # the IPv4-mapped peer is the same source
        "2001:db8::/64": 2,  # one /64 is one source
    }
    assert totals(rows) == {"10.0.0.1": 20, "10.0.0.2": 11, "2001:db8::/64": 2}
    first = aggregated["10.0.0.1"]
    assert first["occurred_at"] == 1003 and first["detail"].startswith("17 refusals aggregated, 1003..1019")
    assert first["bearer_sha256"] is None  # they presented different tokens
    assert audit.pending == 0

    # a new window: the budgets are back
    await audit.record(refusal("10.0.0.1", 100))
    assert len(await db.run(refusal_rows)) == len(rows) + 1


async def test_one_token_repeated_keeps_its_hash_in_the_counted_row(db: Database) -> None:
    audit = RefusalAudit(db, per_source=1, overall=10)
    token_hash = hashlib.sha256(b"the same garbage").hexdigest()
    for n in range(6):
        await audit.record(refusal("10.0.0.3", n, bearer=token_hash))
    await audit.flush()
    rows = await db.run(refusal_rows)
    assert [(row["repeat_count"], row["bearer_sha256"]) for row in rows] == [(1, token_hash), (5, token_hash)]


async def test_kinds_beyond_the_cap_are_counted_under_any_source(db: Database) -> None:
    """An attacker who varies its address cannot grow memory or the table: past `max_kinds` the
    refusals are counted under source "*"."""
    audit = RefusalAudit(db, per_source=0, overall=0, max_kinds=4)
    for n in range(100):
        await audit.record(refusal(f"10.1.{n // 250}.{n % 250}", n))
    await audit.flush()
    rows = await db.run(refusal_rows)
    assert len(rows) == 5
    assert totals(rows)[ANY_SOURCE] == 96 and sum(totals(rows).values()) == 100


async def test_counts_survive_a_database_failure_and_are_written_later(
    db_url: tuple[str, str | None], db: Database
) -> None:
    audit = RefusalAudit(db, per_source=0, overall=0)
    for n in range(7):
        await audit.record(refusal("10.0.0.4", n))
    await db.close()  # the database goes away
    for n in range(7, 9):
        await audit.record(refusal("10.0.0.4", n))
    await audit.flush()
    assert audit.pending == 9
    url, schema = db_url
    audit.db = back = open_database(url, schema=schema)
    await back.open()
    try:
        await audit.flush()
        assert totals(await back.run(refusal_rows)) == {"10.0.0.4": 9}
    finally:
        await back.close()


def test_sources() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert source_of(None) == "unknown"
    assert source_of("/tmp/broker.sock") == "/tmp/broker.sock"


async def test_a_flood_of_garbage_bearers_writes_a_bounded_number_of_rows_and_counts_every_one(
    make_broker: BrokerFactory, db_url: tuple[str, str | None], http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    flood = 600
    gate = asyncio.Semaphore(50)

    async def garbage(n: int) -> int:
        async with gate, http.post(broker.url + ADD_WALLET, headers=bearer(f"garbage{n}")) as response:
            assert_refused(Reply(response.status, await response.json()), 401, "invalid_token")
            return response.status

    assert set(await asyncio.gather(*(garbage(n) for n in range(flood)))) == {401}
    assert len(await broker.state.db.run(refusal_rows)) <= PER_SOURCE + 1
    await broker.stop()  # a clean stop writes what is counted
    url, schema = db_url
    reopened = open_database(url, schema=schema)
    await reopened.open()
    try:
        rows = await reopened.run(refusal_rows)
    finally:
        await reopened.close()
    assert len(rows) <= PER_SOURCE + 3  # full rows, then one counted row per window
    assert totals(rows) == {"127.0.0.1": flood}
    assert {row["outcome"] for row in rows} == {"refused:invalid_token"}


async def test_a_failed_refusal_write_is_counted_not_lost(db: Database) -> None:
    audit = RefusalAudit(db, per_source=5, overall=5)
    await db.close()
    await audit.record(refusal("10.0.0.9", 1))  # the budget allowed a row; the write failed
    assert audit.pending == 1
    with pytest.raises(StorageError):
        await db.run(refusal_rows)
