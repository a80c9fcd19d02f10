"""DogStatsD throughput and loss: the real agent next to a bare Python receiver, in the same run.

    .venv/bin/python bench/dogstatsd.py            # full: about 2 million lines, a minute or two
    .venv/bin/python bench/dogstatsd.py --quick    # smoke run: seconds

What it does, all on loopback (Linux: it reads /proc):
  1. Starts `llmship run` (a temp config: file sink, UDP and unix datagram listeners, status listener on
     a free port) and a baseline receiver: a plain blocking ``recv`` loop in Python that only counts
     datagrams and lines, the ceiling for any Python receiver on this machine.
  2. For UDP (datagrams of at most 1432 bytes, the clients' default) and the unix datagram socket (at
     most 8192 bytes), one line per datagram and buffered datagrams, at several offered rates: a sender
     process replays pre-built datagrams (LLM metric names, five to eight tags) at the offered rate or
     as fast as it can. Once the receiver's CPU time stops moving, the bench reads how many lines it
     processed and when it handled the last one (the agent's `GET /status`, names in bench/common.py's
     STATUS), and reports lines/s over wall time and over the receiver's own CPU time
     (/proc/<pid>/task/*/schedstat), which other load cannot inflate.
  3. The agent's CPU per line of buffered datagrams sent as fast as it takes them, against the goal
     (the core redesign issue: DogStatsD must not get slower, <= 1.4 us a buffered line).
  4. The same lines in process: the agent's parser and aggregator (``agent.build``) fed 32-line datagrams
     of the bench's lines, every context made before (a second pass), the best of IN_PROCESS_PASSES: the
     parse-and-aggregate cost without the sockets, which the end-to-end runs judge only when the kernel
     lost little.
Memory with many contexts is bench/contexts.py's.

Sender and receiver each get one core (os.sched_setaffinity) where there are two; the bench itself
shares the sender's core and only watches /proc while the sender runs. A unix datagram sender does
what datadogpy does when the socket is full (non-blocking, drop on EAGAIN): that counts as loss. UDP
loss happens in the receiver's kernel buffer (the agent's `kernel_drops` gauge).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (CPUS, Agent, Goal, datadog_sink, file_sink, free_port, in_process_topology, pin,  # bench/common.py
                    result, save_results, stat)

UDP_PACKET_BYTES = 1432  # datadogpy / datadog-go default max UDP payload
UDS_PACKET_BYTES = 8192  # their default for unix sockets
GOAL_BUFFERED_US = Goal(1.4, "µs")  # agent CPU per line of buffered datagrams, as fast as it takes them
MAX_JUDGED_LOSS = 0.10  # a run that lost more than this says too little about CPU per line
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024  # the agent's default sources.dogstatsd.receive_buffer_bytes
BENCH_DEADLINE_SECS = 600  # the whole run stops by itself after this, whatever happens
IN_PROCESS_PASSES = 7
IDLE_SECS = 0.3  # a receiver that has used no CPU for this long has handled everything it was sent
POLL_SECS = 0.05
IDLE_CPU_SECS_PER_POLL = 0.001  # "no CPU": the baseline's 20 timeouts a second stay far below this

METRICS = [  # (name, type, value range): what an LLM app reports
    ("llm.tokens.input", "d", (20, 4000)),
    ("llm.tokens.output", "d", (1, 1500)),
    ("llm.tokens.total", "c", (20, 5000)),
    ("llm.request.duration", "h", (80, 20000)),
    ("llm.time_to_first_token", "ms", (50, 3000)),
    ("llm.requests", "c", (1, 1)),
    ("llm.errors", "c", (1, 1)),
    ("llm.cost.usd", "c", (0, 0.05)),
    ("llm.requests.inflight", "g", (0, 64)),
]
MODELS = ["gpt-4o", "gpt-4o-mini", "o3-mini", "claude-3-5-sonnet", "claude-3-5-haiku", "llama-3.1-70b",
          "mistral-large", "gemini-1.5-pro"]
SERVICES = ["chatbot", "rag-api", "summarizer", "agent-worker"]
ENDPOINTS = ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"]
TAG_SETS = 240


def llm_lines(count: int, seed: int, distinct_contexts: bool = False) -> list[bytes]:
    """``count`` DogStatsD lines. Tags come from a pool of ``TAG_SETS`` sets of five to eight tags (an
    app has a bounded number of services, models and endpoints: about 2,000 contexts in all), or with
    ``distinct_contexts`` each line gets a tag set of its own."""
    rnd = random.Random(seed)
    pool = [_tag_set(rnd) for _ in range(TAG_SETS)]
    lines = []
    for i in range(count):
        name, mtype, (low, high) = METRICS[i % len(METRICS)] if distinct_contexts else rnd.choice(METRICS)
        tags = f"{_tag_set(rnd)},request_id:{i}" if distinct_contexts else rnd.choice(pool)
        value = round(rnd.uniform(low, high), 6) if name == "llm.cost.usd" else rnd.randint(low, high)
        lines.append(f"{name}:{value}|{mtype}|#{tags}".encode())
    return lines


def _tag_set(rnd: random.Random) -> str:
    tags = [f"env:{rnd.choice(['prod', 'staging'])}", f"service:{rnd.choice(SERVICES)}",
            f"model:{rnd.choice(MODELS)}", f"provider:{rnd.choice(['openai', 'anthropic', 'vertex'])}",
            f"endpoint:{rnd.choice(ENDPOINTS)}"]
    tags += [f"team:llm-{rnd.randint(1, 3)}", "region:us-east-1", "version:1.4.2"][:rnd.randint(0, 3)]
    return ",".join(tags)


def pack(lines: list[bytes], max_bytes: int) -> tuple[list[bytes], list[int]]:
    """Newline-terminated lines packed into datagrams of at most ``max_bytes`` (one line each if the
    limit is 0), as buffering clients do; returns the datagrams and the number of lines in each."""
    datagrams, counts, current, size = [], [], [], 0
    for line in lines:
        if current and (max_bytes == 0 or size + len(line) + 1 > max_bytes):
            datagrams.append(b"\n".join(current) + b"\n")
            counts.append(len(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        datagrams.append(b"\n".join(current) + b"\n")
        counts.append(len(current))
    return datagrams, counts


# ---------------------------------------------------------------------------------------------- processes


def sender_main(address, family: int, datagrams: list[bytes], counts: list[int], rate: float | None,
                result, lossless: bool = False) -> None:
    """Replay ``datagrams`` at ``rate`` lines/s (None: as fast as possible); report what was sent.
    ``lossless`` (unix sockets): wait while the socket is full rather than drop."""
    pin(0, 0)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect(address)
    if family == socket.AF_UNIX and not lossless:
        sock.setblocking(False)  # datadogpy's unix default: drop when the socket is full
    send = sock.send
    sent_lines = dropped_lines = 0
    start = time.time()
    for i, datagram in enumerate(datagrams):
        if rate is not None and i % 16 == 0:
            ahead = (sent_lines + dropped_lines) / rate - (time.time() - start)
            if ahead > 0:
                time.sleep(ahead)  # pacing the offered rate
        try:
            send(datagram)
            sent_lines += counts[i]
        except (BlockingIOError, OSError):
            dropped_lines += counts[i]
    result.send((start, time.time(), sent_lines, dropped_lines))
    sock.close()


def baseline_main(family: int, address, ready, stop, counters) -> None:
    """The bare receiver: blocking recv, count datagrams and lines, nothing else."""
    pin(0, 1)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER_BYTES)  # SO_RCVBUFFORCE, as the agent does
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.bind(address)
    counters[2] = sock.getsockname()[1] if family == socket.AF_INET else 0
    sock.settimeout(0.05)
    ready.set()
    recv = sock.recv
    lines = datagrams = 0
    last = 0.0
    while not stop.is_set():
        try:
            while True:
                data = recv(65536)
                datagrams += 1
                lines += data.count(b"\n")
                if datagrams % 256 == 0:
                    counters[0], counters[1] = lines, time.time()
                last = time.time()
        except TimeoutError:
            counters[0], counters[1] = lines, last
    sock.close()


class Baseline:
    def __init__(self, ctx, family: int, address) -> None:
        self.ready, self.stop_event = ctx.Event(), ctx.Event()
        self.counters = ctx.Array("d", 3, lock=False)  # lines, unix time of the last datagram, port
        self.proc = ctx.Process(target=baseline_main, args=(family, address, self.ready, self.stop_event,
                                                            self.counters), daemon=True)
        self.proc.start()
        if not self.ready.wait(10):
            raise RuntimeError("the baseline receiver did not start")
        self.address = ("127.0.0.1", int(self.counters[2])) if family == socket.AF_INET else address

    def lines(self) -> tuple[float, float]:
        return self.counters[0], self.counters[1]

    def stop(self) -> None:
        self.stop_event.set()
        self.proc.join(5)


class DsdAgent(Agent):
    """`llmship run` listening for DogStatsD on UDP and a unix socket (and, as in production, for traces
    and logs), pinned to the second core; ``intake_url``: ship there over HTTP, as in production; ""
    writes to the file sink (the no-account default)."""

    def __init__(self, workdir: Path, intake_url: str = "") -> None:
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.socket_path = str(workdir / "dsd.socket")
        sources = {"dogstatsd": {"udp": f"127.0.0.1:{self.udp_port}", "socket": self.socket_path,
                                 "receive_buffer_bytes": RECEIVE_BUFFER_BYTES},
                   "traces": {"listen": f"127.0.0.1:{free_port()}"},
                   "logs": {"tcp": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}}
        super().__init__(workdir, sources, datadog_sink(intake_url) if intake_url else file_sink(workdir / "out"),
                         cpu=1)


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Result:
    target: str
    transport: str
    mode: str
    offered: float | None
    sent_per_sec: float
    processed_per_sec: float  # lines received / (last datagram handled - first sent): wall clock
    per_cpu_sec: float  # lines received / the receiver's CPU time: what other load on the box cannot skew
    loss: float
    starved: float  # share of the run the receiver spent runnable but waiting for a CPU (other load)


def cpu_seconds(pid: int, field: int = 0) -> float:
    """Of every thread of ``pid``, from Linux's schedstat: time on a CPU (field 0) or waiting, runnable,
    for one (field 1), in seconds; 0 where unavailable."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            total += int((task / "schedstat").read_text().split()[field])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def send(ctx, address, family, datagrams, counts, rate, lossless: bool = False) -> tuple[float, float, int, int]:
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=sender_main, args=(address, family, datagrams, counts, rate, there, lossless),
                       daemon=True)
    proc.start()
    if not here.poll(120):
        proc.kill()
        raise RuntimeError("the sender did not finish")
    outcome = here.recv()
    proc.join(5)
    return outcome


