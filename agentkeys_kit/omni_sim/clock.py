"""The simulator's clock: wall time plus an offset tests can move forward (`/_sim/clock`), or an
instant it is set to (a test hook: expiry checked at exactly the instant needs a clock that stands)."""

from __future__ import annotations

import time


class SimClock:
    """Unix seconds; `advance` moves it forward, `freeze` pins it (deterministic token bytes)."""

    def __init__(self, *, frozen_at: int | None = None) -> None:
        self._offset = 0
        self._frozen_at = frozen_at

    def now(self) -> int:
        base = self._frozen_at if self._frozen_at is not None else int(time.time())
        return base + self._offset

    @property
    def offset(self) -> int:
        return self._offset

    def advance(self, seconds: int) -> int:
        if seconds < 0:
            raise ValueError("the simulator clock only moves forward")
        self._offset += seconds
        return self.now()

    def freeze(self, at: int | None) -> None:
        self._frozen_at = at

    def set(self, at: int) -> int:
        """Stand at `at` (unix seconds): frozen there, offset cleared; `advance` still adds to it."""
        self._frozen_at = at
        self._offset = 0
        return self.now()

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None
