"""Prompt/completion sample logs: `llmship run` end to end next to bare JSON decode+encode, in the same run.

    .venv/bin/python bench/logs.py                      # 100,000 logs, gzip (the default config)
    .venv/bin/python bench/logs.py --compression zstd   # or deflate, identity
    .venv/bin/python bench/logs.py --quick              # smoke run: 10,000 logs

What it does, all on loopback:
  1. Builds realistic sample logs: a 2 kB prompt and a 600-character completion cut from real English
     prose and code (the Python documentation shipped with Python), model, tokens, trace id; one in 50
     carries something to scrub (e-mail, API key, card number, IP address). About 3.1 kB per JSON line.
  2. Baseline: the CPU time of `orjson.loads` + `orjson.dumps` of the same lines alone, the least any
     Python agent spends per line. Then the agent's own stages in process (decode, process: sampling,
     scrubbing with the default rules, truncation, tags; sink: encode and batch; compression), on the
     same lines, for where the time goes.
  3. Starts `llmship intake` (the destination) and `llmship run` (default config but the listeners it
     needs, default scrubbing, `llm.max_text_chars` 512), pinned to its own core where there are two;
     sends the logs over TCP as fast as the socket takes them, and waits until the intake has them all.
     Reports logs/s end to end and the agent's CPU per log (utime+stime from /proc/<pid>/stat, all its
     threads, from the first line sent until the intake has them all), and the ratio to the baseline.

Goals (the core redesign issue): <= 17 us of agent CPU a record end to end (about 59,000 a core, at
least 50,000), default scrubbing and truncation included; <= 6x orjson decode + encode of the records.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from common import (SRC, Agent, Goal, LlmshipIntake, datadog_sink, free_port, pin, result,  # bench/common.py
                    save_results, wait_until)

sys.path.insert(0, str(SRC))
from llmship.compression import compress_fast  # noqa: E402
from llmship.config import load_config_text  # noqa: E402
from llmship.sinks.logs import LogsSink  # noqa: E402
from llmship.telemetry import Telemetry  # noqa: E402
from llmship.transforms import logpath  # noqa: E402
from llmship.transforms.logs import LogProcessor  # noqa: E402
from llmship.transforms.sampling import Sampler  # noqa: E402
from llmship.transforms.scrub import Scrubber  # noqa: E402

DISTINCT_LINES = 2000  # the load repeats this block; the agent caches nothing by content
DEADLINE_SECS = 600  # the run stops by itself after this, whatever happens
GOAL_CPU = Goal(17, "µs")  # agent CPU per record end to end (about 59,000 records a core)
GOAL_RATIO = Goal(6, "x")  # ... over orjson decode + encode of the same records
SECRETS = ["reach me at jane.doe@example.com", "key sk-proj-Ab3dEfGh1jKlMn0pQr2StUvWxYz4aBcDeFgHiJkLmNoPqRsT9",
           "card 4111 1111 1111 1111", "server 10.20.30.40", "Authorization: Bearer abcdefghijklmnop123"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b"]


# ------------------------------------------------------------------------------------------- load

def build_lines(n: int, seed: int = 1) -> list[bytes]:
    from pydoc_data.topics import topics

    corpus = " ".join(topics.values())
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        start = rng.randrange(0, len(corpus) - 3000)
        prompt = corpus[start:start + 2048]
        completion = corpus[start + 2048:start + 2648]
        if i % 50 == 0:
            prompt = prompt[:1000] + " " + rng.choice(SECRETS) + " " + prompt[1000:]
        model = rng.choice(MODELS)
        record = {
            "message": f"chat completion {model}", "ddsource": "python", "service": "chatbot", "status": "info",
            "ddtags": "team:assistants", "prompt": prompt, "completion": completion, "model": model,
            "provider": "openai", "endpoint": "chat.completions", "trace_id": str(rng.getrandbits(64)),
            "span_id": str(rng.getrandbits(64)), "tokens": {"input": 512, "output": 150, "total": 662},
            "duration_ms": round(rng.uniform(200, 4000), 1), "timestamp": 1767225600000 + i,
        }
        lines.append(orjson.dumps(record) + b"\n")
    return lines


def cpu_per_line(fn, lines: list[bytes], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        fn(lines)
        best = min(best, time.thread_time() - start)
    return best / len(lines)


def baseline(lines: list[bytes]) -> None:
    loads, dumps = orjson.loads, orjson.dumps
    for line in lines:
        dumps(loads(line))


def in_process_stages(lines: list[bytes], compression: str) -> dict[str, float]:
    """CPU seconds per line of each stage of the agent's path, without sockets."""
    cfg = load_config_text('[agent]\nhostname = "bench"\nenv = "bench"\n[sinks.datadog]\ncompression = "identity"\n')
    telemetry = Telemetry()
    scrubber = Scrubber(cfg.scrub.rules, telemetry.component("scrub"))
    processor = LogProcessor(cfg, Sampler(cfg.llm.sampling), scrubber, telemetry)
    payloads = []
    sink = LogsSink(cfg, payloads.append, telemetry)  # identity: compression is measured on its own below
    stages = {"decode": cpu_per_line(lambda ls: [orjson.loads(line) for line in ls], lines)}
    copies = iter([[orjson.loads(line) for line in lines] for _ in range(3)])
    processed: list[dict] = []

    def process(_):
        processed[:] = processor.process_many(next(copies))

    stages["process"] = cpu_per_line(process, lines)
    records = iter([[orjson.loads(line) for line in lines] for _ in range(3)])
    # every string of the record: the text fields scrubbed and cut, every other attribute and tag scrubbed
    stages["of which scrub"] = cpu_per_line(lambda _: processor._scrub_many(next(records)), lines)

    def encode(_):
        for r in processed:
            sink.add(r)
        sink.flush()

    stages["encode"] = cpu_per_line(encode, lines)
    bodies = [p.body for p in payloads[:max(1, len(payloads) // 3)]]
    items = sum(p.items for p in payloads[:len(bodies)])
    start = time.thread_time()
    for body in bodies:
        compress_fast(body, compression)
    stages["compress"] = (time.thread_time() - start) / items
    stages["processed_bytes"] = sum(map(len, bodies)) / items
    return stages


# ------------------------------------------------------------------------------------------- processes

def run_agent(lines: list[bytes], total: int, connections: int, compression: str, tmp: Path) -> dict[str, float]:
    intake = LlmshipIntake(tmp, cpu=1)
    tcp_port = free_port()
    agent = None
    try:
        agent = Agent(tmp, {"logs": {"tcp": f"127.0.0.1:{tcp_port}"}}, datadog_sink(intake.url, compression), cpu=0,
                      agent={"hostname": "bench", "env": "bench"})
        pin(0, 1)  # the sender shares the intake's core, never the agent's
        block = b"".join(lines)
        per_connection = total // connections
        cpu_before = agent.cpu()
        started = time.monotonic()

        def send() -> None:
            with socket.create_connection(("127.0.0.1", tcp_port)) as s:
                sent = 0
                while sent < per_connection:
                    n = min(len(lines), per_connection - sent)
                    s.sendall(block if n == len(lines) else b"".join(lines[:n]))
                    sent += n

        senders = [threading.Thread(target=send, daemon=True) for _ in range(connections)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(DEADLINE_SECS)
        sent_secs = time.monotonic() - started
        expected = per_connection * connections
        wait_until(lambda: intake.count("logs") >= expected, DEADLINE_SECS, f"{expected} logs at the intake")
        elapsed = time.monotonic() - started
        agent_cpu = agent.cpu() - cpu_before
        return {"logs": expected, "elapsed": elapsed, "sent_secs": sent_secs, "agent_cpu": agent_cpu}
    finally:
        if agent is not None:
            agent.stop()
        intake.stop()


# ------------------------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=int, default=100_000, help="logs sent to the agent (default 100,000)")
    parser.add_argument("--connections", type=int, default=2, help="TCP connections sending (default 2)")
    parser.add_argument("--compression", default="zstd", choices=["gzip", "deflate", "zstd", "identity"],
                        help="[sinks.datadog] compression (default zstd, the agent's default)")
    parser.add_argument("--quick", action="store_true", help="10,000 logs: a smoke run")
    parser.add_argument("--results", metavar="PATH", help="append the headline figures to PATH (JSON lines, "
                        "for bench/core.py)")
    args = parser.parse_args()
    total = 10_000 if args.quick else args.logs

    lines = build_lines(DISTINCT_LINES)
    line_bytes = sum(map(len, lines)) / len(lines)
    print(f"sample logs: {DISTINCT_LINES} distinct lines, {line_bytes:.0f} bytes each on average "
          f"(2 kB prompt, 600-character completion); compression {args.compression}; log path "
          f"{'compiled' if logpath.NATIVE else 'pure Python (the compiled one is not built or is off)'}")

    base = cpu_per_line(baseline, lines)
    print(f"\nbaseline, orjson decode + encode alone: {base * 1e6:6.2f} us CPU/log = {1 / base:9,.0f} logs/s "
          "on one core")
    stages = in_process_stages(lines, args.compression)
    in_process = stages["decode"] + stages["process"] + stages["encode"] + stages["compress"]
    print(f"agent stages in process (CPU per log; the output is cut to {stages['processed_bytes']:.0f} bytes a log):")
    for name in ("decode", "process", "of which scrub", "encode", "compress"):
        print(f"  {name:14s} {stages[name] * 1e6:6.2f} us")
    print(f"  {'total':14s} {in_process * 1e6:6.2f} us = {1 / in_process:9,.0f} logs/s on one core "
          f"({in_process / base:.1f}x the baseline)")
    without_compression = in_process - stages["compress"]
    print(f"  without compression {without_compression * 1e6:6.2f} us = {1 / without_compression:9,.0f} logs/s")

    with tempfile.TemporaryDirectory(prefix="llmship-bench-logs-") as tmp:
        run = run_agent(lines, total, args.connections, args.compression, Path(tmp))
    cpu = run["agent_cpu"] / run["logs"]
    rate = run["logs"] / run["elapsed"]
    print(f"\nend to end: {run['logs']:,} logs over {args.connections} TCP connection(s) -> `llmship run` "
          f"(on one core) -> `llmship intake`")
    print(f"  {rate:9,.0f} logs/s delivered ({run['elapsed']:.1f} s; the sender finished after "
          f"{run['sent_secs']:.1f} s)")
    name = f"logs, {line_bytes:,.0f}-byte records"
    print(f"  agent CPU per record        {cpu * 1e6:8.2f} µs   "
          f"{result(name, 'agent CPU per record', cpu * 1e6, 'µs', GOAL_CPU)}")
    print(f"  baseline orjson dec + enc   {base * 1e6:8.2f} µs")
    print(f"  ratio to the baseline       {cpu / base:8.1f}x    "
          f"{result(name, 'ratio to orjson decode + encode', cpu / base, 'x', GOAL_RATIO)}")
    print(f"  records per agent core      {1 / cpu:8,.0f}")
    save_results(args.results)


if __name__ == "__main__":
    main()
