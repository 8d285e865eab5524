"""Proof that an awaited call left the event loop free: count the loop's turns while it runs."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class LoopTicks:
    """``async with LoopTicks(interval) as ticks: ...`` counts, in ``ticks.count``, how often a coroutine that
    sleeps ``interval`` seconds (0: one loop turn) got to run inside the block."""

    def __init__(self, interval: float = 0.0) -> None:
        self.interval = interval
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.count += 1

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # started, not counted yet
        self.count = 0
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
