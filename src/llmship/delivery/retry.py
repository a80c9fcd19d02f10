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
    if status in (401, 403, 407):
        # 401 "Unauthorized (likely a missing API Key)", 403 "Permission issue (likely using an invalid API
        # Key)". The Agent drops here; we keep the data, because fixing the key should not mean losing it.
        # 407: the proxy refused our proxy credentials, likewise fixable and never the payload's fault.
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
    the n-th failed window waits uniform(0, min(max_secs, initial_secs * 2**n)), and never less than a
    Retry-After the intake asked for. Shared by every sender to one destination.

    Two rules keep an outage from costing more than itself once the intake is back:
    - failures are counted per window, not per sender: the ``max_concurrency`` requests that fail in one
      window count once (four workers failing separately used to reach a 60 s cap within seconds);
    - a window is never longer than half the outage so far, so after a 10 s blip data waits at most
      about 5 s more, not ``max_secs``; long outages still reach ``max_secs``.
    """

    def __init__(self, initial_secs: float, max_secs: float, rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial_secs = initial_secs
        self.max_secs = max_secs
        self.failures = 0  # consecutive failed windows, reset by a success
        self.retry_at = 0.0  # clock() before which nobody sends to this destination
        self._rand = rand
        self._clock = clock
        self._outage_since = 0.0  # when the first failure of this outage was recorded
        self._counted_at = -math.inf  # when the current window's failure was recorded
        self._changed = asyncio.Event()  # lets waiters see a success (retry_at lifted) at once

    def ceiling(self, failures: int, outage_secs: float = math.inf) -> float:
        """The jitter's upper bound after ``failures`` failed windows (1 -> initial_secs) in an outage that
        has lasted ``outage_secs``."""
        exponent = min(max(failures - 1, 0), 62)  # 2**62 * anything positive is past any sane cap
        return min(self.max_secs, self.initial_secs * 2.0**exponent, max(self.initial_secs, outage_secs / 2))

    def now(self) -> float:
        return self._clock()

    def next_delay(self, retry_after: float | None = None, attempt_started: float | None = None) -> float:
        """Record a failure of an attempt made at ``attempt_started`` (``now()``; None: just now) and return
        how long this destination now waits. An attempt made before another sender's failure was recorded
        belongs to that window: it does not lengthen it (a Retry-After still does)."""
        now = self._clock()
        if attempt_started is not None and attempt_started < self._counted_at:
            delay = max(self.retry_at - now, 0.0)
        else:
            if self.failures == 0:
                self._outage_since = now
            self.failures += 1
            self._counted_at = now
            delay = self._rand() * self.ceiling(self.failures, now - self._outage_since)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.retry_at = max(self.retry_at, now + delay)
        return delay

    def reset(self) -> None:
        """Forget the failures (after a success, or for a new destination); release every waiter."""
        self.failures = 0
        self._counted_at = -math.inf
        if self.retry_at:
            self.retry_at = 0.0
            self._changed.set()
            self._changed = asyncio.Event()

    def try_now(self) -> None:
        """Lift the current window (failures stay counted): one more attempt now, e.g. before exiting."""
        if self.retry_at > self._clock():
            self.retry_at = self._clock()
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
        while (remaining := self.retry_at - self._clock()) > 0:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
