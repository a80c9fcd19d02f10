"""Pre-forked processing workers (``[agent] workers`` > 1): the processing plane in N processes, the
shipping plane in the parent.

The parent binds every processing-plane listener (llmship.listeners; OTLP/gRPC excepted, which each worker
binds itself with SO_REUSEPORT), creates one socketpair per worker and starts each worker as
``python -m llmship.worker`` with the listening sockets and its end of the pair as inherited file
descriptors: spawned, not forked, because forking a process whose event loop runs
(uvloop, threads, open connections) is unsafe; uvicorn's ``--workers`` spawns for the same reason. The
worker builds the processing plane (sources, LLM stage, policies, per-item encoders) around a
``RemoteRouter`` and accepts on the inherited sockets; the parent (``WorkerPool``) reads each channel and
applies what arrives to the real ``Router``: de-duplication, aggregation, packing and delivery stay in
one place.

The channel carries bytes and plain tuples only, never pickles. Each direction is a stream of frames::

    frame   = length:uint32 big-endian, then one msgpack array of messages
    message = msgpack array [code, fields...]

worker -> parent (one frame per event-loop turn that produced anything, so a burst is one write):
    [1, language, [[tracer_payload: bin, spans: int], ...]]            Router.trace_items
    [2, [[span_id: int|nil, event: bin|nil, [[name, type, value, tags], ...], log: bin|nil,
          genai: [...]|nil, otlp_span: bin|nil, otlp_log: bin|nil], ...]]
                                                                       Router.calls (CallOutput fields)
    [3, [log_item: bin, ...]]                                          Router.log_items
    [4, name, type, value, tags, rate, host|nil, timestamp|nil]        Router.add_metric
    [5, {event}] / [6, {check}]                                        Router.dsd_event / service_check
    [7, [[component, name, [[label, value], ...], delta], ...]]        telemetry counter increments
    [8, {pid, ready, draining, lag_ms, overloaded, gauges, info}]      state, at least every HEARTBEAT_SECS
    [9, kind, [item, ...]]                                             Router.otlp_items ("spans": items are
                                                                       [bin, spans]; "logs": bin)
    [10, [[name, series_type, value, tags, timestamp], ...]]           Router.add_point, each (OTLP gauges,
                                                                       delta sums)
    [11, [[name, [cnt, min, max, sum, avg, [key, ...], [count, ...]], tags, timestamp], ...]]
                                                                       Router.add_sketch, each (OTLP delta
                                                                       histograms; the Sketch as plain data:
                                                                       Sketch.to_plain / from_plain)
    [12, [[name, value, tags, start_ns, time_ns], ...]]                Router.add_cumulative_sum, each
    [13, [[name, tags, start_ns, time_ns, [bucket_count, ...], [bound, ...], count, sum], ...]]
                                                                       Router.add_cumulative_histogram, each
                                                                       (cumulative OTLP points: the parent
                                                                       takes their differences, as a series'
                                                                       points may reach different workers)
    [14, kind, data]                                                   an item for `llmship tap` (plain data:
                                                                       tap.RelayTap), only while a tap wants it
parent -> worker:
    [20, config_path, config_text]   the config to run (first message, and on each SIGHUP reload)
    [21, [lane, ...]]                the shipping plane's overloaded lanes ("*": the parent runs late)
    [22, [kind, ...], rate]          what `llmship tap` wants relayed (no kind: nothing), at most rate/s

Counter increments travel in the same frame as the data they describe, so the sums in /status add up
even when a worker is killed: what it handed over is counted, what it had not is neither counted nor
answered. A worker answers a request only after the frame holding its data left the process (is in the
socketpair, readable by the parent even after the worker dies): ``Emitter.handed_over``.

Back-pressure: when a worker's unsent bytes exceed HANDOVER_BUFFER_BYTES (the parent reads more slowly
than the worker produces), or the parent reports a lane overloaded, ``Emitter.overloaded`` is true and the
listeners shed load (429); the process's own lateness sheds too (llmship.overload).

Supervision (WorkerPool): a worker that exits unexpectedly is counted (component "workers":
``worker_exits{code}``, ``worker_restarts``), its channel is read to the end (nothing it handed over is
lost), and it is started again after a backoff of 1 s doubling to 30 s, back to 1 s after a minute up.
SIGHUP: the parent validates the new config once and sends its text to every worker; SIGTERM: the parent
closes its copies of the listeners and sends SIGTERM to the workers, which stop accepting, finish the
requests in flight, hand over what they hold and exit; then the parent drains as with one process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable

import msgspec

from llmship import listeners as listeners_mod
from llmship import log as logmod
from llmship.config import Config, load_config_text
from llmship.llm.stage import CallOutput
from llmship.log import get_logger
from llmship.sketch import Sketch
from llmship.tap import IDLE, RelayTap, Tap
from llmship.telemetry import RecordingTelemetry, Telemetry

log = get_logger("workers")

# Message codes (see the module docstring).
TRACES, CALLS, LOGS, METRIC, DSD_EVENT, SERVICE_CHECK, COUNTERS, STATE, OTLP = 1, 2, 3, 4, 5, 6, 7, 8, 9
POINTS, SKETCHES, CUMULATIVE_SUMS, CUMULATIVE_HISTOGRAMS, TAP = 10, 11, 12, 13, 14
CONFIG, LANES, TAP_DEMAND = 20, 21, 22

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 30  # a sanity bound: a frame is at most one event-loop turn's output
READ_BYTES = 1 << 18  # per read of a channel: one read per readiness, so one busy worker cannot starve others
# A worker whose channel holds more than this unsent (the parent reads more slowly than it produces)
# reports itself overloaded: 8 MiB is about 80 requests of 100 web spans, a second of one worker's output.
HANDOVER_BUFFER_BYTES = 8 << 20
CHANNEL_SOCKET_BUFFER_BYTES = 4 << 20  # asked for; the kernel caps it at net.core.wmem_max
HEARTBEAT_SECS = 1.0
# The watchdog pings while every worker reported within this (a worker whose loop is stuck stops reporting).
HEARTBEAT_STALE_SECS = 10.0
LANES_CHECK_SECS = 0.05
BACKOFF_INITIAL_SECS, BACKOFF_MAX_SECS, BACKOFF_RESET_AFTER_SECS = 1.0, 30.0, 60.0
START_TIMEOUT_SECS = 60.0  # a worker that is not serving this long after it was started is stopped
EOF_TIMEOUT_SECS = 10.0  # reading a dead worker's channel to its end
SHIPPING_LANES = ("traces", "llmobs", "logs", "otlp_spans", "otlp_logs", "series", "sketches")

_encoder = msgspec.msgpack.Encoder(enc_hook=str)  # enc_hook: an odd value in a component's info shows as text
_decode = msgspec.msgpack.Decoder().decode


def frame(messages: list) -> bytes:
    buf = bytearray(HEADER.size)
    _encoder.encode_into(messages, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return bytes(buf)


def _frame_length(data, pos: int) -> int:
    (length,) = HEADER.unpack_from(data, pos)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes")
    return length


class FrameReader:
    """Cuts a byte stream into frames and decodes each into its list of messages. Whole frames are decoded
    where they were read; only a frame cut by the end of a read is copied, to be completed by the next."""

    def __init__(self) -> None:
        self._buf = bytearray()  # the start of a frame the last read cut

    def feed(self, data: bytes) -> list[list]:
        frames: list[list] = []
        with memoryview(data) as view:
            pos = self._complete(view, frames) if self._buf else 0
            size = len(view)
            while size - pos >= HEADER.size:
                end = pos + HEADER.size + _frame_length(view, pos)
                if end > size:
                    break
                frames.append(_decode(view[pos + HEADER.size:end]))
                pos = end
            if pos < size:
                self._buf += view[pos:]
        return frames

    def _complete(self, view: memoryview, frames: list) -> int:
        """Completes the cut frame from the head of ``view`` (decoding it if it is whole): the bytes taken."""
        buf = self._buf
        taken = min(max(HEADER.size - len(buf), 0), len(view))
        buf += view[:taken]
        if len(buf) < HEADER.size:
            return taken
        whole = HEADER.size + _frame_length(buf, 0)
        more = min(whole - len(buf), len(view) - taken)
        buf += view[taken:taken + more]
        taken += more
        if len(buf) == whole:
            with memoryview(buf) as frame:
                frames.append(_decode(frame[HEADER.size:]))
            buf.clear()
        return taken

    @property
    def pending(self) -> int:
        return len(self._buf)


class Channel:
    """One end of a socketpair on the event loop: frames out with a count of bytes the kernel took (so a
    caller can wait until its frame left the process), frames in to ``on_frame``, ``on_closed`` at EOF."""

    def __init__(self, sock: socket.socket, on_frame: Callable[[list], None],
                 on_closed: Callable[[], None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._reader = FrameReader()
        self._out: collections.deque = collections.deque()
        self.buffered = 0  # bytes given to send() that the kernel has not taken yet
        self.written = 0  # bytes given to send(), ever
        self.sent = 0  # ... of which the kernel took
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self.closed = False
        self.eof = asyncio.Event()
        self._loop.add_reader(self._fd, self._readable)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.written += len(data)
        if not self._out:
            try:
                n = self._sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.close()
                return
            self.sent += n
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._loop.add_writer(self._fd, self._writable)
        self._out.append(data)
        self.buffered += len(data)

    def _writable(self) -> None:
        out = self._out
        while out:
            chunk = out[0]
            try:
                n = self._sock.send(chunk)
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return
            self.sent += n
            self.buffered -= n
            if n < len(chunk):
                out[0] = memoryview(chunk)[n:]
                break
            out.popleft()
        if not out:
            self._loop.remove_writer(self._fd)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and (self.closed or self._waiters[0][0] <= self.sent):
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)

    async def sent_all(self) -> None:
        """Return once everything given to send() so far is in the kernel (or the channel closed)."""
        mark = self.written
        if self.sent >= mark or self.closed:
            return
        future = self._loop.create_future()
        self._waiters.append((mark, future))
        await future

    def _readable(self) -> None:
        try:
            data = self._sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            frames = self._reader.feed(data)
        except Exception as e:  # a corrupt stream: nothing after it can be trusted
            log.error("channel_corrupt", error=f"{type(e).__name__}: {e}")
            self.close()
            return
        for messages in frames:
            self._on_frame(messages)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._out.clear()
        self._sock.close()
        self._wake()
        self.eof.set()
        self._on_closed()


# ================================================================================================ worker


class RemoteRouter:
    """The router a worker's Emitter hands to: frames each call for the shipping plane's process, one
    frame per event-loop turn, with the telemetry increments made meanwhile."""

    def __init__(self, telemetry: RecordingTelemetry) -> None:
        self._telemetry = telemetry
        self._pending: list = []
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self.channel: Channel | None = None
        self.lanes: frozenset[str] = frozenset()  # the parent's overloaded lanes

    def _put(self, message: Any) -> None:
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def trace_items(self, items: list[tuple[bytes, int]], language: str) -> None:
        self._put((TRACES, language, items))

    def calls(self, outputs: list[CallOutput]) -> None:
        self._put((CALLS, [(o.span_id, o.event, o.samples, o.log, o.genai, o.otlp_span, o.otlp_log)
                           for o in outputs]))

    def otlp_items(self, kind: str, items: list) -> None:
        self._put((OTLP, kind, items))

    def _append(self, code: int, items: list) -> None:
        """Items into a [code, [item, ...]] message: a run of items of one kind is one message."""
        pending = self._pending
        if pending and pending[-1][0] == code:
            pending[-1][1].extend(items)
        elif items:
            self._put((code, items))

    def log_items(self, items: list[bytes]) -> None:
        self._append(LOGS, items)

    def add_metric(self, name: str, mtype: str, value, tags: str = "", rate: float = 1.0, host: str | None = None,
                   timestamp: float | None = None) -> None:
        self._put((METRIC, name, mtype, value, tags, rate, host, timestamp))

    def add_metrics(self, samples) -> None:
        for sample in samples:
            self.add_metric(*sample)

    def add_point(self, name: str, series_type: int, value: float, tags: str, timestamp: float) -> None:
        self._append(POINTS, [(name, series_type, value, tags, timestamp)])

    def add_sketch(self, name: str, sketch: Sketch, tags: str, timestamp: float) -> None:
        self._append(SKETCHES, [(name, sketch.to_plain(), tags, timestamp)])

    def add_cumulative_sum(self, name: str, value: float, tags: str, start: int, ts: int) -> None:
        self._append(CUMULATIVE_SUMS, [(name, value, tags, start, ts)])

    def add_cumulative_histogram(self, name: str, tags: str, start: int, ts: int, counts: list[int],
                                 bounds: list[float], count: int, total: float) -> None:
        self._append(CUMULATIVE_HISTOGRAMS, [(name, tags, start, ts, counts, bounds, count, total)])

    def dsd_event(self, event: dict) -> None:
        self._put((DSD_EVENT, event))

    def service_check(self, check: dict) -> None:
        self._put((SERVICE_CHECK, check))

    def overloaded(self, lane: str) -> bool:
        channel = self.channel
        if channel is not None and channel.buffered > HANDOVER_BUFFER_BYTES:
            return True
        lanes = self.lanes
        return bool(lanes) and (lane in lanes or "*" in lanes)

    def state(self, message: dict) -> None:
        self._put((STATE, message))

    def tap_item(self, kind: str, data: Any) -> None:
        self._put((TAP, kind, data))

    def flush(self) -> None:
        self._scheduled = False
        deltas = self._telemetry.take_deltas()
        if deltas:
            self._pending.append((COUNTERS, deltas))
        if self._pending and self.channel is not None:
            messages, self._pending = self._pending, []
            self.channel.send(frame(messages))

    async def handed_over(self) -> None:
        """Return once everything submitted so far has left this process."""
        self.flush()
        if self.channel is not None:
            await self.channel.sent_all()


class Worker:
    """One processing-plane process: the listeners it inherited, the processing plane, a RemoteRouter."""

    def __init__(self, index: int, channel_fd: int, sockets: listeners_mod.Sockets) -> None:
        self.index = index
        self._channel_sock = socket.socket(fileno=channel_fd)
        self._sockets = sockets
        self._config: asyncio.Future | None = None
        self._stop = asyncio.Event()
        self._draining = False
        self.ready = False
        self.cfg: Config | None = None
        self.parts = None

    async def run(self) -> int:
        from llmship.agent import build_processing
        from llmship.overload import LoopLag, freeze_startup_objects

        loop = asyncio.get_running_loop()
        self.telemetry = RecordingTelemetry()
        self.router = RemoteRouter(self.telemetry)
        self.relay = RelayTap(self.router.tap_item)  # the sinks' tap: what the parent's taps want
        self._config = loop.create_future()
        self.router.channel = Channel(self._channel_sock, self._on_frame, self._on_channel_closed)
        for sig in (signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, lambda: None)  # the parent forwards what concerns us
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        path, text = await self._config
        self.cfg = cfg = load_config_text(text, path=path)
        logmod.configure(cfg.agent.log_level, cfg.agent.log_format, secrets=[cfg.sinks.datadog.api_key],
                         fields={"worker": self.index})
        self.lag = LoopLag(cfg.agent.overload_lag_ms, count_blocking=True)  # the loop is its one thread
        self.parts = build_processing(cfg, self.telemetry, self.router, shed=self.lag.overloaded,
                                      sockets=self._sockets)
        for sink in self.parts.sinks:
            sink.tap = self.relay
        self.lag.start()
        for source in self.parts.sources:
            await source.start()
        self.ready = True
        freeze_startup_objects()
        self._send_state()
        heartbeat = loop.create_task(self._heartbeat(), name="heartbeat")
        log.info("worker_started", pid=os.getpid())
        await self._stop.wait()
        heartbeat.cancel()
        await self._drain()
        return 0

    def _on_frame(self, messages: list) -> None:
        for message in messages:
            code = message[0]
            if code == LANES:
                self.router.lanes = frozenset(message[1])
            elif code == TAP_DEMAND:
                self.relay.demand(message[1], message[2])
            elif code == CONFIG:
                if not self._config.done():
                    self._config.set_result((message[1], message[2]))
                else:
                    self._reload(message[1], message[2])

    def _on_channel_closed(self) -> None:
        if not self._draining:
            # The parent is gone: nothing can be handed over any more, so nothing is worth finishing.
            log.error("worker_parent_gone", pid=os.getpid())
            os._exit(1)

    def _reload(self, path: str, text: str) -> None:
        try:
            new = load_config_text(text, path=path)  # validated by the parent: this parses what it checked
        except Exception as e:  # the parent checked it; keep the old config rather than stop serving
            log.error("worker_reload_failed", error=f"{type(e).__name__}: {e}")
            return
        p = self.parts
        for component in (p.llm, p.log_processor, *p.sinks, *p.sources):
            reload = getattr(component, "reload", None)
            if reload is not None:
                reload(new)
        self.lag.reload(new.agent.overload_lag_ms)
        self.cfg = new
        logmod.configure(new.agent.log_level, new.agent.log_format, secrets=[new.sinks.datadog.api_key],
                         fields={"worker": self.index})
        log.info("worker_config_reloaded", config=new.path)

    def _send_state(self) -> None:
        gauges: dict[str, dict[str, float]] = {}
        info: dict[str, dict] = {}
        for name, comp in self.telemetry.components.items():
            values = {}
            for gname, read in comp.gauges.items():
                try:
                    values[gname] = float(read())
                except Exception:  # shown as missing; the parent keeps the last good value
                    continue
            if values:
                gauges[name] = values
            if comp.info:
                info[name] = comp.info
        self.router.state({"pid": os.getpid(), "ready": self.ready, "draining": self._draining,
                           "lag_ms": round(self.lag.take_peak() * 1000, 1),
                           "overloaded": self.lag.overloaded(), "shed_share": round(self.lag.shed_share, 2),
                           "gauges": gauges, "info": info})
        self.router.flush()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECS)
            self._send_state()

    async def _drain(self) -> None:
        """Stop accepting, finish the requests in flight, hand over everything, exit."""
        self._draining = True
        self.ready = False
        self._send_state()
        deadline = time.monotonic() + self.cfg.delivery.drain_timeout_secs
        log.info("worker_draining", pid=os.getpid())
        for source in self.parts.sources:
            await source.shutdown(deadline)
        self.lag.stop()
        self._send_state()
        try:
            await asyncio.wait_for(self.router.channel.sent_all(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.error("worker_handover_timeout", unsent_bytes=self.router.channel.buffered)
        log.info("worker_stopped", pid=os.getpid())


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmship.worker", description="a processing worker (started by "
                                     "`llmship run` with [agent] workers > 1; not meant to be run by hand)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--channel", type=int, required=True, help="fd of this worker's end of the socketpair")
    parser.add_argument("--listen", default="", help="key=fd,... inherited listening sockets")
    args = parser.parse_args(argv)
    pairs = [(key, int(fd)) for key, _, fd in (item.partition("=") for item in args.listen.split(",") if item)]
    sockets = listeners_mod.from_fds(pairs)
    # Logs before the config arrives (none expected) go to stderr as JSON; the config replaces this.
    logmod.configure("info", "json", fields={"worker": args.index})

    async def main() -> int:
        return await Worker(args.index, args.channel, sockets).run()

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


# ================================================================================================ parent


class WorkerSlot:
    """One worker's place in the pool: its current process and channel, and its counters across restarts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.telemetry = Telemetry()  # counters summed over every process that held this slot
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.channel: Channel | None = None
        self.ready = False
        self.draining = False
        self.alive = False
        self.last_state = 0.0  # monotonic time of the last state message
        self.started_at = 0.0
        self.restarts = 0
        self.lag_ms = 0.0
        self.overloaded = False
        self.shed_share = 0.0  # the share of requests its listeners refuse (llmship.overload)
        self.last_exit: dict | None = None
        self._gauges: dict[tuple[str, str], float] = {}


