"""Load shedding by time: the process is overloaded when work has been waiting in it longer than
``[agent] overload_lag_ms``. Two signals, both in time, checked by one task every ``INTERVAL_SECS``:

- **Lateness.** The task measures how late it wakes: a loop turn that takes longer than the bound means
  the requests read in that turn waited that long. This is what many connections produce past capacity.
- **No idle moment.** Over the last bound's worth of wall time, the loop thread never waited for input:
  it either ran BUSY_FRACTION of that time on the CPU, or never once blocked in the kernel (no voluntary
  context switch: its poll always found a socket ready). Either way it never caught up with its input for
  the whole bound, even though each turn is short: what a few busy connections produce, their requests
  waiting in the clients' queues, where no server-side measure can see them. Why two: CPU time alone
  misses a process that shares its cores (with workers, two of them, the shipping plane and the clients
  on two cores: each gets half a core, is never BUSY_FRACTION on the CPU, and queued seconds of requests
  unseen, measured); time waiting for a CPU is no measure either (an earlier version counted it, and shed
  load with capacity to spare on a shared 2-core machine: waiting for a CPU is not work waiting in this
  process). A loop that keeps up blocks in its poll every few milliseconds whatever its share of the
  cores. The switch count is only trusted in a process whose loop is its only busy thread (workers):
  threads that take the GIL in turn (the shipping plane's compression) block the loop thread without it
  being idle, which would hide the signal, never raise it falsely.

While the loop is late, ``Emitter.overloaded`` says so for every request and the listeners refuse new
work (429 with Retry-After; traces without Datadog-Send-Real-Http-Status get 200 and a counted drop, as
the Datadog Agent answers; logs TCP reading pauses). While it has no idle moment, it refuses a share of
requests that grows by SHED_STEP each check while that lasts, up to SHED_MAX, and shrinks by the smaller
SHED_DOWN each check after an idle moment (so it settles where the load needs it rather than swinging): a
refusal costs far less than an acceptance (headers read, body discarded) but not nothing, and a client
that sends again at once (a closed loop) keeps the loop busy with refusals alone, so refusing everything
would leave the loop busy and accept nothing. Capped, past capacity it accepts at least 1 - SHED_MAX of
requests and answers the rest at once, and clients' latency stays bounded. Below capacity (the loop idle
part of every bound), nothing is refused.

Why time and not queue depth: the work waiting is mostly in places nothing counts (kernel socket
buffers, aiohttp's parsed-but-unhandled requests, ready callbacks, the clients), and the goal is set in
time.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import random
import time

try:
    import resource
except ImportError:  # not on Windows: the CPU time signal alone
    resource = None

# 20 ms: fine enough that a stall is seen within a turn, coarse enough to cost nothing (50 wake-ups/s).
INTERVAL_SECS = 0.02
# On the CPU this share of the last bound: no idle moment to speak of (a loop that keeps up idles well over
# 5% of the time: at half its capacity, about half).
BUSY_FRACTION = 0.95
# A loop that never blocked counts as having no idle moment only while it also ran this share of the time:
# on a host short of CPU, an idle loop preempted for longer than its 20 ms tick finds the tick due at its next
# poll and does not block either (seen under a load of 5 on two cores), but it runs a few percent of the time,
# where a busy worker sharing two cores with another, the shipping plane and its clients gets 40-50%.
NEVER_BLOCKED_MIN_BUSY = 0.25
# A share of 0.8 at most. At twice the capacity about 0.55 must be refused, more where the clients share the
# agent's cores: 2 workers, the shipping plane and the load generator on two cores (bench/workers.py) settled
# at 0.6 under a cap of 0.6 and queued 1.4-2.3 s of requests in the clients; under 0.8, refused 49-62% and p99
# was 123-573 ms (measured). Above 0.8 a closed loop of resending clients would get little but refusals.
SHED_STEP, SHED_MAX = 0.05, 0.8
# The share shrinks by this each check whose last bound had an idle moment. Slowly: one idle moment marks
# every check for a bound (7 of them at 150 ms), and at the share that matches the load the loop idles now
# and then; shrinking fast let the share collapse from 0.6 to 0 at each such moment and a backlog build
# while it climbed back (2 workers at twice their capacity: p99 1.6 s, 45% refused; measured). After the
# overload ends, 0.8 falls to 0 in about 1.3 seconds.
SHED_DOWN = SHED_STEP / 4


def _cpu_clock():
    """A function returning the calling thread's CPU nanoseconds."""
    return time.thread_time_ns


