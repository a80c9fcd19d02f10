"""The retry policy: status classification, backoff bounds, Retry-After."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timezone
from email.utils import format_datetime, formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmship.delivery.retry import MAX_RETRY_AFTER_SECS, Backoff, Disposition, classify, parse_retry_after


@pytest.mark.parametrize("status, expected", [
    (200, Disposition.DELIVERED), (202, Disposition.DELIVERED),
    (408, Disposition.RETRYABLE), (500, Disposition.RETRYABLE), (502, Disposition.RETRYABLE),
    (503, Disposition.RETRYABLE), (504, Disposition.RETRYABLE), (None, Disposition.RETRYABLE),
    (429, Disposition.THROTTLED),
    (413, Disposition.TOO_LARGE),
    (401, Disposition.UNAUTHORIZED), (403, Disposition.UNAUTHORIZED), (407, Disposition.UNAUTHORIZED),
    (400, Disposition.PERMANENT), (404, Disposition.PERMANENT), (415, Disposition.PERMANENT),
    (422, Disposition.PERMANENT),
])
def test_status_classification(status, expected):
    assert classify(status) is expected


@given(failures=st.integers(min_value=1, max_value=10_000),
       initial=st.floats(min_value=0.001, max_value=10), cap=st.floats(min_value=0.001, max_value=600),
       draw=st.floats(min_value=0, max_value=0.999999))
def test_full_jitter_stays_within_zero_and_the_cap(failures, initial, cap, draw):
    backoff = Backoff(initial, cap, rand=lambda: draw)
    backoff.failures = failures - 1
    delay = backoff.next_delay()
    ceiling = cap if failures > 64 else min(cap, initial * 2 ** (failures - 1))
    assert 0 <= delay <= ceiling + 1e-9
    assert delay <= cap + 1e-9


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_backoff_ceiling_doubles_then_caps_and_a_success_resets_it():
    clock = Clock()
    backoff = Backoff(1.0, 10.0, rand=lambda: 0.999999, clock=clock)
    delays = []
    for _ in range(6):  # each window waited out and failed again, in an outage long enough not to cap it
        delays.append(backoff.next_delay())
        clock.now += 100
    assert [round(d) for d in delays] == [1, 2, 4, 8, 10, 10]
    assert backoff.failing
    backoff.reset()
    assert not backoff.failing and backoff.retry_at == 0
    assert round(backoff.next_delay()) == 1


def test_jitter_spreads_delays_over_the_whole_range():
    rng = random.Random(7)
    backoff = Backoff(1.0, 8.0, rand=rng.random, clock=Clock())
    backoff.next_delay()
    backoff._clock.now += 100  # a long outage: its length does not cap the window
    samples = []
    for _ in range(2000):
        backoff.failures = 3  # the next failure is the 4th: ceiling 8
        samples.append(backoff.next_delay())
    assert min(samples) < 0.5 and max(samples) > 7.5  # full jitter, not "cap/2 + jitter"


def test_retry_after_is_a_floor_on_the_delay():
    clock = Clock()
    backoff = Backoff(0.01, 0.02, rand=lambda: 0.5, clock=clock)
    assert backoff.next_delay(retry_after=3.0) == 3.0
    assert backoff.retry_at >= clock() + 2.9
    clock.now += 3
    assert backoff.next_delay(retry_after=0.0) == pytest.approx(0.01)  # backoff wins when larger


@pytest.mark.parametrize("value, expected", [
    ("120", 120.0), ("0", 0.0), (" 5 ", 5.0), ("1.5", 1.5), ("-3", 0.0), (None, None), ("", None),
    ("soon", None), ("nan", None), ("99999999", MAX_RETRY_AFTER_SECS),
])
def test_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date():
    now = time.time()
    in_30s = formatdate(now + 30, usegmt=True)  # "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(in_30s, now=now) == pytest.approx(30, abs=1)
    past = formatdate(now - 3600, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    # "-0000" zones parse as naive datetimes: still UTC
    naive = format_datetime(datetime.fromtimestamp(now + 60, timezone.utc).replace(tzinfo=None))
    assert naive.endswith("-0000")
    assert parse_retry_after(naive, now=now) == pytest.approx(60, abs=1)
    assert parse_retry_after("Wed, 99 Foo 2015 07:28:00 GMT") is None


async def test_waiters_are_released_at_once_by_a_success():
    backoff = Backoff(100.0, 100.0, rand=lambda: 0.999)
    backoff.next_delay()  # about 100 s
    waiter = asyncio.create_task(backoff.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    backoff.reset()
    await asyncio.wait_for(waiter, 1.0)


async def test_wait_returns_after_the_window():
    backoff = Backoff(0.2, 0.2, rand=lambda: 0.999)
    started = time.monotonic()
    backoff.next_delay(retry_after=0.2)
    await asyncio.wait_for(backoff.wait(), 2.0)
    assert time.monotonic() - started >= 0.2



def test_failures_of_one_window_count_once_however_many_senders_failed():
    clock = Clock()
    backoff = Backoff(1.0, 60.0, rand=lambda: 0.999999, clock=clock)
    started = clock()
    clock.now += 0.1
    for _ in range(4):  # four workers sent at once and failed: one window, ceiling 1 s
        backoff.next_delay(attempt_started=started)
    assert backoff.failures == 1 and backoff.retry_at == pytest.approx(clock() + 1)
    clock.now = backoff.retry_at
    started = clock()
    clock.now += 0.1
    for _ in range(4):
        backoff.next_delay(attempt_started=started)
    assert backoff.failures == 2


def test_a_window_is_at_most_half_the_outage_so_far():
    clock = Clock()
    backoff = Backoff(1.0, 60.0, rand=lambda: 0.999999, clock=clock)
    for _ in range(5):  # five failed windows in 3 s: 2**4 = 16 s would come next without the rule
        backoff.next_delay()
        clock.now += 0.75
    assert backoff.next_delay() == pytest.approx(3.75 / 2, rel=1e-5)
    clock.now += 600
    backoff.next_delay()
    assert backoff.retry_at - clock() == pytest.approx(60, rel=1e-5)  # a long outage reaches the cap


async def test_try_now_lifts_the_window_and_keeps_the_count():
    backoff = Backoff(100.0, 100.0, rand=lambda: 0.999)
    backoff.next_delay()
    waiter = asyncio.create_task(backoff.wait())
    await asyncio.sleep(0)
    backoff.try_now()
    await asyncio.wait_for(waiter, 1.0)
    assert backoff.failures == 1