class WorkerPool:
    def __init__(self, count: int, cfg: Config, config_text: str, router, listeners, telemetry: Telemetry,
                 parent_overloaded: Callable[[], bool], tap: Tap | None = None) -> None:
        self.count = count
        self._cfg = cfg
        self._config_text = config_text
        self._router = router
        self._listeners = listeners
        self._telemetry = telemetry
        self._tel = telemetry.component("workers")
        self._parent_overloaded = parent_overloaded
        self.slots = [WorkerSlot(i) for i in range(count)]
        for slot in self.slots:
            telemetry.children.append(slot.telemetry)
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lanes: list[str] = []
        self._tap = tap or IDLE  # the parent's: the workers relay what it wants to it
        self._tap_demand = self._tap.demand()
        self._tel.gauge("workers_alive", lambda: sum(s.alive for s in self.slots))

    # ---------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start every worker and return once all serve; raises if one exits or hangs before that."""
        for slot in self.slots:
            await self._spawn(slot)
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not all(slot.ready for slot in self.slots):
            dead = [s for s in self.slots if s.proc is not None and s.proc.returncode is not None]
            if dead or time.monotonic() > deadline:
                self.kill()
                slot = (dead or [s for s in self.slots if not s.ready])[0]
                raise RuntimeError(f"worker {slot.index} (pid {slot.pid}) "
                                   + (f"exited with code {slot.proc.returncode}" if dead else "did not start")
                                   + " before it was ready")
            await asyncio.sleep(0.02)
        self._tasks = [asyncio.create_task(self._supervise(slot), name=f"worker-{slot.index}")
                       for slot in self.slots]
        self._tasks.append(asyncio.create_task(self._lanes_loop(), name="worker-lanes"))

    async def _spawn(self, slot: WorkerSlot) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for end in (parent_end, child_end):
                try:
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_SOCKET_BUFFER_BYTES)
                except OSError:
                    pass
            fds = self._listeners.fds()
            command = [sys.executable, "-m", "llmship.worker", "--index", str(slot.index),
                       "--channel", str(child_end.fileno()), "--listen", ",".join(f"{k}={fd}" for k, fd in fds)]
            slot.proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, pass_fds=[child_end.fileno(), *(fd for _, fd in fds)])
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        slot.pid = slot.proc.pid
        slot.alive = True
        slot.ready = False
        slot.draining = False
        slot.started_at = slot.last_state = time.monotonic()
        slot.channel = Channel(parent_end, lambda messages, s=slot: self._apply(s, messages), lambda: None)
        slot.channel.send(frame([(CONFIG, self._cfg.path, self._config_text), (LANES, self._lanes),
                                 (TAP_DEMAND, *self._tap_demand)]))
        log.info("worker_spawned", worker=slot.index, pid=slot.pid)

    async def _supervise(self, slot: WorkerSlot) -> None:
        backoff = BACKOFF_INITIAL_SECS
        while True:
            code = await slot.proc.wait()
            await self._read_to_end(slot)
            if self._stopping:
                return
            up = time.monotonic() - slot.started_at
            self._tel.inc("worker_exits", code=str(code))
            slot.last_exit = {"code": code, "at": time.time(), "uptime_secs": round(up, 1)}
            if up >= BACKOFF_RESET_AFTER_SECS:
                backoff = BACKOFF_INITIAL_SECS
            log.error("worker_exited", worker=slot.index, pid=slot.pid, code=code, restart_in_secs=backoff)
            self._telemetry.component("workers").error(
                "worker_exited", f"worker {slot.index} (pid {slot.pid}) exited with code {code}")
            try:
                await asyncio.wait_for(self._stop_event.wait(), backoff)
                return  # stopping meanwhile
            except TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX_SECS)
            try:
                await self._spawn(slot)
            except Exception as e:
                log.error("worker_spawn_failed", worker=slot.index, error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(backoff)
                continue
            slot.restarts += 1
            self._tel.inc("worker_restarts")

    async def _read_to_end(self, slot: WorkerSlot) -> None:
        """The worker is gone: apply whatever it wrote before it went (the socket holds it until read)."""
        channel = slot.channel
        if channel is not None and not channel.closed:
            try:
                await asyncio.wait_for(channel.eof.wait(), EOF_TIMEOUT_SECS)
            except TimeoutError:
                log.error("worker_channel_not_closed", worker=slot.index)
                channel.close()
        slot.alive = slot.ready = False
        slot.overloaded = False
        slot.shed_share = 0.0
        for comp in slot.telemetry.components.values():  # a dead worker holds nothing: its gauges read 0
            for name in comp.gauges:
                comp.gauges[name] = _zero

    def _apply(self, slot: WorkerSlot, messages: list) -> None:
        router = self._router
        for message in messages:
            try:
                code = message[0]
                if code == TRACES:
                    router.trace_items(message[2], message[1])
                elif code == CALLS:
                    router.calls([CallOutput(*fields) for fields in message[1]])
                elif code == OTLP:
                    router.otlp_items(message[1], message[2])
                elif code == LOGS:
                    router.log_items(message[1])
                elif code == COUNTERS:
                    slot.telemetry.add_deltas(message[1])
                elif code == METRIC:
                    router.add_metric(*message[1:])
                elif code == POINTS:
                    for point in message[1]:
                        router.add_point(*point)
                elif code == SKETCHES:
                    for name, plain, tags, timestamp in message[1]:
                        router.add_sketch(name, Sketch.from_plain(*plain), tags, timestamp)
                elif code == CUMULATIVE_SUMS:
                    for point in message[1]:
                        router.add_cumulative_sum(*point)
                elif code == CUMULATIVE_HISTOGRAMS:
                    for point in message[1]:
                        router.add_cumulative_histogram(*point)
                elif code == STATE:
                    self._state(slot, message[1])
                elif code == DSD_EVENT:
                    router.dsd_event(message[1])
                elif code == SERVICE_CHECK:
                    router.service_check(message[1])
                elif code == TAP:
                    self._tap.offer(message[1], message[2])
            except Exception as e:  # a bug on one side or the other: count it, keep the rest of the frame
                self._tel.error("handover_error", f"{type(e).__name__}: {e}")
                log.exception("handover_error", worker=slot.index)

    def _state(self, slot: WorkerSlot, state: dict) -> None:
        slot.last_state = time.monotonic()
        slot.ready = bool(state.get("ready"))
        slot.draining = bool(state.get("draining"))
        slot.lag_ms = state.get("lag_ms", 0.0)
        slot.overloaded = bool(state.get("overloaded"))
        slot.shed_share = state.get("shed_share", 0.0)
        for comp_name, values in state.get("gauges", {}).items():
            comp = slot.telemetry.component(comp_name)
            for name, value in values.items():
                comp.gauges[name] = _constant(value)
        for comp_name, info in state.get("info", {}).items():
            slot.telemetry.component(comp_name).info.update(info)

    async def _lanes_loop(self) -> None:
        """Tell every worker which shipping lanes are full (and whether this process runs late), and what a
        tap wants relayed, on change."""
        while True:
            await asyncio.sleep(LANES_CHECK_SECS)
            lanes = [lane for lane in SHIPPING_LANES if self._router.overloaded(lane)]
            if self._parent_overloaded():
                lanes.append("*")
            if lanes != self._lanes:
                self._lanes = lanes
                self._broadcast([(LANES, lanes)])
            demand = self._tap.demand()
            if demand != self._tap_demand:
                self._tap_demand = demand
                self._broadcast([(TAP_DEMAND, *demand)])

    def _broadcast(self, messages: list) -> None:
        data = frame(messages)
        for slot in self.slots:
            if slot.alive and slot.channel is not None:
                slot.channel.send(data)

    def reload(self, cfg: Config, config_text: str) -> None:
        """Run ``cfg`` (validated by the caller) in every worker, and in those started later."""
        if cfg.worker_count != self._cfg.worker_count:
            log.warning("workers_unchanged", reason="a new [agent] workers takes effect on restart",
                        workers=self.count)
        self._cfg = cfg
        self._config_text = config_text
        self._broadcast([(CONFIG, cfg.path, config_text)])

    async def shutdown(self, deadline: float) -> None:
        """Workers stop accepting, finish what is in flight and hand it over; wait for them (until
        ``deadline``, then kill what is left), reading every channel to its end."""
        self._stopping = True
        self._stop_event.set()
        for task in self._tasks[-1:]:
            task.cancel()  # the lanes loop
        self._listeners.close()  # the workers hold their own copies until they are done with them
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(signal.SIGTERM)
        waits = [self._stopped(slot) for slot in self.slots]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.error("workers_drain_deadline_passed")
            self.kill()
            await asyncio.gather(*(self._stopped(slot) for slot in self.slots))
        for task in self._tasks[:-1]:
            task.cancel()

    async def _stopped(self, slot: WorkerSlot) -> None:
        if slot.proc is not None:
            await slot.proc.wait()
        await self._read_to_end(slot)

    def kill(self) -> None:
        """SIGKILL every worker (a second SIGTERM, or a failed start)."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                try:
                    slot.proc.kill()
                except ProcessLookupError:
                    pass

    # ---------------------------------------------------------------------------------------- views

    def ready(self) -> bool:
        return all(slot.alive and slot.ready for slot in self.slots)

    def healthy(self) -> bool:
        """For the systemd watchdog: every worker is up and its event loop reported lately."""
        now = time.monotonic()
        return all(slot.alive and now - slot.last_state < HEARTBEAT_STALE_SECS for slot in self.slots)

    def describe(self) -> list[dict]:
        """A line per worker for /status: pid, requests, items received, last error, restarts."""
        out = []
        for slot in self.slots:
            comps = slot.telemetry.components

            def total(component: str, name: str) -> float:
                comp = comps.get(component)
                return comp.get(name) if comp is not None else 0

            errors = [c.info["last_error"] for c in comps.values() if isinstance(c.info.get("last_error"), dict)]
            out.append({
                "index": slot.index,
                "pid": slot.pid,
                "state": ("draining" if slot.draining else "ready" if slot.ready else "starting") if slot.alive
                         else "down",
                "requests": total("traces", "requests") + total("logs_http", "requests")
                            + total("logs_tcp", "connections") + total("otlp", "requests"),
                "items": total("traces", "received") + total("logs_tcp", "received") + total("logs_http", "received")
                         + total("otlp", "spans_received") + total("otlp", "points_received")
                         + total("otlp", "logs_received"),
                "errors": sum(c.get("errors") for c in comps.values()),
                "last_error": max(errors, key=lambda e: e.get("at", 0)) if errors else None,
                "restarts": slot.restarts,
                "last_exit": slot.last_exit,
                "loop_lag_ms": slot.lag_ms,
                "overloaded": slot.overloaded,
                "shed_share": slot.shed_share,
            })
        return out


def _zero() -> float:
    return 0.0


def _constant(value: float) -> Callable[[], float]:
    return lambda: value

