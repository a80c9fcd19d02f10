"""[agent] workers: the web mix of the core redesign over 16 keep-alive connections, with workers = 1 and
workers = 2 in one run: spans/s delivered at saturation, agent CPU per span, and p99 latency and the
share of 429 answers at half and at twice the saturation rate.

    .venv/bin/python bench/workers.py             # about four minutes
    .venv/bin/python bench/workers.py --quick     # smoke run: about a minute
    .venv/bin/python bench/workers.py --workers 1,2,4 --seconds 5 --rounds 2

Each agent is a fresh `llmship run` (default config but only the trace and status listeners, shipping to a
null intake that answers 202, compressed as by default: zstd for spans, gzip for LLM Observability events)
with, unpinned, the load generator (this process) and the null intake beside it:
  1. Capacity, ``--rounds`` times (default 3), the worker counts taking turns (1, 2, 1, 2, ...), so that a
     drift in the shared machine's speed weighs on each count alike: a closed loop with load shedding off
     (``overload_lag_ms = 0``; a closed loop is endless demand, which shedding answers with 429s), 16
     keep-alive connections sending v0.4 payloads of the web mix (bench/mixes.py: 10 web requests of 10
     spans, one LLM call each, fresh ids per request) as fast as the agent answers, for ``--seconds``.
     Saturation = the spans/s the agent answered 200 for; "delivered" = the spans the trace lane sent to the
     intake over the same time (after delivery caught up). Each round's ratio of spans/s delivered is
     printed; the speed-up judged is their median, and the table's figures are the rounds' medians.
  2. For each count, a fresh agent with the default config (shedding on); open loop at half and at twice
     its median saturation over 16 connections (latency from each request's scheduled send time: no
     coordinated omission); requests carry Datadog-Send-Real-Http-Status, so a shed request is a 429. After
     each phase: every span answered 200 must have been delivered ("lost" otherwise).
Agent CPU is utime+stime of the agent and its workers (/proc/<pid>/stat) from the first request until
delivery caught up. Goals (issue 11): >= 1.5x spans/s with 2 workers on two cores; p99 < 50 ms at half
saturation, < 1 s at twice it; nothing accepted lost.

The machine's cores may be shared with other work: figures vary from run to run; compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import (CATCH_UP_SECS, CPUS, STATUS_POLL_SECS, Agent, Goal, Measured, NullIntake,  # bench/common.py
                    Workload, caught_up, closed_loop, datadog_sink, free_port, open_loop, result, run_phase,
                    save_results, sent, wait_until)

CONNECTIONS = 16
TRACES_PER_PAYLOAD = 10  # 100 spans a request, as bench/traces.py sends the web mix
GOAL_SPEEDUP = Goal(1.5, "x", at_most=False)
GOAL_P99_HALF = Goal(50, "ms", strict=True)
GOAL_P99_TWICE = Goal(1000, "ms", strict=True)
DEADLINE_SECS = 900


def delivered(m: Measured) -> float:
    return sent(m.delta, "traces")


def lost(m: Measured) -> float:
    """Spans answered 200 that the trace lane did not send."""
    return max(0.0, m.phase.spans_sent - delivered(m))


def share_429(m: Measured) -> float:
    return m.phase.refused / m.phase.requests if m.phase.requests else 0.0


@contextlib.contextmanager
def running(workdir: Path, workers: int, shed: bool) -> Iterator[tuple[Agent, Workload, int]]:
    """A fresh agent (warmed up, the warm-up delivered) shipping to a fresh null intake; both stopped after."""
    destination = NullIntake(cpu=1)
    agent = None
    try:
        port = free_port()
        agent = Agent(workdir, {"traces": {"listen": f"127.0.0.1:{port}"}}, datadog_sink(destination.url),
                      cpu=None, agent={"workers": workers} | ({} if shed else {"overload_lag_ms": 0}))
        workload = Workload("web", TRACES_PER_PAYLOAD, 20, 0.0, port)
        asyncio.run(closed_loop(workload, port, CONNECTIONS, 1.0))  # warm-up: contexts, caches, connections
        wait_until(lambda: caught_up(agent.counters()), CATCH_UP_SECS, "the warm-up to be delivered",
                   STATUS_POLL_SECS)
        yield agent, workload, port
    finally:
        if agent is not None:
            agent.stop()
        destination.stop()


def capacity(workers: int, seconds: float, workdir: Path) -> dict:
    """One closed loop on a fresh agent, load shedding off (``overload_lag_ms = 0``): a closed loop is demand
    without end, which shedding answers with 429s (the open loops show it doing so); here it would measure the
    cost of refusals rather than what the agent can process."""
    with running(workdir, workers, shed=False) as (agent, workload, port):
        closed = run_phase(agent, workload, lambda: closed_loop(workload, port, CONNECTIONS, seconds))
        out = {"saturation": closed.phase.spans_sent / closed.phase.seconds,
               "delivered_per_sec": delivered(closed) / closed.phase.seconds,
               "us_per_span": closed.agent_cpu_total / delivered(closed) * 1e6 if delivered(closed) else float("nan"),
               "closed_p99": closed.phase.percentile_ms(99), "closed_429": share_429(closed), "lost": lost(closed)}
        print(f"  workers = {workers}: closed loop (shedding off), {CONNECTIONS} connections, {closed.phase.seconds:.1f} s: "
              f"{out['saturation']:,.0f} spans/s accepted, {out['delivered_per_sec']:,.0f} spans/s delivered, "
              f"{out['us_per_span']:.1f} µs of agent CPU a span, p99 {out['closed_p99']:.0f} ms, "
              f"429 {out['closed_429']:.1%}")
        return out


def shedding(workers: int, saturation: float, seconds: float, workdir: Path) -> dict:
    """A fresh agent with the default config (shedding on); open loops at half and at twice ``saturation``."""
    out: dict = {"lost": 0.0}
    with running(workdir, workers, shed=True) as (agent, workload, port):
        for name, factor in (("half", 0.5), ("twice", 2.0)):
            rate = round(saturation * factor, -2)
            m = run_phase(agent, workload, lambda: open_loop(workload, port, CONNECTIONS, rate, seconds))
            out[f"{name}_rate"] = rate
            out[f"{name}_p99"] = m.phase.percentile_ms(99)
            out[f"{name}_429"] = share_429(m)
            out["lost"] += lost(m)
            print(f"  workers = {workers}: open loop at {rate:,.0f} spans/s ({name} saturation): "
                  f"{m.phase.spans_sent / m.phase.seconds:,.0f} spans/s accepted, p50 {m.phase.percentile_ms(50):.0f} "
                  f"ms, p99 {out[f'{name}_p99']:.0f} ms, max {m.phase.percentile_ms(100):.0f} ms, "
                  f"429 {out[f'{name}_429']:.1%} of {m.phase.requests:,} requests"
                  + (f"; errors {m.phase.errors}" if m.phase.errors else "")
                  + (f" ({m.phase.stopped_early})" if m.phase.stopped_early else ""))
        out["rss_mib"] = sum(_rss(pid) for pid in (agent.pid, *agent.worker_pids)) / 1024
        return out


def _rss(pid: int) -> int:
    from common import proc_kib

    return proc_kib(pid, "VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short phases")
    parser.add_argument("--seconds", type=float, default=None, help="length of each phase (default 8, quick 2)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="closed loops of each worker count, taken in turn (default 3, quick 1)")
    parser.add_argument("--results", metavar="PATH", help="append the headline figures to PATH (JSON lines)")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 3)
    counts = [int(n) for n in args.workers.split(",")]
    deadline = time.monotonic() + DEADLINE_SECS
    print(f"llmship workers bench: {len(CPUS)} usable cores, nothing pinned (agent, workers, load generator "
          f"and null intake share them); web mix, {TRACES_PER_PAYLOAD * 10} spans a request, "
          f"{CONNECTIONS} keep-alive connections; {rounds} closed loop(s) of each worker count, in turn")
    # Capacity: the worker counts take turns (1, 2, 1, 2, ...), each round on fresh agents, so that a drift in
    # the shared machine's speed weighs on every count alike; the speed-up is the median of the rounds' ratios.
    closed: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="llmship-bench-workers-") as tmp:
        for i in range(rounds):
            if time.monotonic() > deadline:
                print("bench deadline reached: stopping early")
                break
            print(f"\n  round {i + 1} of {rounds}:")
            for n in counts:
                workdir = Path(tmp) / f"capacity-{n}-{i}"
                workdir.mkdir()
                closed[n].append(capacity(n, seconds, workdir))
        print()
        results = []
        for n in counts:
            runs = closed[n]
            r = {"workers": n, "rounds": runs} | {key: statistics.median(run[key] for run in runs)
                                                     for key in ("saturation", "delivered_per_sec", "us_per_span")}
            workdir = Path(tmp) / f"default-{n}"
            workdir.mkdir()
            r |= shedding(n, r["saturation"], seconds, workdir)
            r["lost"] += sum(run["lost"] for run in runs)
            results.append(r)

    base = results[0]
    quick = "a --quick run" if args.quick else ""

    def round_ratios(r: dict) -> list[float]:
        """Spans/s delivered over workers = 1's, round by round (each round's counts ran back to back)."""
        return [run["delivered_per_sec"] / one["delivered_per_sec"]
                for run, one in zip(r["rounds"], base["rounds"]) if one["delivered_per_sec"]]

    print("\n  | workers | spans/s delivered | vs 1 | µs CPU/span | p99 @ ½ sat | 429 @ ½ | p99 @ 2× sat | "
          "429 @ 2× | lost | RSS |")
    print("  |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratios = round_ratios(r)
        speedup = statistics.median(ratios) if ratios else float("nan")
        print(f"  | {r['workers']} | {r['delivered_per_sec']:,.0f} | {speedup:.2f}x | {r['us_per_span']:.1f} | "
              f"{r['half_p99']:.0f} ms | {r['half_429']:.1%} | {r['twice_p99']:.0f} ms | {r['twice_429']:.1%} | "
              f"{r['lost']:,.0f} | {r['rss_mib']:.0f} MiB |")
        name = f"workers = {r['workers']}"
        result(name, "spans/s delivered (web mix, 16 connections)", r["delivered_per_sec"], "spans/s")
        result(name, "agent CPU per span", r["us_per_span"], "µs")
        if r["workers"] == 2 and base["workers"] == 1:
            print(f"\n  2 workers vs 1, round by round: {', '.join(f'{x:.2f}x' for x in ratios)}")
            print(f"  2 workers vs 1 (median): {speedup:.2f}x  "
                  + result(name, "speed-up over workers = 1", speedup, "x", GOAL_SPEEDUP,
                           "fewer than 2 cores" if len(CPUS) < 2 else quick))
        print(f"  {name}: p99 at half saturation {r['half_p99']:.0f} ms  "
              + result(name, "p99 at half saturation", r["half_p99"], "ms", GOAL_P99_HALF, quick))
        print(f"  {name}: p99 at twice saturation {r['twice_p99']:.0f} ms  "
              + result(name, "p99 at twice saturation", r["twice_p99"], "ms", GOAL_P99_TWICE, quick))
        print(f"  {name}: spans answered 200 and not delivered: {r['lost']:,.0f}  "
              + result(name, "accepted spans lost", r["lost"], "spans", Goal(0, "spans")))
    save_results(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
