"""What the bench scripts share: cores, ports, CPU time and memory of a process, waiting on a condition,
the agent and intake processes, the names read from the agent's GET /status, goals and their verdicts."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import multiprocessing as mp
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import orjson

import mixes  # bench/mixes.py

SRC = Path(__file__).resolve().parent.parent / "src"
FAKE_API_KEY = "0123456789abcdef0123456789abcdef"  # not a real key: the intakes here only check one is present

# The cores this run may use, read before anything is pinned (pinned children inherit a single core).
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pin(pid: int, cpu: int) -> None:
    """Pin ``pid`` (0: this process) to the ``cpu``-th usable core, when there are two or more."""
    if len(CPUS) >= 2:
        os.sched_setaffinity(pid, {CPUS[cpu % len(CPUS)]})


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_secs(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (finished ones included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_kib(pid: int | str, field: str) -> int:
    """A field of /proc/<pid>/status in KiB: VmRSS (resident now), VmHWM (peak resident)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    return 0


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true (returned), with a deadline. A process not up
    yet (connection refused, no database file) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, sqlite3.Error):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def in_process_topology():
    """The agent's components built in this process (``agent.build``, the default config), for a bench's
    in-process stages: nothing listens, and the Datadog destination is never contacted."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from llmship.agent import build
    from llmship.config import load_config_text

    return build(load_config_text('[sinks.datadog]\napi_key = "x"\nurl = "http://127.0.0.1:9"\n'))


def clean_env() -> dict[str, str]:
    """This environment without DD_* and LLMSHIP_* (they would change the agent's config), with src/ on
    PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "LLMSHIP_"))}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------- GET /status
# Every name the benches read from the agent's GET /status, in one place: when the agent renames a
# component or counter, change it here. A document is flattened by ``flatten`` into
# {(component, name): value}, counters summed over labels, gauges as "gauge:<name>", numeric infos as
# "info:<name>", discards by reason as "discarded:<reason>"; ``stat`` reads one of the names below from it.

STATUS = {
    "trace_spans": ("traces", "spans"),  # v0.4/v0.5 spans the trace source took
    "trace_events": ("traces", "llmobs_events"),  # LLM Obs events: _llmobs of v0.4 spans and EVP events
    "llm_calls": ("llm", "llm_calls"),
    "dsd_lines": ("dogstatsd", "received"),
    "dsd_bad_lines": ("dogstatsd", "discarded"),
    "dsd_last_received_at": ("dogstatsd", "info:last_received_at"),
    "dsd_kernel_drops": ("dogstatsd", "gauge:kernel_drops"),
    "dsd_udp_buffer_bytes": ("dogstatsd", "info:udp_receive_buffer_bytes"),
    "dsd_unix_qlen": ("dogstatsd", "info:unix_max_dgram_qlen"),
    "contexts": ("aggregator", "gauge:contexts"),
    "series_encoded": ("metrics_sink", "series_encoded"),
    "sketches_encoded": ("metrics_sink", "sketches_encoded"),
}
# Delivery, per payload kind: (sink component with received and discarded, delivery lane component with
# sent, requests_sent and gauges queue_items, inflight_payloads).
DELIVERY = {
    "traces": ("traces_sink", "delivery.traces"),
    "llmobs": ("llmobs_sink", "delivery.llmobs"),
    "logs": ("logs_sink", "delivery.logs"),
    "series": ("metrics_sink", "delivery.series"),
    "sketches": ("metrics_sink", "delivery.sketches"),
}


def flatten(status: dict) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for comp_name, comp in status["components"].items():
        for c in comp.get("counters", ()):
            key = (comp_name, c["name"])
            out[key] = out.get(key, 0) + c["value"]
            if c["name"] == "discarded":
                reason = (comp_name, "discarded:" + c["labels"].get("reason", ""))
                out[reason] = out.get(reason, 0) + c["value"]
        for gauge, value in comp.get("gauges", {}).items():
            out[(comp_name, "gauge:" + gauge)] = value or 0
        for info, value in comp.get("info", {}).items():
            if isinstance(value, (int, float)):
                out[(comp_name, "info:" + info)] = value
    return out


def stat(c: dict[tuple[str, str], float], name: str) -> float:
    return c.get(STATUS[name], 0)


def sent(c: dict[tuple[str, str], float], kind: str, what: str = "sent") -> float:
    """What delivery sent of payload ``kind``: sent (events) or requests_sent."""
    return c.get((DELIVERY[kind][1], what), 0)


