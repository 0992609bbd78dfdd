"""The broker's background tasks (purges, the OIDC key watcher): how they are stopped."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended. Its own cancellation is expected and absorbed;
    a cancellation of the caller meanwhile is not (``contextlib.suppress(CancelledError)`` around
    the wait would swallow it, and a shutdown interrupted at that moment would carry on)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
