"""The trace path: `llmship run` receiving ddtrace's traces and LLM Observability events, next to bare
msgpack decoding of the same payloads in the same run, for two mixes (bench/mixes.py).

    .venv/bin/python bench/traces.py                 # the LLM-heavy mix: about a minute
    .venv/bin/python bench/traces.py --mix both      # the web mix, then the LLM-heavy mix: two minutes
    .venv/bin/python bench/traces.py --mix web --quick   # smoke run: about 25 s a mix
    .venv/bin/python bench/traces.py --intake llmship    # ship to `llmship intake` instead of a null intake

What it does, all on loopback, for each mix:
  1. Builds the load from what ddtrace 4.16 really sent (captures/ddtrace-4.16): v0.4 msgpack payloads
     of ``--traces-per-payload`` traces of the mix (default: 100 spans a payload). llm: the captured
     `openai.request` traces (an LLM span with its _llmobs event and its `http.request` child), plus EVP
     batches of ``--events-per-batch`` LLM Observability events, about ``--evp-share`` of all spans (10%).
     web: 10-span web requests (root, 3 SQL, 2 Redis, 2 HTTP client spans, and a captured LLM call with
     its child), no EVP. Every request gets fresh trace and span ids (patched in place into fixed-width
     msgpack uint64 fields), so the agent's duplicate detection never collapses them and sampling sees
     distinct traces; parent ids follow.
  2. Baseline: the CPU time of decoding the same bodies in this process and nothing else (msgpack
     ``unpackb`` of the body and of every ``_llmobs`` blob; ``orjson.loads`` of EVP bodies): the least
     any Python agent spends per span.
  3. Starts a destination (default: a null intake that reads each body and answers 202, so the bench
     measures the agent, not a sink's decoding or disk; ``--intake llmship`` runs `llmship intake`, whose
     decoding and SQLite writes then share the load generator's core) and `llmship run` (default config:
     gzip, sampling, scrubbing, truncation; only the trace and status listeners), the agent pinned to
     one core and this process (load generator) and the intake to the other. A fresh agent per mix.
  4. Closed loop (saturation): ``--connections`` keep-alive connections send as fast as the agent answers
     for ``--seconds``. Open loop: requests offered on a fixed schedule at half the throughput the closed
     loop took (and at ``--rate`` spans/s if given) for ``--seconds``; latency counts from the scheduled
     send time, so a stalled agent cannot hide queueing (no coordinated omission). After each phase the
     bench waits until delivery caught up: every span and event the sinks took was sent.
  Spans processed come from the agent's `GET /status` (bench/common.py's STATUS: the trace source's
  spans, plus its events for EVP events). Agent CPU is utime+stime of all its threads (/proc/<pid>/stat)
  from the first request until delivery caught up, so it includes encoding, compressing and sending.

Goals (the core redesign issue): web mix <= 10 us of agent CPU a span end to end (>= 100,000 spans/s a
core), <= 3x the msgpack baseline; LLM-heavy mix <= 30 us a span; p99 request latency < 50 ms at half
saturation. The whole run stops by itself within DEADLINE_SECS.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import orjson

import mixes  # bench/mixes.py
from common import (CPUS, Agent, Goal, LlmshipIntake, NullIntake, caught_up, datadog_sink, drops,  # bench/common.py
                    free_port, pin, result, save_results, sent, stat, wait_until)

EVP_CAPTURE = mixes.CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json"

SPANS_PER_PAYLOAD = 100  # default payload size, whatever the mix: comparable per-request overheads
GOALS = {  # per mix: agent CPU per span end to end, its ratio to the msgpack baseline, spans/s a core
    "web": {"cpu": Goal(10, "µs"), "ratio": Goal(3, "x"), "per_core": Goal(100_000, "spans/s", at_most=False)},
    "llm": {"cpu": Goal(30, "µs")},
}
GOAL_P99 = Goal(50, "ms", strict=True)  # at half the saturation throughput
DEADLINE_SECS = 600  # the whole run stops by itself after this, whatever happens
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
    llmobs: int  # v0.4 spans with an _llmobs event (the agent counts them as llmobs_events)


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
                     f"Datadog-Send-Real-Http-Status: 1\r\nX-Datadog-Trace-Count: {len(traces)}\r\n\r\n").encode()

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


def scrub_cost(workload: Workload) -> float:
    """CPU µs per span of scrubbing the APM spans of the mix (``transforms/privacy.py``'s ``scrub_chunks``,
    default rules, the engine the agent would choose): best of five passes over fresh decodes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from llmship.sources.traces import decode_v04
    from llmship.transforms.privacy import scrub_chunks
    from llmship.transforms.scrub import Scrubber

    scrubber = Scrubber()
    bodies = [r.body for r in (workload.next() for _ in range(60)) if r.kind != "evp"]
    best = float("inf")
    for _ in range(5):
        decoded = [decode_v04(body) for body in bodies]
        spans = sum(len(chunk) for chunks in decoded for chunk in chunks)
        start = time.thread_time()
        for chunks in decoded:
            scrub_chunks(scrubber, chunks)
        best = min(best, (time.thread_time() - start) / max(1, spans) * 1e6)
    return best


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




