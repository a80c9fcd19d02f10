"""The agent's CPU counted in instructions (callgrind), end to end, next to the baseline counted the same way:
figures that two runs reproduce to within a fraction of a percent, where this shared machine's timings drift by
a third. The seconds benches (traces.py, logs.py) say how fast; this one says whether a change made the agent do
less work, and where.

    .venv/bin/python bench/instructions.py               # web mix, LLM-heavy mix, logs: about 3 minutes
    .venv/bin/python bench/instructions.py --only web    # or llm, logs
    .venv/bin/python bench/instructions.py --keep        # keep the callgrind files (callgrind_annotate them)

Needs valgrind. For each load:
  1. Starts `llmship run` (the benches' config: zstd, the one listener the load needs, load shedding off) under
     callgrind with instrumentation off (valgrind's fastest mode), and a null intake.
  2. Sends a warm-up and waits until it is delivered; switches instrumentation on (`callgrind_control -i on`);
     sends the load (``--requests`` v0.4 payloads of 100 spans of the mix with fresh ids, one keep-alive
     connection; or ``--logs`` 3.1 kB log lines over TCP, bench/logs.py's); waits until delivery caught up and
     dumps the counts. So the figure is the whole agent: HTTP or TCP, decode, processing, encoding,
     compression, delivery. Less what the agent spends idle over as long (measured just before, polled for
     /status as while waiting): its timers run by the wall clock, which callgrind slows about 50-fold, and
     would otherwise weigh 50 times what they do (5% of the web mix's figure).
  3. Counts the baseline the same way, in a child process: msgpack.unpackb of the same bodies and their
     _llmobs blobs (bench/traces.py's baseline), or orjson loads + dumps of the same lines (bench/logs.py's).

Callgrind counts each byte a large memcpy moves (rep movsb) as an instruction, so copies weigh more here than in
time. At this machine's usual 2.5-3 instructions a ns, 10 µs a span is about 80,000-100,000 instructions.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mixes  # bench/mixes.py
from common import (SOURCES_OFF, NullIntake, Workload, _toml, caught_up, clean_env,  # bench/common.py
                    datadog_sink, flatten, free_port, http_get, wait_until)

SPANS_PER_PAYLOAD = 100
DEADLINE_SECS = 600  # each wait stops by itself after this
POLL_SECS = 0.5  # /status, while waiting for delivery
IDLE_SECS = 10  # the idle window measured before the load


def callgrind(command: list[str], out: str, env: dict, stdout=subprocess.DEVNULL, stdin=None) -> subprocess.Popen:
    """``command`` under callgrind, instrumentation off; its children too (workers), each in its own file."""
    return subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--instr-atstart=no",
                             "--trace-children=yes", *command], env=env, stdout=stdout, stdin=stdin,
                            stderr=subprocess.DEVNULL)


def counted(pids: list[int], out: str, work) -> dict[int, int]:
    """Instructions each of ``pids`` executes while ``work()`` runs."""
    for pid in pids:
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    work()
    totals = {}
    for pid in pids:
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        dump = sorted(glob.glob(f"{out}.{pid}.*"))[-1]
        totals[pid] = next(int(line.split()[1]) for line in open(dump) if line.startswith(("summary:", "totals:")))
    return totals


# ------------------------------------------------------------------------------------------- the agent

def agent_instructions(load: str, args, work_dir: Path) -> tuple[dict[str, int], int]:
    """({process: instructions}, spans or records) of a live agent taking ``load``: web, llm or logs; the
    process is "agent", or with ``args.workers`` > 1 "shipping plane" and "worker N"."""
    port, status_port = free_port(), free_port()
    listener = {"logs": {"tcp": f"127.0.0.1:{port}"}} if load == "logs" else {"traces": {"listen": f"127.0.0.1:{port}"}}
    intake = NullIntake()
    sections = {"agent": {"hostname": "bench-host", "env": "bench", "data_dir": str(work_dir / "data"),
                          "log_level": "warning", "log_format": "json", "overload_lag_ms": 0,
                          "workers": args.workers}}
    for name, off in SOURCES_OFF.items():
        sections[f"sources.{name}"] = off | listener.get(name, {})
    sections |= datadog_sink(intake.url, "zstd")
    sections["status"] = {"listen": f"127.0.0.1:{status_port}"}
    config = work_dir / "llmship.toml"
    config.write_text(_toml(sections))
    out = str(work_dir / f"callgrind.{load}")
    agent = callgrind([sys.executable, "-m", "llmship", "run", "--config", str(config)], out,
                      clean_env() | {"PYTHONHASHSEED": "0"})
    status = f"http://127.0.0.1:{status_port}"
    kinds = ("logs",) if load == "logs" else ("traces", "llmobs")

    def delivered(lines_sent: int = 0) -> None:
        """Everything sent was delivered (log lines have no answer: wait until the TCP source took them all)."""
        def done() -> bool:
            counters = flatten(json.loads(http_get(status + "/status", 60)[1]))
            return counters.get(("logs_tcp", "received"), 0) >= lines_sent and caught_up(counters, kinds)
        wait_until(done, DEADLINE_SECS, "delivery", POLL_SECS)

    def idle() -> None:
        """As the agent is while the bench waits for delivery with nothing left to do: polled for /status."""
        deadline = time.monotonic() + IDLE_SECS
        while time.monotonic() < deadline:
            http_get(status + "/status", 60)
            time.sleep(POLL_SECS)

    try:
        wait_until(lambda: agent.poll() is not None or http_get(status + "/ready", 5)[0] == 200, DEADLINE_SECS,
                   "the agent to be ready", 0.5)
        if agent.poll() is not None:
            raise RuntimeError("llmship run exited")
        workers = json.loads(http_get(status + "/status", 60)[1]).get("workers") or []
        names = {agent.pid: "shipping plane" if workers else "agent"}
        names |= {w["pid"]: f"worker {w['index']}" for w in workers}

        idle_rate: dict[int, float] = {}

        def measure(work) -> dict[str, int]:
            """Instructions each process spent on ``work``, less what it spends idle in as long: its timers and
            the /status polls run by the wall clock, which callgrind slows about 50-fold, so they weigh 50
            times what they do at full speed (uncorrected, ~10% of the web mix's figure)."""
            start = time.monotonic()
            busy = counted(list(names), out, work)
            elapsed = time.monotonic() - start
            return {names[pid]: round(total - idle_rate[pid] * elapsed) for pid, total in busy.items()}

        def measure_idle() -> None:
            start = time.monotonic()
            spent = counted(list(names), out, idle)
            idle_rate.update((pid, n / (time.monotonic() - start)) for pid, n in spent.items())
        if load == "logs":
            from logs import build_lines  # bench/logs.py
            lines = build_lines(args.logs)
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"".join(lines[:200]))
                delivered(200)
                measure_idle()
                totals = measure(lambda: (sock.sendall(b"".join(lines)), delivered(200 + len(lines))))
            return totals, len(lines)
        workload = Workload(load, max(1, SPANS_PER_PAYLOAD // len(mixes.traces(load, 1)[0])), 20, 0.0, port)
        # one connection per worker, each warmed up (the kernel hands a connection to whichever accepts first)
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(max(1, len(workers)))]
        try:
            for sock in socks:
                send_payloads(sock, workload, 10)
            delivered()
            measure_idle()
            spans = []
            totals = measure(lambda: (spans.extend(send_payloads(sock, workload, args.requests // len(socks))
                                                   for sock in socks), delivered()))
        finally:
            for sock in socks:
                sock.close()
        return totals, sum(spans)
    finally:
        agent.terminate()
        agent.wait(120)
        intake.stop()


def send_payloads(sock: socket.socket, workload: Workload, n: int) -> int:
    """Sends ``n`` payloads, each after the answer to the one before; the spans they carried."""
    spans = 0
    for _ in range(n):
        request = workload.next()
        sock.sendall(request.head + request.body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the agent answered {head[:80]!r}")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += sock.recv(65536)
        spans += request.spans
    return spans


# ------------------------------------------------------------------------------------------- the baseline

def baseline_child(load: str, count: int) -> None:
    """Run under callgrind by ``baseline_instructions``: builds the load, says so, waits for the go, decodes."""
    import msgpack
    import orjson

    if load == "logs":
        from logs import build_lines
        lines = build_lines(count)

        def work() -> None:
            for line in lines:
                orjson.dumps(orjson.loads(line))
    else:
        workload = Workload(load, max(1, SPANS_PER_PAYLOAD // len(mixes.traces(load, 1)[0])), 20, 0.0, 0)
        bodies = [workload.next().body for _ in range(count)]

        def work() -> None:
            for body in bodies:
                for trace in msgpack.unpackb(body, raw=False, strict_map_key=False):
                    for span in trace:
                        blob = (span.get("meta_struct") or {}).get("_llmobs")
                        if blob is not None:
                            msgpack.unpackb(blob, raw=False, strict_map_key=False)
    print("ready", flush=True)
    sys.stdin.readline()
    work()
    print("done", flush=True)
    sys.stdin.readline()


def baseline_instructions(load: str, count: int, work_dir: Path) -> int:
    out = str(work_dir / f"callgrind.baseline.{load}")
    child = callgrind([sys.executable, __file__, "--baseline-child", load, str(count)], out, clean_env(),
                      stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"

        def work() -> None:
            child.stdin.write(b"go\n")
            child.stdin.flush()
            assert child.stdout.readline() == b"done\n"
        return counted([child.pid], out, work)[child.pid]
    finally:
        child.stdin.close()
        child.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("web", "llm", "logs"), action="append", help="one load (repeatable)")
    parser.add_argument("--requests", type=int, default=40, help="v0.4 payloads of 100 spans a mix (default 40)")
    parser.add_argument("--logs", type=int, default=4000, help="log lines (default 4,000)")
    parser.add_argument("--workers", type=int, default=1, help="[agent] workers (default 1): with more, the "
                        "shipping plane's and each worker's instructions are shown apart")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind files and say where")
    parser.add_argument("--baseline-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        baseline_child(args.baseline_child[0], int(args.baseline_child[1]))
        return 0
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("bench/instructions.py needs valgrind (apt install valgrind)", file=sys.stderr)
        return 2
    work_dir = Path(tempfile.mkdtemp(prefix="llmship-bench-instructions-"))
    print(f"llmship instructions bench (callgrind), end to end; {args.requests} payloads of 100 spans a mix, "
          f"{args.logs:,} log lines")
    for load in args.only or ("web", "llm", "logs"):
        (work_dir / load).mkdir()
        totals, items = agent_instructions(load, args, work_dir / load)
        total = sum(totals.values())
        base = baseline_instructions(load, args.logs if load == "logs" else args.requests, work_dir)
        what, base_name = ("record", "orjson loads + dumps") if load == "logs" else ("span", "msgpack.unpackb")
        print(f"  {load:5} {total / items:>9,.0f} instructions a {what} end to end;   {base_name} "
              f"{base / items:>7,.0f};   ratio {total / base:.2f}x")
        if len(totals) > 1:
            print("        of which " + ", ".join(f"{name} {n / items:,.0f}" for name, n in sorted(totals.items())))
    if args.keep:
        print(f"  callgrind files in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