def wait_until_idle(pid: int, deadline: float) -> float:
    """Wait until ``pid`` has used (almost) no CPU for IDLE_SECS: it has handled all it was sent. Watching
    its CPU time rather than polling its status endpoint costs the receiver nothing. Returns its CPU time."""
    last = cpu_seconds(pid)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(POLL_SECS)
        now = cpu_seconds(pid)
        if now - last > IDLE_CPU_SECS_PER_POLL:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > IDLE_SECS:
            return now
        last = now
    return cpu_seconds(pid)


def run_one(ctx, target: str, pid: int, read, address, family, transport, mode, datagrams, counts,
            rate) -> Result:
    before, _ = read()  # the receiver is idle between runs; reading first keeps the read's CPU out
    cpu_before = wait_until_idle(pid, time.monotonic() + 10)
    waited_before = cpu_seconds(pid, field=1)
    start, sent_end, sent_lines, dropped_lines = send(ctx, address, family, datagrams, counts, rate)
    cpu = max(wait_until_idle(pid, time.monotonic() + 60) - cpu_before, 1e-6)
    waited = cpu_seconds(pid, field=1) - waited_before
    after, finished = read()
    received = after - before
    offered_lines = sent_lines + dropped_lines
    elapsed = max(finished - start, 1e-6)
    return Result(target, transport, mode, rate, offered_lines / max(sent_end - start, 1e-6), received / elapsed,
                  received / cpu, 1 - received / offered_lines, min(waited / elapsed, 1.0))


