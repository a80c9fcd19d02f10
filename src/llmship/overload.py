"""Load shedding by time: how late the event loop runs is how long new work waits behind what is queued.

A task sleeps ``INTERVAL_SECS`` and measures how late it wakes. Past the capacity of the process, every
loop turn processes more requests than the last, each waits longer, and the lateness grows without
bound; below it, the lateness stays at a turn's worth of work (a few ms). While the lateness exceeds
``[agent] overload_lag_ms`` (and for that long after), ``Emitter.overloaded`` says so and the listeners
refuse new work (429 with Retry-After; traces without Datadog-Send-Real-Http-Status get 200 and a counted
drop, as the Datadog Agent answers; logs TCP reading pauses), which costs far less than accepting it, so
the loop catches up and the requests it accepts are answered within about the bound.

Why lag and not queue depth: the work waiting in a process is mostly in places nothing counts (kernel
socket buffers, aiohttp's parsed-but-unhandled requests, ready callbacks); the loop's lateness measures
all of it, in the unit the goal is set in (time).
"""

from __future__ import annotations

import asyncio
import time

# 20 ms: fine enough that a stall is seen within a turn, coarse enough to cost nothing (50 wake-ups/s).
INTERVAL_SECS = 0.02


class LoopLag:
    def __init__(self, bound_ms: float, interval: float = INTERVAL_SECS) -> None:
        self.bound = bound_ms / 1000
        self.interval = interval
        self.lag = 0.0  # the last lateness measured, seconds
        self.peak = 0.0  # the largest lateness since ``take_peak`` was last called
        self._late_until = 0.0  # monotonic time until which the process counts as overloaded
        self.shed_periods = 0  # times it went from keeping up to overloaded
        self._task: asyncio.Task | None = None

    def reload(self, bound_ms: float) -> None:
        self.bound = bound_ms / 1000

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def overloaded(self) -> bool:
        return self.bound > 0 and time.monotonic() < self._late_until

    def take_peak(self) -> float:
        peak, self.peak = self.peak, self.lag
        return peak

    def observe(self, lag: float, now: float) -> None:
        self.lag = lag
        self.peak = max(self.peak, lag)
        if self.bound > 0 and lag > self.bound:
            if now >= self._late_until:
                self.shed_periods += 1
            # Hold for as long as it was late: the turns queued meanwhile are still to be worked off.
            self._late_until = now + lag

    async def _run(self) -> None:
        sleep, clock = asyncio.sleep, time.monotonic
        while True:
            due = clock() + self.interval
            await sleep(self.interval)
            now = clock()
            self.observe(max(0.0, now - due), now)
