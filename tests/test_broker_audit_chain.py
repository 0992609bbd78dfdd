"""The audit chain (`broker/audit_chain.py`): linear under concurrent appends (PostgreSQL's head
row lock, SQLite's write lock, several writers at once), and `agentkeys-broker audit verify`
finding an edited, a deleted and a cut-off row; `tail` and `export` as JSON lines."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest
from broker_client import login
from conftest import BrokerFactory, BrokerHandle
from cryptography.hazmat.primitives.asymmetric import rsa
from mint_support import OIDC, chain, post
from test_broker_operator import broker_cli, db_env

from agentkeys_kit.broker import audit_chain
from agentkeys_kit.broker.audit_chain import ChainEntry, ChainWriter
from agentkeys_kit.broker.storage import open_database
from agentkeys_kit.broker.storage.base import Operation, Query

WALLET = "0x" + "c0" * 20


def run_sql(sql: str, *args: Any) -> Any:
    def operation() -> Operation[int]:
        count: int = yield Query.run(sql, *args)
        return count

    return operation


async def minted(broker: BrokerHandle, http: aiohttp.ClientSession, token: str, count: int) -> None:
    replies = await asyncio.gather(*(post(http, broker, OIDC, token) for _ in range(count)))
    assert [reply.status for reply in replies] == [200] * count


async def test_concurrent_mints_keep_the_chain_linear(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, WALLET)
    await minted(broker, http, token, 60)
    rows = await chain(broker, logins=True)
    assert [row.seq for row in rows] == list(range(1, 62))  # the login, then 60 mints
    assert rows[0].prev_hash == audit_chain.GENESIS and rows[0].entry.event == "login"
    assert all(row.prev_hash == before.row_hash for before, row in itertools.pairwise(rows))
    assert len({row.entry.sts_session_name for row in rows[1:]}) == 1  # the kid
    verdict = await audit_chain.verify(broker.state.db)
    assert verdict.intact and verdict.rows == 61 and verdict.head_seq == 61


async def test_several_writers_on_one_database_stay_linear(db_url: tuple[str, str | None]) -> None:
    """Replicas: three writers, each its own connection pool (PostgreSQL) or connection (SQLite)."""
    url, schema = db_url
    databases = [open_database(url, schema=schema) for _ in range(3)]
    for db in databases:
        await db.open()
    try:
        writers = [ChainWriter(db) for db in databases]
        entries = [ChainEntry(event="mint_oidc_jwt", outcome="ok", minted_at=i) for i in range(90)]
        await asyncio.gather(*(writers[i % 3].record(entry) for i, entry in enumerate(entries)))
        verdict = await audit_chain.verify(databases[0])
        assert verdict.intact, verdict.problems
        assert verdict.rows == verdict.head_seq == 90
        rows = await databases[1].run(audit_chain.rows_after, 0, 1000)
        assert sorted(row.entry.minted_at for row in rows) == list(range(90))
    finally:
        for db in databases:
            await db.close()


async def test_appends_of_every_batch_size_number_rows_in_order(db_url: tuple[str, str | None]) -> None:
    """`append` writes at most CHUNK rows per INSERT; batches below, at and above a chunk (and a
    remainder after full chunks) all land whole, numbered and linked in order."""
    url, schema = db_url
    db = open_database(url, schema=schema)
    await db.open()
    try:
        sizes = [1, 2, audit_chain.CHUNK - 1, audit_chain.CHUNK, audit_chain.CHUNK + 1, 2 * audit_chain.CHUNK + 3]
        minted_at = itertools.count()
        expected: list[int] = []
        for size in sizes:
            entries = [ChainEntry(event="login", outcome="ok", minted_at=next(minted_at)) for _ in range(size)]
            expected += [entry.minted_at for entry in entries]

            def batch(entries: list[ChainEntry] = entries) -> Operation[list[audit_chain.ChainRow]]:
                return (yield from audit_chain.append(entries))

            appended = await db.run(batch)
            assert [row.entry for row in appended] == entries
        rows = await db.run(audit_chain.rows_after, 0, 1000)
        assert [row.entry.minted_at for row in rows] == expected
        assert [row.seq for row in rows] == list(range(1, len(expected) + 1))
        verdict = await audit_chain.verify(db)
        assert verdict.intact and verdict.rows == verdict.head_seq == len(expected), verdict.problems
    finally:
        await db.close()


async def test_a_statement_run_alone_answers_its_row_count(db_url: tuple[str, str | None]) -> None:
    """`Query.run_alone` (no BEGIN/COMMIT on PostgreSQL) answers the rows it changed, like `Query.run`."""
    url, schema = db_url
    db = open_database(url, schema=schema)
    await db.open()
    try:
        entries = [ChainEntry(event="login", outcome="ok", minted_at=i) for i in range(3)]
        await db.run(lambda: audit_chain.append(entries))

        def alone(sql: str) -> Operation[int]:
            count: int = yield Query.run_alone(sql)
            return count

        assert await db.run(lambda: alone("UPDATE mint_log SET outcome = 'ok' WHERE seq <= 2")) == 2
        assert await db.run(lambda: alone("UPDATE mint_log SET outcome = 'ok' WHERE seq > 99")) == 0
    finally:
        await db.close()


@pytest.mark.parametrize("tamper", ["edit", "edit_and_rehash", "delete_middle", "cut_the_end", "edit_the_last"])
async def test_verify_detects_tampering(
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    db_url: tuple[str, str | None],
    tamper: str,
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, WALLET)
    await minted(broker, http, token, 5)
    proc = await broker_cli("audit", "verify", env=db_env(db_url))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["intact"] is True

    db = broker.state.db
    if tamper == "edit":
        await db.run(run_sql("UPDATE mint_log SET requester_wallet = ? WHERE seq = 3", "0x" + "ee" * 20))
        expected = "row 3: its content does not give its row_hash"
    elif tamper == "edit_and_rehash":
        [row] = await db.run(audit_chain.rows_after, 2, 3)
        entry = row.entry.__class__(**{**_entry_fields(row), "outcome": "refused"})
        digest = audit_chain.row_hash_of(3, entry, row.prev_hash)
        await db.run(run_sql("UPDATE mint_log SET outcome = 'refused', row_hash = ? WHERE seq = 3", digest))
        expected = "row 4: prev_hash is not the hash of the row before it"
    elif tamper == "delete_middle":
        await db.run(run_sql("DELETE FROM mint_log WHERE seq = 2"))
        expected = "row 2 missing (deleted)"
    elif tamper == "cut_the_end":
        await db.run(run_sql("DELETE FROM mint_log WHERE seq >= 4"))
        expected = "the head says 6 rows, the chain ends at row 3"  # the login and 5 mints
    else:
        await db.run(run_sql("UPDATE mint_log SET outcome_detail = 'x', row_hash = ? WHERE seq = 6", "0" * 64))
        expected = "row 6: its content does not give its row_hash"
    proc = await broker_cli("audit", "verify", env=db_env(db_url))
    assert proc.returncode == 1, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["intact"] is False
    assert any(problem.startswith(expected) for problem in verdict["problems"]), verdict


def _entry_fields(row: audit_chain.ChainRow) -> dict[str, Any]:
    return {name: getattr(row.entry, name) for name in ChainEntry.__slots__}


async def test_tail_and_export_are_json_lines(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, db_url: tuple[str, str | None]
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, WALLET)
    await minted(broker, http, token, 4)
    tail = await broker_cli("audit", "tail", "-n", "2", env=db_env(db_url))
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [4, 5]  # the login, then 4 mints
    assert set(lines[0]) == {"seq", *ChainEntry.__slots__, "prev_hash", "row_hash"}
    assert token not in tail.stdout
    export = await broker_cli("audit", "export", "--after", "1", env=db_env(db_url))
    assert [json.loads(line)["seq"] for line in export.stdout.splitlines()] == [2, 3, 4, 5]


async def test_a_failed_batch_is_retried_one_by_one(db_url: tuple[str, str | None]) -> None:
    """One action whose value the database refuses does not take the others down with it."""
    url, schema = db_url
    db = open_database(url, schema=schema)
    await db.open()
    try:
        writer = ChainWriter(db)
        good = [ChainEntry(event="login", outcome="ok", minted_at=i) for i in range(5)]
        bad = ChainEntry(event="login", outcome="ok", minted_at=2**70)  # beyond BIGINT
        results = await asyncio.gather(*(writer.record(e) for e in [*good[:2], bad, *good[2:]]), return_exceptions=True)
        assert [isinstance(result, Exception) for result in results] == [False, False, True, False, False, False]
        verdict = await audit_chain.verify(db)
        assert verdict.intact and verdict.rows == 5
    finally:
        await db.close()


async def test_logins_and_refused_mints_are_chain_rows(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    _, token = await login(http, broker, tee_key, WALLET)  # post_heima_login: the heima backend's login
    assert (await post(http, broker, OIDC, token)).status == 200
    assert (await post(http, broker, OIDC, "forged.token.value")).status == 401
    await broker.state.refusals.flush()
    rows = [row.entry for row in await chain(broker, logins=True)]
    assert [(row.event, row.outcome) for row in rows[:2]] == [("login", "ok"), ("mint_oidc_jwt", "ok")]
    assert rows[0].requester_wallet == WALLET and rows[0].outcome_detail == f"post_heima_login evm {WALLET}"
    assert rows[1].requester_token == rows[0].requester_token  # the same bearer, as its SHA-256
    [refused] = rows[2:]
    assert (refused.event, refused.outcome) == ("mint_oidc_jwt", "refused:invalid_token")
    assert refused.requester_wallet == "unknown" and refused.sts_session_name == "(unauthenticated)"
    assert (await audit_chain.verify(broker.state.db)).intact