def agent_reader(agent: DsdAgent):
    def read() -> tuple[float, float]:
        c = agent.counters()
        return stat(c, "dsd_lines"), stat(c, "dsd_last_received_at")
    return read


def baseline_reader(baseline: Baseline):
    return baseline.lines


def print_results(results: list[Result]) -> None:
    print("lines/s: processed = received / wall time until the last datagram was handled; per CPU-s =\n"
          "received / the receiver's own CPU time (robust to other load on the machine). starved: share of\n"
          "the run the receiver was runnable but waiting for a CPU. Ratios: agent / baseline.")
    print(f"{'transport':<9} {'mode':<9} {'offered/s':>10}  {'target':<8} {'sent/s':>10} {'processed/s':>12} "
          f"{'per CPU-s':>10} {'loss':>7} {'starved':>7} {'ratio':>6} {'cpu ratio':>9}")
    baseline = {(r.transport, r.mode, r.offered): r for r in results if r.target == "baseline"}
    for r in results:
        offered = "max" if r.offered is None else f"{r.offered:,.0f}"
        base = baseline.get((r.transport, r.mode, r.offered))
        ratio = cpu_ratio = ""
        if r.target == "agent" and base:
            ratio = f"{r.processed_per_sec / base.processed_per_sec:.2f}"
            cpu_ratio = f"{r.per_cpu_sec / base.per_cpu_sec:.2f}"
        print(f"{r.transport:<9} {r.mode:<9} {offered:>10}  {r.target:<8} {r.sent_per_sec:>10,.0f} "
              f"{r.processed_per_sec:>12,.0f} {r.per_cpu_sec:>10,.0f} {r.loss:>7.1%} {r.starved:>7.0%} {ratio:>6} "
              f"{cpu_ratio:>9}")


