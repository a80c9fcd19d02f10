"""Memory and event-loop stalls of the metrics flush with many distinct contexts, next to baselines measured
in the same run.

    .venv/bin/python bench/contexts.py             # 100,000 contexts (about a minute)
    .venv/bin/python bench/contexts.py --quick     # 10,000 contexts
    .venv/bin/python bench/contexts.py --contexts 200000 --skip-agent

What it does (Linux: it reads /proc):
  1. In process: N distinct contexts (bench/dogstatsd.py's LLM metrics, each line with a tag set of its
     own: counters, gauges, histograms, distributions) fed through the DogStatsD parser into an Aggregator.
     Reports the bytes held per context (tracemalloc). Then one flush shipped by MetricsSink (gzip) on an
     event loop, while a probe task measures how late the loop runs it (the longest stall: what DogStatsD
     reading waits for); the flush's wall time and the process's RSS peak over it (VmHWM, reset first).
     Baseline: orjson.dumps + one gzip of the same number of plain series dicts built beforehand, the
     least any Python encoder spends on them.
  2. The real agent (`llmship run`, flush every 10 s), shipping over HTTP to a null intake (production's path),
     then to the file sink (the no-account default): N contexts, one sample each, over DogStatsD's unix
     socket (the sender waits while it is full: nothing lost, nothing sent twice); its RSS at start
     (the baseline: interpreter and libraries), holding them, after the flush was delivered, after the
     next flush (idle counters ship zeros), and its peak (VmHWM); and the longest time
     its /ready endpoint took to answer while the flushes ran (an event-loop stall).
Goals (the core redesign issue), with 100,000 contexts, on the file sink and on HTTP: RSS under 100 MiB
once the flush was delivered, peak under 110 MiB; and no stall of the loop for seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import multiprocessing as mp
import socket
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
sys.path.insert(0, str(BENCH))

from common import Goal, NullIntake, proc_kib, result, save_results, sent, stat  # noqa: E402
import dogstatsd as dsd  # noqa: E402  (bench/dogstatsd.py: the load generator and the DogStatsD agent)

from llmship.aggregation import Aggregator  # noqa: E402
from llmship.config import load_config_text  # noqa: E402
from llmship.sinks.metrics import MetricsSink  # noqa: E402
from llmship.sources.dogstatsd import DogStatsDParser  # noqa: E402
from llmship.telemetry import Telemetry  # noqa: E402

T0 = 1_700_000_000.0
SEND_RATE = 50_000  # lines/s over loopback UDP: what the agent takes without loss on a busy machine
PROBE_SECS = 0.002  # the in-process loop probe wakes this often
READY_PROBE_SECS = 0.02  # the agent's /ready is asked this often
GOAL_CONTEXTS = 100_000  # the memory goals are for this many contexts
GOAL_AFTER_FLUSH = Goal(100, "MiB", strict=True)  # RSS once the flush was delivered
GOAL_PEAK = Goal(110, "MiB", strict=True)  # VmHWM


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


# ---------------------------------------------------------------------------------------------- in process


class _Pipeline:
    """What the DogStatsD parser needs of the emitter."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.add_metric = aggregator.add
        self.add_metrics = aggregator.add_many  # a datagram's fast-path lines at once

    def submit_dsd_event(self, event: dict) -> None:
        pass

    def submit_service_check(self, check: dict) -> None:
        pass


async def _flush_with_probe(aggregator: Aggregator, sink: MetricsSink, now: float) -> tuple[float, float]:
    """Flush and ship on this loop; returns (wall seconds, longest loop stall seen by a probe task)."""
    worst = 0.0
    done = False

    async def probe() -> None:
        nonlocal worst
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_SECS)
            worst = max(worst, time.perf_counter() - before - PROBE_SECS)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)  # the probe is running
    start = time.perf_counter()
    await sink.ship_async(aggregator.flush(now))
    wall = time.perf_counter() - start
    done = True
    await task
    return wall, worst


