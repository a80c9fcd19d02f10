"""Delivery: moves encoded payloads to their intake, and decides only when to try again.

It knows no protocol: a payload carries its route, which the injected transport (HTTP, files) resolves,
and its item boundaries, which ``payload.split`` uses to cut it on a 413.

Per payload kind ("lane"): a FIFO bounded in bytes, ``max_concurrency`` workers, and one ``Backoff``
shared by those workers. A worker waits out the lane's backoff window, takes the oldest payload (from
memory or from the disk spool, whichever is older), and sends it through the transport:

- delivered: counted (sent, sent_bytes), the lane's backoff resets and, after an outage, idle
  workers wake so the spool is replayed at full speed;
- permanent (400, other 4xx): dropped, counted (discarded{reason="http_<status>"}), logged with why;
- too large (413): split in two at an item boundary (``payload.split``, in a worker thread: it inflates
  and compresses) and each half sent, holding the same worker;
- retryable (408, 5xx, no answer), throttled (429), unauthorized (401/403, logged loudly): the lane backs
  off (full jitter, Retry-After as a floor). With a spool the payload is written to disk and replayed
  later; without one the worker keeps it and tries again, so a retry storm is at most ``max_concurrency``
  payloads per kind in memory and ``max_concurrency`` requests per backoff window.

With a spool configured, a "flusher" moves the memory queue to disk every ``spool_flush_secs / 2`` while
a lane is failing (so accepted data reaches disk within ``spool_flush_secs``) and writes the payloads
``submit`` spilled because the queue was full. ``shutdown(deadline)`` lifts every backoff window once (the
intake may be back), keeps delivering, memory first and then the spool, until the deadline, then writes
what is left in memory to the spool (or counts it discarded{reason="shutdown"}).

Telemetry: component ``delivery`` (info: destination, spool_dir, when_full) and one component
``delivery.<kind>`` per payload kind with counters received, received_bytes, sent, sent_bytes (events as
payload items, bytes as sent: compressed), requests_sent, retries, splits, spooled,
discarded{reason, intentional}, errors{error_type, stage}, and gauges
queue_bytes, queue_items, inflight_payloads, spool_bytes, spool_files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from llmship.config import Config
from llmship.delivery.payload import Payload, Route, split
from llmship.delivery.queue import ByteQueue, WhenFull
from llmship.delivery.retry import Backoff, Disposition, classify, parse_retry_after
from llmship.delivery.spool import LANE_NAME, Lease, Spool
from llmship.delivery.transport import SendResult, Transport
from llmship.log import RateLimited, get_logger
from llmship.telemetry import Component, Telemetry

__all__ = ["Delivery"]

_log = get_logger("delivery")

# Spool files are written in chunks of about this size, so evicting the oldest file for room frees a
# bounded amount and a replay reads a bounded amount at a time.
SPOOL_FILE_TARGET_BYTES = 8 * 1024 * 1024

T = TypeVar("T")


class _Stopped(Exception):
    """The shutdown deadline passed while a worker was waiting or sending."""


class _Lane:
    """One payload kind: its queue, its spill buffer, its workers and its backoff."""

    def __init__(self, kind: str, comp: Component, cfg: Config) -> None:
        d = cfg.delivery
        self.kind = kind
        self.comp = comp
        self.queue = ByteQueue(d.queue_max_bytes)
        # Payloads refused by a full queue and waiting for the flusher to write them to the spool. A
        # quarter of the queue budget: it only has to cover the flusher's latency, and it stays bounded.
        self.overflow = ByteQueue(max(d.queue_max_bytes // 4, 1))
        self.backoff = Backoff(d.retry_initial_secs, d.retry_max_secs)
        self.inflight: dict[int, Payload] = {}  # in-memory payloads workers hold (by id())
        self.spilling: list[Payload] = []  # taken from the queues and being written to the spool
        self.replaying = 0  # spooled payloads workers hold
        self.workers: set[asyncio.Task] = set()
        self.wakeup = asyncio.Event()

    def configure(self, cfg: Config) -> None:
        d = cfg.delivery
        self.queue.max_bytes = d.queue_max_bytes
        self.overflow.max_bytes = max(d.queue_max_bytes // 4, 1)
        self.backoff.reconfigure(d.retry_initial_secs, d.retry_max_secs)

    def memory_bytes(self) -> int:
        return self.queue.bytes + self.overflow.bytes

    def idle(self) -> bool:
        return not self.queue and not self.overflow and not self.inflight and not self.replaying

    def hold(self, payload: Payload) -> None:
        self.inflight[id(payload)] = payload

    def let_go(self, payload: Payload) -> None:
        self.inflight.pop(id(payload), None)


class Delivery:
    def __init__(self, cfg: Config, telemetry: Telemetry, transport: Callable[[Config], Transport], *,
                 spool_routes: Mapping[str, Route] | None = None) -> None:
        """``transport`` makes the transport for a config (again on a reload that changes [sinks]);
        ``spool_routes`` gives the route of each kind for spool records written before payloads carried
        their route (spool format 1)."""
        self._cfg = cfg
        self._make_transport = transport
        self._telemetry = telemetry
        self._comp = telemetry.component("delivery")
        self._limited = RateLimited(_log)  # per instance: a restarted delivery says it again
        d = cfg.delivery
        self._spool: Spool | None = None
        if d.spool_dir:
            self._spool = Spool(d.spool_dir, max_bytes=d.spool_max_bytes, max_age_secs=d.spool_max_age_secs,
                                min_free_bytes=d.spool_min_free_bytes,
                                component=lambda kind: telemetry.component(f"delivery.{kind}"),
                                legacy_routes=spool_routes)
        self._when_full = WhenFull.from_config(d.when_full, d.spool_dir)
        self._transport: Transport = transport(cfg)
        self._lanes: dict[str, _Lane] = {}
        self._started = False
        self._draining = False
        self._closed = False  # shutdown finished collecting leftovers: submit refuses from now on
        self._stop: asyncio.Future | None = None  # resolved at the shutdown deadline
        self._flusher: asyncio.Task | None = None
        self._flush_now = asyncio.Event()
        self._progress = asyncio.Event()  # something finished or failed: shutdown re-checks if drained
        self._retiring: set[asyncio.Task] = set()  # transports replaced by reload, closing when idle
        self._shutdown_task: asyncio.Task | None = None
        self._describe()

    # ------------------------------------------------------------------------------------------ public

    async def start(self) -> None:
        """Index the spool (a bad spool_dir fails here, at start-up) and start the workers."""
        if self._started:
            return
        self._started = True
        self._stop = asyncio.get_running_loop().create_future()
        if self._spool is not None:
            await self._spool.open()
            for kind in self._spool.kinds():
                self._lane(kind)
            self._flusher = asyncio.create_task(self._flush_loop(), name="delivery-flusher")
        for lane in self._lanes.values():
            self._spawn_workers(lane)

    def submit(self, payload: Payload) -> bool:
        """Queue ``payload`` for delivery; never blocks. False when it was dropped (and counted)."""
        if not LANE_NAME.fullmatch(payload.kind):  # a sink bug, not input: say it once per kind
            self._comp.discard("bad_kind", payload.items)
            self._limited.error(f"bad:{payload.kind}"[:80], "bad_payload_kind", kind=payload.kind[:80])
            return False
        lane = self._lane(payload.kind)
        if self._closed:
            return self._drop(lane, payload, "shutdown")
        if lane.queue.push(payload):
            lane.wakeup.set()
        elif self._when_full is WhenFull.SPILL and self._spool is not None and lane.overflow.push(payload):
            self._flush_now.set()
        else:
            reason = "queue_full" if self._when_full is WhenFull.DROP_NEWEST else "spill_backlog"
            self._limited.warning(f"{reason}:{lane.kind}", "delivery_queue_full", kind=lane.kind, reason=reason,
                                  queue_bytes=lane.queue.bytes, queue_max_bytes=lane.queue.max_bytes)
            return self._drop(lane, payload, reason)
        lane.comp.inc("received", payload.items)
        lane.comp.inc("received_bytes", len(payload.body))
        return True

    def overloaded(self, kind: str) -> bool:
        """True while ``kind``'s memory queue is full: HTTP sources then answer 429 with Retry-After."""
        lane = self._lanes.get(kind)
        return lane is not None and lane.queue.full

    def totals(self) -> dict[str, float]:
        """Events delivered, spooled and dropped so far, over every kind (POST /flush reports the increase)."""
        return {name: sum(lane.comp.get(counter, **labels) for lane in self._lanes.values())
                for name, counter, labels in (("delivered", "sent", {}), ("spooled", "spooled", {}),
                                              ("dropped", "discarded", {"intentional": "false"}))}

    def unsettled(self, accepted_by: float) -> tuple[int, int]:
        """(payloads, events) accepted by ``accepted_by`` (time.time()) and still only in memory: queued,
        waiting to be spilled, or held by a worker (sending, or retrying without a spool). Split parts keep
        their payload's ``created``, so a payload being split still counts."""
        payloads = events = 0
        for lane in self._lanes.values():
            for payload in (*lane.queue, *lane.overflow, *lane.inflight.values(), *lane.spilling):
                if payload.created <= accepted_by:
                    payloads += 1
                    events += payload.items
        return payloads, events

    async def settle(self, accepted_by: float, deadline: float) -> tuple[int, int]:
        """Wait until every payload accepted by ``accepted_by`` is delivered, spooled or dropped (counted), or
        until ``deadline`` (time.monotonic()); return what is still in memory then (see ``unsettled``).
        Waiting changes nothing: workers, backoff and the spool flusher carry on as they would anyway."""
        while (left := self.unsettled(accepted_by))[0] and time.monotonic() < deadline:
            self._progress.clear()  # no await since the check: no progress can be missed in between
            try:
                await asyncio.wait_for(self._progress.wait(), deadline - time.monotonic())
            except TimeoutError:
                return self.unsettled(accepted_by)
        return left

    async def shutdown(self, deadline: float) -> None:
        """Deliver until ``deadline`` (time.monotonic()), then spool what is left (or count it dropped)."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(deadline), name="delivery-shutdown")
        await asyncio.shield(self._shutdown_task)

    def reload(self, cfg: Config) -> None:
        """Apply new delivery and sink settings; payloads in flight finish on the transport they started on."""
        old, self._cfg = self._cfg, cfg
        d = cfg.delivery
        if d.spool_dir != old.delivery.spool_dir:
            _log.warning("spool_dir_change_needs_restart", active=old.delivery.spool_dir, configured=d.spool_dir)
        if self._spool is not None:
            self._spool.configure(max_bytes=d.spool_max_bytes, max_age_secs=d.spool_max_age_secs,
                                  min_free_bytes=d.spool_min_free_bytes)
        active_spool_dir = str(self._spool.directory) if self._spool is not None else ""
        self._when_full = WhenFull.from_config(d.when_full if active_spool_dir else "", active_spool_dir)
        new_destination = cfg.sinks != old.sinks
        if new_destination:
            retired, self._transport = self._transport, self._make_transport(cfg)
            task = asyncio.get_running_loop().create_task(retired.close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        for lane in self._lanes.values():
            lane.configure(cfg)
            if new_destination:
                lane.backoff.reset()  # the old destination's failures say nothing about the new one
            if self._started and not self._draining:
                self._spawn_workers(lane)
            lane.wakeup.set()  # idle workers re-check (a lower max_concurrency lets the excess leave)
        self._describe()

    # ------------------------------------------------------------------------------------------ lanes

    def _lane(self, kind: str) -> _Lane:
        lane = self._lanes.get(kind)
        if lane is None:
            comp = self._telemetry.component(f"delivery.{kind}")
            lane = self._lanes[kind] = _Lane(kind, comp, self._cfg)
            comp.gauge("queue_bytes", lane.memory_bytes)
            comp.gauge("queue_items", lambda: len(lane.queue) + len(lane.overflow))
            comp.gauge("inflight_payloads", lambda: len(lane.inflight))
            if self._spool is not None:
                spool = self._spool
                comp.gauge("spool_bytes", lambda: spool.bytes(kind))
                comp.gauge("spool_files", lambda: spool.files(kind))
            if self._started and not self._draining:
                self._spawn_workers(lane)
        return lane

    def _spawn_workers(self, lane: _Lane) -> None:
        while len(lane.workers) < self._cfg.delivery.max_concurrency:
            task = asyncio.create_task(self._work(lane), name=f"delivery-{lane.kind}")
            lane.workers.add(task)
            task.add_done_callback(lane.workers.discard)

    def _drop(self, lane: _Lane, payload: Payload, reason: str) -> bool:
        lane.comp.discard(reason, payload.items)
        return False

    # ------------------------------------------------------------------------------------------ workers

    async def _stoppable(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless the shutdown deadline comes first (then cancel it and raise _Stopped)."""
        task = asyncio.ensure_future(aw)
        assert self._stop is not None
        await asyncio.wait((task, self._stop), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait((task,))
        raise _Stopped

    async def _work(self, lane: _Lane) -> None:
        try:
            while True:
                if len(lane.workers) > self._cfg.delivery.max_concurrency:  # a reload lowered it
                    lane.workers.discard(asyncio.current_task())  # at once, so only the excess leaves
                    return
                # Wait out the lane's backoff *before* taking anything: while it fails, payloads stay in the
                # queue, where the flusher moves them to the spool.
                await self._stoppable(lane.backoff.wait())
                lane.wakeup.clear()
                item = self._take(lane)
                if item is None:
                    await self._stoppable(lane.wakeup.wait())
                    continue
                try:
                    await self._process(lane, item)
                except _Stopped:
                    raise
                except Exception as e:  # a bug must cost one payload, never the worker
                    self._internal_error(lane, item, e)
                finally:
                    self._progress.set()
        except _Stopped:
            pass

    def _take(self, lane: _Lane) -> Payload | Lease | None:
        """The oldest payload for ``lane``: from memory or the spool; memory first while draining."""
        head = lane.queue.peek()
        spooled = self._spool.oldest(lane.kind) if self._spool is not None else None
        if spooled is not None and (head is None or (not self._draining and spooled <= head.created)):
            return self._spool.lease(lane.kind)
        payload = lane.queue.pop()
        if payload is not None:
            lane.hold(payload)
        return payload

    async def _process(self, lane: _Lane, item: Payload | Lease) -> None:
        if isinstance(item, Payload):
            await self._deliver(lane, item, None)
            lane.let_go(item)
            return
        assert self._spool is not None
        lane.replaying += 1
        try:
            payload = await self._spool.read(item)
            if payload is None:
                return  # corrupt: counted and skipped by the spool
            await self._deliver(lane, payload, item)
        finally:
            lane.replaying -= 1
            self._spool.release(item)  # a no-op once done; else it stays on disk for a later attempt

    async def _deliver(self, lane: _Lane, payload: Payload, lease: Lease | None) -> None:
        """Send ``payload`` until it is delivered, dropped, or safe in the spool. ``lease`` is set when it
        came from the spool; otherwise the worker holds it in ``lane.inflight``."""
        while True:
            await self._stoppable(lane.backoff.wait())
            transport = self._transport
            started = lane.backoff.now()
            result = await self._stoppable(transport.send(payload))
            lane.comp.inc("requests_sent")
            disposition = classify(result.status)
            if disposition is Disposition.DELIVERED:
                if lane.backoff.failing:
                    lane.wakeup.set()  # the intake is back: idle workers replay the spool at full speed
                lane.backoff.reset()
                lane.comp.inc("sent", payload.items)
                lane.comp.inc("sent_bytes", len(payload.body))
                self._finish(lease)
                return
            lane.comp.error(f"http_{result.status}" if result.status else "connection", result.detail, stage="sending")
            if disposition is Disposition.PERMANENT:
                self._limited.error(f"{lane.kind}:permanent:{result.status}", "payload_rejected", kind=lane.kind,
                                    status=result.status, items=payload.items, detail=result.detail,
                                    destination=transport.destination)
                self._drop(lane, payload, f"http_{result.status}")
                self._finish(lease)
                return
            if disposition is Disposition.TOO_LARGE:
                await self._split(lane, payload, lease, result)
                return
            await self._retry_later(lane, payload, disposition, result, transport.destination, started)
            if self._spool is not None and (lease is not None or await self._spool_payload(lane, payload)):
                return  # on disk: the spool replays it once the backoff window is over

    async def _retry_later(self, lane: _Lane, payload: Payload, disposition: Disposition, result: SendResult,
                           destination: str, started: float) -> None:
        lane.comp.inc("retries")
        delay = lane.backoff.next_delay(parse_retry_after(result.retry_after), attempt_started=started)
        self._progress.set()
        fields = dict(kind=lane.kind, status=result.status, detail=result.detail, retry_in_secs=round(delay, 3),
                      consecutive_failures=lane.backoff.failures, destination=destination)
        if disposition is Disposition.UNAUTHORIZED:
            # Loud: nothing gets through until the key is fixed. The data is kept (spool or memory).
            if result.status == 407:
                self._limited.error(f"{lane.kind}:proxy_auth", "proxy_rejected_credentials",
                                    hint="check the user:password of [sinks.datadog] proxy (or HTTPS_PROXY / "
                                         "HTTP_PROXY); data is kept and retried", **fields)
            elif payload.route.host == "otlp":  # sinks.otlp: credentials are its headers
                self._limited.error(f"{lane.kind}:auth", "otlp_endpoint_rejected_credentials",
                                    hint="check [sinks.otlp] headers; data is kept and retried", **fields)
            else:
                self._limited.error(f"{lane.kind}:auth", "intake_rejected_api_key",
                                    hint="check [sinks.datadog] api_key (or DD_API_KEY); data is kept and retried",
                                    **fields)
        else:
            self._limited.warning(f"{lane.kind}:retry", "intake_unavailable_retrying", **fields)

    async def _split(self, lane: _Lane, payload: Payload, lease: Lease | None, result: SendResult) -> None:
        parts = await self._stoppable(asyncio.to_thread(split, payload))
        if len(parts) < 2:
            self._limited.error(f"{lane.kind}:too_large", "payload_too_large_dropped", kind=lane.kind,
                                items=payload.items, bytes=len(payload.body), detail=result.detail)
            self._drop(lane, payload, "too_large")
            self._finish(lease)
            return
        lane.comp.inc("splits")
        for part in parts:
            part.created = payload.created  # keeps its place in the oldest-first order
            lane.hold(part)
        lane.let_go(payload)
        try:
            for part in parts:
                await self._deliver(lane, part, None)
                lane.let_go(part)
        finally:
            # Once split, the parts carry the data: whatever is left of them when the deadline stops us is
            # in lane.inflight and gets spooled by shutdown, so the original record is done either way.
            self._finish(lease)

    def _finish(self, lease: Lease | None) -> None:
        if lease is not None and self._spool is not None:
            self._spool.done(lease)

    async def _spool_payload(self, lane: _Lane, payload: Payload) -> bool:
        refused = await self._spool.write(lane.kind, [payload])
        if refused is None:
            lane.comp.inc("spooled", payload.items)
            return True
        return False  # disk full or spool full: keep it in memory and retry from there

    def _internal_error(self, lane: _Lane, item: Payload | Lease, e: Exception) -> None:
        lane.comp.error("internal", f"{type(e).__name__}: {e}", stage="sending")
        _log.exception("delivery_internal_error", kind=lane.kind)
        if isinstance(item, Payload):
            lane.let_go(item)
            self._drop(lane, item, "internal_error")
        elif self._spool is not None:
            lane.comp.discard("internal_error", item.record.items)
            self._spool.done(item)

    # ------------------------------------------------------------------------------------------ spool

    async def _flush_loop(self) -> None:
        """Write spilled payloads, and the queue of a failing lane, to the spool; expire old files."""
        assert self._spool is not None and self._stop is not None
        while not self._stop.done():
            interval = self._cfg.delivery.spool_flush_secs / 2
            try:
                await self._stoppable(asyncio.wait_for(self._flush_now.wait(), interval))
            except TimeoutError:
                pass
            except _Stopped:
                return
            self._flush_now.clear()
            try:
                for lane in list(self._lanes.values()):
                    spilled = lane.overflow.take_all()
                    moved = lane.queue.take_all() if lane.backoff.failing else []
                    if spilled or moved:
                        await self._write_to_spool(lane, moved + spilled, keep=len(moved))
                        self._progress.set()
                self._spool.expire()
            except Exception as e:  # a bug must not stop the spool for good: count it, try next tick
                self._comp.error("internal", f"{type(e).__name__}: {e}", stage="sending")
                _log.exception("delivery_flush_failed")

    async def _write_to_spool(self, lane: _Lane, payloads: list[Payload], keep: int) -> None:
        """Write ``payloads`` in files of about SPOOL_FILE_TARGET_BYTES. When a write is refused, the first
        ``keep`` payloads (taken from the memory queue) go back to its head; the others are dropped."""
        assert self._spool is not None
        lane.spilling = payloads  # in no queue while written, but not safe yet: ``settle`` waits for them
        try:
            for start, end in _chunks(payloads, SPOOL_FILE_TARGET_BYTES):
                chunk = payloads[start:end]
                refused = await self._spool.write(lane.kind, chunk)
                if refused is None:
                    lane.comp.inc("spooled", sum(p.items for p in chunk))
                    continue
                rest = payloads[start:]
                back = rest[:max(keep - start, 0)]
                lane.queue.push_front(back)
                for payload in rest[len(back):]:
                    self._drop(lane, payload, refused)
                return
        finally:
            lane.spilling = []

    # ------------------------------------------------------------------------------------------ drain

    async def _shutdown(self, deadline: float) -> None:
        self._draining = True
        if self._started:
            for lane in self._lanes.values():
                # One attempt now, whatever the backoff window: the intake may be back (the spool is tried
                # too), and if it is not, the next window decides whether another fits before the deadline.
                lane.backoff.try_now()
                lane.wakeup.set()  # idle workers re-check with memory-first order
            while not self._drained(deadline) and time.monotonic() < deadline:
                self._progress.clear()
                try:
                    await asyncio.wait_for(self._progress.wait(), max(deadline - time.monotonic(), 0))
                except TimeoutError:
                    break
            assert self._stop is not None
            self._stop.set_result(None)
            tasks = [t for lane in self._lanes.values() for t in lane.workers]
            if self._flusher is not None:
                tasks.append(self._flusher)
            await asyncio.gather(*tasks, return_exceptions=True)
        self._closed = True
        for lane in self._lanes.values():
            leftovers = list(lane.inflight.values()) + lane.queue.take_all() + lane.overflow.take_all()
            lane.inflight.clear()
            if not leftovers:
                continue
            if self._spool is not None:
                await self._write_to_spool(lane, leftovers, keep=0)
            else:
                for payload in leftovers:
                    self._drop(lane, payload, "shutdown")
            _log.info("delivery_leftovers", kind=lane.kind, payloads=len(leftovers),
                      spooled=self._spool is not None)
        await self._transport.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _drained(self, deadline: float) -> bool:
        """Nothing left in memory or in the spool that could still be delivered before ``deadline``."""
        spool = self._spool
        return all((lane.idle() and (spool is None or spool.oldest(lane.kind) is None))
                   or lane.backoff.retry_at >= deadline for lane in self._lanes.values())

    def _describe(self) -> None:
        self._comp.set_info("destination", self._transport.destination)
        self._comp.set_info("spool_dir", str(self._spool.directory) if self._spool is not None else "")
        self._comp.set_info("when_full", self._when_full.value)


def _chunks(payloads: list[Payload], target_bytes: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive payloads of about ``target_bytes`` each (at least one)."""
    ranges, start, size = [], 0, 0
    for i, payload in enumerate(payloads):
        if i > start and size + len(payload.body) > target_bytes:
            ranges.append((start, i))
            start, size = i, 0
        size += len(payload.body)
    if start < len(payloads):
        ranges.append((start, len(payloads)))
    return ranges
