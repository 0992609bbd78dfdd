"""The tamper-evident audit chain: every login and every mint is one row of `mint_log`.

The table has the spec's `mint_log` columns (`agentkeys-broker.md` §1.6: the bearer only as its
SHA-256 hex, ``unknown`` for a wallet not proven, the role ARN or ``oidc_jwt``, the STS session
name or the OIDC ``kid``) plus the event, the OmniAccount and the chain: rows are numbered 1, 2,
3, … (`seq`) and each carries the SHA-256 of the previous row (`prev_hash`; the first carries 64
zeros) and its own (`row_hash`, over every other column, `row_hash_of`). One head row
(`mint_log_head`) holds the last number and hash. `verify` walks the chain and names the first
row that was edited (its content no longer gives its hash), deleted (a number missing, or a
`prev_hash` that is not its predecessor's hash) or cut off the end (the head is further along).

What it does not stop: someone who can write the database and recomputes every hash after the
row they changed. Against that, an operator keeps the head hash elsewhere (`agentkeys-broker
audit tail` prints it with every row) and compares.

Appending is serialised: each append updates the head row first (on PostgreSQL its row lock
makes concurrent appenders, on any number of replicas, wait their turn; SQLite's write lock
does the same), so the chain stays linear. Waiting for a lock that is held across a COMMIT would
cap a broker at one commit per fsync (about 230 a second on this machine's PostgreSQL), so the
appends of one process go through `ChainWriter`, which puts the actions that arrive while a
transaction is in flight into the next one (group commit): each action and its row are written in
the same transaction, and its caller gets its result (the credential) only once that transaction
has committed. If it cannot commit, every caller of that batch gets the `StorageError` and no
credential leaves the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Generic, TypeVar

from aiohttp import web

from agentkeys_kit.broker.storage import AuditEvent, Database, StorageError, store
from agentkeys_kit.broker.storage.base import Operation, Query

log = logging.getLogger(__name__)

T = TypeVar("T")
GENESIS = "0" * 64
MAX_BATCH = 256  # actions per transaction at most
PAGE = 1000  # rows read per query by verify / export
UNKNOWN_WALLET = "unknown"
UNAUTHENTICATED = "(unauthenticated)"

_COLUMNS = (
    "seq, minted_at, event, outcome, requester_token, requester_wallet, omni_account, requested_role, "
    "session_duration_seconds, sts_session_name, outcome_detail, prev_hash, row_hash"
)
_ROW_PLACEHOLDERS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
CHUNK = 16  # rows per multi-row INSERT
#: the INSERT of n rows, for n from 1 to CHUNK (placeholders only)
_INSERT_ROWS = {
    n: f"INSERT INTO mint_log ({_COLUMNS}) VALUES {', '.join([_ROW_PLACEHOLDERS] * n)}"  # noqa: S608
    for n in range(1, CHUNK + 1)
}


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """What an action records. `requester_token` is the SHA-256 hex of the bearer presented
    (never the bearer), empty when there was none."""

    event: str
    outcome: str
    minted_at: int
    requester_token: str = ""
    requester_wallet: str = UNKNOWN_WALLET
    omni_account: str | None = None
    requested_role: str = ""
    session_duration_seconds: int = 0
    sts_session_name: str = UNAUTHENTICATED
    outcome_detail: str | None = None


@dataclass(frozen=True, slots=True)
class ChainRow:
    seq: int
    entry: ChainEntry
    prev_hash: str
    row_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, **asdict(self.entry), "prev_hash": self.prev_hash, "row_hash": self.row_hash}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ChainRow:
        entry = ChainEntry(**{name: row[name] for name in ChainEntry.__slots__})
        return cls(int(row["seq"]), entry, row["prev_hash"], row["row_hash"])


def _columns(seq: int, entry: ChainEntry, prev_hash: str) -> list[Any]:
    """Every column of the row but `row_hash`, in table order (what is hashed and inserted)."""
    return [
        seq,
        entry.minted_at,
        entry.event,
        entry.outcome,
        entry.requester_token,
        entry.requester_wallet,
        entry.omni_account,
        entry.requested_role,
        entry.session_duration_seconds,
        entry.sts_session_name,
        entry.outcome_detail,
        prev_hash,
    ]


def row_hash_of(seq: int, entry: ChainEntry, prev_hash: str) -> str:
    """SHA-256 hex of the row: a JSON array of every column but `row_hash`, in table order,
    compact, UTF-8 (an array, so no column can pass for another)."""
    values = _columns(seq, entry, prev_hash)
    encoded = json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def append(entries: list[ChainEntry]) -> Operation[list[ChainRow]]:
    """Append `entries` in order, inside the caller's transaction (``yield from``). The first
    statement takes the head row (and its lock) and reserves the numbers."""
    if not entries:
        return []
    head = yield Query.one("UPDATE mint_log_head SET seq = seq + ? WHERE id = 1 RETURNING seq, row_hash", len(entries))
    if head is None:
        raise StorageError("mint_log_head is missing: the audit chain cannot be extended")
    seq = int(head["seq"]) - len(entries)
    prev = str(head["row_hash"])
    rows: list[ChainRow] = []
    args: list[Any] = []
    for entry in entries:
        seq += 1
        digest = row_hash_of(seq, entry, prev)
        rows.append(ChainRow(seq, entry, prev, digest))
        args += [*_columns(seq, entry, prev), digest]
        prev = digest
    # At most CHUNK rows per statement: full chunks, then the rest in one statement of its size
    # (CHUNK statement texts in all, which the databases' statement caches keep compiled).
    width = len(args) // len(entries)
    for done in range(0, len(entries), CHUNK):
        rows_here = min(CHUNK, len(entries) - done)
        yield Query.run(_INSERT_ROWS[rows_here], *args[done * width : (done + rows_here) * width])
    yield Query.run("UPDATE mint_log_head SET row_hash = ? WHERE id = 1", prev)
    return rows


#: An action written with its audit rows: a factory of an operation (run again if the database
#: asks for a rerun) that returns the rows to append and the caller's result.
Action = Callable[[], Operation[tuple[list[ChainEntry], T]]]


@dataclass(slots=True)
class _Pending(Generic[T]):
    action: Action[T]
    future: asyncio.Future[T]


def alongside(make_operation: Callable[[], Operation[T]], entries: list[ChainEntry]) -> Action[T]:
    """An action that is `make_operation` (a store operation) with `entries` as its rows."""

    def operation() -> Operation[tuple[list[ChainEntry], T]]:
        result = yield from make_operation()
        return entries, result

    return operation


def only(entry: ChainEntry) -> Action[ChainRow | None]:
    """An action that is just its row (an OIDC JWT signed before, a refusal)."""

    def operation() -> Operation[tuple[list[ChainEntry], ChainRow | None]]:
        return [entry], None
        yield  # a generator without queries of its own

    return operation


class ChainWriter:
    """Runs actions with their audit rows, several per transaction (see the module docstring)."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: list[_Pending[Any]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def record(self, entry: ChainEntry) -> None:
        await self.run(only(entry))

    async def run(self, action: Action[T]) -> T:
        """`action` and its rows in one committed transaction; its result, or the `StorageError`
        that kept the transaction from committing."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(action, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="broker-audit-chain")
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._commit(batch)
        finally:
            self._drainer = None

    async def _commit(self, batch: list[_Pending[Any]]) -> None:
        try:
            results = await self.db.run(_batch, [pending.action for pending in batch])
        except StorageError as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            # One action's value may be what the database refused: each alone, so the others land.
            for pending in batch:
                await self._commit([pending])
            return
        except BaseException as exc:  # a bug in an action: its callers get it, the writer goes on
            for pending in batch:
                _settle(pending.future, exc=exc)
            if not isinstance(exc, Exception):
                raise
            return
        for pending, result in zip(batch, results, strict=True):
            _settle(pending.future, result=result)

    async def close(self) -> None:
        """Wait for what is queued to be written (a clean stop loses no row)."""
        if self._drainer is not None:
            with contextlib.suppress(Exception):
                await self._drainer


def _settle(future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():  # the caller went away; the row is written all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _batch(actions: list[Action[Any]]) -> Operation[list[Any]]:
    results: list[Any] = []
    entries: list[ChainEntry] = []
    for action in actions:
        rows, result = yield from _inside(action())
        entries += rows
        results.append(result)
    yield from append(entries)
    return results


def _inside(operation: Operation[T]) -> Operation[T]:
    """`operation` as one part of a larger transaction: a query it marks as the whole operation
    (run without BEGIN on PostgreSQL) is not the whole of this one."""
    try:
        query = next(operation)
        while True:
            answer = yield replace(query, whole=False) if query.whole else query
            query = operation.send(answer)
    except StopIteration as done:
        result: T = done.value
        return result


CHAIN = web.AppKey("broker_audit_chain", ChainWriter)

#: Refusals of these events (logins, mints) are chain rows too, within the refusal budget of
#: `broker/audit.py` (a flood of refusals cannot grow the chain without bound).
CHAINED_REFUSALS = ("login", "post_heima_login", "wallet_", "email_", "google_", "mint_")


def refusal_entry(event: AuditEvent) -> ChainEntry:
    repeat = f" ({event.repeat_count} refusals aggregated)" if event.repeat_count > 1 else ""
    detail = f"{event.detail or ''}; from {event.remote_addr or 'unknown'}{repeat}"
    return ChainEntry(
        event=event.event,
        outcome=event.outcome,
        minted_at=event.occurred_at,
        requester_token=event.bearer_sha256 or "",
        omni_account=event.omni_account,
        outcome_detail=detail[:500],
    )


def write_refusals(events: list[AuditEvent]) -> Operation[None]:
    """The refusal rows of `audit_log`, and in the chain those of logins and mints."""
    yield from store.write_audits(events)
    yield from append([refusal_entry(event) for event in events if event.event.startswith(CHAINED_REFUSALS)])


def write_refusal(event: AuditEvent) -> Operation[None]:
    yield from write_refusals([event])


# --------------------------------------------------------------------------- reading and verifying


def head() -> Operation[tuple[int, str]]:
    row = yield Query.one("SELECT seq, row_hash FROM mint_log_head WHERE id = 1")
    if row is None:
        raise StorageError("mint_log_head is missing")
    return int(row["seq"]), str(row["row_hash"])


def rows_after(after: int, up_to: int, limit: int = PAGE) -> Operation[list[ChainRow]]:
    found = yield Query.all(
        f"SELECT {_COLUMNS} FROM mint_log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",  # noqa: S608
        after,
        up_to,
        limit,
    )
    return [ChainRow.from_row(row) for row in found]


def last_rows(count: int) -> Operation[list[ChainRow]]:
    found = yield Query.all(f"SELECT {_COLUMNS} FROM mint_log ORDER BY seq DESC LIMIT ?", count)  # noqa: S608
    return [ChainRow.from_row(row) for row in reversed(found)]


@dataclass(frozen=True, slots=True)
class Verdict:
    rows: int  # rows read
    head_seq: int
    head_hash: str
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "rows": self.rows,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "problems": list(self.problems),
        }


class ChainChecker:
    """Checks rows fed in `seq` order, page by page (a chain of any length in bounded memory)."""

    def __init__(self, max_problems: int = 20) -> None:
        self.max_problems = max_problems
        self.problems: list[str] = []
        self.count = 0
        self._expected_seq = 1
        self._prev_hash = GENESIS

    @property
    def full(self) -> bool:
        return len(self.problems) >= self.max_problems

    def feed(self, rows: Iterable[ChainRow]) -> None:
        for row in rows:
            if self.full:
                return
            self.count += 1
            if row.seq != self._expected_seq:
                gap = (
                    self._expected_seq if row.seq == self._expected_seq + 1 else f"{self._expected_seq}..{row.seq - 1}"
                )
                self.problems.append(f"row {gap} missing (deleted): the chain jumps to row {row.seq}")
            if row.prev_hash != self._prev_hash:
                self.problems.append(
                    f"row {row.seq}: prev_hash is not the hash of the row before it (a row before it was changed)"
                )
            if row_hash_of(row.seq, row.entry, row.prev_hash) != row.row_hash:
                self.problems.append(f"row {row.seq}: its content does not give its row_hash (the row was edited)")
            self._expected_seq, self._prev_hash = row.seq + 1, row.row_hash

    def finish(self, head_seq: int, head_hash: str) -> Verdict:
        if not self.full:
            last = self._expected_seq - 1
            if last != head_seq:
                self.problems.append(f"the head says {head_seq} rows, the chain ends at row {last} (rows cut off)")
            elif self._prev_hash != head_hash:
                self.problems.append("the last row's hash is not the head's (the last row was changed)")
        return Verdict(self.count, head_seq, head_hash, tuple(self.problems))


async def pages(db: Database, after: int = 0) -> AsyncIterator[list[ChainRow]]:
    """The chain up to the head as it was when reading began, `PAGE` rows at a time."""
    head_seq, _ = await db.run(head)
    while True:
        page: list[ChainRow] = await db.run(rows_after, after, head_seq)
        if page:
            yield page
        if len(page) < PAGE:
            return
        after = page[-1].seq


async def verify(db: Database) -> Verdict:
    head_seq, head_hash = await db.run(head)
    checker = ChainChecker()
    after = 0
    while not checker.full:
        page: list[ChainRow] = await db.run(rows_after, after, head_seq)
        checker.feed(page)
        if len(page) < PAGE:
            break
        after = page[-1].seq
    return checker.finish(head_seq, head_hash)
