"""Prompt/completion sample logs: `llmship run` end to end next to bare JSON decode+encode, in the same run.

    .venv/bin/python bench/logs.py                      # 100,000 logs, gzip (the default config)
    .venv/bin/python bench/logs.py --compression zstd   # or deflate, identity
    .venv/bin/python bench/logs.py --quick              # smoke run: 10,000 logs

What it does, all on loopback:
  1. Builds realistic sample logs: a 2 kB prompt and a 600-character completion cut from real English
     prose and code (the Python documentation shipped with Python), model, tokens, trace id; one in 50
     carries something to scrub (e-mail, API key, card number, IP address). About 3 kB per JSON line.
  2. Baseline: the CPU time of `orjson.loads` + `orjson.dumps` of the same lines alone, the least any
     Python agent spends per line. Then the agent's own stages in process (decode, process: sampling,
     scrubbing with the default rules, truncation, tags; sink: encode and batch; compression), on the
     same lines, for where the time goes.
  3. Starts `llmship intake` (the destination) and `llmship run` (default config but the listeners it
     needs, default scrubbing, `llm.max_text_chars` 512), pinned to its own core where there are two;
     sends the logs over TCP as fast as the socket takes them, and waits until the intake has them all.
     Reports logs/s end to end and the agent's CPU per log (utime+stime from /proc/<pid>/stat, all its
     threads), and the ratios to the baseline.

The goal: at least 50,000 logs per second of agent CPU (20 us a log), default scrubbing included.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

from common import free_port, process_cpu_secs, wait_until  # noqa: E402  (bench/common.py)
from llmship.compression import compress_fast  # noqa: E402
from llmship.config import load_config_text  # noqa: E402
from llmship.sinks.logs import LogsSink  # noqa: E402
from llmship.telemetry import Telemetry  # noqa: E402
from llmship.transforms.logs import LogProcessor  # noqa: E402
from llmship.transforms.sampling import Sampler  # noqa: E402
from llmship.transforms.scrub import Scrubber  # noqa: E402

DISTINCT_LINES = 2000  # the load repeats this block; the agent caches nothing by content
DEADLINE_SECS = 600  # the run stops by itself after this, whatever happens
GOAL_LOGS_PER_CPU_SEC = 50_000
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
        processed[:] = [processor.process(r) for r in next(copies)]

    stages["process"] = cpu_per_line(process, lines)
    texts = [r[k] for r in (orjson.loads(line) for line in lines) for k in ("message", "prompt", "completion")]
    max_chars = cfg.llm.max_text_chars
    stages["of which scrub"] = cpu_per_line(lambda ts: [scrubber.scrub_truncate(t, max_chars) for t in ts], texts) * 3

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

def intake_count(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM records WHERE kind = 'logs'").fetchone()[0]


def run_agent(lines: list[bytes], total: int, connections: int, compression: str, tmp: Path) -> dict[str, float]:
    cpus = sorted(os.sched_getaffinity(0))
    agent_cpus, other_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else (set(cpus), set(cpus))
    intake_port, tcp_port, status_port = free_port(), free_port(), free_port()
    db = tmp / "intake.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "LLMSHIP_"))}
    env["PYTHONPATH"] = str(SRC)
    logs = open(tmp / "processes.log", "wb")
    intake = subprocess.Popen([sys.executable, "-m", "llmship", "intake", "--listen", f"127.0.0.1:{intake_port}",
                               "--db", str(db)], stdout=logs, stderr=subprocess.STDOUT, env=env,
                              preexec_fn=lambda: os.sched_setaffinity(0, other_cpus))
    config = tmp / "llmship.toml"
    config.write_text(f"""
[agent]
hostname = "bench"
env = "bench"
data_dir = "{tmp / 'data'}"
log_format = "json"
[sources.dogstatsd]
udp = ""
[sources.traces]
listen = ""
[sources.logs]
tcp = "127.0.0.1:{tcp_port}"
http = ""
[status]
listen = "127.0.0.1:{status_port}"
[sinks.datadog]
url = "http://127.0.0.1:{intake_port}"
api_key = "0123456789abcdef0123456789abcdef"
compression = "{compression}"
""")
    agent = subprocess.Popen([sys.executable, "-m", "llmship", "run", "--config", str(config)], stdout=logs,
                             stderr=subprocess.STDOUT, env=env, preexec_fn=lambda: os.sched_setaffinity(0, agent_cpus))
    try:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{status_port}/ready", timeout=1).status == 200,
                 30, "the agent to be ready")
        wait_until(lambda: db.exists() or intake.poll() is None, 30, "the intake")
        os.sched_setaffinity(0, other_cpus)  # the sender shares the intake's core, never the agent's
        block = b"".join(lines)
        per_connection = total // connections
        cpu_before = process_cpu_secs(agent.pid)
        started = time.monotonic()

        def send() -> None:
            with socket.create_connection(("127.0.0.1", tcp_port)) as s:
                sent = 0
                while sent < per_connection:
                    n = min(len(lines), per_connection - sent)
                    s.sendall(block if n == len(lines) else b"".join(lines[:n]))
                    sent += n

        senders = [threading.Thread(target=send) for _ in range(connections)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(DEADLINE_SECS)
        sent_secs = time.monotonic() - started
        expected = per_connection * connections
        wait_until(lambda: intake_count(db) >= expected, DEADLINE_SECS, f"{expected} logs at the intake")
        elapsed = time.monotonic() - started
        agent_cpu = process_cpu_secs(agent.pid) - cpu_before
        return {"logs": expected, "elapsed": elapsed, "sent_secs": sent_secs, "agent_cpu": agent_cpu,
                "agent_cpus": len(agent_cpus)}
    finally:
        for proc in (agent, intake):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


# ------------------------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=int, default=100_000, help="logs sent to the agent (default 100,000)")
    parser.add_argument("--connections", type=int, default=2, help="TCP connections sending (default 2)")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "deflate", "zstd", "identity"])
    parser.add_argument("--quick", action="store_true", help="10,000 logs: a smoke run")
    args = parser.parse_args()
    total = 10_000 if args.quick else args.logs

    lines = build_lines(DISTINCT_LINES)
    line_bytes = sum(map(len, lines)) / len(lines)
    print(f"sample logs: {DISTINCT_LINES} distinct lines, {line_bytes:.0f} bytes each on average "
          f"(2 kB prompt, 600-character completion); compression {args.compression}")

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
        result = run_agent(lines, total, args.connections, args.compression, Path(tmp))
    cpu = result["agent_cpu"] / result["logs"]
    rate = result["logs"] / result["elapsed"]
    print(f"\nend to end: {result['logs']:,} logs over {args.connections} TCP connection(s) -> `llmship run` "
          f"(on {result['agent_cpus']} core) -> `llmship intake`")
    print(f"  {rate:9,.0f} logs/s delivered ({result['elapsed']:.1f} s; the sender finished after "
          f"{result['sent_secs']:.1f} s)")
    print(f"  agent CPU {cpu * 1e6:6.2f} us/log = {1 / cpu:9,.0f} logs per CPU-second")
    print(f"  ratios: agent CPU per log / baseline = {cpu / base:.1f}x; "
          f"logs per CPU-second / goal {GOAL_LOGS_PER_CPU_SEC:,} = {1 / cpu / GOAL_LOGS_PER_CPU_SEC:.2f}")


if __name__ == "__main__":
    main()
