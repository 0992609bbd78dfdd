"""Audit rows for refused requests, bounded: a flood of refusals cannot write without limit.

Every refusal is counted, none is dropped. In each window of `window` seconds the first
`per_source` refusals from one source, and the first `overall` refusals of all sources, are
written at once as full rows (as every refusal was before). The rest are counted in memory per
kind — (source, event, outcome, client id, OmniAccount) — and written when the window ends as one
row per kind, whose ``repeat_count`` says how many refusals it stands for and whose ``detail``
gives their first and last second; a bearer hash is kept when all of them presented the same token.
The sum of ``repeat_count`` over refusal rows is the number of refusals.

A source is the peer's address; an IPv6 peer is counted by its /64, which one host commonly holds
whole. At most `max_kinds` kinds are held per window; beyond them a refusal is counted under
source ``*`` (its kind otherwise kept), so memory stays bounded whatever the attacker varies. The
rows of a window are written in one transaction. A crash (kill -9) loses at most the counts of
the current window; the full rows already written stay. If the database fails, the counts are
kept and written with the next window's.

Refusals of logins and mints are also rows of the audit chain (`broker/audit_chain.py`), written
in the same transaction as their `audit_log` rows, under the same budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass, replace

from agentkeys_kit.broker.audit_chain import write_refusal, write_refusals
from agentkeys_kit.broker.storage import AuditEvent, Database, StorageError

log = logging.getLogger(__name__)


WINDOW = 10.0  # seconds
PER_SOURCE = 100  # full refusal rows per source and window
OVERALL = 1_000  # full refusal rows per window, all sources together
MAX_KINDS = 2_000  # aggregated kinds held per window (then source "*")
ANY_SOURCE = "*"

Kind = tuple[str, str, str, str | None, str | None]


def source_of(remote: str | None) -> str:
    """The unit a budget is kept for: the IPv4 address, the IPv6 /64, or the text as given."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(slots=True)
class _Tally:
    first: AuditEvent
    count: int
    last_at: int
    same_bearer: bool = True

    def merge(self, other: _Tally) -> None:
        self.same_bearer = (
            self.same_bearer and other.same_bearer and other.first.bearer_sha256 == self.first.bearer_sha256
        )
        self.count += other.count
        self.last_at = max(self.last_at, other.last_at)
        if other.first.occurred_at < self.first.occurred_at:
            self.first = other.first

    def row(self) -> AuditEvent:
        return replace(
            self.first,
            repeat_count=self.count,
            bearer_sha256=self.first.bearer_sha256 if self.same_bearer else None,
            detail=f"{self.count} refusals aggregated, {self.first.occurred_at}..{self.last_at}; first: "
            f"{self.first.detail or ''}"[:500],
        )


class RefusalAudit:
    def __init__(
        self,
        db: Database,
        *,
        window: float = WINDOW,
        per_source: int = PER_SOURCE,
        overall: int = OVERALL,
        max_kinds: int = MAX_KINDS,
    ) -> None:
        self.db = db
        self.window = window
        self.per_source = per_source
        self.overall = overall
        self.max_kinds = max_kinds
        self._written: dict[str, int] = {}  # at most `overall` sources: only those that got a row
        self._written_total = 0
        self._pending: dict[Kind, _Tally] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def record(self, event: AuditEvent) -> None:
        """Write `event` now if its source and the window still have budget, else count it."""
        source = source_of(event.remote_addr)
        written = self._written.get(source, 0)
        if written < self.per_source and self._written_total < self.overall:
            self._written[source] = written + 1
            self._written_total += 1
            try:
                await self.db.run(write_refusal, event)
                return
            except StorageError:
                log.warning("the audit row of a refused %s could not be written; it is counted instead", event.event)
        self._count(source, event)

    def _count(self, source: str, event: AuditEvent) -> None:
        kind: Kind = (source, event.event, event.outcome, event.client_id, event.omni_account)
        self._add(kind, _Tally(replace(event, remote_addr=source), event.repeat_count, event.occurred_at))

    def _add(self, kind: Kind, tally: _Tally) -> None:
        if kind not in self._pending and len(self._pending) >= self.max_kinds:
            kind = (ANY_SOURCE, *kind[1:])
            tally.first = replace(tally.first, remote_addr=ANY_SOURCE)
        existing = self._pending.get(kind)
        if existing is None:
            self._pending[kind] = tally
        else:
            existing.merge(tally)

    @property
    def pending(self) -> int:
        """Refusals counted but not yet written."""
        return sum(tally.count for tally in self._pending.values())

    async def flush(self) -> None:
        """End the window: write the counted refusals (one row per kind), reset the budgets."""
        self._written.clear()
        self._written_total = 0
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await self.db.run(write_refusals, [tally.row() for tally in pending.values()])
        except BaseException as exc:  # kept for the next window, never dropped (cancelled too)
            for kind, tally in pending.items():
                self._add(kind, tally)
            if not isinstance(exc, StorageError):
                raise
            log.warning("%d aggregated refusal counts could not be written; kept for the next window", len(pending))

    async def _flush_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.window):
                    await self._stop.wait()
            if not self._stop.is_set():
                await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="broker-refusal-audit")

    async def close(self) -> None:
        """Stop the window task (never in the middle of a write) and write what is counted: a
        clean stop loses nothing."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
