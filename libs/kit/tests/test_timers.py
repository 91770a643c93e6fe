"""The timer loop reads the next due time again only when a write may have made it earlier."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from stella.kit.timers import DueLoop


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)


async def test_wake_for_reads_again_only_for_a_due_time_before_the_loops_next_read() -> None:
    reads: list[datetime] = []
    ran: list[datetime] = []
    due: list[datetime | None] = [None]

    async def next_due() -> datetime | None:
        reads.append(datetime.now(UTC))
        return due[0]

    async def run_due(now: datetime) -> None:
        ran.append(now)
        due[0] = None

    loop = DueLoop("test", next_due, run_due, max_sleep_s=60.0)
    loop.start()
    try:
        await _settle()
        assert len(reads) == 1  # nothing due: asleep for max_sleep_s
        loop.wake_for(None)  # a write that set no due time
        loop.wake_for(datetime.now(UTC) + timedelta(seconds=120))  # after the loop's own next read
        await _settle()
        assert len(reads) == 1
        soon = datetime.now(UTC) + timedelta(seconds=30)
        due[0] = soon
        loop.wake_for(soon)  # before it: read again, then asleep until then
        await _settle()
        assert len(reads) == 2
        loop.wake_for(soon + timedelta(seconds=1))
        await _settle()
        assert len(reads) == 2
        due[0] = datetime.now(UTC)
        loop.wake_for(due[0])  # due now: read, run, read
        await _settle()
        assert len(ran) == 1 and len(reads) == 4
        loop.wake()  # an unconditional wake still reads
        await _settle()
        assert len(reads) == 5
    finally:
        await loop.stop()
