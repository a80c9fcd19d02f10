"""The OTLP sink end to end: real clients (ddtrace + openai, an OpenTelemetry SDK app, DogStatsD, TCP logs)
send to `llmship run`, whose [sinks.otlp] ships to `llmship intake`'s /v1/traces, /v1/metrics and
/v1/logs, where we look at the decoded OTLP spans, metric points and log records."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from fake_openai import FakeOpenAI
from harness import free_port, http_get, wait_for

MARKER = "…[truncated]"
TOKEN = "s3cr3t-otlp-token-42"
EMAIL_PROMPT = "And of Peru? Reply to alice.bars@example.com"
LONG_PROMPT = "LONGPROMPT " + "word " * 300

DDTRACE_APP = r'''
import ddtrace.auto  # noqa: F401
import os

from ddtrace.llmobs import LLMObs
from ddtrace.trace import tracer
from openai import OpenAI, OpenAIError

c = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"] + "/v1", api_key="test-key", max_retries=0)


def chat(text, model="gpt-4o-mini"):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


chat("What is the capital of France?")
chat(os.environ["EMAIL_PROMPT"])
chat(os.environ["LONG_PROMPT"])
try:
    chat("fail", model="rate-limited")
except OpenAIError:
    pass
LLMObs.flush()
tracer.flush()
'''

OTEL_APP = r'''
import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "otelbot"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
OpenAIInstrumentor().instrument()
from openai import OpenAI

client = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"] + "/v1", api_key="test-key", max_retries=0)
with trace.get_tracer("app").start_as_current_span("handle_request"):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": os.environ["EMAIL_PROMPT"]}])
provider.shutdown()
'''

BASE = """
[agent]
tags = ["team:ml"]
[llm]
max_text_chars = 64
[llm.sampling]
prompt_log_rate = 1.0
[sinks.otlp]
endpoint = "{intake_url}"
headers = { authorization = "Bearer ${OTLP_TOKEN}" }
"""
OTLP_ONLY = '[sinks.datadog]\napi_key = ""\nurl = ""\n'


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.stop()


def run(tmp_path: Path, source: str, env: dict[str, str]) -> str:
    script = tmp_path / "app.py"
    script.write_text(source)
    app_env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "OTEL_", "TRACELOOP_"))}
    app_env.update(env)
    proc = subprocess.run([sys.executable, str(script)], env=app_env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def ddtrace_env(agent, fake_openai) -> dict[str, str]:
    return {"DD_TRACE_AGENT_URL": f"http://127.0.0.1:{agent.ports['trace_port']}", "DD_LLMOBS_ENABLED": "1",
            "DD_LLMOBS_ML_APP": "demo-app", "DD_SERVICE": "chatbot", "DD_ENV": "staging", "DD_VERSION": "1.2.3",
            "FAKE_OPENAI_URL": fake_openai.url, "EMAIL_PROMPT": EMAIL_PROMPT, "LONG_PROMPT": LONG_PROMPT}


def points(intake, name: str, **attrs) -> list[dict]:
    return [r["data"] for r in intake.records("otlp_metrics") if r["data"]["name"] == name
            and all(r["data"]["attributes"].get(k) == v for k, v in attrs.items())]


def input_text(span: dict) -> str:
    return orjson.loads(span["attributes"]["gen_ai.input.messages"])[-1]["parts"][0]["content"]


def test_ddtrace_openai_both_sinks(tmp_path, intake, start_agent, fake_openai):
    agent = start_agent(BASE, intake=intake, env={"OTLP_TOKEN": TOKEN})
    run(tmp_path, DDTRACE_APP, ddtrace_env(agent, fake_openai))
    # DogStatsD and a log line, through the same agent
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"shop.orders:3|c|#region:eu\nshop.queue:7|g", ("127.0.0.1", agent.ports["dsd_port"]))
    with socket.create_connection(("127.0.0.1", agent.ports["logs_tcp_port"])) as s:
        s.sendall(b'{"message": "order placed by bob@example.com", "service": "shop", "status": "warn"}\n')

    # GenAI spans at /v1/traces: the four calls, scrubbed and truncated
    spans = [r["data"] for r in intake.wait_records(
        "otlp_spans", 4, timeout=30, where=lambda d: "gen_ai.operation.name" in d["attributes"])]
    calls = [s for s in spans if "gen_ai.operation.name" in s["attributes"]]
    assert len(calls) == 4 and len({s["span_id"] for s in calls}) == 4
    for s in calls:
        a = s["attributes"]
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
        assert s["kind"] == 3 and s["name"] == f"chat {a['gen_ai.request.model']}"
        assert s["resource"]["service.name"] == "chatbot" and s["resource"]["deployment.environment.name"] == "staging"
        assert len(s["trace_id"]) == 32 and len(s["span_id"]) == 16
    texts = {input_text(s) for s in calls}
    assert "And of Peru? Reply to [REDACTED:email]" in texts
    long = next(t for t in texts if t.startswith("LONGPROMPT"))
    assert long.endswith(MARKER) and len(long) == 64
    assert not any("alice.bars" in orjson.dumps(s).decode() for s in spans)
    failed = [s for s in calls if s["status"]["code"] == 2]
    assert len(failed) == 1 and failed[0]["attributes"]["error.type"]
    ok = [s for s in calls if s["status"]["code"] != 2]
    tokens_in = sum(s["attributes"]["gen_ai.usage.input_tokens"] for s in ok)
    tokens_out = sum(s["attributes"]["gen_ai.usage.output_tokens"] for s in ok)
    assert tokens_in > 0 and tokens_out > 0

    # gen_ai.client.token.usage: exact sums per token type, the spec's buckets
    def usage_sum(kind):
        return sum(p["sum"] for p in points(intake, "gen_ai.client.token.usage", **{"gen_ai.token.type": kind}))

    wait_for(lambda: usage_sum("input") == tokens_in and usage_sum("output") == tokens_out, timeout=30,
             what="gen_ai.client.token.usage sums")
    usage = points(intake, "gen_ai.client.token.usage")
    assert all(p["type"] == "histogram" and p["unit"] == "{token}" and p["temporality"] == 1 for p in usage)
    assert usage[0]["explicit_bounds"][:3] == [1, 4, 16] and usage[0]["explicit_bounds"][-1] == 67108864
    assert usage[0]["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    durations = wait_for(lambda: points(intake, "gen_ai.client.operation.duration") or None, timeout=20)
    assert sum(p["count"] for p in durations) == 4 and durations[0]["unit"] == "s"
    assert any(p["attributes"].get("error.type") for p in durations)

    # llm.* and DogStatsD series as OTLP sums and gauges
    wait_for(lambda: points(intake, "llm.requests") and points(intake, "shop.queue"), timeout=20,
             what="llm.requests and DogStatsD points")
    assert sum(p["value"] for p in points(intake, "llm.tokens.input")) == tokens_in
    orders = points(intake, "shop.orders")
    assert orders[0]["type"] == "sum" and orders[0]["temporality"] == 1 and orders[0]["attributes"]["region"] == "eu"
    assert sum(p["value"] for p in orders) == 3
    assert points(intake, "shop.queue")[0]["type"] == "gauge" and points(intake, "shop.queue")[0]["value"] == 7

    # logs as OTLP log records (scrubbed), and the sample logs of the calls
    logs = [r["data"] for r in intake.wait_records("otlp_logs", 1, timeout=20,
                                                    where=lambda d: "order placed" in str(d["body"]))]
    assert logs[0]["severity_text"] == "warn" and logs[0]["resource"]["service.name"] == "shop"
    assert "bob@example.com" not in logs[0]["body"]

    # the Datadog sink got the same calls
    assert len(intake.wait_records("llmobs", 4, timeout=20)) >= 4

    # the header went out interpolated; its value is in no log line nor the status
    assert all(r["api_key_present"] for r in intake.requests("otlp_spans"))
    status = orjson.dumps(agent.status()).decode()
    assert "OTLP" in status and TOKEN not in status
    agent.stop()
    assert TOKEN not in agent.log_text()


def test_otel_sdk_app_otlp_only_with_retry(tmp_path, start_intake, start_agent, fake_openai):
    intake = start_intake("--fail-first", "2", "--fail-kind", "otlp_spans", "--retry-after", "1")
    otlp_port = free_port()
    config = BASE + OTLP_ONLY + f'[sources.otlp]\nhttp = "127.0.0.1:{otlp_port}"\n'
    agent = start_agent(config, intake=intake, env={"OTLP_TOKEN": TOKEN})
    started = time.monotonic()
    run(tmp_path, OTEL_APP, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
                             "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                             "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only",
                             "FAKE_OPENAI_URL": fake_openai.url, "EMAIL_PROMPT": EMAIL_PROMPT})
    spans = [r["data"] for r in intake.wait_records("otlp_spans", 2, timeout=40)]
    call = next(s for s in spans if s["attributes"].get("gen_ai.operation.name") == "chat")
    root = next(s for s in spans if s["name"] == "handle_request")
    assert call["parent_span_id"] == root["span_id"] and call["trace_id"] == root["trace_id"]
    assert input_text(call) == "And of Peru? Reply to [REDACTED:email]"
    assert call["resource"]["service.name"] == "otelbot"
    # 503 + Retry-After twice, then delivered; never sooner than Retry-After allows
    statuses = [r["status"] for r in intake.requests("otlp_spans")]
    assert statuses[:2] == [503, 503] and 200 in statuses
    assert time.monotonic() - started >= 2
    wait_for(lambda: points(intake, "gen_ai.client.token.usage") or None, timeout=20)
    # OTLP only: nothing for Datadog, no file sink
    assert intake.records("llmobs") == [] and intake.records("traces") == []
    assert not (tmp_path / "data" / "out").exists()
    assert http_get(agent.status_url + "/ready")[0] == 200


def test_with_workers_otlp_items_cross_to_the_shipping_plane(tmp_path, intake, start_agent, fake_openai):
    config = BASE.replace("[agent]\n", "[agent]\nworkers = 2\n") + OTLP_ONLY
    agent = start_agent(config, intake=intake, env={"OTLP_TOKEN": TOKEN})
    run(tmp_path, DDTRACE_APP, ddtrace_env(agent, fake_openai))
    with socket.create_connection(("127.0.0.1", agent.ports["logs_tcp_port"])) as s:
        s.sendall(b'{"message": "from a worker", "service": "shop"}\n')
    spans = [r["data"] for r in intake.wait_records(
        "otlp_spans", 4, timeout=30, where=lambda d: "gen_ai.operation.name" in d["attributes"])]
    assert "And of Peru? Reply to [REDACTED:email]" in {input_text(s) for s in spans}
    intake.wait_records("otlp_logs", 1, timeout=20, where=lambda d: d["body"] == "from a worker")
    ok = [s for s in spans if s["status"]["code"] != 2]
    tokens_in = sum(s["attributes"]["gen_ai.usage.input_tokens"] for s in ok)
    wait_for(lambda: sum(p["sum"] for p in points(intake, "gen_ai.client.token.usage",
                                                   **{"gen_ai.token.type": "input"})) == tokens_in, timeout=20)
    assert intake.records("llmobs") == []


def test_a_call_seen_first_as_an_evp_event_reaches_v1_traces_once(intake, start_agent):
    """The tracer's two copies of a call in the order the router cannot foresee: the EVP event first (it
    gets an OTLP span of its own), then the v0.4 chunk that carries the same span. The chunk's other spans
    arrive; the call's span id is at /v1/traces once (it used to arrive twice)."""
    from harness import CAPTURES, http_post
    from llmship.llm import extract
    from llmship.sources.traces import decode_v04

    agent = start_agent(BASE + OTLP_ONLY, intake=intake, env={"OTLP_TOKEN": TOKEN})
    port = agent.ports["trace_port"]
    body = (CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes()
    spans = [s for chunk in decode_v04(body) for s in chunk]
    carriers = [s for s in spans if "_llmobs" in s.meta_struct]
    assert carriers
    events = [extract.llmobs_event(extract._unpack_struct(s.meta_struct["_llmobs"]), s) for s in carriers]
    envelope = [{"_dd.stage": "raw", "_dd.tracer_version": "4.16.0", "event_type": "span", "spans": events}]
    evp_headers = {"Content-Type": "application/json", "X-Datadog-EVP-Subdomain": "llmobs-intake"}
    assert http_post(port, "/evp_proxy/v2/api/v2/llmobs", orjson.dumps(envelope), evp_headers) == 202
    call_ids = {f"{s.span_id:016x}" for s in carriers}
    intake.wait_records("otlp_spans", len(call_ids), timeout=30, where=lambda d: d["span_id"] in call_ids)

    assert http_post(port, "/v0.4/traces", body, {"Content-Type": "application/msgpack"}) == 200
    every_id = [f"{s.span_id:016x}" for s in spans]
    shipped = intake.wait_records("otlp_spans", len(every_id), timeout=30, where=lambda d: d["span_id"] in every_id)
    assert sorted(r["data"]["span_id"] for r in shipped) == sorted(every_id)  # each span once
    wait_for(lambda: agent.counter("llm", "discarded", reason="duplicate_otlp_span") == len(call_ids),
             what="the chunk's copies of the calls counted as intentional duplicates")
