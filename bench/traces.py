"""The trace path: `llmship run` receiving ddtrace's OpenAI traces and LLM Observability events, next to
bare msgpack/JSON decoding of the same payloads, in the same run.

    .venv/bin/python bench/traces.py            # full: about a minute
    .venv/bin/python bench/traces.py --quick    # smoke run: about 15 s
    .venv/bin/python bench/traces.py --intake llmship   # ship to `llmship intake` instead of a null intake

What it does, all on loopback:
  1. Builds the load from what ddtrace 4.16 really sent (captures/ddtrace-4.16): v0.4 msgpack payloads of
     ``--traces-per-payload`` traces cycled from v04_traces_llmobs_default (each an `openai.request` span
     of type llm with its LLM Observability event in ``meta_struct["_llmobs"]``, and its `http.request`
     child; one call in six is an error), and EVP batches of ``--events-per-batch`` LLM Observability
     events from evp_llmobs_spans_apm_tracing_disabled, about ``--evp-share`` of all spans. Every request
     gets fresh trace and span ids (patched in place into fixed-width msgpack uint64 fields), so the
     agent's duplicate detection never collapses them and sampling sees distinct traces.
  2. Baseline: the CPU time of decoding the same bodies in this process and nothing else (msgpack
     ``unpackb`` of the body and of every ``_llmobs`` blob; ``orjson.loads`` of EVP bodies): the least
     any Python agent spends per span.
  3. Starts a destination (default: a null intake that reads each body and answers 202, so the bench
     measures the agent, not a sink's decoding or disk; ``--intake llmship`` runs `llmship intake`, whose
     decoding and SQLite writes then share the load generator's core) and `llmship run` (default config:
     gzip, sampling, scrubbing, truncation; only the trace and status listeners), the agent pinned to
     one core and this process (load generator) and the intake to the other.
  4. Closed loop: ``--connections`` keep-alive connections send as fast as the agent answers for
     ``--seconds``. Open loop: requests offered on a fixed schedule at ``--rate`` spans/s (default 25,000,
     half the goal) for ``--seconds``, and, when the closed loop showed the agent cannot take twice that,
     again at half the throughput it did take; latency counts from the scheduled send time, so a stalled
     agent cannot hide queueing (no coordinated omission). After each phase the bench waits until delivery
     caught up: every span and event the sinks took was sent (components `delivery.traces`,
     `delivery.llmobs`).
  Spans processed come from the agent's `GET /status` (component "traces": spans_received, plus
  events_received for EVP events). Agent CPU is utime+stime of all its threads (/proc/<pid>/stat) from
  the first request until delivery caught up, so it includes encoding, compressing and sending.

Goals (issue 3): 50,000 spans/s on one core end to end (20 us of agent CPU per span), and p99 request
latency under 50 ms at 25,000 spans/s offered. The whole run stops by itself within DEADLINE_SECS.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import orjson

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

from common import CPUS, free_port, pin, process_cpu_secs, wait_until  # noqa: E402  (bench/common.py)

CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "captures" / "ddtrace-4.16"
TRACES_CAPTURE = CAPTURES / "v04_traces_llmobs_default.msgpack"
EVP_CAPTURE = CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json"

GOAL_SPANS_PER_CPU_SEC = 50_000
GOAL_P99_MS = 50.0
GOAL_LATENCY_RATE = 25_000  # spans/s offered where the p99 goal applies: half the throughput goal
DEADLINE_SECS = 600  # the whole run stops by itself after this, whatever happens
CATCH_UP_SECS = 60  # delivery must have sent everything this long after the load stopped
STATUS_POLL_SECS = 0.2  # /status costs the agent a snapshot: not too often
# Open loop: stop offering once this many seconds of load wait for a connection (the agent is far behind).
MAX_BACKLOG_SECS = 2.0
# Open loop: enough connections that a request never waits for one while the agent keeps up.
OPEN_LOOP_CONNECTIONS = 32
FAKE_API_KEY = "0123456789abcdef0123456789abcdef"  # not a real key: the intakes here only check one is present

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
    """v0.4 bodies of ``traces_per_payload`` traces cycled from the capture, with fresh ids per request."""

    def __init__(self, traces_per_payload: int, port: int) -> None:
        traces = msgpack.unpackb(TRACES_CAPTURE.read_bytes(), raw=False, strict_map_key=False)
        k = 0
        out = []
        self.spans = self.llmobs = 0
        for i in range(traces_per_payload):
            trace = copy.deepcopy(traces[i % len(traces)])
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
            out.append(trace)
        if k > MAX_IDS_PER_REQUEST:
            raise ValueError(f"at most {MAX_IDS_PER_REQUEST} ids per payload")
        self.template = msgpack.packb(out, use_bin_type=True)
        self.patches = []  # (offset of the 8 id bytes, k)
        for j in range(k):
            needle = b"\xcf" + _UINT64.pack(_sentinel(j))
            at = self.template.find(needle)
            while at >= 0:
                self.patches.append((at + 1, j))
                at = self.template.find(needle, at + 1)
        self.head = (f"PUT /v0.4/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/msgpack\r\n"
                     f"Content-Length: {len(self.template)}\r\nDatadog-Meta-Lang: python\r\n"
                     "Datadog-Meta-Lang-Version: 3.11.7\r\nDatadog-Meta-Lang-Interpreter: CPython\r\n"
                     "Datadog-Meta-Tracer-Version: 4.16.0\r\nDatadog-Client-Computed-Top-Level: true\r\n"
                     f"Datadog-Send-Real-Http-Status: 1\r\nX-Datadog-Trace-Count: {len(out)}\r\n\r\n").encode()

    def body(self, seq: int) -> bytes:
        buf = bytearray(self.template)
        base = _TOP_BIT | seq << 16
        pack_into = _UINT64.pack_into
        for offset, k in self.patches:
            pack_into(buf, offset, base | k)
        return bytes(buf)

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
    """Requests in a fixed mix: an EVP batch whenever EVP events fall below ``evp_share`` of all spans."""

    def __init__(self, traces_per_payload: int, events_per_batch: int, evp_share: float, port: int) -> None:
        self.traces = TracePayloads(traces_per_payload, port)
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


# ---------------------------------------------------------------------------------------------- baseline


def baseline(workload: Workload, seconds: float) -> tuple[float, int]:
    """CPU seconds and spans of decoding the same mix of bodies, and nothing else, for about ``seconds``."""
    requests = [workload.next() for _ in range(200)]
    spans = 0
    cpu = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.process_time()
        for r in requests:
            if r.kind == "evp":
                orjson.loads(r.body)
            else:
                for trace in msgpack.unpackb(r.body, raw=False, strict_map_key=False):
                    for span in trace:
                        blob = (span.get("meta_struct") or {}).get("_llmobs")
                        if blob is not None:
                            msgpack.unpackb(blob, raw=False, strict_map_key=False)
            spans += r.spans
        cpu += time.process_time() - start
    return cpu, spans


# ---------------------------------------------------------------------------------------------- processes


def null_intake_main(port: int, ready) -> None:
    """Reads every body and answers 202 ``{}``, as the intakes do; decodes nothing, stores nothing."""
    from aiohttp import web

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


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Destination:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.mp_proc = None
        if kind == "null":
            ready = mp.get_context("spawn").Event()
            self.mp_proc = mp.get_context("spawn").Process(target=null_intake_main, args=(self.port, ready),
                                                           daemon=True)
            self.mp_proc.start()
            if not ready.wait(20):
                raise RuntimeError("the null intake did not start")
        else:
            self.log = open(workdir / "intake.log", "wb")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmship", "intake", "--listen", f"127.0.0.1:{self.port}",
                 "--db", str(workdir / "intake.sqlite"), "--latency-ms", "0"],
                stdout=self.log, stderr=subprocess.STDOUT, env=_clean_env())
            wait_until(lambda: self.proc.poll() is not None or b"listening on" in (workdir / "intake.log").read_bytes(),
                       20, "llmship intake to listen")
            if self.proc.poll() is not None:
                raise RuntimeError("llmship intake exited: " + (workdir / "intake.log").read_text())

    def stop(self) -> None:
        if self.mp_proc is not None:
            self.mp_proc.terminate()
            self.mp_proc.join(5)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "LLMSHIP_"))}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class AgentProcess:
    def __init__(self, workdir: Path, intake_url: str, compression: str, profile: str | None) -> None:
        self.trace_port = free_port()
        self.status_port = free_port()
        self.config = workdir / "llmship.toml"
        self.config.write_text(f"""
