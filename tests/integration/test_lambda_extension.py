"""`llmship run` as an AWS Lambda extension (AWS_LAMBDA_RUNTIME_API set), driven by a local fake of the
Lambda service (fake_lambda.py): a "function" using ddtrace + openai + DogStatsD runs during each INVOKE,
and what it sent must be at `llmship intake` when the extension asks for the next event."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_lambda import FakeLambda
from fake_openai import FakeOpenAI
from harness import UNENDING_BUCKET_SECS, Agent, counted, _subprocess_env, wait_for

# A bucket that does not end while the test runs (see UNENDING_BUCKET_SECS): only the flush after each
# invocation ships these counts.
CONFIG = f"""
[agent]
flush_interval_secs = {UNENDING_BUCKET_SECS}
[aws_lambda]
telemetry_listen = "127.0.0.1:0"
flush_timeout_secs = 10
"""

FUNCTION = r'''
import ddtrace.auto  # noqa: F401  (first: patches openai before it is imported)
import os
import sys

from datadog import DogStatsd
from ddtrace.llmobs import LLMObs
from ddtrace.trace import tracer
from openai import OpenAI


def handler(question, orders):
    client = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"] + "/v1", api_key="test-key", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
    statsd = DogStatsd(host="127.0.0.1", port=int(os.environ["DSD_PORT"]), disable_buffering=True)
    for _ in range(orders):
        statsd.increment("lambda.orders", tags=["kind:test"])


handler(sys.argv[1], int(sys.argv[2]))
# What datadog-lambda's handler wrapper does when the handler returns: the tracer's buffers go to the agent.
LLMObs.flush()
tracer.flush()
'''


@pytest.fixture
def fake_lambda():
    service = FakeLambda()
    yield service
    service.stop()


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.stop()


def run_function(tmp_path: Path, agent, openai_url: str, question: str, orders: int) -> None:
    script = tmp_path / "function.py"
    script.write_text(FUNCTION)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "OTEL_", "AWS_"))}
    env.update({
        "DD_TRACE_AGENT_URL": f"http://127.0.0.1:{agent.ports['trace_port']}",
        "DD_DOGSTATSD_URL": f"udp://127.0.0.1:{agent.ports['dsd_port']}",
        "DD_LLMOBS_ENABLED": "1", "DD_LLMOBS_ML_APP": "lambda-app", "DD_SERVICE": "fn",
        "FAKE_OPENAI_URL": openai_url, "DSD_PORT": str(agent.ports["dsd_port"]),
    })
    done = subprocess.run([sys.executable, str(script), question, str(orders)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def log_events(agent, event: str) -> list[dict]:
    """The agent's JSON log lines for one event name."""
    lines = [json.loads(line) for line in agent.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]




def at_the_intake(intake) -> dict:
    return {
        "orders": counted(intake, "lambda.orders"),
        "questions": sorted(r["data"]["meta"]["input"]["messages"][-1]["content"]
                            for r in intake.records("llmobs")),
        "spans": len(intake.records("traces")),
        "late": counted(intake, "lambda.late"),
    }


def start_extension(start_agent, intake, fake_lambda, config: str = CONFIG):
    agent = start_agent(config, intake=intake, env={"AWS_LAMBDA_RUNTIME_API": fake_lambda.runtime_api})
    wait_for(lambda: fake_lambda.next_requests == 1, timeout=20, what="the extension to ask for its first event")
    return agent


def test_each_invocation_is_delivered_before_the_next_event_and_shutdown_drains(
        tmp_path, fake_lambda, fake_openai, intake, start_agent):
    fake_lambda.on_next = lambda n: at_the_intake(intake)
    agent = start_extension(start_agent, intake, fake_lambda)
    assert fake_lambda.registrations == [{"name": "llmship", "events": ["INVOKE", "SHUTDOWN"]}]
    [subscription] = fake_lambda.subscriptions
    assert subscription["types"] == ["platform"] and subscription["schemaVersion"] == "2022-12-13"
    assert subscription["destination"]["URI"].startswith("http://127.0.0.1:")

    for n, (request_id, question, orders) in enumerate([("req-1", "First question?", 3),
                                                        ("req-2", "Second question?", 2)], start=2):
        fake_lambda.invoke(request_id)
        run_function(tmp_path, agent, fake_openai.url, question, orders)
        # The handler returned but Lambda has not said so: the extension must still be in this invocation.
        assert fake_lambda.next_requests == n - 1
        fake_lambda.runtime_done(request_id)
        wait_for(lambda n=n: fake_lambda.next_requests == n, timeout=30, what=f"the extension to finish {request_id}")
    # What the intake held when the extension asked for each next event:
    first, second = fake_lambda.seen[2], fake_lambda.seen[3]
    assert first["orders"] == 3 and first["questions"] == ["First question?"] and first["spans"] >= 1
    # Same 60 s bucket (or the next): the intake keeps the whole bucket, 3 + 2, not the last part.
    assert second["orders"] == 5 and second["questions"] == ["First question?", "Second question?"]
    assert second["spans"] > first["spans"]

    # Data accepted after the last flush (no invocation running): SHUTDOWN must drain it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(4):
            s.sendto(b"lambda.late:1|c", ("127.0.0.1", agent.ports["dsd_port"]))
    fake_lambda.shutdown(deadline_secs=2.0)
    started = time.monotonic()
    assert agent.proc.wait(10) == 0
    assert time.monotonic() - started < 3.0  # within Lambda's deadline (and process teardown)
    assert at_the_intake(intake)["late"] == 4
    assert fake_lambda.next_requests == 3  # nothing asked after SHUTDOWN
    assert fake_lambda.errors == []


