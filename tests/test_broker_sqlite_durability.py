"""SQLite under sustained writes (issue 11, findings 1 and 11): the WAL stays bounded whatever the
write rate, and an operation that wrote returns only after an fsync of the WAL that began after
its commit (what ``synchronous=FULL`` promises), with concurrent commits sharing one fsync."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentkeys_kit.broker.storage import AuditEvent, StorageError, store
from agentkeys_kit.broker.storage.sqlite import SqliteDatabase

BLOCKED_RETRY = 1.0
EVENT = AuditEvent(event="load", outcome="refused:invalid_token", occurred_at=1, detail="x" * 200)


async def sustained_writes(
    db: SqliteDatabase, seconds: float, writers: int = 32, commits_wanted: int = 10**9
) -> tuple[int, int]:
    """`writers` callers writing audit rows back to back for `seconds` or until `commits_wanted`;
    returns (commits, the largest WAL file seen, sampled every millisecond on a thread)."""
    wal = Path(f"{db.path}-wal")
    largest = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal largest
        while not stop.is_set():
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    commits = 0
    deadline = time.monotonic() + seconds

    async def writer() -> None:
        nonlocal commits
        while time.monotonic() < deadline and commits < commits_wanted:
            await db.run(store.write_audit, EVENT)
            commits += 1

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        stop.set()
        sampler.join()
    return commits, largest


@pytest.fixture
async def make_db(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[SqliteDatabase] = []

    async def factory(name: str = "b.sqlite3", **kwargs: Any) -> SqliteDatabase:
        db = SqliteDatabase(tmp_path / name, **kwargs)
        await db.open()
        opened.append(db)
        return db

    yield factory
    for db in opened:
        await db.close()


async def test_the_wal_stays_bounded_under_sustained_writes(make_db: Callable[..., Any]) -> None:
    """Past `wal_limit` a TRUNCATE checkpoint makes the writers wait for it; without the limit
    (PASSIVE checkpoints only, as before) the same load grows the WAL without bound."""
    limit, check_every = 256 * 1024, 50
    writes = 12_000
    bounded = await make_db("bounded.sqlite3", wal_limit=limit, check_every=check_every)
    commits, largest = await sustained_writes(bounded, 60.0, commits_wanted=writes)
    # each commit here appends at most ~4 pages; between two looks at the WAL at most
    # `check_every` commits (plus those already queued) can land past the limit
    bound = limit + 3 * 1024 * 1024
    assert commits >= writes
    assert largest < bound, (commits, largest)

    passive_only = await make_db("passive.sqlite3", wal_limit=2**60, check_every=check_every)
    commits, grown = await sustained_writes(passive_only, 60.0, commits_wanted=writes)
    assert grown > bound, (commits, grown)


async def test_a_reader_in_another_process_cannot_stall_the_broker(
    make_db: Callable[..., Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TRUNCATE checkpoint waits at most 0.1 s for another connection's readers and then not
    again for a while (here 1 s); the broker's writes go on, and the operator is told once why the WAL grows."""
    monkeypatch.setattr("agentkeys_kit.broker.storage.sqlite.BLOCKED_RETRY", BLOCKED_RETRY)
    db = await make_db(wal_limit=64 * 1024, check_every=20)
    reader = sqlite3.connect(db.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_log").fetchone()  # holds a snapshot
        caplog.set_level(logging.WARNING, logger="agentkeys_kit.broker.storage")
        started = time.monotonic()
        commits, _ = await sustained_writes(db, 3.0, writers=4)
        assert commits > 300 and time.monotonic() - started < 10  # 48 when each attempt waited 2 s
        warnings = [r.getMessage() for r in caplog.records if "cannot be checkpointed" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        reader.execute("COMMIT")
        reader.close()
    await asyncio.sleep(BLOCKED_RETRY)
    await db.checkpoint()
    assert db.wal_size() == 0  # the reader gone, the next TRUNCATE empties the WAL


class FsyncGate:
    """Stands in for os.fsync: each call waits until the test lets it through, then syncs."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.started.release()
        assert self.release.acquire(timeout=30)
        self.real(fd)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 10)


async def test_a_write_returns_only_after_an_fsync_that_began_after_its_commit(
    make_db: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await make_db()
    gate = FsyncGate()
    monkeypatch.setattr(os, "fsync", gate)
    first = asyncio.create_task(db.run(store.write_audit, EVENT))
    await gate.wait_started()  # first committed; its fsync is in flight
    second = asyncio.create_task(db.run(store.write_audit, EVENT))  # commits during that fsync
    third = asyncio.create_task(db.run(store.write_audit, EVENT))
    await asyncio.sleep(0.2)
    assert not first.done() and not second.done(), "nothing is acknowledged before its fsync"
    gate.release.release()
    await asyncio.wait_for(first, 5)
    await gate.wait_started()  # the fsync that covers the second and the third
    await asyncio.sleep(0.2)
    assert not second.done() and not third.done(), "an fsync begun before a commit does not cover it"
    gate.release.release()
    await asyncio.wait_for(asyncio.gather(second, third), 5)
    assert gate.calls == 2  # three commits, two fsyncs: the later ones shared one


async def test_reads_do_not_wait_for_the_disk(make_db: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    db = await make_db()
    gate = FsyncGate()
    monkeypatch.setattr(os, "fsync", gate)
    assert await asyncio.wait_for(db.run(store.audit_rows), 5) == []
    assert gate.calls == 0


async def test_synchronous_normal_acknowledges_without_an_fsync(
    make_db: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await make_db(synchronous="normal")
    gate = FsyncGate()
    monkeypatch.setattr(os, "fsync", gate)
    await asyncio.wait_for(db.run(store.write_audit, EVENT), 5)
    assert gate.calls == 0


async def test_a_failed_fsync_stops_acknowledging_writes(
    make_db: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a failed fsync the kernel may have dropped the pages and a later fsync may succeed
    anyway: the database refuses everything from then on, as PostgreSQL does."""
    db = await make_db()

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(StorageError, match="could not be synced"):
        await db.run(store.write_audit, EVENT)
    monkeypatch.undo()
    with pytest.raises(StorageError, match="restart the broker"):
        await db.run(store.audit_rows)
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


async def test_open_and_close_never_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint task stops when the database closes, whenever that lands (a cancel that met
    the task's timeout was once swallowed, and close waited forever)."""
    monkeypatch.setattr("agentkeys_kit.broker.storage.sqlite.CHECKPOINT_INTERVAL", 0.005)
    for n in range(150):
        db = SqliteDatabase(tmp_path / "b.sqlite3")
        await db.open()
        await asyncio.sleep((n % 7) * 0.002)
        await asyncio.wait_for(db.close(), 10)


async def test_a_new_database_and_its_wal_are_private_and_an_open_one_is_warned_about(
    make_db: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It holds bearer hashes, login nonces and PKCE verifiers: 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        db = await make_db("fresh/private.sqlite3")
    finally:
        os.umask(old)
    for path in (db.path, db.path.with_name(db.path.name + "-wal"), db.path.with_name(db.path.name + "-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.path.parent.stat().st_mode) == 0o700
    assert "readable by others" not in caplog.text

    shared = tmp_path / "shared.sqlite3"
    shared.touch(mode=0o644)
    shared.chmod(0o644)
    await make_db("shared.sqlite3")
    assert "shared.sqlite3 is readable by others (mode 0644)" in caplog.text
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644  # left as it is
