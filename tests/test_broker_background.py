"""The broker's background tasks (`broker/background.py`): stopping one at shutdown."""

from __future__ import annotations

import asyncio

import pytest

from agentkeys_kit.broker import background


async def test_stopping_a_background_task_never_swallows_the_callers_cancellation() -> None:
    """`background.stop` absorbs the stopped task's cancellation, not one aimed at the caller."""

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleans up for a while
            raise

    quiet = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    await background.stop(quiet)  # its own cancellation: absorbed
    assert quiet.cancelled()

    carried_on = False

    async def shutdown() -> None:
        nonlocal carried_on
        task = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)  # it runs, so its cancellation takes its 0.2 s
        await background.stop(task)
        carried_on = True

    outer = asyncio.create_task(shutdown())
    await asyncio.sleep(0.05)  # inside stop(), waiting for the task to clean up
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not carried_on