# ---------------------------------------------------------------------------------------------- phases


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


def report(m: Measured, baseline_us: float) -> None:
    p = m.phase
    print(f"\n  {p.name}, {p.seconds:.1f} s:")
    if p.offered_rate:
        print(f"    offered {p.offered_rate:,.0f} spans/s, achieved {m.throughput:,.0f} spans/s"
              + (f"  ({p.stopped_early})" if p.stopped_early else ""))
    else:
        print(f"    throughput (wall):    {m.throughput:>9,.0f} spans/s")
    print(f"    agent CPU end to end: {m.us_per_span:>9.1f} us/span = {1e6 / m.us_per_span:,.0f} spans/s per core, "
          f"{m.us_per_span / baseline_us:.1f}x the baseline")
    print(f"      of which while loaded {m.agent_cpu_load / m.spans * 1e6 if m.spans else 0:.1f} us/span; "
          f"delivery caught up {m.catch_up_secs:.1f} s after the load stopped")
    print(f"    request latency:      p50 {p.percentile_ms(50):.1f} ms, p99 {p.percentile_ms(99):.1f} ms, "
          f"max {p.percentile_ms(100):.1f} ms over {p.requests:,} requests")
    d = m.delta
    apm = stat(d, "trace_spans")
    print(f"    agent counters:       {apm:,.0f} APM spans + {m.spans - apm:,.0f} EVP events received; "
          f"{stat(d, 'llm_calls'):,.0f} LLM calls; refused {p.refused} requests (429)"
          + (f"; errors {p.errors}" if p.errors else ""))
    print(f"    delivered:            traces {sent(d, 'traces'):,.0f} spans in "
          f"{sent(d, 'traces', 'requests_sent'):,.0f} requests, llmobs {sent(d, 'llmobs'):,.0f} events, "
          f"logs {sent(d, 'logs'):,.0f} sample logs")
    if dropped := drops(d):
        print(f"    discarded:            {dropped}")


