"""Load shedding signals (overload.LoopLag): lateness, and "no idle moment" from CPU time or from a loop
that never blocked for a whole bound."""

import time

from llmship.overload import BUSY_FRACTION, INTERVAL_SECS, SHED_DOWN, SHED_MAX, LoopLag, _voluntary_switches

BOUND_MS = 100


def feed(lag: LoopLag, seconds: float, cpu_share: float, blocks: bool) -> None:
    """Ticks of the lag task over the next ``seconds`` of a loop on the CPU ``cpu_share`` of the time, never
    late, blocking in its poll between ticks when ``blocks``."""
    now, cpu_ns, switches = lag._samples[-1] if lag._samples else (1000.0, 0, 0)
    for _ in range(round(seconds / INTERVAL_SECS)):
        now += INTERVAL_SECS
        cpu_ns += int(INTERVAL_SECS * cpu_share * 1e9)
        switches += 1 if blocks else 0
        lag.observe(0.0, now, cpu_ns, switches)


def test_a_loop_that_never_blocked_for_a_bound_sheds_even_on_half_a_core():
    # what a worker sharing its cores looks like past capacity: half a core, always input ready
    lag = LoopLag(BOUND_MS)
    feed(lag, 0.5, cpu_share=0.5, blocks=False)
    assert lag.busy < BUSY_FRACTION
    assert lag.shed_share > 0
    assert lag.shed_periods == 1


def test_a_loop_that_blocks_between_requests_does_not_shed():
    lag = LoopLag(BOUND_MS)
    feed(lag, 0.5, cpu_share=0.5, blocks=True)
    assert lag.shed_share == 0
    assert not lag.overloaded()


def test_a_starved_loop_that_does_little_does_not_shed():
    # preempted past its tick, an idle loop finds the tick due at each poll and never blocks
    lag = LoopLag(BOUND_MS)
    feed(lag, 0.5, cpu_share=0.05, blocks=False)
    assert lag.shed_share == 0


def test_the_share_falls_back_once_the_loop_idles_again():
    lag = LoopLag(BOUND_MS)
    feed(lag, 0.5, cpu_share=0.5, blocks=False)
    assert lag.shed_share == SHED_MAX
    feed(lag, 0.2, cpu_share=0.5, blocks=True)
    assert 0 < lag.shed_share < SHED_MAX  # slowly: an idle moment now and then is the share doing its job
    feed(lag, SHED_MAX / SHED_DOWN * INTERVAL_SECS, cpu_share=0.5, blocks=True)  # one step a check, the rest
    assert lag.shed_share == 0


def test_a_loop_on_the_cpu_all_the_time_sheds_without_a_switch_count():
    lag = LoopLag(BOUND_MS)
    now, cpu_ns = 1000.0, 0
    for _ in range(25):
        now += INTERVAL_SECS
        cpu_ns += int(INTERVAL_SECS * 1e9)
        lag.observe(0.0, now, cpu_ns, None)
    assert lag.shed_share > 0


def test_switches_are_read_only_where_blocking_counts():
    assert LoopLag(BOUND_MS).count_blocking is False  # the shipping plane's threads share the GIL
    before = _voluntary_switches()
    assert before is not None  # Linux: getrusage(RUSAGE_THREAD)
    time.sleep(0.01)  # a wait in the kernel is a voluntary switch
    assert _voluntary_switches() > before
