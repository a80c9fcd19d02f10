"""Builds the topology from config and runs it: start, flush loop, reload (SIGHUP), drain (SIGTERM).

Building binds nothing, so `llmship validate` runs exactly this start-up path short of ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmship import SOURCE_TWIN, __version__, flush, notify
from llmship import log as logmod
from llmship.aggregation import Aggregator, FlushResult
from llmship.aws_lambda import LambdaExtension, api_key_from_environment
from llmship.config import Config, ConfigError, is_loopback, load_config_text, parse_host_port
from llmship.delivery import Delivery, proxy
from llmship.delivery.transport import make_transport, public_url
from llmship.llm.stage import LLMStage
from llmship.listeners import Listeners
from llmship.log import get_logger
from llmship.overload import LoopLag, freeze_startup_objects
from llmship.processing import Emitter
from llmship.shipping.router import Router
from llmship.sinks.intakes import ROUTES
from llmship.sinks.llmobs import LLMObsSink
from llmship.sinks.logs import LogsSink
from llmship.sinks.metrics import MetricsSink
from llmship.sinks.otlp import OTLPSink
from llmship.sinks.traces import TraceSink
from llmship.sources.dogstatsd import DogStatsDSource
from llmship.sources.logs import LogsSource
from llmship.sources.traces import TraceSource
from llmship.status import StatusServer, describe_config, self_metrics
from llmship.tap import Tap
from llmship.telemetry import Telemetry
from llmship.transforms.logs import LogProcessor
from llmship.transforms.privacy import MetricScrubber
from llmship.transforms.sampling import Sampler
from llmship.transforms.scrub import Scrubber

log = get_logger("agent")

# The flush loop wakes this long after a bucket's end: the event loop's timers run on the monotonic clock
# and may fire up to a clock tick early, and the wall clock may be slewed meanwhile; a wake-up before the
# end would find the bucket still open (harmless: the loop flushes nothing and sleeps until the end).
_FLUSH_AFTER_BUCKET_END_SECS = 0.05
# A flush on demand first parses the datagrams the kernel holds, in one go: bounded in time, because under a
# steady stream that read would never run dry, and the loop must not be held (later ones are read as usual).
_READ_WAITING_SECS = 0.1


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
    otlp_sink: OTLPSink | None = None
    tap: Tap | None = None  # `llmship tap`: what the sinks (the workers' too) are about to send

    def reloadable(self) -> list:
        """Every component holding config, in the order a reload reaches them (SIGHUP reaches all of them:
        a component without ``reload`` fails here, not silently keeps its start-up config)."""
        return [self.aggregator, self.llm, self.log_processor, self.delivery, self.metrics_sink, *self.sinks,
                self.status, *self.sources]


@dataclass
class Processing:
    """The processing plane: what a worker process builds (and, with one process, part of Topology)."""

    llm: LLMStage
    log_processor: LogProcessor
    emitter: Emitter
    scrubber: Scrubber
    sinks: list  # for their per-item encoders (and, in one process, their packers)
    sources: list  # the trace, logs and OTLP listeners


def build_processing(cfg: Config, telemetry: Telemetry, router, *, submit=None, shed=None,
                     sockets=None) -> Processing:
    """The processing plane around ``router`` (the Router, or a worker's RemoteRouter); ``submit`` is
    delivery's (None in a worker, whose sinks only encode); ``sockets``: inherited listeners."""
    try:
        scrubber = Scrubber(cfg.scrub.rules, telemetry.component("scrub"), hash_key=cfg.scrub.hash_key,
                            fields=cfg.scrub.fields, count_builds=True)
    except ValueError as e:  # e.g. a rule with no regex that names no default rule
        raise ConfigError([f"scrub.rules: {e}"]) from None
    sampler = Sampler(cfg.llm.sampling)
    llm = LLMStage(cfg, scrubber, telemetry)
    log_processor = LogProcessor(cfg, sampler, scrubber, telemetry)
    submit = submit or _worker_sinks_do_not_submit
    trace_sink = TraceSink(cfg, submit, telemetry)
    llmobs_sink = LLMObsSink(cfg, submit, telemetry)
    logs_sink = LogsSink(cfg, submit, telemetry)
    otlp_sink = OTLPSink(cfg, submit, telemetry)
    emitter = Emitter(telemetry=telemetry, router=router, llm=llm, log_processor=log_processor,
                      trace_sink=trace_sink, llmobs_sink=llmobs_sink, logs_sink=logs_sink, otlp_sink=otlp_sink,
                      scrubber=scrubber, shed=shed)
    sources = [TraceSource(cfg, emitter, sockets=sockets), LogsSource(cfg, emitter, sockets=sockets)]
    if cfg.sources.otlp.http or cfg.sources.otlp.grpc:
        # Imported only when configured: protobuf and the opentelemetry-proto classes cost an agent about
        # 3 MiB (bench/contexts.py). A listener added later needs a restart anyway.
        from llmship.sources.otlp import OTLPSource

        sources.append(OTLPSource(cfg, emitter, sockets=sockets))
    else:
        telemetry.component("otlp")  # listed by `llmship status` all the same, as the other sources are
    return Processing(llm, log_processor, emitter, scrubber, [trace_sink, llmobs_sink, logs_sink, otlp_sink],
                      sources)


def _worker_sinks_do_not_submit(payload) -> None:
    raise AssertionError("a worker's sinks encode items; packing and delivery are the shipping plane's")


def build(cfg: Config, telemetry: Telemetry | None = None, *, readiness=None, info_provider=None,
          shed=None) -> Topology:
    """Construct every component from config without binding a socket or starting a task. With
    ``[agent] workers`` > 1 the trace, logs and OTLP listeners are the workers' (llmship.workers), not here."""
    telemetry = telemetry or Telemetry()
    if cfg.delivery.spool_dir:
        problem = directory_problem(cfg.delivery.spool_dir)
        if problem:  # found now, not at the first failed delivery (when the spool is what should help)
            raise ConfigError([f"delivery.spool_dir: {problem}"])
    delivery = Delivery(cfg, telemetry, make_transport, spool_routes=ROUTES)
    aggregator = Aggregator(cfg, telemetry)
    metrics_sink = MetricsSink(cfg, delivery.submit, telemetry)
    router = Router(telemetry=telemetry, aggregator=aggregator, delivery=delivery, metrics_sink=metrics_sink,
                    trace_sink=None, llmobs_sink=None, logs_sink=None)
    p = build_processing(cfg, telemetry, router, submit=delivery.submit, shed=shed)
    router.attach_sinks(*p.sinks)
    # Metric tags, events and service checks are made in the shipping plane: scrubbed there
    metric_scrubber = MetricScrubber(p.scrubber)
    aggregator.scrub_tags = metric_scrubber.tags
    metrics_sink.privacy = metric_scrubber
    sources = [DogStatsDSource(cfg, p.emitter)]
    if cfg.worker_count == 1:
        sources += p.sources
    tap = Tap(telemetry)  # `llmship tap`: the sinks offer what they are about to send
    for sink in (metrics_sink, *p.sinks):
        sink.tap = tap
    status = StatusServer(cfg, telemetry, info_provider or (lambda: {}), readiness or (lambda: False), tap=tap)
    return Topology(cfg, telemetry, delivery, aggregator, metrics_sink, p.llm, p.log_processor, router, p.emitter,
                    p.sinks, sources, status, otlp_sink=p.sinks[-1], tap=tap)


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


def read_config(path: str | None) -> tuple[Config, str]:
    """The config and the text it came from ("" for the embedded default): workers get the text, so every
    process runs exactly what the parent validated, even if the file changes meanwhile."""
    if path is None:
        return load_config_text(""), ""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError([f"config: cannot read {path}: {e.strerror}"]) from None
    return load_config_text(text, path=str(path)), text


class Agent:
    def __init__(self, cfg: Config, config_text: str = "", lambda_runtime_api: str = "") -> None:
        """``lambda_runtime_api`` (host:port, AWS_LAMBDA_RUNTIME_API) runs the agent as a Lambda extension."""
        self.cfg = cfg
        self._config_text = config_text
        self.ready = False
        self.lag = LoopLag(cfg.agent.overload_lag_ms)
        self._frozen_objects = 0  # set once startup objects are frozen (freeze_startup_objects)
        self.pool = None  # workers.WorkerPool with [agent] workers > 1
        self._listeners: Listeners | None = None
        self.topology = build(cfg, readiness=self._ready, info_provider=self._info, shed=self.lag.overloaded)
        self.topology.telemetry.component("agent").gauge("loop_lag_ms", lambda: round(self.lag.lag * 1000, 1))
        self.topology.telemetry.component("agent").gauge("gc_frozen_objects", lambda: self._frozen_objects)
        # compiled modules whose build did not load: their source runs (slower, same results)
        self.topology.telemetry.component("agent").gauge("compiled_modules_from_source",
                                                         lambda: len(SOURCE_TWIN.fallbacks))
        flush.add_routes(self.topology.status.app, self.flush, lambda: self.cfg.delivery.drain_timeout_secs)
        self._lambda = (LambdaExtension(lambda_runtime_api, cfg.aws_lambda, self.flush, self._stop_by)
                        if lambda_runtime_api else None)
        self._stop = asyncio.Event()
        self._drain_deadline: float | None = None  # set by a Lambda SHUTDOWN: its deadline, not ours
        self._exit_code = 0
        self._signals_seen = 0
        self._tasks: list[asyncio.Task] = []
        self._clock = time.time  # bucket times are wall-clock seconds (the aggregator's clock)
        self._sleep = asyncio.sleep

    def _ready(self) -> bool:
        return self.ready and (self.pool is None or self.pool.ready())

    def _healthy(self) -> bool:
        return self.pool is None or self.pool.healthy()

    def _info(self) -> dict:
        info = {**describe_config(self.cfg), "destination": self._destination()}
        if self.pool is not None:
            info["workers"] = self.pool.describe()
        return info

    def _destination(self) -> str:
        destinations = []
        if self.cfg.sinks.datadog.url:
            destinations.append(self.cfg.sinks.datadog.url)
        elif self.cfg.ships_to_datadog:
            destinations.append(f"Datadog ({self.cfg.sinks.datadog.site})")
        elif not self.cfg.ships_to_otlp:
            destinations.append(f"files in {self.cfg.file_sink_dir}")
        if self.cfg.ships_to_otlp:
            destinations.append(f"OTLP ({public_url(self.cfg.sinks.otlp.endpoint)})")
        return " and ".join(destinations)

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
        self.lag.start()
        if self.cfg.worker_count > 1:
            await self._start_workers()
        self.ready = True
        self._tasks = [asyncio.create_task(self._flush_loop(), name="flush"),
                       asyncio.create_task(notify.watchdog_loop(self._healthy), name="watchdog")]
        if self._lambda is not None:
            extension = asyncio.create_task(self._lambda.run(), name="lambda")
            extension.add_done_callback(self._on_extension_done)
            self._tasks.append(extension)
        log.info("agent_started", version=__version__, pid=os.getpid(), destination=self._destination(),
                 config=self.cfg.path or "(embedded default)", workers=self.cfg.worker_count)
        if not self.cfg.ships_to_datadog and not self.cfg.ships_to_otlp:
            # A newcomer with no API key still sees their data: say where it goes.
            print(f"llmship: no API key or [sinks.datadog] url set: writing to {self.cfg.file_sink_dir}/"
                  "<kind>.ndjson", file=sys.stderr, flush=True)
        self._warn_about_exposed_listeners()
        if SOURCE_TWIN.fallbacks:
            log.warning("compiled_modules_from_source", modules=sorted(SOURCE_TWIN.fallbacks),
                        reason=next(iter(SOURCE_TWIN.fallbacks.values()))[:300])
        self._frozen_objects = freeze_startup_objects()
        _return_freed_memory()  # compiling the scrub rules' Hyperscan database leaves ~7 MiB of free heap
        notify.ready()
        await self._stop.wait()
        await self._drain()
        return self._exit_code

    async def _start_workers(self) -> None:
        from llmship.workers import WorkerPool

        t = self.topology
        self._listeners = Listeners(self.cfg)
        self.pool = WorkerPool(self.cfg.worker_count, self.cfg, self._config_text, t.router, self._listeners,
                               t.telemetry, self.lag.overloaded, tap=t.tap)
        try:
            await self.pool.start()
        except BaseException:
            self._listeners.close()
            raise
        for key, socks in self._listeners.sockets.items():
            for sock in socks:
                log.info("listener_bound", key=key, address=str(sock.getsockname()), workers=self.cfg.worker_count)

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
            if self.pool is not None:
                self.pool.kill()
            os._exit(1)
        log.info("stop_signal_received", signal=name, drain_timeout_secs=self.cfg.delivery.drain_timeout_secs)
        self._stop.set()

    def _stop_by(self, deadline: float) -> None:
        """Drain and exit, delivering until ``deadline`` (time.monotonic()): a Lambda SHUTDOWN."""
        self._drain_deadline = deadline
        self._stop.set()

    def _on_extension_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # reported to Lambda already
            self._exit_code = 1
            self._stop.set()

    async def flush(self, timeout_secs: float) -> dict:
        """Close the open metric buckets, flush every batch, and wait until everything accepted so far is
        delivered, spooled or dropped, or ``timeout_secs`` pass (llmship.flush says what the answer holds).
        POST /flush, and the end of each Lambda invocation."""
        t = self.topology
        started = time.monotonic()
        if self._stop.is_set():
            return {"status": "draining"}  # the drain does all of this already, with its own deadline
        deadline = started + timeout_secs
        before = t.delivery.totals()
        for source in t.sources:
            read_waiting = getattr(source, "read_waiting", None)
            if read_waiting is not None:  # datagrams sent before the request, not read yet
                read_waiting(min(deadline, time.monotonic() + _READ_WAITING_SECS))
        await self._flush_metrics(open_buckets=True)
        for sink in t.sinks:
            sink.flush()
        # Every payload made so far was created by now; what arrives later is not this flush's to wait for.
        payloads, events = await t.delivery.settle(time.time(), deadline)
        after = t.delivery.totals()
        counts = {key: after[key] - before[key] for key in after}
        status = "timeout" if payloads else "spooled" if counts["spooled"] else "delivered"
        return {"status": status, **counts, "pending": events, "pending_payloads": payloads,
                "secs": round(time.monotonic() - started, 3)}

    async def _flush_loop(self) -> None:
        """Flush as each bucket closes (the aggregator's own bucket ends, which follow a reload's new
        interval), so a hard kill loses at most the open bucket, not also a closed one waiting for a tick."""
        aggregator = self.topology.aggregator
        while True:
            now = self._clock()
            await self._sleep(max(0.0, aggregator.next_flush_at(now) + _FLUSH_AFTER_BUCKET_END_SECS - now))
            await self._flush_metrics()
            await self._return_memory_once_delivered()

    async def _return_memory_once_delivered(self) -> None:
        """Delivering a flush frees about as much as encoding it did (the bodies sent, what the file sink
        inflated in its thread): once what the flush made has left memory, or when the next flush is due,
        that goes back to the system too (bench/contexts.py measures RSS at that moment)."""
        now = self._clock()
        await self.topology.delivery.settle(now, time.monotonic() + self.topology.aggregator.next_flush_at(now) - now)
        _return_freed_memory()

    async def _flush_metrics(self, final: bool = False, open_buckets: bool = False) -> None:
        """Ship this interval's aggregates: in slices that let the loop read sockets meanwhile, or, when
        ``final`` (draining, nothing left to read), all at once. ``final`` and ``open_buckets`` (a flush on
        demand) ship the open bucket too."""
        t = self.topology
        try:
            if self.cfg.status.ship_self_metrics:
                for name, mtype, value, tags in self_metrics(t.telemetry):
                    t.aggregator.add(name, mtype, value, tags)
            result = t.aggregator.flush(self._clock(), final=final or open_buckets)
            otlp = t.otlp_sink
            if otlp is not None and otlp.enabled:
                if not otlp.datadog:  # OTLP only: the flush is the OTLP sink's alone
                    for i, item in enumerate(result.drain(), 1):
                        otlp.add_metric(item)
                        if not final and i % 256 == 0:
                            await asyncio.sleep(0)
                    otlp.end_metrics()
                    return
                # Both: each series and sketch goes to the OTLP sink as the Datadog sink encodes it
                result = FlushResult(pending=otlp.tee(result.drain()))
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
            new, text = read_config(self.cfg.path or None)
            build(new)  # the same checks as start-up, without binding anything
        except ConfigError as e:
            log.error("reload_rejected_keeping_old_config", problems=e.problems)
            notify.ready()
            return
        except Exception as e:
            log.error("reload_rejected_keeping_old_config", error=f"{type(e).__name__}: {e}")
            notify.ready()
            return
        for component in self.topology.reloadable():
            component.reload(new)
        self.lag.reload(new.agent.overload_lag_ms)
        if self.pool is not None:
            self.pool.reload(new, text)  # validated once, here; every worker runs this same text
        self.cfg = new
        self._config_text = text
        self.topology.cfg = new
        logmod.configure(new.agent.log_level, new.agent.log_format, secrets=log_secrets(new))
        log.info("config_reloaded", config=new.path)
        _return_freed_memory()  # the validation build and the new scrub database left freed heap
        notify.ready()

    async def _drain(self) -> None:
        """Stop accepting, flush aggregates and open batches, deliver until the deadline, spool the rest."""
        t = self.topology
        self.ready = False
        notify.stopping()
        deadline = self._drain_deadline or time.monotonic() + self.cfg.delivery.drain_timeout_secs
        log.info("draining", deadline_secs=round(deadline - time.monotonic(), 3))
        for task in self._tasks:
            task.cancel()
        if self.pool is not None:
            # Workers stop accepting, finish their requests and hand over what they hold, before the
            # shipping plane flushes: what they accepted is in the aggregator and the packers by then.
            await self.pool.shutdown(deadline)
        for source in t.sources:
            await source.shutdown(deadline)
        self.lag.stop()
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
    """Give the C heap's free pages back to the system after a flush, at start and after a reload: encoding
    a flush frees megabytes that glibc keeps otherwise (bench/contexts.py: 102 -> 98 MiB after the flush of
    100,000 contexts), and so does compiling the scrub rules' Hyperscan database (7 of its 11 MiB)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def log_secrets(cfg: Config) -> list[str]:
    """What no log line may show: the API key and proxy credentials (nothing logs them; this catches a
    library that would)."""
    return [cfg.sinks.datadog.api_key, *proxy.secrets(cfg.sinks.datadog.proxy),
            *(v for v in cfg.sinks.otlp.headers.values() if v)]


LAMBDA_DEFAULTS = Path(__file__).parent / "data" / "lambda.toml"


def run(config_path: str | None, lambda_mode: bool = False) -> int:
    """``lambda_mode``: run as an AWS Lambda extension, on data/lambda.toml unless a config is given."""
    runtime_api = ""
    if lambda_mode:
        runtime_api = os.environ.get("AWS_LAMBDA_RUNTIME_API", "")
        if not runtime_api:
            raise ConfigError(["--lambda: AWS_LAMBDA_RUNTIME_API is not set (Lambda sets it in the sandbox)"])
        env = dict(os.environ)
        env["DD_API_KEY"] = api_key_from_environment(env)
        path = config_path or str(LAMBDA_DEFAULTS)
        text = Path(path).read_text()
        cfg = load_config_text(text, env=env, path=config_path or "")  # "": the embedded Lambda default
    else:
        cfg, text = read_config(config_path)
    logmod.configure(cfg.agent.log_level, cfg.agent.log_format, secrets=log_secrets(cfg))

    async def main() -> int:
        return await Agent(cfg, text, lambda_runtime_api=runtime_api).run()

    with _shared_scrub_databases(cfg.worker_count > 1):
        try:
            import uvloop
        except ImportError:  # uvloop is a dependency, but stay runnable on platforms it does not support
            return asyncio.run(main())
        return uvloop.run(main())


_SCRUB_DIR_PREFIX = "llmship-scrub-"


def _remove_orphaned_scrub_dirs() -> None:
    """Remove this user's scrub-database directories whose agent is gone (``llmship-scrub-<pid>-*``)."""
    root = tempfile.gettempdir()
    try:
        names = [name for name in os.listdir(root) if name.startswith(_SCRUB_DIR_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_SCRUB_DIR_PREFIX):].split("-", 1)[0]
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if pid.isdigit() and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            log.info("scrub_database_cache_removed", path=path, reason="its agent is gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _shared_scrub_databases(workers: bool):
    """With workers: a private directory (0700) where the scrub rules' Hyperscan databases this process
    compiles are left for its workers to load (transforms/hs_compile.py), named in the environment they
    inherit before anything is built; removed at exit. Without one (no writable temporary directory), each
    worker compiles its own, as with no workers. Its name holds this process's id: the directories of
    agents that could not remove theirs (killed with SIGKILL) are removed when the next one starts."""
    try:
        from llmship.transforms.hs_compile import CACHE_ENV
    except ImportError:  # no Hyperscan here: the scrubber's Python twin compiles nothing
        workers = False
    if not workers or os.environ.get(CACHE_ENV):
        yield
        return
    _remove_orphaned_scrub_dirs()
    try:
        directory = tempfile.mkdtemp(prefix=f"{_SCRUB_DIR_PREFIX}{os.getpid()}-")
    except OSError as e:
        log.warning("scrub_database_cache_unavailable", error=f"{type(e).__name__}: {e}",
                    hint="each worker compiles the scrub rules itself")
        yield
        return
    os.environ[CACHE_ENV] = directory
    try:
        yield
    finally:
        del os.environ[CACHE_ENV]
        shutil.rmtree(directory, ignore_errors=True)
