"""Builds the topology from config and runs it: start, flush loop, reload (SIGHUP), drain (SIGTERM).

Building binds nothing, so `llmship validate` runs exactly this start-up path short of ``start()``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmship import __version__, notify
from llmship import log as logmod
from llmship.aggregation import Aggregator
from llmship.config import Config, ConfigError, is_loopback, load_config, parse_host_port
from llmship.delivery import Delivery
from llmship.delivery.transport import make_transport
from llmship.llm.stage import LLMStage
from llmship.log import get_logger
from llmship.processing import Emitter
from llmship.shipping.router import Router
from llmship.sinks.intakes import ROUTES
from llmship.sinks.llmobs import LLMObsSink
from llmship.sinks.logs import LogsSink
from llmship.sinks.metrics import MetricsSink
from llmship.sinks.traces import TraceSink
from llmship.sources.dogstatsd import DogStatsDSource
from llmship.sources.logs import LogsSource
from llmship.sources.otlp import OTLPSource
from llmship.sources.traces import TraceSource
from llmship.status import StatusServer, describe_config, self_metrics
from llmship.telemetry import Telemetry
from llmship.transforms.logs import LogProcessor
from llmship.transforms.sampling import Sampler
from llmship.transforms.scrub import Scrubber

log = get_logger("agent")

# The flush loop wakes this long after a bucket's end: the event loop's timers run on the monotonic clock
# and may fire up to a clock tick early, and the wall clock may be slewed meanwhile; a wake-up before the
# end would find the bucket still open (harmless: the loop flushes nothing and sleeps until the end).
_FLUSH_AFTER_BUCKET_END_SECS = 0.05


@dataclass
class Topology:
    cfg: Config
    telemetry: Telemetry
    delivery: Delivery
    aggregator: Aggregator
    metrics_sink: MetricsSink
    llm: LLMStage
    log_processor: LogProcessor
    router: Router
    emitter: Emitter
    sinks: list  # batching sinks, flushed on drain
    sources: list
    status: StatusServer


def build(cfg: Config, telemetry: Telemetry | None = None, *, readiness=None, info_provider=None) -> Topology:
    """Construct every component from config without binding a socket or starting a task."""
    telemetry = telemetry or Telemetry()
    if cfg.delivery.spool_dir:
        problem = directory_problem(cfg.delivery.spool_dir)
        if problem:  # found now, not at the first failed delivery (when the spool is what should help)
            raise ConfigError([f"delivery.spool_dir: {problem}"])
    delivery = Delivery(cfg, telemetry, make_transport, spool_routes=ROUTES)
    aggregator = Aggregator(cfg, telemetry)
    metrics_sink = MetricsSink(cfg, delivery.submit, telemetry)
    try:
        scrubber = Scrubber(cfg.scrub.rules, telemetry.component("scrub"))
    except ValueError as e:  # e.g. a rule with no regex that names no default rule
        raise ConfigError([f"scrub.rules: {e}"]) from None
    sampler = Sampler(cfg.llm.sampling)
    llm = LLMStage(cfg, scrubber, telemetry)
    log_processor = LogProcessor(cfg, sampler, scrubber, telemetry)
    trace_sink = TraceSink(cfg, delivery.submit, telemetry)
    llmobs_sink = LLMObsSink(cfg, delivery.submit, telemetry)
    logs_sink = LogsSink(cfg, delivery.submit, telemetry)
    router = Router(telemetry=telemetry, aggregator=aggregator, delivery=delivery, metrics_sink=metrics_sink,
                    trace_sink=trace_sink, llmobs_sink=llmobs_sink, logs_sink=logs_sink)
    emitter = Emitter(telemetry=telemetry, router=router, llm=llm, log_processor=log_processor)
    sources = [DogStatsDSource(cfg, emitter), TraceSource(cfg, emitter), LogsSource(cfg, emitter),
               OTLPSource(cfg, emitter)]
    status = StatusServer(cfg, telemetry, info_provider or (lambda: {}), readiness or (lambda: False))
    return Topology(cfg, telemetry, delivery, aggregator, metrics_sink, llm, log_processor, router, emitter,
                    [trace_sink, llmobs_sink, logs_sink], sources, status)


def directory_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as a directory this process writes in (creating it if need be), or None.

    Checked with os.access for this process's user; a directory that exists must allow writing and
    entering, a missing one needs its nearest existing parent to allow that."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            return f"{path} exists and is not a directory"
        if not os.access(target, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user (uid {os.geteuid()})"
        return None
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable by this user (uid {os.geteuid()})"
    return None


class Agent:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ready = False
        self.topology = build(cfg, readiness=lambda: self.ready, info_provider=self._info)
        self._stop = asyncio.Event()
        self._signals_seen = 0
        self._tasks: list[asyncio.Task] = []
        self._clock = time.time  # bucket times are wall-clock seconds (the aggregator's clock)
        self._sleep = asyncio.sleep

    def _info(self) -> dict:
        return {**describe_config(self.cfg), "destination": self._destination()}

    def _destination(self) -> str:
        if self.cfg.sinks.datadog.url:
            return self.cfg.sinks.datadog.url
        if self.cfg.ships_to_datadog:
            return f"Datadog ({self.cfg.sinks.datadog.site})"
        return f"files in {self.cfg.file_sink_dir}"

    async def run(self) -> int:
        t = self.topology
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        await t.delivery.start()
        for sink in t.sinks:
            await sink.start()
        await t.status.start()
        for source in t.sources:
            await source.start()
        self.ready = True
        self._tasks = [asyncio.create_task(self._flush_loop(), name="flush"),
                       asyncio.create_task(notify.watchdog_loop(), name="watchdog")]
        log.info("agent_started", version=__version__, pid=os.getpid(), destination=self._destination(),
                 config=self.cfg.path or "(embedded default)")
        if not self.cfg.ships_to_datadog:
            # A newcomer with no API key still sees their data: say where it goes.
            print(f"llmship: no API key or [sinks.datadog] url set: writing to {self.cfg.file_sink_dir}/"
                  "<kind>.ndjson", file=sys.stderr, flush=True)
        self._warn_about_exposed_listeners()
        notify.ready()
        await self._stop.wait()
        await self._drain()
        return 0

    def _warn_about_exposed_listeners(self) -> None:
        """Listeners default to loopback; binding elsewhere is allowed (a DaemonSet needs it) but said."""
        c = self.cfg
        for key, address in (("sources.dogstatsd.udp", c.sources.dogstatsd.udp),
                             ("sources.traces.listen", c.sources.traces.listen),
                             ("sources.logs.tcp", c.sources.logs.tcp), ("sources.logs.http", c.sources.logs.http),
                             ("sources.otlp.http", c.sources.otlp.http), ("sources.otlp.grpc", c.sources.otlp.grpc),
                             ("status.listen", c.status.listen)):
            if address and not is_loopback(parse_host_port(address)[0]):
                log.warning("listener_not_on_loopback", key=key, address=address)

    def _on_stop_signal(self, name: str) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            log.warning("second_stop_signal_exiting_now", signal=name)
            os._exit(1)
        log.info("stop_signal_received", signal=name, drain_timeout_secs=self.cfg.delivery.drain_timeout_secs)
        self._stop.set()

    async def _flush_loop(self) -> None:
        """Flush as each bucket closes (the aggregator's own bucket ends, which follow a reload's new
        interval), so a hard kill loses at most the open bucket, not also a closed one waiting for a tick."""
        aggregator = self.topology.aggregator
        while True:
            now = self._clock()
            await self._sleep(max(0.0, aggregator.next_flush_at(now) + _FLUSH_AFTER_BUCKET_END_SECS - now))
            await self._flush_metrics()

    async def _flush_metrics(self, final: bool = False) -> None:
        """Ship this interval's aggregates: in slices that let the loop read sockets meanwhile, or, when
        ``final`` (draining, nothing left to read), all at once."""
        t = self.topology
        try:
            if self.cfg.status.ship_self_metrics:
                for name, mtype, value, tags in self_metrics(t.telemetry):
                    t.aggregator.add(name, mtype, value, tags)
            result = t.aggregator.flush(self._clock(), final=final)
            if final:
                t.metrics_sink.ship(result)
            else:
                await t.metrics_sink.ship_async(result)
                _return_freed_memory()
        except Exception as e:  # never let one bad flush stop the loop
            t.telemetry.component("agent").error("flush_failed", f"{type(e).__name__}: {e}")
            log.exception("flush_failed")

    def _on_reload(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        """Re-read the config; swap in what can change live; keep the old config if the new one is bad."""
        notify.reloading()
        try:
            new = load_config(self.cfg.path or None)
            build(new)  # the same checks as start-up, without binding anything
        except ConfigError as e:
            log.error("reload_rejected_keeping_old_config", problems=e.problems)
            notify.ready()
            return
        except Exception as e:
            log.error("reload_rejected_keeping_old_config", error=f"{type(e).__name__}: {e}")
            notify.ready()
            return
        t = self.topology
        for component in (t.aggregator, t.llm, t.log_processor, t.delivery, t.metrics_sink, *t.sinks, t.status,
                          *t.sources):
            reload = getattr(component, "reload", None)
            if reload is not None:
                reload(new)
        self.cfg = new
        t.cfg = new
        logmod.configure(new.agent.log_level, new.agent.log_format, secrets=[new.sinks.datadog.api_key])
        log.info("config_reloaded", config=new.path)
        notify.ready()

    async def _drain(self) -> None:
        """Stop accepting, flush aggregates and open batches, deliver until the deadline, spool the rest."""
        t = self.topology
        self.ready = False
        notify.stopping()
        deadline = time.monotonic() + self.cfg.delivery.drain_timeout_secs
        log.info("draining", deadline_secs=self.cfg.delivery.drain_timeout_secs)
        for task in self._tasks:
            task.cancel()
        for source in t.sources:
            await source.shutdown(deadline)
        await self._flush_metrics(final=True)
        for sink in t.sinks:
            await sink.shutdown(deadline)
        await t.metrics_sink.shutdown(deadline)
        await t.delivery.shutdown(deadline)
        await t.status.shutdown(deadline)
        log.info("stopped")


try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # glibc only: musl and macOS have no such function
    _malloc_trim = None


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the system after a flush: encoding a flush frees megabytes
    that glibc keeps otherwise (bench/contexts.py: 102 -> 98 MiB after the flush of 100,000 contexts)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def run(config_path: str | None) -> int:
    cfg = load_config(config_path)
    logmod.configure(cfg.agent.log_level, cfg.agent.log_format, secrets=[cfg.sinks.datadog.api_key])

    async def main() -> int:
        return await Agent(cfg).run()

    try:
        import uvloop
    except ImportError:  # uvloop is a dependency, but stay runnable on platforms it does not support
        return asyncio.run(main())
    return uvloop.run(main())
