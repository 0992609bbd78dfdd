"""Grants under concurrency (issue 11, findings 2 and 3), on SQLite and PostgreSQL, with one broker
and with two replicas on one database: at most one open grant per (master, agent) pair, held by the
database itself; revokes and creates racing each other never fail for a reason the caller cannot
fix; expired grants, and pairs with duplicates from before the rule, are handled as documented in
migration 5 (`storage/migrations.py`)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from broker_client import GRANT_CREATE, GRANT_LIST, GRANT_REVOKE, Reply, call, evm_address, is_bound, login
from conftest import BrokerFactory, BrokerHandle, _drop_schema, open_database_at
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage import Database, StorageError, open_database
from agentkeys_kit.broker.storage.base import CONFLICT_RETRIES, Conflict, Operation, Query

MASTER = "0x" + "9a" * 20
AGENT = "0x" + "8b" * 20
ROUNDS = 12


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


async def replicas(make_broker: BrokerFactory, count: int, **kwargs: Any) -> list[BrokerHandle]:
    """`count` brokers on one database (one SQLite file, or one PostgreSQL schema)."""
    return [await make_broker(**kwargs) for _ in range(count)]


def open_grants(master: str, agent: str) -> Operation[list[dict[str, Any]]]:
    rows = yield Query.all(
        "SELECT grant_id FROM grants WHERE master_wallet = ? AND agent_wallet = ? AND revoked_at IS NULL "
        "AND superseded_by IS NULL",
        master,
        agent,
    )
    return list(rows)


def create_body(agent: str, expires_at: int) -> dict[str, Any]:
    return {"agent_wallet": agent, "scope": "trade", "expires_at": expires_at}


@pytest.mark.parametrize("count", [1, 2], ids=["one_broker", "two_replicas"])
async def test_concurrent_identical_creates_make_one_grant(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, count: int
) -> None:
    """Finding 2: 8 identical concurrent creates gave up to 8 active grants on PostgreSQL."""
    brokers = await replicas(make_broker, count)
    _, token = await login(http, brokers[0], tee_key, MASTER)
    expires = int(time.time()) + 3600
    for round_ in range(ROUNDS):
        agent = evm_address(0x1000 + round_)
        replies = await asyncio.gather(
            *(
                call(http, brokers[n % count], GRANT_CREATE, token=token, json_body=create_body(agent, expires))
                for n in range(8)
            )
        )
        assert sorted(reply.status for reply in replies) == [200] + [409] * 7, (round_, replies)
        assert len(await brokers[0].state.db.run(open_grants, MASTER, agent)) == 1


@pytest.mark.parametrize("count", [1, 2], ids=["one_broker", "two_replicas"])
async def test_revokes_and_creates_racing_never_fail_and_keep_one_open_grant(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession, count: int
) -> None:
    """Finding 3: revokes racing each other deadlocked on PostgreSQL (503, the agent still bound).
    Every reply is now a 200 or a 409 that says why, one revoke of a grant wins, and the pair
    never holds two open grants."""
    brokers = await replicas(make_broker, count)
    _, token = await login(http, brokers[0], tee_key, MASTER)
    expires = int(time.time()) + 3600
    turn = itertools.count()

    async def send(path: str, body: dict[str, Any]) -> Reply:
        return await call(http, brokers[next(turn) % count], path, token=token, json_body=body)

    for round_ in range(ROUNDS):
        created = await send(GRANT_CREATE, create_body(AGENT, expires))
        if created.status == 409:  # a create of the previous round survived its revokes
            [open_grant] = await brokers[0].state.db.run(open_grants, MASTER, AGENT)
            assert (await send(GRANT_REVOKE, {"grant_id": open_grant["grant_id"]})).status == 200
            created = await send(GRANT_CREATE, create_body(AGENT, expires))
        assert created.status == 200, created
        grant_id = created.body["data"]["grant"]["grant_id"]
        calls = [send(GRANT_REVOKE, {"grant_id": grant_id}) for _ in range(4)]
        calls += [send(GRANT_CREATE, create_body(AGENT, expires)) for _ in range(4)]
        replies = await asyncio.gather(*calls)
        revokes, creates = replies[:4], replies[4:]
        assert sorted(r.status for r in revokes) == [200, 409, 409, 409], (round_, revokes)
        assert {r.body["data"]["error"] for r in revokes if r.status == 409} == {"already_revoked"}
        assert all(r.status == 200 or r.body["data"]["error"] == "grant_exists" for r in creates), creates
        assert len(await brokers[0].state.db.run(open_grants, MASTER, AGENT)) <= 1
    # whatever survived, one revoke unbinds the pair
    for grant in await brokers[0].state.db.run(open_grants, MASTER, AGENT):
        assert (await send(GRANT_REVOKE, {"grant_id": grant["grant_id"]})).status == 200
    assert await is_bound(http, brokers[-1], MASTER, AGENT) is False


async def test_an_expired_grant_is_superseded_by_the_next_and_keeps_its_history(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    broker = await make_broker(clock=clock)
    _, token = await login(http, broker, tee_key, MASTER)
    start = int(clock.now)
    old = await call(http, broker, GRANT_CREATE, token=token, json_body=create_body(AGENT, start + 100))
    clock.now = start + 100  # expired from this second on, never revoked
    new = await call(http, broker, GRANT_CREATE, token=token, json_body=create_body(AGENT, start + 1000))
    assert new.status == 200, new
    old_id, new_id = old.body["data"]["grant"]["grant_id"], new.body["data"]["grant"]["grant_id"]
    listing = (await call(http, broker, GRANT_LIST, method="GET", token=token)).body["data"]["grants"]
    by_id = {grant["grant_id"]: grant for grant in listing}
    assert by_id[old_id]["status"] == "expired" and by_id[old_id]["revoked_at"] is None
    assert by_id[old_id]["superseded_by"] == new_id
    assert by_id[new_id]["status"] == "active" and by_id[new_id]["superseded_by"] is None
    assert await is_bound(http, broker, MASTER, AGENT) is True
    # revoking the old grant still unbinds the pair (a revoke means "unbound")
    assert (await call(http, broker, GRANT_REVOKE, token=token, json_body={"grant_id": old_id})).status == 200
    assert await is_bound(http, broker, MASTER, AGENT) is False


# --------------------------------------------------------------------------- migration 5


def _legacy_grants(now: int) -> Operation[None]:
    """Grants as a broker before migration 5 could leave them: pair A holds three open grants
    (one expired) and a revoked one, pair B one open grant."""
    rows = [
        ("grn_a_soon", "0xa", "0xb", now - 50, now + 100, None),
        ("grn_a_late", "0xa", "0xb", now - 40, now + 1000, None),
        ("grn_a_late_too", "0xa", "0xb", now - 30, now + 1000, None),
        ("grn_a_expired", "0xa", "0xb", now - 500, now - 10, None),
        ("grn_a_revoked", "0xa", "0xb", now - 600, now + 5000, now - 20),
        ("grn_b", "0xc", "0xb", now - 50, now + 100, None),
    ]
    for grant_id, master, agent, created, expires, revoked in rows:
        yield Query.run(
            "INSERT INTO grants (grant_id, master_omni_account, master_wallet, agent_wallet, scope, created_at, "
            "expires_at, revoked_at) VALUES (?, 'acct', ?, ?, 's', ?, ?, ?)",
            grant_id,
            master,
            agent,
            created,
            expires,
            revoked,
        )


def _grant_states() -> Operation[dict[str, tuple[Any, Any]]]:
    rows = yield Query.all("SELECT grant_id, revoked_at, superseded_by FROM grants")
    return {row["grant_id"]: (row["revoked_at"], row["superseded_by"]) for row in rows}


def _bound(master: str, agent: str, now: int) -> Operation[bool]:
    row = yield Query.one(
        "SELECT 1 AS one FROM grants WHERE master_wallet = ? AND agent_wallet = ? AND revoked_at IS NULL "
        "AND superseded_by IS NULL AND expires_at > ?",
        master,
        agent,
        now,
    )
    return row is not None


async def test_migration_5_keeps_the_open_grant_with_the_latest_expiry_and_changes_no_binding(
    db_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, schema = db_url
    now = int(time.time())
    old = await open_database_at(4, db_url, monkeypatch)
    await old.run(_legacy_grants, now)

    def bound_before(master: str, moment: int) -> Operation[bool]:
        row = yield Query.one(
            "SELECT 1 AS one FROM grants WHERE master_wallet = ? AND agent_wallet = '0xb' "
            "AND revoked_at IS NULL AND expires_at > ?",
            master,
            moment,
        )
        return row is not None

    moments = [now, now + 99, now + 100, now + 500, now + 999, now + 1000, now + 6000]
    before = [await old.run(bound_before, master, t) for master in ("0xa", "0xc") for t in moments]
    await old.close()

    new = open_database(url, schema=schema)
    await new.open()
    try:
        after = [await new.run(_bound, master, "0xb", t) for master in ("0xa", "0xc") for t in moments]
        assert after == before
        assert await new.run(_grant_states) == {
            "grn_a_soon": (None, "grn_a_late"),
            "grn_a_late": (None, None),  # latest expiry, then earliest created
            "grn_a_late_too": (None, "grn_a_late"),
            "grn_a_expired": (None, "grn_a_late"),
            "grn_a_revoked": (now - 20, None),
            "grn_b": (None, None),
        }
    finally:
        await new.close()


# --------------------------------------------------------------------------- deadlocks are retried


def _legacy_grants_of_two_pairs() -> Operation[None]:
    for grant_id, master in (("grn_a_soon", "0xa"), ("grn_b", "0xc")):
        yield Query.run(
            "INSERT INTO grants (grant_id, master_omni_account, master_wallet, agent_wallet, scope, created_at, "
            "expires_at) VALUES (?, 'acct', ?, '0xb', 's', 0, 1)",
            grant_id,
            master,
        )


def _lock_in_order(first: str, second: str, attempts: Counter[str]) -> Operation[None]:
    attempts[first] += 1
    yield Query.run("UPDATE grants SET scope = scope WHERE grant_id = ?", first)
    yield Query.one("SELECT pg_sleep(0.3) IS NULL AS slept")
    yield Query.run("UPDATE grants SET scope = scope WHERE grant_id = ?", second)


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    asyncio.run(_drop_schema(pg_dsn, schema))


async def test_a_deadlock_on_postgresql_is_retried_inside_the_broker(pg_dsn: str, pg_schema: str) -> None:
    """Two transactions that lock two rows in opposite orders: PostgreSQL aborts one of them with
    a deadlock; `Database.run` reruns it, so both succeed. (SQLite has one writer at a time.)"""
    db = open_database(pg_dsn, schema=pg_schema)
    await db.open()
    try:
        await db.run(_legacy_grants_of_two_pairs)
        attempts: Counter[str] = Counter()
        await asyncio.gather(
            db.run(_lock_in_order, "grn_a_soon", "grn_b", attempts),
            db.run(_lock_in_order, "grn_b", "grn_a_soon", attempts),
        )
        assert sum(attempts.values()) == 3, attempts  # one of the two ran twice
    finally:
        await db.close()


class _AlwaysDeadlocked(Database):
    dialect = "test"

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def open(self, *, migrate: bool = True) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def schema_version(self) -> int:
        return 0

    async def _run_once(self, operation: Operation[Any]) -> Any:
        self.attempts += 1
        raise Conflict("deadlock detected")


async def test_conflict_retries_are_bounded() -> None:
    db = _AlwaysDeadlocked()
    with pytest.raises(StorageError):
        await db.run(lambda: iter(()))
    assert db.attempts == CONFLICT_RETRIES
