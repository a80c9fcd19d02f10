"""End to end with real, unmodified OpenTelemetry clients: an app using the openai package, instrumented by
one of the GenAI instrumentations, exports with the OpenTelemetry SDK's own OTLP/HTTP exporters to
`llmship run` ([sources.otlp] http); we look at what reaches `llmship intake`: llm.* metrics with exact
values and tags, LLM Observability events (scrubbed, truncated), APM spans, and the app's own OTLP metrics.

- opentelemetry-instrumentation-openai-v2 2.4b0 (latest GenAI conventions, content in span attributes);
- openinference-instrumentation-openai 0.1.66 (OpenInference conventions);
- opentelemetry-instrumentation-openai 0.62 (OpenLLMetry, the instrumentation traceloop-sdk wraps; traceloop-sdk
  itself is not installed: pip's resolver did not settle its pins against the SDK 1.45 within 10 minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from harness import free_port
from test_ddtrace_openai import has_tags, series_total, settled_total, sketch_count, user_text

MARKER = "…[truncated]"
APP_TAGS = ("service:chatbot", "env:bars", "version:2.0", "team:ml")
CHAT_TAGS = (*APP_TAGS, "model:gpt-4o-mini", "provider:openai", "endpoint:/v1/chat/completions")
LONG_PROMPT = "LONGPROMPT " + "word " * 600
EMAIL_PROMPT = "And of Peru? Reply to alice.bars@example.com"

APP = r'''
import os
import sys

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

resource = Resource.create({"service.name": "chatbot", "deployment.environment.name": "bars",
                            "service.version": "2.0"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(tracer_provider)
meter_provider = MeterProvider(resource=resource, metric_readers=[
    PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=3_600_000)])
metrics.set_meter_provider(meter_provider)

instrumentation = sys.argv[1]
if instrumentation == "openai-v2":
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
elif instrumentation == "openinference":
    from openinference.instrumentation.openai import OpenAIInstrumentor
else:
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
OpenAIInstrumentor().instrument()

from openai import OpenAI, OpenAIError  # noqa: E402

client = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"] + "/v1", api_key="test-key", max_retries=0)


def chat(text, model="gpt-4o-mini", **kwargs):
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)
    if kwargs.get("stream"):
        return "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)
    return response.choices[0].message.content


with trace.get_tracer("app").start_as_current_span("handle_request"):
    chat("What is the capital of France?")
    chat(os.environ["EMAIL_PROMPT"])
    chat(os.environ["LONG_PROMPT"])
    chat("Stream it.", stream=True, stream_options={"include_usage": True})
    try:
        chat("fail", model="rate-limited")
    except OpenAIError:
        pass
tracer_provider.shutdown()
meter_provider.shutdown()
'''

CONFIG = """
[agent]
tags = ["team:ml"]
[sources.otlp]
http = "127.0.0.1:{otlp_port}"
[llm]
max_text_chars = 64
[llm.sampling]
prompt_log_rate = 1.0
"""


def words(text: str) -> int:
    return len(text.split())


# Token counts the fake API reports: prompt words in, "You said: <prompt>" out.
PROMPTS = ["What is the capital of France?", EMAIL_PROMPT, LONG_PROMPT, "Stream it."]
TOKENS_IN = sum(words(p) for p in PROMPTS)
TOKENS_OUT = sum(words(p) + 2 for p in PROMPTS)


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.stop()


def run_app(tmp_path: Path, otlp_port: int, instrumentation: str, fake_url: str) -> None:
    script = tmp_path / "otel_app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "OTEL_", "TRACELOOP_"))}
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        # Datadog's advice for OTLP metrics into its Agent: delta temporality (a cumulative histogram's
        # first point is dropped, as the Agent drops it, and this app exports once)
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only",
        "FAKE_OPENAI_URL": fake_url,
        "EMAIL_PROMPT": EMAIL_PROMPT,
        "LONG_PROMPT": LONG_PROMPT,
    })
    proc = subprocess.run([sys.executable, str(script), instrumentation], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the exporters log any refused export on stderr
    assert "Failed to export" not in proc.stderr and "error" not in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize("instrumentation", ["openai-v2", "openinference", "openllmetry"])
def test_otel_instrumented_app_reaches_the_intake_processed(tmp_path, intake, start_agent, fake_openai,
                                                           instrumentation):
    otlp_port = free_port()
    agent = start_agent(CONFIG.replace("{otlp_port}", str(otlp_port)), intake=intake)
    run_app(tmp_path, otlp_port, instrumentation, fake_openai.url)

    # LLM Observability events: one per call, text scrubbed then truncated
    events = [r["data"] for r in intake.wait_records("llmobs", 5, timeout=30)]
    assert len(events) == 5 and all(e["meta"]["span"]["kind"] == "llm" for e in events)
    by_text = {user_text(e): e for e in events}
    assert "And of Peru? Reply to [REDACTED:email]" in by_text
    long = next(e for text, e in by_text.items() if text.startswith("LONGPROMPT"))
    assert user_text(long).endswith(MARKER) and len(user_text(long)) == 64
    assert has_tags(long["tags"], *CHAT_TAGS, "ml_app:chatbot", "llmship.truncated:true")
    assert long["metrics"]["input_tokens"] == words(LONG_PROMPT)
    failed = next(e for e in events if e["status"] == "error")
    assert has_tags(failed["tags"], "model:rate-limited", "error:1") and failed["meta"]["error"]["message"]

    # llm.* metrics, exact
    settled_total(intake, agent, "llm.requests", *CHAT_TAGS, expected=4, calls=5)
    assert series_total(intake, "llm.tokens.input", *CHAT_TAGS)[0] == TOKENS_IN
    assert series_total(intake, "llm.tokens.output", *CHAT_TAGS)[0] == TOKENS_OUT
    assert series_total(intake, "llm.tokens.total", *CHAT_TAGS)[0] == TOKENS_IN + TOKENS_OUT
    assert series_total(intake, "llm.errors", *APP_TAGS, "model:rate-limited")[0] == 1
    assert series_total(intake, "llm.cost.usd", *CHAT_TAGS)[0] == pytest.approx(
        (TOKENS_IN * 0.15 + TOKENS_OUT * 0.60) / 1e6)
    assert sketch_count(intake, "llm.request.duration", "service:chatbot") == 5

    # APM spans: every OTLP span, the LLM ones without their prompt text
    spans = [r["data"] for r in intake.wait_records("traces", 6, timeout=30)]
    root = next(s for s in spans if s["resource"] == "handle_request")
    llm_spans = [s for s in spans if s["parent_id"] == root["span_id"]]
    assert len(llm_spans) >= 5 and all(s["service"] == "chatbot" and s["meta"]["env"] == "bars" for s in spans)
    assert root["meta"]["_dd.p.tid"] and sum(s["error"] for s in llm_spans) == 1
    assert not any("alice.bars" in value for s in spans for value in s["meta"].values())

    # the app's own OTLP metrics (openai-v2 records the GenAI client metrics) as sketches
    if instrumentation == "openai-v2":
        sketches = intake.wait_records("sketches", 1, timeout=30,
                                       where=lambda d: d["metric"] == "gen_ai.client.token.usage")
        assert sketches
        assert sketch_count(intake, "gen_ai.client.operation.duration", "service:chatbot") == 5
        assert sketch_count(intake, "gen_ai.client.token.usage", "gen_ai.token.type:input") == 4
    assert agent.counter("otlp", "dropped") == 0
