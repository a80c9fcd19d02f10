"""Running the agent as an operator does: probes, /metrics, `llmship status`, SIGHUP, systemd's notify
socket, and the API key staying out of every log line, status answer and error.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import TEST_API_KEY, http_get, rewrite_config, wait_for
from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"
TRACES_CAPTURE = CAPTURES / "v04_traces_llmobs_default.msgpack"
TRACE_HEADERS = {  # as ddtrace 4.16 sent them (captures/ddtrace-4.16/llmobs_default.agent.jsonl)
    "Content-Type": "application/msgpack",
    "Datadog-Meta-Lang": "python",
    "Datadog-Meta-Tracer-Version": "4.16.0",
    "Datadog-Client-Computed-Top-Level": "true",
    "Datadog-Send-Real-Http-Status": "1",
    "X-Datadog-Trace-Count": "6",
}
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def llmship(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "LLMSHIP_"))}
    return subprocess.run([sys.executable, "-m", "llmship", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def send_dogstatsd(port: int, *lines: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for line in lines:
            s.sendto(line.encode(), ("127.0.0.1", port))


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def counter(doc: dict, component: str, name: str) -> float:
    comp = doc["components"].get(component, {"counters": []})
    return sum(c["value"] for c in comp["counters"] if c["name"] == name)


class NotifySocket:
    """What systemd would listen on: a unix datagram socket whose path goes in $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="llmship-notify-", dir="/tmp")  # sun_path: 108 bytes at most
        self.path = os.path.join(self._dir, "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, message: str, timeout: float = 20.0) -> list[str]:
        """Wait until a datagram containing the line ``message`` arrives; returns all seen so far."""
        deadline = time.monotonic() + timeout
        while not any(message in m.split("\n") for m in self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {message} on NOTIFY_SOCKET after {timeout}s; got {self.messages}")
            self._sock.settimeout(remaining)
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def close(self) -> None:
        self._sock.close()
        os.unlink(self.path)
        os.rmdir(self._dir)


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()




# ------------------------------------------------------------------------------------------ probes, metrics


# Fixture order matters: the intake is set up before the agent so that it is torn down after it, and the
# agent's final flush on SIGTERM finds it (otherwise every stop waits out drain_timeout_secs).


def test_probes_status_and_metrics_on_the_running_agent(intake, start_agent):
    agent = start_agent(intake=intake)
    assert http_get(agent.status_url + "/health") == (200, b'{"status":"ok"}')
    assert http_get(agent.status_url + "/ready")[0] == 200

    send_dogstatsd(agent.ports["dsd_port"], "ops.requests:1|c|#model:gpt-4o", "ops.latency:12|ms")
    wait_for(lambda: counter(agent.status(), "dogstatsd", "received") >= 2, what="dogstatsd counters")

    doc = agent.status()
    assert doc["hostname"] == "test-host"
    assert doc["config_path"] == str(agent.config_path)
    assert {"span_text_rate", "prompt_log_rate"} <= doc["sample_rates"].keys()
    assert doc["version"]
    # what starting made is out of the cyclic collector's way (its full collections stalled the loop)
    assert doc["components"]["agent"]["gauges"]["gc_frozen_objects"] > 10_000

    with urllib.request.urlopen(agent.status_url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"] == OPENMETRICS
        text = response.read().decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE llmship_component_received_events counter" in text
    received = [line for line in text.splitlines()
                if line.startswith('llmship_component_received_events_total{component="dogstatsd"')]
    assert received and float(received[0].rsplit(" ", 1)[1]) >= 2
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    families = {f.name for f in parser.text_string_to_metric_families(text)}
    assert "llmship_component_received_events" in families


def test_llmship_status_prints_a_table_and_json(intake, start_agent):
    agent = start_agent(intake=intake)
    send_dogstatsd(agent.ports["dsd_port"], "ops.requests:1|c", "not a metric at all")
    wait_for(lambda: counter(agent.status(), "dogstatsd", "received") >= 1, what="dogstatsd counters")

    table = llmship("status", "--url", agent.status_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("llmship ") and "host=test-host" in lines[0]
    assert any(line.startswith("COMPONENT") for line in lines)
    assert any(line.startswith("dogstatsd ") for line in lines)
    assert "Sample rates:" in table.stdout

    # without --url it finds the agent through [status] listen in the config, as an operator would
    as_json = llmship("status", "--config", str(agent.config_path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["hostname"] == "test-host" and "dogstatsd" in doc["components"]


# ------------------------------------------------------------------------------------------ signals


def test_sighup_reloads_a_good_config_and_keeps_running_on_a_bad_one(intake, start_agent, notify_socket):
    agent = start_agent("[llm.sampling]\nprompt_log_rate = 0.1\n", intake=intake,
                        env={"NOTIFY_SOCKET": notify_socket.path})
    notify_socket.wait_for("READY=1")
    notify_socket.messages.clear()

    rewrite_config(agent, {"llm.sampling": {"prompt_log_rate": 0.5}})
    assert llmship("validate", "--config", str(agent.config_path)).returncode == 0  # ExecReload's gate
    agent.send_signal(signal.SIGHUP)
    wait_for(lambda: agent.status()["sample_rates"]["prompt_log_rate"] == 0.5, what="the reloaded rate")
    messages = notify_socket.wait_for("READY=1")
    reloading = next(m for m in messages if "RELOADING=1" in m.split("\n"))
    assert "MONOTONIC_USEC=" in reloading
    assert messages.index(reloading) < next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))

    rewrite_config(agent, {"agent": {"flush_interval_secs": -1}})
    assert llmship("validate", "--config", str(agent.config_path)).returncode != 0  # systemd stops here
    agent.send_signal(signal.SIGHUP)  # and if someone signals anyway, the old config stays
    wait_for(lambda: "reload_rejected" in agent.log_text(), what="the reload to be rejected")
    assert agent.proc.poll() is None
    assert http_get(agent.status_url + "/ready")[0] == 200
    assert agent.status()["sample_rates"]["prompt_log_rate"] == 0.5

    send_dogstatsd(agent.ports["dsd_port"], "after.reload:1|c")
    intake.wait_records("series", where=lambda r: r.get("metric") == "after.reload")


def test_notify_socket_hears_ready_watchdog_and_stopping(intake, start_agent, notify_socket):
    agent = start_agent(intake=intake, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "400000"})
    notify_socket.wait_for("READY=1")
    notify_socket.wait_for("WATCHDOG=1")
    assert agent.stop(signal.SIGTERM) == 0
    messages = notify_socket.wait_for("STOPPING=1", timeout=5)
    ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
    stopping_at = next(i for i, m in enumerate(messages) if "STOPPING=1" in m.split("\n"))
    assert ready_at < stopping_at


def test_ready_goes_503_while_draining(start_intake, start_agent):
    # An intake that answers slowly keeps the drain busy long enough to observe it.
    slow = start_intake("--latency-ms", "1500")
    agent = start_agent("[delivery]\ndrain_timeout_secs = 10.0\n", intake=slow)
    send_dogstatsd(agent.ports["dsd_port"], "drain.me:1|c")
    wait_for(lambda: counter(agent.status(), "dogstatsd", "received") >= 1, what="the metric")
    agent.send_signal(signal.SIGTERM)

    def not_ready_yet_alive() -> bool:
        code, _ = http_get(agent.status_url + "/ready", timeout=2)
        return code == 503 and http_get(agent.status_url + "/health", timeout=2)[0] == 200

    wait_for(not_ready_yet_alive, timeout=10, what="/ready 503 with /health 200 during the drain")
    assert agent.proc.wait(30) == 0  # the drain ends by itself (a second SIGTERM would cut it short)


# ------------------------------------------------------------------------------------------ logs


def test_logs_are_json_lines_at_the_configured_level(intake, start_agent):
    """journald, docker and Kubernetes collect stderr: one JSON object per line, an event name in each,
    and the config's log_level honoured (info here: no debug lines)."""
    agent = start_agent('[agent]\nlog_format = "json"\nlog_level = "info"\n', intake=intake)
    send_dogstatsd(agent.ports["dsd_port"], "not a metric", "logs.check:1|c")
    wait_for(lambda: counter(agent.status(), "dogstatsd", "received") >= 1, what="the metric")
    assert agent.stop() == 0
    lines = [line for line in agent.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert entry["event"] and entry["level"] in ("info", "warning", "error"), entry


# ------------------------------------------------------------------------------------------ the API key


def leak_sources(agent) -> dict[str, str]:
    """Everything an operator or a log pipeline sees."""
    seen = {
        "/status": http_get(agent.status_url + "/status")[1].decode(),
        "/metrics": http_get(agent.status_url + "/metrics")[1].decode(),
        "/ready": http_get(agent.status_url + "/ready")[1].decode(),
        "llmship status": llmship("status", "--url", agent.status_url).stdout,
        "llmship status --json": llmship("status", "--url", agent.status_url, "--json").stdout,
    }
    validate = llmship("validate", "--config", str(agent.config_path))
    seen["llmship validate"] = validate.stdout + validate.stderr
    return seen


@pytest.mark.parametrize("key_from", ["config file", "DD_API_KEY"])
def test_the_api_key_never_appears_in_logs_status_or_errors(start_intake, start_agent, key_from):
    # 403 on the first requests: the agent reports rejected deliveries (a classic place to echo headers).
    intake = start_intake("--fail-first", "3", "--fail-status", "403")
    config = '[agent]\nlog_level = "debug"\n'
    if key_from == "config file":
        agent = start_agent(config, intake=intake)
        assert TEST_API_KEY in agent.config_path.read_text()  # the test is about something real
    else:
        config += f'[sinks.datadog]\nurl = "{intake.url}"\n'
        agent = start_agent(config, env={"DD_API_KEY": TEST_API_KEY})

    send_dogstatsd(agent.ports["dsd_port"], "leak.check:1|c|#env:test", "garbage|||", "x:y|zz")
    assert post(f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces", TRACES_CAPTURE.read_bytes(),
                TRACE_HEADERS) == 200
    assert post(f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces", b"\xc1 not msgpack",
                TRACE_HEADERS) >= 400
    # Past the 3 rejected requests, deliveries succeed: the agent has both errors and successes to report.
    intake.wait_records("series", where=lambda r: r.get("metric") == "leak.check", timeout=30)
    wait_for(lambda: any(c["name"] == "errors" or c["name"] == "discarded"
                         for comp in agent.status()["components"].values() for c in comp["counters"]),
             what="an error or a drop in the agent's counters")

    agent.send_signal(signal.SIGHUP)  # reload logs the config it loads
    wait_for(lambda: "config_reloaded" in agent.log_text(), what="the reload")
    seen = leak_sources(agent)
    assert agent.stop() == 0
    seen["agent log"] = agent.log_text()
    assert "config_reloaded" in seen["agent log"] and "stopped" in seen["agent log"]
    for where, text in seen.items():
        assert TEST_API_KEY not in text, f"the API key appears in {where}"
        assert TEST_API_KEY[:16] not in text, f"part of the API key appears in {where}"
    # while the agent did send a key to the intake: it really had one to leak
    assert any(r["api_key_present"] for r in intake.requests())


def test_a_key_inside_bad_input_is_not_echoed(intake, start_agent):
    """An app that sends garbage containing the key (a mis-set tag, a pasted env) must not leak it."""
    agent = start_agent(intake=intake)
    send_dogstatsd(agent.ports["dsd_port"], f"bad_metric_{TEST_API_KEY}|zz", f"{TEST_API_KEY}")
    assert post(f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces",
                f"not msgpack {TEST_API_KEY}".encode(), TRACE_HEADERS) >= 400
    wait_for(lambda: counter(agent.status(), "dogstatsd", "received")
             + counter(agent.status(), "dogstatsd", "discarded")
             + counter(agent.status(), "dogstatsd", "errors") >= 1, what="the bad packets to be counted")
    status_text = http_get(agent.status_url + "/status")[1].decode()
    metrics_text = http_get(agent.status_url + "/metrics")[1].decode()
    assert agent.stop() == 0
    for where, text in (("/status", status_text), ("/metrics", metrics_text), ("agent log", agent.log_text())):
        assert TEST_API_KEY not in text, f"the API key appears in {where}"


# ------------------------------------------------------------------------------------------ the example app


def test_the_compose_example_app_reaches_the_intake_through_the_agents_sockets(tmp_path, intake, start_agent):
    """deploy/compose.yaml's app, run here without containers: ddtrace-run + openai against the fake
    OpenAI server, sending over the agent's unix sockets as in compose.yaml."""
    start_agent('[sources.traces]\nsocket = "{tmp}/apm.socket"\n'
                '[sources.dogstatsd]\nsocket = "{tmp}/dsd.socket"\n', intake=intake)
    example = Path(__file__).resolve().parents[2] / "deploy" / "example-app"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        openai_port = s.getsockname()[1]
    fake_openai = subprocess.Popen([sys.executable, str(example / "fake_openai.py"), "--host", "127.0.0.1",
                                    "--port", str(openai_port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", openai_port), timeout=1).close() or True,
                 what="the fake OpenAI server")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "LLMSHIP_", "OPENAI_"))}
        env.update({
            "DD_TRACE_AGENT_URL": f"unix://{tmp_path}/apm.socket",
            "DD_DOGSTATSD_URL": f"unix://{tmp_path}/dsd.socket",
            "DD_LLMOBS_ENABLED": "1", "DD_LLMOBS_ML_APP": "example-chat", "DD_SERVICE": "example-chat",
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false", "DD_REMOTE_CONFIGURATION_ENABLED": "false",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{openai_port}/v1", "OPENAI_API_KEY": "not-a-real-key",
        })
        ddtrace_run = Path(sys.executable).parent / "ddtrace-run"
        app = subprocess.run([str(ddtrace_run), sys.executable, str(example / "app.py"), "--iterations", "2",
                              "--interval-secs", "0"], env=env, capture_output=True, text=True, timeout=90)
        assert app.returncode == 0, app.stderr[-3000:]
        assert app.stdout.count("-> (fake)") == 2
    finally:
        fake_openai.terminate()
        fake_openai.wait(10)
    intake.wait_records("llmobs", 2, timeout=30)
    series = intake.wait_records("series", where=lambda r: r.get("metric") == "example.questions", timeout=30)
    assert "model:gpt-4o-mini" in series[0]["data"]["tags"]
    assert intake.wait_records("traces", 1, timeout=30)
