"""What the bench scripts share: cores, ports, CPU time and memory of a process, waiting on a condition,
the agent and intake processes, the names read from the agent's GET /status, goals and their verdicts."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
    instruction. ``profile``: run it under cProfile, stats to that path."""

    def __init__(self, workdir: Path, sources: dict[str, dict], sink: dict[str, dict], cpu: int = 0,
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
                                     preexec_fn=lambda: pin(0, cpu))
        wait_until(lambda: self.proc.poll() is not None or http_get(self.status_url + "/ready", 1)[0] == 200,
                   30, "the agent to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError("llmship run exited: " + self.log_path.read_text())

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
        return process_cpu_secs(self.proc.pid)

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
