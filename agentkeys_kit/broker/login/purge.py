"""Expired login state leaves the database: pending e-mail codes, rate-limit buckets and OAuth
requests whose ``expires_at`` has passed are deleted every `PURGE_EVERY` seconds by each replica
(the deletes are idempotent, so replicas need not take turns). A failed purge is one log line;
the next one catches up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import StorageError, login_state
from agentkeys_kit.broker.storage.base import one_line

log = logging.getLogger(__name__)

PURGE_EVERY = 60.0  # seconds


async def purge_once(state: BrokerState) -> dict[str, int]:
    counts: dict[str, int] = await state.db.run(login_state.purge_expired, state.now())
    if any(counts.values()):
        log.debug("purged expired login state: %s", counts)
    return counts


async def _purge_forever(state: BrokerState, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await purge_once(state)
        except StorageError as exc:
            log.warning("purging expired login state failed: %s", one_line(exc))


def add_login_purge(app: web.Application, every: float = PURGE_EVERY) -> None:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_purge_forever(app[STATE], every))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(lifecycle)