def caught_up(c: dict[tuple[str, str], float], kinds=("traces", "llmobs")) -> bool:
    """Every event the sinks of ``kinds`` took was sent, and nothing is queued or in flight."""
    for kind in kinds:
        sink, lane = DELIVERY[kind]
        taken = c.get((sink, "received"), 0) - c.get((sink, "discarded"), 0)
        if c.get((lane, "sent"), 0) < taken:
            return False
        if c.get((lane, "gauge:queue_items"), 0) or c.get((lane, "gauge:inflight_payloads"), 0):
            return False
    return True


def drops(c: dict[tuple[str, str], float]) -> dict[str, float]:
    return {k[1][10:] + "@" + k[0]: v for k, v in c.items() if k[1].startswith("discarded:") and v}


# ---------------------------------------------------------------------------------------------- processes

SOURCES_OFF = {"dogstatsd": {"udp": ""}, "traces": {"listen": ""}, "logs": {"tcp": "", "http": ""}}


def datadog_sink(url: str, compression: str | None = None) -> dict[str, dict]:
    return {"sinks.datadog": {"url": url, "api_key": FAKE_API_KEY} | ({"compression": compression} if compression
                                                                        else {})}


def file_sink(directory: Path) -> dict[str, dict]:
    return {"sinks.file": {"dir": str(directory)}}


def _toml(sections: dict[str, dict]) -> str:
    def value(v) -> str:
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in values.items()) + "\n"
                   for name, values in sections.items())


class Agent:
    """`llmship run` with the bench's config: the default one, but the listeners in ``sources``
    ({"traces": {"listen": ...}}; every other source is off), ``sink`` (datadog_sink or file_sink), a
    status listener, and ``agent`` keys for [agent]; pinned to the ``cpu``-th core from its first
    instruction (None: not pinned; its workers, with [agent] workers > 1, are never pinned by the bench).
    ``profile``: run it under cProfile, stats to that path."""

    def __init__(self, workdir: Path, sources: dict[str, dict], sink: dict[str, dict], cpu: int | None = 0,
                 agent: dict | None = None, profile: str | None = None) -> None:
        self.status_port = free_port()
        self.status_url = f"http://127.0.0.1:{self.status_port}"
        sections = {"agent": {"hostname": "bench-host", "data_dir": str(workdir / "data"), "log_level": "warning",
                              "log_format": "json"} | (agent or {})}
        for name, off in SOURCES_OFF.items():
            sections[f"sources.{name}"] = off | sources.get(name, {})
        sections |= sink
        sections["status"] = {"listen": f"127.0.0.1:{self.status_port}"}
        self.config = workdir / "llmship.toml"
        self.config.write_text(_toml(sections))
        self.log_path = workdir / "agent.log"
        self.log = open(self.log_path, "wb")
        command = [sys.executable, "-m", "llmship", "run", "--config", str(self.config)]
        if profile:
            command[1:1] = ["-m", "cProfile", "-o", profile]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=clean_env(),
                                     preexec_fn=None if cpu is None else lambda: pin(0, cpu))
        wait_until(lambda: self.proc.poll() is not None or http_get(self.status_url + "/ready", 1)[0] == 200,
                   30, "the agent to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError("llmship run exited: " + self.log_path.read_text())
        self.worker_pids = [w["pid"] for w in self.status().get("workers", ())]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict:
        code, body = http_get(self.status_url + "/status")
        if code != 200:
            raise RuntimeError(f"GET /status answered {code}")
        return json.loads(body)

    def counters(self) -> dict[tuple[str, str], float]:
        return flatten(self.status())

    def cpu(self) -> float:
        """CPU seconds of the agent and its worker processes."""
        return sum(process_cpu_secs(pid) for pid in (self.proc.pid, *self.worker_pids))

    def kib(self, field: str = "VmRSS") -> int:
        return proc_kib(self.proc.pid, field)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        if self.proc.returncode not in (0, None, -15):
            print(f"agent exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")


class LlmshipIntake:
    """`llmship intake` on the ``cpu``-th core, storing what it receives in ``workdir``/intake.sqlite."""

    def __init__(self, workdir: Path, cpu: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = workdir / "intake.sqlite"
        log_path = workdir / "intake.log"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmship", "intake", "--listen", f"127.0.0.1:{self.port}", "--db", str(self.db),
             "--latency-ms", "0"], stdout=self.log, stderr=subprocess.STDOUT, env=clean_env(),
            preexec_fn=lambda: pin(0, cpu))
        wait_until(lambda: self.proc.poll() is not None or b"listening on" in log_path.read_bytes(), 20,
                   "llmship intake to listen")
        if self.proc.poll() is not None:
            raise RuntimeError("llmship intake exited: " + log_path.read_text())

    def count(self, kind: str) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.log.close()