def in_process(contexts: int) -> None:
    cfg = load_config_text('[agent]\nhostname = "bench-host"\n[sinks.datadog]\ncompression = "gzip"\n')
    telemetry = Telemetry()
    clock = [T0 + 1]
    aggregator = Aggregator(cfg, telemetry, clock=lambda: clock[0])
    parser = DogStatsDParser(_Pipeline(aggregator), telemetry.component("dogstatsd"), "bench-host")
    datagrams, _ = dsd.pack(dsd.llm_lines(contexts, 99, distinct_contexts=True), dsd.UDP_PACKET_BYTES)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for datagram in datagrams:
        parser.feed(datagram)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del datagrams
    gc.collect()

    payloads = []
    sink = MetricsSink(cfg, payloads.append, telemetry)
    clock[0] += 10
    rss_before = proc_kib("self", "VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    wall, stall = asyncio.run(_flush_with_probe(aggregator, sink, clock[0]))
    peak = proc_kib("self", "VmHWM")
    comp = telemetry.component("metrics_sink")
    series, sketches = comp.get("series_encoded"), comp.get("sketches_encoded")

    # Baseline: plain dicts built beforehand, encoded with orjson and compressed once.
    items = [{"metric": f"llm.metric.{i % 40}", "type": 3, "interval": 10,
              "points": [{"timestamp": int(T0), "value": float(i)}],
              "tags": [f"env:prod,service:chatbot,model:gpt-4o,endpoint:/v1/chat,request_id:{i}"],
              "resources": [{"type": "host", "name": "bench-host"}]} for i in range(series + sketches)]
    start = time.perf_counter()
    gzip.compress(orjson.dumps({"series": items}), compresslevel=6, mtime=0)
    baseline = time.perf_counter() - start

    print(f"in process, {len(aggregator):,} contexts: {held / contexts:.0f} B held per context (tracemalloc); "
          f"flush + ship of {series:,.0f} series and {sketches:,.0f} sketches in {len(payloads)} payloads "
          f"({sum(len(p.body) for p in payloads) / 2**20:.1f} MiB gzip): {wall:.2f} s wall, longest loop stall "
          f"{stall * 1000:.0f} ms, RSS {mib(rss_before)} -> peak {mib(peak)} (+{mib(peak - rss_before)}); "
          f"baseline orjson+gzip of as many plain dicts {baseline:.2f} s (ratio {wall / baseline:.1f})")


# ---------------------------------------------------------------------------------------------- the agent


class _ReadyProbe(threading.Thread):
    """Asks the agent's /ready every READY_PROBE_SECS; keeps the longest answer time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/ready"
        self.worst = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(READY_PROBE_SECS):
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    response.read()
            except OSError:
                pass
            self.worst = max(self.worst, time.perf_counter() - start)


def _encoded(c: dict) -> float:
    return stat(c, "series_encoded") + stat(c, "sketches_encoded")


def _written(c: dict) -> float:
    return sent(c, "series") + sent(c, "sketches")


def _wait(what: str, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            print(f"  (gave up waiting for {what} after {timeout:.0f} s)")
            return False
        time.sleep(0.1)
    return True


def real_agent(contexts: int, sink: str) -> None:
    """``sink``: "http" ships to a null intake over HTTP (production's path), "file" to the file sink (the
    no-account default, which also decodes every payload to write it as lines)."""
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="llmship-bench-contexts-") as tmp:
        intake = NullIntake(cpu=0) if sink == "http" else None
        agent = dsd.DsdAgent(Path(tmp), intake_url=intake.url if intake else "")
        pid = agent.pid
        try:
            start_kib = proc_kib(pid, "VmRSS")
            datagrams, counts = dsd.pack(dsd.llm_lines(contexts, 99, distinct_contexts=True), dsd.UDP_PACKET_BYTES)
            # Over the unix socket, waiting while it is full: every context gets its one sample, once. (Over
            # UDP, a busy machine lost some, and sending again gave many contexts a second sample, which
            # turns a histogram's or distribution's first value into a sketch: up to 8 MiB more, measured.)
            dsd.send(ctx, agent.socket_path, socket.AF_UNIX, datagrams, counts, SEND_RATE, lossless=True)
            dsd.wait_until_idle(pid, time.monotonic() + 30)
            held = stat(agent.counters(), "contexts")
            holding_kib = proc_kib(pid, "VmRSS")
            probe = _ReadyProbe(agent.status_port)
            probe.start()
            # Every context is in the next flush or the one after (a flush may have cut the sending).
            counters = agent.counters
            _wait("the flush of every context", lambda: _encoded(counters()) >= held, 60)
            _wait("delivery", lambda: (c := counters()) and _written(c) >= _encoded(c), 60)
            first = _encoded(counters())
            after_kib = proc_kib(pid, "VmRSS")
            _wait("the next flush", lambda: _encoded(counters()) > first, 30)
            _wait("delivery", lambda: (c := counters()) and _written(c) >= _encoded(c), 60)
            probe.stop.set()
            probe.join()
            next_kib, peak_kib = proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM")
            print(f"agent shipping to {sink}, {held:,.0f} contexts: RSS {mib(start_kib)} at start (baseline), "
                  f"{mib(holding_kib)} holding them ({(holding_kib - start_kib) * 1024 / max(held, 1):.0f} B per "
                  f"context over the baseline), {mib(next_kib)} after the next flush; longest /ready answer during "
                  f"the flushes {probe.worst * 1000:.0f} ms")
            not_judged = "" if contexts >= GOAL_CONTEXTS else f"the goal is for {GOAL_CONTEXTS:,} contexts"
            name = f"contexts, {contexts:,} on the {sink} sink"
            print(f"  RSS after the flush  {mib(after_kib):>8}   "
                  f"{result(name, 'RSS after the flush', after_kib / 1024, 'MiB', GOAL_AFTER_FLUSH, not_judged)}")
            print(f"  peak RSS (VmHWM)     {mib(peak_kib):>8}   "
                  f"{result(name, 'peak RSS', peak_kib / 1024, 'MiB', GOAL_PEAK, not_judged)}")
        finally:
            agent.stop()
            if intake is not None:
                intake.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 contexts")
    parser.add_argument("--contexts", type=int, help="how many distinct contexts (default 100,000)")
    parser.add_argument("--skip-agent", action="store_true", help="only the in-process part")
    parser.add_argument("--results", metavar="PATH", help="append the headline figures to PATH (JSON lines, "
                        "for bench/core.py)")
    args = parser.parse_args()
    contexts = args.contexts or (10_000 if args.quick else 100_000)
    print(f"llmship contexts bench: Python {sys.version.split()[0]}, {contexts:,} distinct contexts")
    in_process(contexts)
    if not args.skip_agent:
        for sink in ("http", "file"):
            real_agent(contexts, sink)
    save_results(args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
