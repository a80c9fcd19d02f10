"""The one retry policy: what an intake's answer means, and how long to wait before trying again.

Every destination goes through here, so "what is retried, how often, how long" has a single answer:

- ``classify(status)`` maps an HTTP status (or no answer at all) to a ``Disposition``;
- ``parse_retry_after(value)`` reads a ``Retry-After`` header (delta-seconds or HTTP-date);
- ``Backoff`` is the per-destination state: exponential backoff with full jitter, capped, with
  ``Retry-After`` as a floor. Every sender to that destination waits on the same ``Backoff``, so a
  failing intake sees at most ``max_concurrency`` requests per backoff window, never a storm.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections.abc import Callable
from datetime import timezone
from email.utils import parsedate_to_datetime

# A Retry-After beyond this is treated as this: a bogus header must not park data for days. One hour is
# well past any throttling window Datadog documents (rate limits reset per period of seconds to minutes).
MAX_RETRY_AFTER_SECS = 3600.0


class Disposition(enum.Enum):
    DELIVERED = "delivered"
    RETRYABLE = "retryable"  # try again after backoff
    THROTTLED = "throttled"  # try again after backoff, and not before Retry-After
    TOO_LARGE = "too_large"  # split the payload and send the halves
    UNAUTHORIZED = "unauthorized"  # the API key is wrong: keep the data, say so loudly, try again later
    PERMANENT = "permanent"  # the intake will never accept this payload: drop it, count it, say why


def classify(status: int | None) -> Disposition:
    """What an intake's answer means. ``None`` is no answer: refused, reset, timed out, DNS failure.

    Sources: Datadog "Send logs" API reference (the most complete list; the metrics, LLM Observability and
    trace intakes answer the same codes), and the Agent's own senders (PROTOCOLS.md, "Retry behaviour").
    """
    if status is None:
        return Disposition.RETRYABLE  # the request may never have arrived: sending again is safe
    if 200 <= status < 300:
        return Disposition.DELIVERED  # 200 OK / 202 Accepted ("the request has been accepted")
    if status == 408:
        return Disposition.RETRYABLE  # "Request Timeout, request should be retried after some time"
    if status == 429:
        return Disposition.THROTTLED  # "Too Many Requests, request should be retried after some time"
    if status == 413:
        return Disposition.TOO_LARGE  # "Payload too large (batch is above 5MB uncompressed)"
    if status in (401, 403):
        # 401 "Unauthorized (likely a missing API Key)", 403 "Permission issue (likely using an invalid API
        # Key)". The Agent drops here; we keep the data, because fixing the key should not mean losing it.
        return Disposition.UNAUTHORIZED
    if 400 <= status < 500:
        return Disposition.PERMANENT  # 400 "Bad request (likely an issue in the payload formatting)"
    if status >= 500:
        return Disposition.RETRYABLE  # 500/503 "should be retried after some time"
    # 1xx/3xx: not something an intake documents (redirects are followed by the client). Keep the data.
    return Disposition.RETRYABLE


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 10.2.3), clamped to [0, MAX_RETRY_AFTER_SECS].

    Either delta-seconds ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"). None when absent or
    unreadable: an unreadable header is ignored rather than trusted.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are always UTC (RFC 9110 5.6.7)
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECS)


class Backoff:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"):
    the n-th consecutive failure waits uniform(0, min(max_secs, initial_secs * 2**n)), and never less
    than a Retry-After the intake asked for. Shared by every sender to one destination."""

    def __init__(self, initial_secs: float, max_secs: float, rand: Callable[[], float] = random.random) -> None:
        self.initial_secs = initial_secs
        self.max_secs = max_secs
        self.failures = 0  # consecutive, reset by a success
        self.retry_at = 0.0  # time.monotonic() before which nobody sends to this destination
        self._rand = rand
        self._changed = asyncio.Event()  # lets waiters see a success (retry_at lifted) at once

    def ceiling(self, failures: int) -> float:
        """The jitter's upper bound after ``failures`` consecutive failures (1 -> initial_secs)."""
        exponent = min(max(failures - 1, 0), 62)  # 2**62 * anything positive is past any sane cap
        return min(self.max_secs, self.initial_secs * 2.0**exponent)

    def next_delay(self, retry_after: float | None = None) -> float:
        """Record a failure and return how long this destination now waits."""
        self.failures += 1
        delay = self._rand() * self.ceiling(self.failures)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.retry_at = max(self.retry_at, time.monotonic() + delay)
        return delay

    def reset(self) -> None:
        """Forget the failures (after a success, or for a new destination); release every waiter."""
        self.failures = 0
        if self.retry_at:
            self.retry_at = 0.0
            self._changed.set()
            self._changed = asyncio.Event()

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def reconfigure(self, initial_secs: float, max_secs: float) -> None:
        self.initial_secs = initial_secs
        self.max_secs = max_secs

    async def wait(self) -> None:
        """Return once this destination may be tried again (now, if it is not backing off)."""
        while (remaining := self.retry_at - time.monotonic()) > 0:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