def _null_intake_main(port: int, cpu: int, ready) -> None:
    """Reads every body and answers 202 ``{}``, as the intakes do; decodes nothing, stores nothing."""
    from aiohttp import web

    pin(0, cpu)

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=b"{}", content_type="application/json")

    async def main() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{path:.*}", accept)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


class NullIntake:
    """An HTTP intake that reads each body and answers 202, on the ``cpu``-th core: the bench measures the
    agent, not a sink's decoding or disk."""

    def __init__(self, cpu: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ready = ctx.Event()
        self.proc = ctx.Process(target=_null_intake_main, args=(self.port, cpu, ready), daemon=True)
        self.proc.start()
        if not ready.wait(20):
            raise RuntimeError("the null intake did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# ---------------------------------------------------------------------------------------------- HTTP load
# The trace load bench/traces.py and bench/workers.py send: v0.4 payloads of a mix (bench/mixes.py) with fresh
# ids per request, EVP batches, keep-alive connections, closed and open loops, and a phase measured from the
# agent's counters and CPU.

EVP_CAPTURE = mixes.CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json"

CATCH_UP_SECS = 60  # delivery must have sent everything this long after the load stopped
STATUS_POLL_SECS = 0.2  # /status costs the agent a snapshot: not too often
# Open loop: stop offering once this many seconds of load wait for a connection (the agent is far behind).
MAX_BACKLOG_SECS = 2.0
# Open loop: enough connections that a request never waits for one while the agent keeps up.
OPEN_LOOP_CONNECTIONS = 32

# Id patching: every id in a template body is a sentinel (1<<63) | SENTINEL_TAG<<32 | k (msgpack writes an
# integer with the top bit set as 0xcf + 8 bytes, whatever its value); a request's ids are
# (1<<63) | seq<<16 | k: unique per (request, k), fixed width, so patching never moves a byte.
SENTINEL_TAG = 0x5EED
_UINT64 = struct.Struct(">Q")
_TOP_BIT = 1 << 63
MAX_IDS_PER_REQUEST = 1 << 16


def _sentinel(k: int) -> int:
    return _TOP_BIT | SENTINEL_TAG << 32 | k


# ---------------------------------------------------------------------------------------------- workload


@dataclass
class Request:
    kind: str  # "traces" | "evp"
    head: bytes
    body: bytes
    spans: int  # spans (v0.4) or events (EVP) it carries
    llmobs: int  # v0.4 spans with an _llmobs event (the agent counts them as events_received)


class TracePayloads:
    """v0.4 bodies of ``traces`` (bench/mixes.py), with fresh ids per request."""

    def __init__(self, traces: list[list[dict]], port: int) -> None:
        k = 0
        self.spans = self.llmobs = 0
        for trace in traces:
            ids = {}
            trace_id = _sentinel(k)
            k += 1
            for span in trace:
                ids[span["span_id"]] = _sentinel(k)
                k += 1
            for span in trace:
                span["trace_id"] = trace_id
                span["span_id"] = ids[span["span_id"]]
                if span.get("parent_id") in ids:
                    span["parent_id"] = ids[span["parent_id"]]
                self.spans += 1
                self.llmobs += "_llmobs" in (span.get("meta_struct") or {})
        if k > MAX_IDS_PER_REQUEST:
            raise ValueError(f"at most {MAX_IDS_PER_REQUEST} ids per payload")
        self.template = msgpack.packb(traces, use_bin_type=True)
        # Each id is a fresh 48-bit prefix (_TOP_BIT | seq) over the sentinel's low 16 bits, k: the body is
        # the template's pieces between the ids' first 6 bytes, joined by the request's prefix (one join: the
        # load generator's CPU a request is mostly this, and it shares the agent's cores).
        offsets = []
        for j in range(k):
            needle = b"\xcf" + _UINT64.pack(_sentinel(j))
            at = self.template.find(needle)
            while at >= 0:
                offsets.append(at + 1)
                at = self.template.find(needle, at + 1)
        offsets.sort()
        self._pieces = [self.template[start:end] for start, end in zip([0, *(o + 6 for o in offsets)], [*offsets, None])]
        self.head = (f"PUT /v0.4/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/msgpack\r\n"
                     f"Content-Length: {len(self.template)}\r\nDatadog-Meta-Lang: python\r\n"
                     "Datadog-Meta-Lang-Version: 3.11.7\r\nDatadog-Meta-Lang-Interpreter: CPython\r\n"
                     "Datadog-Meta-Tracer-Version: 4.16.0\r\nDatadog-Client-Computed-Top-Level: true\r\n"
                     f"Datadog-Send-Real-Http-Status: 1\r\nX-Datadog-Trace-Count: {len(traces)}\r\n\r\n").encode()

    def body(self, seq: int) -> bytes:
        return _UINT64.pack(_TOP_BIT | seq << 16)[:6].join(self._pieces)

    def request(self, seq: int) -> Request:
        return Request("traces", self.head, self.body(seq), self.spans, self.llmobs)


class EvpBatches:
    """EVP LLM Observability bodies of ``events`` envelopes cycled from the capture, with fresh ids."""

    def __init__(self, events: int, port: int) -> None:
        envelopes = json.loads(EVP_CAPTURE.read_text())["body"]
        self.envelopes = [copy.deepcopy(envelopes[i % len(envelopes)]) for i in range(events)]
        self.events = sum(len(e["spans"]) for e in self.envelopes)
        self.port = port

    def request(self, seq: int) -> Request:
        base = _TOP_BIT | seq << 16
        k = 0
        for envelope in self.envelopes:
            for event in envelope["spans"]:
                trace_id = f"6b03dfbb00000000{base | k:016x}"
                span_id = str(base | k + 1)
                k += 2
                event["span_id"] = event["_dd"]["span_id"] = span_id
                event["trace_id"] = event["_dd"]["trace_id"] = event["_dd"]["apm_trace_id"] = trace_id
        body = orjson.dumps(self.envelopes)
        head = (f"POST /evp_proxy/v2/api/v2/llmobs HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Content-Type: application/json\r\nX-Datadog-EVP-Subdomain: llmobs-intake\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        return Request("evp", head, body, self.events, 0)



class Workload:
    """Requests of one mix: an EVP batch whenever EVP events fall below ``evp_share`` of all spans."""

    def __init__(self, mix: str, traces_per_payload: int, events_per_batch: int, evp_share: float,
                 port: int) -> None:
        self.traces = TracePayloads(mixes.traces(mix, traces_per_payload), port)
        self.evp = EvpBatches(events_per_batch, port)
        self.evp_share = evp_share
        self.seq = 0
        self.apm_spans = self.evp_events = 0

    def next(self) -> Request:
        self.seq += 1
        total = self.apm_spans + self.evp_events
        if self.evp_share > 0 and self.evp_events < self.evp_share * (total + self.evp.events):
            self.evp_events += self.evp.events
            return self.evp.request(self.seq)
        self.apm_spans += self.traces.spans
        return self.traces.request(self.seq)



class Connection:
    """One keep-alive HTTP/1.1 connection sending pre-built requests (tracers keep theirs open too)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: Request) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request.head)
        self.writer.write(request.body)
        try:  # the status line and headers in one read: the generator shares the agent's cores
            head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        except asyncio.IncompleteReadError:
            raise ConnectionError("the agent closed the connection") from None
        at = head.find(b"\r\ncontent-length:")
        length = int(head[at + 17:head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        if length:
            await self.reader.readexactly(length)
        if b"\r\nconnection: close\r\n" in head:
            self.close()
        return int(head.split(None, 2)[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class PhaseResult:
    name: str
    seconds: float = 0.0
    requests: int = 0
    spans_sent: int = 0
    refused: int = 0  # 429: the agent was overloaded
    errors: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds
    offered_rate: float | None = None
    stopped_early: str = ""

    def record(self, request: Request, status: int, latency: float) -> None:
        self.requests += 1
        self.latencies.append(latency)
        if status in (200, 202):
            self.spans_sent += request.spans
        elif status == 429:
            self.refused += 1
        else:
            self.errors[status] = self.errors.get(status, 0) + 1

    def percentile_ms(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def closed_loop(workload: Workload, port: int, connections: int, seconds: float) -> PhaseResult:
    result = PhaseResult(f"closed loop, {connections} connections")
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker() -> None:
        conn = Connection(port)
        try:
            while time.perf_counter() < stop_at:
                request = workload.next()
                sent = time.perf_counter()
                status = await conn.send(request)
                result.record(request, status, time.perf_counter() - sent)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - start
    return result


async def open_loop(workload: Workload, port: int, connections: int, rate: float, seconds: float) -> PhaseResult:
    """Offer ``rate`` spans/s on a fixed schedule; latency counts from each request's scheduled time."""
    result = PhaseResult(f"open loop at {rate:,.0f} spans/s offered", offered_rate=rate)
    queue: asyncio.Queue[tuple[float, Request] | None] = asyncio.Queue()
    start = time.perf_counter()

    outstanding = 0  # spans offered and not answered yet

    async def worker() -> None:
        nonlocal outstanding
        conn = Connection(port)
        try:
            while (item := await queue.get()) is not None:
                scheduled, request = item
                status = await conn.send(request)
                result.record(request, status, time.perf_counter() - scheduled)
                outstanding -= request.spans
        finally:
            conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    due = start
    while due < start + seconds:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        if outstanding > rate * MAX_BACKLOG_SECS:  # the agent is far behind: bound the run
            result.stopped_early = f"stopped offering after {now - start:.1f} s: over {MAX_BACKLOG_SECS:.0f} s " \
                                   "of load waiting for answers"
            break
        request = workload.next()
        outstanding += request.spans
        queue.put_nowait((due, request))
        due += request.spans / rate
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - start
    return result



@dataclass
class Measured:
    phase: PhaseResult
    spans: float  # processed, from the agent's counters
    agent_cpu_load: float  # agent CPU seconds while the load ran
    agent_cpu_total: float  # ... until delivery caught up
    catch_up_secs: float
    delta: dict[tuple[str, str], float]

    @property
    def us_per_span(self) -> float:
        return self.agent_cpu_total / self.spans * 1e6 if self.spans else float("nan")

    @property
    def throughput(self) -> float:
        return self.spans / self.phase.seconds if self.phase.seconds else 0.0


def run_phase(agent: Agent, workload: Workload, phase) -> Measured:
    before = agent.counters()
    cpu0 = agent.cpu()
    outcome = asyncio.run(phase())
    cpu_load = agent.cpu() - cpu0
    stopped = time.monotonic()
    after = wait_until(lambda: (lambda c: c if caught_up(c) else None)(agent.counters()), CATCH_UP_SECS,
                       "delivery to catch up", STATUS_POLL_SECS)
    catch_up = time.monotonic() - stopped
    cpu_total = agent.cpu() - cpu0
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    apm_spans = stat(delta, "trace_spans")
    # The source counts the _llmobs events of v0.4 spans as events too; every v0.4 payload carries the
    # same share of them, so the rest are EVP events.
    v04_llmobs = apm_spans * workload.traces.llmobs / workload.traces.spans
    spans = apm_spans + stat(delta, "trace_events") - v04_llmobs
    return Measured(outcome, spans, cpu_load, cpu_total, catch_up, delta)


# ---------------------------------------------------------------------------------------------- goals


@dataclass(frozen=True)
class Goal:
    limit: float
    unit: str
    at_most: bool = True  # the value must stay at or under the limit (False: at or over it)
    strict: bool = False  # under (or over) it, not equal

    def met(self, value: float) -> bool | None:
        if value is None or math.isnan(value):
            return None
        if self.at_most:
            return value < self.limit if self.strict else value <= self.limit
        return value > self.limit if self.strict else value >= self.limit

    def __str__(self) -> str:
        sign = ("<" if self.strict else "≤") if self.at_most else (">" if self.strict else "≥")
        return f"{sign} {self.limit:,g}{' ' if self.unit and self.unit != 'x' else ''}{self.unit}"

    def verdict(self, value: float, not_judged: str = "") -> str:
        """"goal ≤ 10 µs: met" (or MISSED); "not judged (<why>)" for a run the goal is not for."""
        if not_judged:
            return f"goal {self}: not judged ({not_judged})"
        met = self.met(value)
        return f"goal {self}: " + ("n/a" if met is None else "met" if met else "MISSED")


# Rows for bench/core.py's summary: each script given --results PATH appends its headline figures there.
_rows: list[dict] = []


def result(bench: str, measure: str, value: float, unit: str, goal: Goal | None = None,
           not_judged: str = "") -> str:
    """Record a headline figure; returns its verdict text ("" without a goal) for the script's own output.
    ``not_judged``: why this run says nothing about the goal (a --quick run too small, heavy loss)."""
    verdict = goal.verdict(value, not_judged) if goal else ""
    _rows.append({"bench": bench, "measure": measure, "value": value, "unit": unit, "goal": str(goal) if goal else "",
                  "verdict": verdict.partition(": ")[2]})
    return verdict


def save_results(path: str | None) -> None:
    if path:
        with open(path, "a") as f:
            for row in _rows:
                f.write(json.dumps(row) + "\n")