def print_verdicts(results: list[Result]) -> None:
    """Agent CPU per line of buffered datagrams sent as fast as it takes them, against the goal."""
    print("\nagent CPU per buffered line, as fast as the agent takes them (its own CPU time):")
    for r in results:
        if r.target == "agent" and r.mode == "buffered" and r.offered is None and r.per_cpu_sec:
            us = 1e6 / r.per_cpu_sec
            # A non-blocking unix client drops most of a fast burst (net.unix.max_dgram_qlen): the few lines
            # left cannot amortize the agent's fixed costs.
            not_judged = f"{r.loss:.0%} of the lines lost" if r.loss > MAX_JUDGED_LOSS else ""
            verdict = result(f"DogStatsD, {r.transport} buffered", "agent CPU per line", us, "µs", GOAL_BUFFERED_US,
                             not_judged)
            print(f"  {r.transport:<4} {us:6.2f} µs   {verdict}")


def in_process_us(lines: list[bytes]) -> float:
    """CPU µs a line of the agent's own parser and aggregator, in this process (step 4)."""
    topology = in_process_topology()
    parser = next(s for s in topology.sources if type(s).__name__ == "DogStatsDSource").parser
    datagrams = [b"\n".join(lines[i:i + 32]) for i in range(0, len(lines), 32)]
    for datagram in datagrams:  # every context made
        parser.feed(datagram)
    best = float("inf")
    for _ in range(IN_PROCESS_PASSES):
        started = time.thread_time()
        for datagram in datagrams:
            parser.feed(datagram)
        best = min(best, (time.thread_time() - started) / len(lines) * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer lines and rates")
    parser.add_argument("--results", metavar="PATH", help="append the headline figures to PATH (JSON lines, "
                        "for bench/core.py)")
    args = parser.parse_args()
    bench_deadline = time.monotonic() + BENCH_DEADLINE_SECS
    ctx = mp.get_context("fork")  # senders inherit the pre-built datagrams without pickling them
    pin(0, 0)
    if args.quick:
        plan = {"single": ([None], 5_000), "buffered": ([None], 20_000)}
    else:  # 2 transports x 2 receivers x (3 x 40k + 3 x 120k) = 1.92 M lines
        plan = {"single": ([50_000, 150_000, None], 40_000), "buffered": ([150_000, 400_000, None], 120_000)}
    print(f"llmship DogStatsD bench: Python {sys.version.split()[0]}, {len(CPUS) or os.cpu_count()} cores usable"
          f"{'' if len(CPUS) >= 2 else ' (sender and receiver share one: figures are lower bounds)'}, "
          f"load average {os.getloadavg()[0]:.2f}")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="llmship-bench-") as tmp:
        workdir = Path(tmp)
        agent = DsdAgent(workdir)
        baselines = {"udp": Baseline(ctx, socket.AF_INET, ("127.0.0.1", 0)),
                     "uds": Baseline(ctx, socket.AF_UNIX, str(workdir / "baseline.socket"))}
        try:
            buffer_bytes = stat(agent.counters(), "dsd_udp_buffer_bytes")
            print(f"agent pid {agent.pid}: udp 127.0.0.1:{agent.udp_port}, unix {agent.socket_path}, "
                  f"kernel receive buffer {buffer_bytes / 2**20:.0f} MiB (as reported)")
            targets = {"udp": (socket.AF_INET, UDP_PACKET_BYTES, ("127.0.0.1", agent.udp_port)),
                       "uds": (socket.AF_UNIX, UDS_PACKET_BYTES, agent.socket_path)}
            seed = 0
            for transport, (family, packet_bytes, agent_address) in targets.items():
                for mode, (rates, line_count) in plan.items():
                    seed += 1
                    datagrams, counts = pack(llm_lines(line_count, seed), packet_bytes if mode == "buffered" else 0)
                    for rate in rates:
                        if time.monotonic() > bench_deadline:
                            print("bench deadline reached: stopping early")
                            break
                        base = baselines[transport]
                        results.append(run_one(ctx, "baseline", base.proc.pid, baseline_reader(base), base.address,
                                               family, transport, mode, datagrams, counts, rate))
                        results.append(run_one(ctx, "agent", agent.pid, agent_reader(agent), agent_address,
                                               family, transport, mode, datagrams, counts, rate))
            print()
            print_results(results)
            c = agent.counters()
            print(f"\nagent: {stat(c, 'dsd_bad_lines'):.0f} bad lines; UDP datagrams the kernel dropped: "
                  f"{stat(c, 'dsd_kernel_drops'):.0f}; net.unix.max_dgram_qlen = {stat(c, 'dsd_unix_qlen'):.0f} "
                  "(a non-blocking unix client drops once that many datagrams wait)")
            print_verdicts(results)
            us = in_process_us(llm_lines(20_000 if args.quick else 64_000, 7))
            verdict = result("DogStatsD, in process", "parse + aggregate per buffered line", us, "µs",
                             GOAL_BUFFERED_US)
            print(f"\nin process, the agent's parser and aggregator on 32-line datagrams (best of "
                  f"{IN_PROCESS_PASSES} passes): {us:.2f} µs a line   {verdict}")
        finally:
            for baseline in baselines.values():
                baseline.stop()
            agent.stop()
    save_results(args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
