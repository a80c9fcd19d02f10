"""Start the real `llmship intake` and `llmship run` as subprocesses on free ports, and wait on conditions.

Integration tests use these; nothing here mocks the network. Waiting is always "poll a condition until a
deadline", never a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PYTHON = sys.executable
# What real clients sent (ddtrace 4.16, datadog 0.56): copied from ../shared/captures, see its README.md
CAPTURES = Path(__file__).resolve().parent / "fixtures" / "captures"
TEST_API_KEY = "0123456789abcdef0123456789abcdef"  # a fake Datadog-shaped key, used to check it never leaks
# A metric bucket that no test outlives: buckets are aligned on the clock (start = t - t % interval), so with
# 2**33 s the open bucket ends in the year 2242 and only a flush on demand (or the drain) ships it. With an
# hour, a test running across the hour saw a bucket end: datagrams read either side of it made two series
# payloads, or the bucket flushed early shipped again, whole (one more payload than the test counts). A
# power of two keeps a counter's rate x interval an exact count.
UNENDING_BUCKET_SECS = 2**33

# One of each default rule's secrets, and the part of it that must never reach the intake.
SECRETS = {
    "anthropic_api_key": ("sk-ant-api03-Ab3dEfGh1jKlMn0pQr2StUvWxYz4aBcDeFgHiJkLmNoPqRsT9uVw",) * 2,
    "openai_api_key": ("sk-proj-Ab3dEfGh1jKlMn0pQr2StUvWxYz4aBcDeFgHiJkLmNoPqRsT9",) * 2,
    "aws_access_key_id": ("AKIAIOSFODNN7EXAMPLE",) * 2,
    "datadog_api_key": ("DD_API_KEY=0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    "bearer_token": ("Authorization: Bearer abcdefghijklmnop123456", "abcdefghijklmnop123456"),
    "email": ("jane.doe@example.com",) * 2,
    "credit_card": ("4111 1111 1111 1111",) * 2,
    "ipv4": ("203.0.113.7",) * 2,
    "ipv6": ("2001:db8::1",) * 2,
}
NEEDLES = [needle for _, needle in SECRETS.values()]


_handed_out: set[tuple[int, int]] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free now and never handed out before in this process: a test that picks its intake's port
    before the agent's listeners are picked (and bound) must not get the same one for both (seen: the
    logs listener took the intake's port, and the restarted agent could not bind it)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (kind, port) not in _handed_out:
            _handed_out.add((kind, port))
            return port


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Return predicate()'s first truthy value; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the process may not be up yet: keep polling until the deadline
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    """POST to 127.0.0.1:``port`` on a connection of its own; the answer's status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


def _subprocess_env(extra: dict[str, str] | None) -> dict[str, str]:
    # The agent honours proxy variables: a test gets one only when it sets it, never from the machine.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DD_", "LLMSHIP_")) and k.upper() not in _PROXY_VARIABLES}
    env.update(extra or {})
    return env


class Intake:
    """`llmship intake` on a free port, recording to a SQLite file under ``tmp_path``."""

    def __init__(self, tmp_path: Path, *flags: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = tmp_path / f"intake-{self.port}.sqlite"
        self.log_path = tmp_path / f"intake-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "llmship", "intake", "--listen", f"127.0.0.1:{self.port}", "--db", str(self.db),
             *flags],
            stdout=self._log, stderr=subprocess.STDOUT, env=_subprocess_env(None),
        )
        wait_for(lambda: self.proc.poll() is not None or b"listening on" in self.log_path.read_bytes(),
                 timeout=20, what="llmship intake to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"llmship intake exited: {self.log_path.read_text()}")

    def _store(self):
        from llmship.intake.store import IntakeStore

        return IntakeStore(self.db)

    def records(self, kind: str | None = None) -> list[dict]:
        if not self.db.exists():
            return []
        return self._store().records(kind)

    def requests(self, kind: str | None = None) -> list[dict]:
        if not self.db.exists():
            return []
        return self._store().requests(kind)

    def wait_records(self, kind: str, n: int = 1, timeout: float = 20.0,
                     where: Callable[[dict], bool] | None = None) -> list[dict]:
        """Wait until at least ``n`` records of ``kind`` (matching ``where`` on their data) arrived."""
        def enough():
            found = [r for r in self.records(kind) if where is None or where(r["data"])]
            return found if len(found) >= n else None

        return wait_for(enough, timeout=timeout, what=f"{n} {kind} record(s) at the intake")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def rewrite_config(agent, change: dict) -> None:
    """Merge ``change`` ({"dotted.section": {key: value}}) into the agent's config file, as an operator edits
    it before a reload."""
    current = tomllib.loads(agent.config_path.read_text())
    for section, values in change.items():
        table = current
        for part in section.split("."):
            table = table.setdefault(part, {})
        table.update(values)
    agent.config_path.write_text(dump_toml(current))


def counted(intake, metric: str) -> float:
    """What the intake keeps for a counter: the last point per timestamp, as counts (rate x interval)."""
    kept = {}
    for record in intake.records("series"):
        s = record["data"]
        if s["metric"] == metric:
            for point in s["points"]:
                kept[point["timestamp"]] = point["value"] * (s.get("interval") or 1)
    return sum(kept.values())


def dump_toml(data: dict, prefix: str = "") -> str:
    """A small TOML writer for test configs (tables, arrays of tables, scalars, lists, inline tables)."""
    lines, tables = [], []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not (prefix == "llm.pricing"):
            tables.append(dump_toml(value, name) if value else f"[{name}]\n")
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for item in value:
                tables.append(f"[[{name}]]\n" + "".join(f"{k} = {_toml_value(x)}\n" for k, x in item.items()))
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}\n")
    head = (f"[{prefix}]\n" if prefix and lines else "") + "".join(lines)
    return head + "".join(tables)