def run_mix(mix: str, args, seconds: float, deadline: float, workdir: Path) -> None:
    evp_share = args.evp_share if args.evp_share is not None else 0.1 if mix == "llm" else 0.0
    per_trace = len(mixes.traces(mix, 1)[0])
    traces_per_payload = args.traces_per_payload or max(1, SPANS_PER_PAYLOAD // per_trace)
    probe = Workload(mix, traces_per_payload, args.events_per_batch, evp_share, 0)
    t = probe.traces
    print(f"\n== {mix} mix: v0.4 payload of {traces_per_payload} traces, {t.spans} spans ({t.llmobs} with _llmobs), "
          f"{len(t.template) / 1024:.0f} KiB" + (f"; EVP batches of {probe.evp.events} events, {evp_share:.0%} of "
                                                 "spans" if evp_share else "; no EVP"))
    cpu, spans = baseline(probe, 1.0 if args.quick else 3.0)
    baseline_us = cpu / spans * 1e6
    evp = ", orjson for EVP" if evp_share else ""
    print(f"  baseline in process (msgpack.unpackb of the bodies and _llmobs blobs{evp}; "
          f"decode only): {baseline_us:.2f} us/span = {1e6 / baseline_us:,.0f} spans/s per core")
    scrub_us = scrub_cost(probe)
    print(f"  scrubbing in process (every meta value and resource, one Hyperscan scan a request): "
          f"{scrub_us:.2f} us/span (included in the agent CPU below)")

    destination = NullIntake(cpu=1) if args.intake == "null" else LlmshipIntake(workdir, cpu=1)
    agent = None
    try:
        port = free_port()
        agent = Agent(workdir, {"traces": {"listen": f"127.0.0.1:{port}"}},
                      datadog_sink(destination.url, args.compression), cpu=0, profile=args.profile)
        workload = Workload(mix, traces_per_payload, args.events_per_batch, evp_share, port)
        # warm-up: first-seen contexts, tag caches, connections
        asyncio.run(closed_loop(workload, port, 1, 0.5))
        wait_until(lambda: caught_up(agent.counters()), CATCH_UP_SECS, "the warm-up to be delivered",
                   STATUS_POLL_SECS)

        closed = run_phase(agent, workload, lambda: closed_loop(workload, port, args.connections, seconds))
        report(closed, baseline_us)
        half = round(closed.throughput / 2, -2)
        latency = None
        for rate in [half] + ([args.rate] if args.rate else []):
            if time.monotonic() > deadline:
                print("  bench deadline reached: stopping early")
                break
            opened = run_phase(agent, workload,
                               lambda: open_loop(workload, port, OPEN_LOOP_CONNECTIONS, rate, seconds))
            report(opened, baseline_us)
            latency = latency or opened
        rss = agent.kib("VmRSS") / 1024
    finally:
        if agent is not None:
            agent.stop()
        destination.stop()

    goals = GOALS[mix]
    us = closed.us_per_span
    name = f"traces, {mix} mix"

    def row(label: str, text: str, verdict: str = "") -> None:
        print(f"    {label:<34}{text:>16}   {verdict}")

    print(f"\n  {mix} mix verdicts (agent CPU from the closed loop; p99 from the open loop at half its throughput):")
    row("agent CPU per span end to end", f"{us:.1f} µs", result(name, "agent CPU per span", us, "µs", goals["cpu"]))
    row("baseline msgpack.unpackb", f"{baseline_us:.2f} µs")
    row("ratio to the baseline", f"{us / baseline_us:.1f}x",
        result(name, "ratio to msgpack.unpackb", us / baseline_us, "x", goals.get("ratio")))
    row("spans/s per agent core", f"{1e6 / us:,.0f}",
        result(name, "spans/s per agent core", 1e6 / us, "spans/s", goals.get("per_core")))
    row("saturation (wall, closed loop)", f"{closed.throughput:,.0f} spans/s")
    if latency is not None:
        p99, rate = latency.phase.percentile_ms(99), latency.phase.offered_rate
        row(f"p99 at {rate:,.0f} spans/s offered", f"{p99:.1f} ms",
            result(name, f"p99 at half saturation ({rate:,.0f} spans/s)", p99, "ms", GOAL_P99))
    row("agent RSS at the end", f"{rss:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=(*mixes.MIXES, "both"), default="llm",
                        help="llm: the LLM-heavy mix (default); web: the web mix; both: web, then llm")
    parser.add_argument("--quick", action="store_true", help="smoke run: short phases")
    parser.add_argument("--seconds", type=float, default=None, help="length of each load phase (default 10, quick 2)")
    parser.add_argument("--connections", type=int, default=4, help="closed loop connections (default 4)")
    parser.add_argument("--rate", type=float, default=None,
                        help="also an open loop phase at this many spans/s offered")
    parser.add_argument("--traces-per-payload", type=int, default=None,
                        help=f"v0.4 payload size (default: {SPANS_PER_PAYLOAD} spans' worth: 50 llm traces, 10 web)")
    parser.add_argument("--events-per-batch", type=int, default=20, help="EVP batch size (default 20)")
    parser.add_argument("--evp-share", type=float, default=None,
                        help="share of spans sent as EVP events (default: 0.1 for llm, 0 for web)")
    parser.add_argument("--intake", choices=("null", "llmship"), default="null")
    parser.add_argument("--compression", default="zstd", choices=("gzip", "zstd", "deflate", "identity"),
                        help="[sinks.datadog] compression (default zstd, the agent's default)")
    parser.add_argument("--profile", metavar="PATH", help="run the agent under cProfile, stats to PATH "
                        "(slows it down: for where the time goes, not for figures)")
    parser.add_argument("--results", metavar="PATH", help="append the headline figures to PATH (JSON lines, "
                        "for bench/core.py)")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    deadline = time.monotonic() + DEADLINE_SECS
    pin(0, 1)
    print(f"llmship trace path bench: {len(CPUS)} usable cores; agent on cpu {CPUS[0] if CPUS else '?'}, "
          f"load generator and intake ({args.intake}) on cpu {CPUS[1] if len(CPUS) > 1 else '?'}; "
          f"compression {args.compression}")
    for mix in ("web", "llm") if args.mix == "both" else (args.mix,):
        if time.monotonic() > deadline:
            print("bench deadline reached: stopping early")
            break
        with tempfile.TemporaryDirectory(prefix=f"llmship-bench-traces-{mix}-") as tmp:
            run_mix(mix, args, seconds, deadline, Path(tmp))
    save_results(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