def test_shutdown_with_the_intake_down_exits_by_the_deadline(tmp_path, fake_lambda, start_intake, start_agent):
    intake = start_intake("--fail-for-secs", "600")
    config = CONFIG.replace("flush_timeout_secs = 10", "flush_timeout_secs = 0.5")
    agent = start_extension(start_agent, intake, fake_lambda, config)
    fake_lambda.invoke("req-1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"lambda.orders:1|c", ("127.0.0.1", agent.ports["dsd_port"]))
    fake_lambda.runtime_done("req-1")
    # The flush gives up after flush_timeout_secs and the extension moves on, keeping the data.
    wait_for(lambda: fake_lambda.next_requests == 2, timeout=10, what="the flush to time out")
    assert fake_lambda.next_at[1] - fake_lambda.next_at[0] >= 0.5
    [flushed] = log_events(agent, "lambda_invocation_flushed")
    assert flushed["status"] == "timeout" and flushed["pending"] == 1 and flushed["delivered"] == 0
    fake_lambda.shutdown(deadline_secs=1.5)
    started = time.monotonic()
    assert agent.proc.wait(10) == 0
    assert time.monotonic() - started < 2.5
    [leftovers] = log_events(agent, "delivery_leftovers")  # what could not be delivered, said (and counted)
    assert leftovers["kind"] == "series" and leftovers["spooled"] is False


def test_a_refused_telemetry_subscription_is_reported_as_an_init_error(tmp_path, intake):
    service = FakeLambda(refuse_subscription=True)
    try:
        agent = Agent(tmp_path, CONFIG, intake=intake, env={"AWS_LAMBDA_RUNTIME_API": service.runtime_api},
                      start=False)
        agent._log = open(agent.log_path, "ab")
        agent.proc = subprocess.Popen([sys.executable, "-m", "llmship", "run", "--config", str(agent.config_path)],
                                      stdout=agent._log, stderr=subprocess.STDOUT, env=_subprocess_env(agent.env))
        assert agent.proc.wait(30) == 1
        agent._log.close()
        [error] = service.errors
        assert error["path"].endswith("/init/error") and error["type"] == "Extension.TelemetrySubscriptionFailed"
        assert "HTTP 400" in error["body"]["errorMessage"]
    finally:
        service.stop()


REPO = Path(__file__).resolve().parents[2]


def test_the_layer_layout_starts_as_an_extension_named_after_its_launcher(tmp_path, fake_lambda, intake):
    """deploy/lambda/build.sh (llmship alone: dependencies would come from PyPI) lays out /opt: the launcher
    in extensions/, the package in llmship/lib; started as Lambda starts it, it registers and shuts down."""
    layer = tmp_path / "opt"
    built = subprocess.run(["sh", str(REPO / "deploy/lambda/build.sh"), "--no-deps", "--out", str(layer)],
                           env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    launcher = layer / "extensions" / "llmship"
    assert os.access(launcher, os.X_OK) and (layer.parent / "opt.zip").exists()
    where = subprocess.run([sys.executable, "-c", "import llmship; print(llmship.__file__)"], capture_output=True,
                           text=True, env={**_subprocess_env(None), "PYTHONPATH": str(layer / "llmship/lib")})
    assert where.stdout.startswith(str(layer / "llmship/lib/llmship/"))

    agent = Agent(tmp_path, CONFIG, intake=intake, start=False)  # writes the config with free ports
    log = open(agent.log_path, "wb")
    proc = subprocess.Popen([str(launcher)], stdout=log, stderr=subprocess.STDOUT, env=_subprocess_env({
        "AWS_LAMBDA_RUNTIME_API": fake_lambda.runtime_api, "LLMSHIP_PYTHON": sys.executable,
        "LLMSHIP_CONFIG": str(agent.config_path)}))
    try:
        wait_for(lambda: fake_lambda.next_requests == 1, timeout=30, what="the launched extension to register")
        assert fake_lambda.registrations == [{"name": "llmship", "events": ["INVOKE", "SHUTDOWN"]}]
        fake_lambda.shutdown(deadline_secs=2.0)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