class Agent:
    """`llmship run` on free ports with a test config merged over sensible test defaults.

    ``config`` is TOML text; it may use the placeholders {intake_url}, {dsd_port}, {trace_port},
    {logs_tcp_port}, {logs_http_port}, {status_port} and {tmp}.
    """

    def __init__(self, tmp_path: Path, config: str = "", intake: Intake | None = None,
                 env: dict[str, str] | None = None, start: bool = True) -> None:
        self.tmp = tmp_path
        self.ports = {
            "dsd_port": free_port(socket.SOCK_DGRAM),
            "trace_port": free_port(),
            "logs_tcp_port": free_port(),
            "logs_http_port": free_port(),
            "status_port": free_port(),
        }
        self.intake = intake
        values = {**{k: str(v) for k, v in self.ports.items()}, "tmp": str(tmp_path),
                  "intake_url": intake.url if intake else ""}
        for key, value in values.items():
            config = config.replace("{" + key + "}", value)
        defaults = {
            # overload_lag_ms: a test machine shared with other work can stall an agent past the default
            # 150 ms, and a shed request is a 429 to a test's client; the shedding tests set their own bound
            "agent": {"hostname": "test-host", "flush_interval_secs": 1.0, "data_dir": str(tmp_path / "data"),
                      "log_format": "json", "overload_lag_ms": 1000.0},
            "sources": {
                "dogstatsd": {"udp": f"127.0.0.1:{self.ports['dsd_port']}"},
                "traces": {"listen": f"127.0.0.1:{self.ports['trace_port']}"},
                "logs": {"tcp": f"127.0.0.1:{self.ports['logs_tcp_port']}",
                         "http": f"127.0.0.1:{self.ports['logs_http_port']}"},
            },
            "status": {"listen": f"127.0.0.1:{self.ports['status_port']}"},
            "delivery": {"retry_initial_secs": 0.1, "retry_max_secs": 1.0, "drain_timeout_secs": 10.0},
        }
        if intake:
            defaults["sinks"] = {"datadog": {"url": intake.url, "api_key": TEST_API_KEY}}
        merged = _deep_merge(defaults, tomllib.loads(config))
        self.config_path = tmp_path / f"llmship-{self.ports['status_port']}.toml"
        self.config_path.write_text(dump_toml(merged))
        self.status_url = f"http://127.0.0.1:{self.ports['status_port']}"
        self.log_path = tmp_path / f"agent-{self.ports['status_port']}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "llmship", "run", "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=_subprocess_env(self.env),
        )
        wait_for(lambda: self.proc.poll() is not None or http_get(self.status_url + "/ready", 1)[0] == 200,
                 timeout=30, what="the agent to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"llmship run exited {self.proc.returncode}: {self.log_text()}")

    def status(self) -> dict:
        code, body = http_get(self.status_url + "/status")
        assert code == 200, body
        return json.loads(body)

    def counter(self, component: str, name: str, **labels: str) -> float:
        """A counter from /status; with no labels, summed over all label sets."""
        comp = self.status()["components"].get(component, {"counters": []})
        return sum(c["value"] for c in comp["counters"]
                   if c["name"] == name and all(c["labels"].get(k) == v for k, v in labels.items()))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
