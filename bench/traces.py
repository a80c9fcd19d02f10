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
     any Python agent spends per span. Then the processing plane's stages in this process on the same
     v0.4 bodies (decode, the LLM stage, scrubbing every span's meta values and resource, encoding, and
     all of it), for where the time goes.
  3. Starts a destination (default: a null intake that reads each body and answers 202, so the bench
     measures the agent, not a sink's decoding or disk; ``--intake llmship`` runs `llmship intake`, whose
     decoding and SQLite writes then share the load generator's core) and `llmship run` (default config:
     gzip, sampling, scrubbing, truncation; only the trace and status listeners; load shedding off, which
     bench/workers.py measures), the agent pinned to one core and this process (load generator) and the
     intake to the other. A fresh agent per mix.
  4. Closed loop (saturation): ``--connections`` keep-alive connections send as fast as the agent answers
     for ``--seconds``; then the baseline again (the ratio uses the mean of the two baselines: a shared
     machine's speed drifts). Open loop: requests offered on a fixed schedule at half the throughput the closed
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
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import orjson

import mixes  # bench/mixes.py
from common import (CATCH_UP_SECS, CPUS, OPEN_LOOP_CONNECTIONS, STATUS_POLL_SECS, Agent,  # bench/common.py
                    Goal, LlmshipIntake, Measured, NullIntake, Workload, caught_up, closed_loop, datadog_sink, drops,
                    free_port, in_process_topology, open_loop, pin, result, run_phase, save_results, sent, stat,
                    wait_until)


SPANS_PER_PAYLOAD = 100  # default payload size, whatever the mix: comparable per-request overheads
GOALS = {  # per mix: agent CPU per span end to end, its ratio to the msgpack baseline, spans/s a core
    "web": {"cpu": Goal(10, "µs"), "ratio": Goal(3, "x"), "per_core": Goal(100_000, "spans/s", at_most=False)},
    "llm": {"cpu": Goal(30, "µs")},
}
GOAL_P99 = Goal(50, "ms", strict=True)  # at half the saturation throughput
DEADLINE_SECS = 600  # the whole run stops by itself after this, whatever happens

# ---------------------------------------------------------------------------------------------- baseline


def baseline(workload: Workload, seconds: float) -> float:
    """CPU µs a span of decoding the same mix of bodies, and nothing else, for about ``seconds``."""
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
    return cpu / spans * 1e6


def in_process_stages(workload: Workload) -> dict[str, float]:
    """µs of CPU a span for each processing-plane stage, in this process, on the mix's v0.4 bodies: where
    the agent's time goes (the best of three passes; the bodies get fresh ids each pass). Scrubbing is the
    scan of every span's meta values and resource (the events' text is scrubbed within the LLM stage)."""
    emitter = in_process_topology().emitter  # first: it puts src/ on the path where llmship is not installed
    from llmship.model import TracerInfo
    from llmship.sources.traces import decode_v04
    from llmship.transforms.privacy import scrub_chunks

    scrubber, tracer, payloads = emitter._scrubber, TracerInfo(), workload.traces
    stages = {"decode": lambda chunks: None,
              "LLM stage (extract, policies, event text)": lambda chunks: [emitter._llm.process_chunk(c) for c in chunks],
              "scrub span meta and resources": lambda chunks: scrub_chunks(scrubber, chunks),
              "encode spans": lambda chunks: emitter._encode_chunks(chunks, tracer),
              "all of the processing plane": lambda chunks: emitter.submit_spans(chunks, tracer)}
    seq, best = 1 << 20, {}
    for _ in range(3):
        for name, stage in stages.items():
            bodies = [payloads.body(seq + i) for i in range(20)]
            seq += 20
            start = time.thread_time()
            for body in bodies:
                stage(decode_v04(body))
            spent = (time.thread_time() - start) / (20 * payloads.spans) * 1e6
            best[name] = min(best.get(name, spent), spent)
    decode = best["decode"]
    return {name: us if name == "decode" else us - decode for name, us in best.items()}


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
        print(f"    dropped:              {dropped}")


def run_mix(mix: str, args, seconds: float, deadline: float, workdir: Path) -> None:
    evp_share = args.evp_share if args.evp_share is not None else 0.1 if mix == "llm" else 0.0
    per_trace = len(mixes.traces(mix, 1)[0])
    traces_per_payload = args.traces_per_payload or max(1, SPANS_PER_PAYLOAD // per_trace)
    probe = Workload(mix, traces_per_payload, args.events_per_batch, evp_share, 0)
    t = probe.traces
    print(f"\n== {mix} mix: v0.4 payload of {traces_per_payload} traces, {t.spans} spans ({t.llmobs} with _llmobs), "
          f"{len(t.template) / 1024:.0f} KiB" + (f"; EVP batches of {probe.evp.events} events, {evp_share:.0%} of "
                                                 "spans" if evp_share else "; no EVP"))
    baseline_us = baseline(probe, 1.0 if args.quick else 3.0)
    evp = ", orjson for EVP" if evp_share else ""
    print(f"  baseline in process (msgpack.unpackb of the bodies and _llmobs blobs{evp}; "
          f"decode only): {baseline_us:.2f} us/span = {1e6 / baseline_us:,.0f} spans/s per core")

    stages = in_process_stages(probe)
    print("  in process, µs of CPU a span (v0.4 bodies only): "
          + ", ".join(f"{name} {us:.2f}" for name, us in stages.items()))

    destination = NullIntake(cpu=1) if args.intake == "null" else LlmshipIntake(workdir, cpu=1)
    agent = None
    try:
        port = free_port()
        # Load shedding off (overload_lag_ms = 0), as in bench/workers.py's closed loop: a closed loop is
        # demand without end, which shedding answers with 429s, and a refused request's CPU (its body read)
        # would be charged to the spans accepted. bench/workers.py measures shedding.
        agent = Agent(workdir, {"traces": {"listen": f"127.0.0.1:{port}"}},
                      datadog_sink(destination.url, args.compression), cpu=0, agent={"overload_lag_ms": 0},
                      profile=args.profile)
        workload = Workload(mix, traces_per_payload, args.events_per_batch, evp_share, port)
        # warm-up: first-seen contexts, tag caches, connections
        asyncio.run(closed_loop(workload, port, 1, 0.5))
        wait_until(lambda: caught_up(agent.counters()), CATCH_UP_SECS, "the warm-up to be delivered",
                   STATUS_POLL_SECS)

        closed = run_phase(agent, workload, lambda: closed_loop(workload, port, args.connections, seconds))
        # The baseline again, right after: on a shared machine the speed drifts over a minute by as much as a
        # third, and the ratio must compare the agent with the baseline of the same moment. Their mean is the
        # baseline the ratio uses (both are printed).
        baseline_after = baseline(probe, 1.0 if args.quick else 3.0)
        print(f"  baseline again, right after the closed loop: {baseline_after:.2f} us/span "
              f"(before: {baseline_us:.2f}; the ratio uses their mean)")
        baseline_us = (baseline_us + baseline_after) / 2
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
    row("scrubbing span meta, in process", f"{stages['scrub span meta and resources']:.2f} µs",
        "a span (every meta value and resource; event text is in the LLM stage)")


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