def _voluntary_switches() -> int | None:
    """How often the calling thread blocked in the kernel (a poll that waited, a lock), or None where the
    platform does not tell."""
    if resource is None or not hasattr(resource, "RUSAGE_THREAD"):
        return None
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


class LoopLag:
    def __init__(self, bound_ms: float, interval: float = INTERVAL_SECS, count_blocking: bool = False) -> None:
        """``count_blocking``: also take a loop that never blocked for a whole bound as having no idle moment
        (only where the loop is the process's one busy thread: see the module docstring)."""
        self.bound = bound_ms / 1000
        self.count_blocking = count_blocking
        self.interval = interval
        self.lag = 0.0  # the last lateness measured, seconds
        self.peak = 0.0  # the largest lateness since ``take_peak`` was last called
        self._late_until = 0.0  # monotonic time until which the process counts as overloaded
        self.shed_periods = 0  # times it went from keeping up to overloaded
        self.busy = 0.0  # CPU share of the last bound's wall time
        self.shed_share = 0.0  # the share of requests refused while the loop has no idle moment
        # (monotonic, CPU ns, voluntary switches or None)
        self._samples: collections.deque[tuple[float, int, int | None]] = collections.deque()
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
        if self.bound <= 0:
            return False
        if time.monotonic() < self._late_until:
            return True
        return self.shed_share > 0 and random.random() < self.shed_share

    def take_peak(self) -> float:
        peak, self.peak = self.peak, self.lag
        return peak

    def observe(self, lag: float, now: float, cpu_ns: int | None = None, switches: int | None = None) -> None:
        self.lag = lag
        self.peak = max(self.peak, lag)
        if self.bound <= 0:
            return
        hold = 0.0
        if lag > self.bound:
            hold = lag  # for as long as it was late: the turns queued meanwhile are still to be worked off
        if cpu_ns is not None:
            samples = self._samples
            samples.append((now, cpu_ns, switches))
            while len(samples) > 2 and now - samples[1][0] >= self.bound:
                samples.popleft()
            first_at, first_ns, first_switches = samples[0]
            if now - first_at >= self.bound * 0.9:
                self.busy = (cpu_ns - first_ns) / 1e9 / (now - first_at)
                never_blocked = (switches is not None and first_switches is not None and switches == first_switches
                                 and self.busy >= NEVER_BLOCKED_MIN_BUSY)
                if self.busy >= BUSY_FRACTION or never_blocked:
                    if not self.shed_share:
                        self.shed_periods += 1
                    self.shed_share = min(SHED_MAX, self.shed_share + SHED_STEP)
                else:
                    self.shed_share = max(0.0, self.shed_share - SHED_DOWN)
        if hold:
            if now >= self._late_until:
                self.shed_periods += 1
            self._late_until = max(self._late_until, now + hold)

    async def _run(self) -> None:
        sleep, clock = asyncio.sleep, time.monotonic
        cpu = _cpu_clock()
        switches = _voluntary_switches if self.count_blocking else lambda: None
        while True:
            due = clock() + self.interval
            await sleep(self.interval)
            now = clock()
            self.observe(max(0.0, now - due), now, cpu(), switches())


def freeze_startup_objects() -> int:
    """Move everything made while starting (modules, config, components, the scrub rules) out of
    the cyclic garbage collector's way, once the process serves. Its full collections walked all of it: a
    26-48 ms pause of the event loop every two seconds under the LLM-heavy mix, 4-16 ms once frozen, and
    p99 at that load 47-50 ms before, 12-18 ms after (measured with an agent on the bench's open loop).
    Frozen objects are still freed by reference counting; only a cycle among them would stay.

    Returns how many objects were frozen: ``gc.get_freeze_count()`` walks the whole frozen list on every call
    (3% of the agent's CPU when /status was read five times a second), so the gauge shows this number."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
