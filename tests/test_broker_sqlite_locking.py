"""SQLite: a writer in another process never blocks the broker's event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from agentkeys_kit.broker.storage import open_database, store
from agentkeys_kit.broker.storage.records import AuditEvent


async def test_operation_waits_for_a_foreign_write_lock_on_the_thread_not_the_loop(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'b.sqlite3'}")
    await db.open()
    other = sqlite3.connect(tmp_path / "b.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the operator command, mid-write
        audit = AuditEvent(event="test", outcome="ok", occurred_at=1)
        write = asyncio.create_task(db.run(store.write_audit, audit))
        ticks = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.3:
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks >= 15, "the event loop was blocked while the lock was held elsewhere"
        assert not write.done()
        other.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        assert [row["event"] for row in await db.run(store.audit_rows)] == ["test"]
    finally:
        other.close()
        await db.close()