[agent]
hostname = "bench-host"
data_dir = "{workdir / 'data'}"
log_level = "warning"
log_format = "json"

[sources.dogstatsd]
udp = ""

[sources.logs]
tcp = ""
http = ""

[sources.traces]
listen = "127.0.0.1:{self.trace_port}"

[status]
listen = "127.0.0.1:{self.status_port}"

[sinks.datadog]
url = "{intake_url}"
api_key = "{FAKE_API_KEY}"
compression = "{compression}"
""")
        self.log_path = workdir / "agent.log"
        self.log = open(self.log_path, "wb")
        command = [sys.executable, "-m", "llmship", "run", "--config", str(self.config)]
        if profile:
            command = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "llmship", "run", "--config",
                       str(self.config)]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=_clean_env())
        pin(self.proc.pid, 0)
        self.status_url = f"http://127.0.0.1:{self.status_port}"
        wait_until(lambda: self.proc.poll() is not None or http_get(self.status_url + "/ready")[0] == 200,
                   30, "the agent to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError("llmship run exited: " + self.log_path.read_text())

    def status(self) -> dict:
        code, body = http_get(self.status_url + "/status")
        if code != 200:
            raise RuntimeError(f"GET /status answered {code}")
        return json.loads(body)

    def cpu(self) -> float:
        return process_cpu_secs(self.proc.pid)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def counters(status: dict) -> dict[tuple[str, str], float]:
    """(component, counter name) -> value summed over labels; plus (component, "dropped:<reason>")."""
    out: dict[tuple[str, str], float] = {}
    for comp_name, comp in status["components"].items():
        for c in comp["counters"]:
            key = (comp_name, c["name"])
            out[key] = out.get(key, 0) + c["value"]
            if c["name"] == "dropped":
                reason = (comp_name, "dropped:" + c["labels"].get("reason", ""))
                out[reason] = out.get(reason, 0) + c["value"]
        for gauge, value in comp["gauges"].items():
            out[(comp_name, "gauge:" + gauge)] = value or 0
    return out


def caught_up(c: dict[tuple[str, str], float]) -> bool:
    """Every span/event the trace and LLM Obs sinks took was sent, and nothing is queued or in flight."""
    for sink, lane in (("traces_sink", "delivery.traces"), ("llmobs_sink", "delivery.llmobs")):
        taken = c.get((sink, "events_received"), 0) - c.get((sink, "dropped"), 0)
        if c.get((lane, "events_sent"), 0) < taken:
            return False
        if c.get((lane, "gauge:queue_items"), 0) or c.get((lane, "gauge:inflight_payloads"), 0):
            return False
    return True


# ---------------------------------------------------------------------------------------------- HTTP load


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
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the agent closed the connection")
        length = 0
        close = False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return int(status_line.split()[1])

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


# ---------------------------------------------------------------------------------------------- phases


@dataclass
class Measured:
    phase: PhaseResult
    spans: float  # processed, from the agent's counters
    agent_cpu_load: float  # agent CPU seconds while the load ran
    agent_cpu_total: float  # ... until delivery caught up
    catch_up_secs: float
    delta: dict[tuple[str, str], float]


def run_phase(agent: AgentProcess, workload: Workload, phase) -> Measured:
    before = counters(agent.status())
    cpu0 = agent.cpu()
    result = asyncio.run(phase())
    cpu_load = agent.cpu() - cpu0
    stopped = time.monotonic()
    after = wait_until(lambda: (lambda c: c if caught_up(c) else None)(counters(agent.status())), CATCH_UP_SECS,
                       "delivery to catch up", STATUS_POLL_SECS)
    catch_up = time.monotonic() - stopped
    cpu_total = agent.cpu() - cpu0
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    apm_spans = delta.get(("traces", "spans_received"), 0)
    # The source counts the _llmobs events of v0.4 spans as events_received too; every v0.4 payload
    # carries the same share of them, so the rest are EVP events.
    v04_llmobs = apm_spans * workload.traces.llmobs / workload.traces.spans
    spans = apm_spans + delta.get(("traces", "events_received"), 0) - v04_llmobs
    return Measured(result, spans, cpu_load, cpu_total, catch_up, delta)


def report(m: Measured, baseline_us: float) -> None:
    p = m.phase
    wall_rate = m.spans / p.seconds if p.seconds else 0
    us_per_span = m.agent_cpu_total / m.spans * 1e6 if m.spans else float("nan")
    per_core = 1e6 / us_per_span if m.spans else 0
    print(f"\n{p.name}, {p.seconds:.1f} s:")
    if p.offered_rate:
        print(f"  offered {p.offered_rate:,.0f} spans/s, achieved {wall_rate:,.0f} spans/s"
              + (f"  ({p.stopped_early})" if p.stopped_early else ""))
    else:
        print(f"  throughput (wall):      {wall_rate:>9,.0f} spans/s")
    print(f"  agent CPU end to end:   {us_per_span:>9.1f} us/span -> {per_core:,.0f} spans/s per core "
          f"(goal {GOAL_SPANS_PER_CPU_SEC:,}: {per_core / GOAL_SPANS_PER_CPU_SEC:.2f}x; "
          f"baseline decode is {us_per_span / baseline_us:.1f}x faster)")
    print(f"     of which while loaded: {m.agent_cpu_load / m.spans * 1e6 if m.spans else 0:.1f} us/span; "
          f"delivery caught up {m.catch_up_secs:.1f} s after the load stopped")
    print(f"  request latency:        p50 {p.percentile_ms(50):.1f} ms, p99 {p.percentile_ms(99):.1f} ms, "
          f"max {p.percentile_ms(100):.1f} ms over {p.requests:,} requests"
          + (f" (goal p99 < {GOAL_P99_MS:.0f} ms: {'met' if p.percentile_ms(99) < GOAL_P99_MS else 'missed'})"
             if p.offered_rate == GOAL_LATENCY_RATE else ""))
    d = m.delta
    print(f"  agent counters:         {d.get(('traces', 'spans_received'), 0):,.0f} APM spans + "
          f"{m.spans - d.get(('traces', 'spans_received'), 0):,.0f} EVP events received; "
          f"{d.get(('llm', 'llm_calls'), 0):,.0f} LLM calls; refused {p.refused} requests (429)"
          + (f"; errors {p.errors}" if p.errors else ""))
    print(f"  delivered:              traces {d.get(('delivery.traces', 'events_sent'), 0):,.0f} spans in "
          f"{d.get(('delivery.traces', 'requests_sent'), 0):,.0f} requests, llmobs "
          f"{d.get(('delivery.llmobs', 'events_sent'), 0):,.0f} events, logs "
          f"{d.get(('delivery.logs', 'events_sent'), 0):,.0f} sample logs")
    drops = {k[1][8:] + "@" + k[0]: v for k, v in d.items() if k[1].startswith("dropped:") and v}
    if drops:
        print(f"  dropped:                {drops}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short phases")
    parser.add_argument("--seconds", type=float, default=None, help="length of each load phase (default 10, quick 2)")
    parser.add_argument("--connections", type=int, default=4, help="closed loop connections (default 4)")
    parser.add_argument("--rate", type=float, default=GOAL_LATENCY_RATE,
                        help=f"open loop offered spans/s (default {GOAL_LATENCY_RATE:,})")
    parser.add_argument("--traces-per-payload", type=int, default=50, help="v0.4 payload size (default 50 "
                        "traces, 100 spans)")
    parser.add_argument("--events-per-batch", type=int, default=20, help="EVP batch size (default 20)")
    parser.add_argument("--evp-share", type=float, default=0.1, help="share of spans sent as EVP events (0.1)")
    parser.add_argument("--intake", choices=("null", "llmship"), default="null")
    parser.add_argument("--compression", default="gzip", choices=("gzip", "zstd", "deflate", "identity"),
                        help="[sinks.datadog] compression (default gzip, the agent's default)")
    parser.add_argument("--profile", metavar="PATH", help="run the agent under cProfile, stats to PATH "
                        "(slows it down: for where the time goes, not for figures)")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="llmship-bench-traces-") as tmp:
        workdir = Path(tmp)
        pin(0, 1)
        agent_port_probe = Workload(args.traces_per_payload, args.events_per_batch, args.evp_share, 0)
        t = agent_port_probe.traces
        print(f"llmship trace path bench: {len(CPUS)} usable cores; agent on cpu {CPUS[0] if CPUS else '?'}, "
              f"load generator and intake ({args.intake}) on cpu {CPUS[1] if len(CPUS) > 1 else '?'}")
        print(f"  v0.4 payload: {args.traces_per_payload} traces, {t.spans} spans ({t.llmobs} with _llmobs), "
              f"{len(t.template) / 1024:.0f} KiB; EVP batch: {agent_port_probe.evp.events} events; "
              f"EVP share {args.evp_share:.0%}; compression {args.compression}")

        cpu, spans = baseline(agent_port_probe, 1.0 if args.quick else 3.0)
        baseline_us = cpu / spans * 1e6
        print("\nbaseline, in process (msgpack + _llmobs blobs, orjson for EVP; decode only):")
        print(f"  {baseline_us:.2f} us/span -> {1e6 / baseline_us:,.0f} spans/s per core")

        destination = Destination(args.intake, workdir)
        agent = None
        try:
            agent = AgentProcess(workdir, destination.url, args.compression, args.profile)
            workload = Workload(args.traces_per_payload, args.events_per_batch, args.evp_share, agent.trace_port)
            # warm-up: first-seen contexts, tag caches, connections
            asyncio.run(closed_loop(workload, agent.trace_port, 1, 0.5))
            wait_until(lambda: caught_up(counters(agent.status())), CATCH_UP_SECS, "the warm-up to be delivered",
                       STATUS_POLL_SECS)

            closed = run_phase(agent, workload,
                               lambda: closed_loop(workload, agent.trace_port, args.connections, seconds))
            report(closed, baseline_us)
            if time.monotonic() - started > DEADLINE_SECS:
                raise RuntimeError("deadline passed")
            rates = [args.rate]
            capacity = closed.spans / closed.phase.seconds
            if capacity < 2 * args.rate:  # also where the agent really is at half load
                rates.append(round(capacity / 2, -2))
            for rate in rates:
                if time.monotonic() - started > DEADLINE_SECS:
                    raise RuntimeError("deadline passed")
                opened = run_phase(agent, workload,
                                   lambda: open_loop(workload, agent.trace_port, OPEN_LOOP_CONNECTIONS, rate, seconds))
                report(opened, baseline_us)
            print(f"\nagent RSS {agent.rss_mb():.0f} MB; reference: Datadog's Python test agent (ddapm-test-agent, "
                  "no processing) takes 40-45k spans/s on one core here")
        finally:
            if agent is not None:
                agent.stop()
                if agent.proc.returncode not in (0, None):
                    print(f"agent exited {agent.proc.returncode}:\n{agent.log_path.read_text()[-3000:]}")
            destination.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
