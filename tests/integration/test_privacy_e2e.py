"""Issue 14 end to end, through the real clients: an app using openai under ddtrace (LLM Observability on)
and a Python app using the logging snippet of the README put every default kind of secret into every place
a user can (event metadata, tags, tool definitions, documents, tool-call arguments, span tags and
resources, nested log attributes); none of them reaches `llmship intake`.

OTLP (span and log attributes) is covered by construction once the OTLP source lands: it turns OTLP
spans into model.Span (attributes -> meta) and GenAI spans into LLM Observability events, and OTLP log
records into log records, which are scrubbed here; the test to add then is an OpenTelemetry SDK app
exporting the same secrets as span, event and log attributes, checked the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import orjson

from fake_openai import FakeOpenAI
from harness import NEEDLES, SECRETS
from test_logs_e2e import APP as LOGGING_SNIPPET


APP = r'''
import ddtrace.auto  # noqa: F401
import json, os, sys
from ddtrace.llmobs import LLMObs
from ddtrace.trace import tracer
from openai import OpenAI

SECRETS = json.loads(sys.argv[1])
every = " ".join(f"see {s} here" for s in SECRETS.values())
client = OpenAI(base_url=os.environ["FAKE_OPENAI_URL"] + "/v1", api_key="test-key", max_retries=0)
tools = [{"type": "function", "function": {"name": "lookup", "description": every,
          "parameters": {"type": "object", "properties": {k: {"type": "string", "description": f"like {v}"}
                                                           for k, v in SECRETS.items()}}}}]
with tracer.trace("web.request", resource="GET /users/" + SECRETS["email"]) as span:
    for name, value in SECRETS.items():
        span.set_tag("custom." + name, f"see {value} here")
    span.set_tag("http.url", "https://example.org/cb?key=" + SECRETS["openai_api_key"] + "&mail=" + SECRETS["email"])
    with LLMObs.workflow(name="answer") as wf:
        client.chat.completions.create(model="gpt-4o-mini", tools=tools, messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Question? " + every}])
        LLMObs.annotate(span=wf, input_data=every, output_data="done",
                        metadata={k: f"see {v} here" for k, v in SECRETS.items()},
                        tags={k: v for k, v in SECRETS.items()})
    with LLMObs.retrieval(name="search") as r:
        LLMObs.annotate(span=r, input_data="find " + SECRETS["email"],
                        output_data=[{"text": f"doc {v}", "name": k, "id": k, "score": 0.5}
                                     for k, v in SECRETS.items()])
    with LLMObs.tool(name="lookup") as t:
        LLMObs.annotate(span=t, input_data={k: v for k, v in SECRETS.items()}, output_data=every)
LLMObs.flush()
tracer.flush()
'''

CONFIG = """
[llm]
max_text_chars = 100000
[llm.sampling]
prompt_log_rate = 1.0
"""


def leaks(records) -> list[str]:
    text = orjson.dumps(records).decode()
    return [n for n in NEEDLES if n in text]


def test_no_default_secret_reaches_the_intake_from_a_ddtrace_openai_app(tmp_path, intake, start_agent):
    fake = FakeOpenAI()
    try:
        agent = start_agent(CONFIG, intake=intake)
        script = tmp_path / "app.py"
        script.write_text(APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "OTEL_"))}
        env.update({"DD_TRACE_AGENT_URL": f"http://127.0.0.1:{agent.ports['trace_port']}",
                    "DD_LLMOBS_ENABLED": "1", "DD_LLMOBS_ML_APP": "privacy-app", "DD_SERVICE": "chatbot",
                    "FAKE_OPENAI_URL": fake.url})
        proc = subprocess.run([sys.executable, str(script), orjson.dumps({k: v for k, (v, _) in SECRETS.items()})],
                              env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        events = [r["data"] for r in intake.wait_records("llmobs", 4)]
        intake.wait_records("traces", 1, where=lambda d: "web.request" in orjson.dumps(d).decode())
        intake.wait_records("logs", 1)
    finally:
        fake.stop()
    shipped = {kind: [r["data"] for r in intake.records(kind)] for kind in ("llmobs", "traces", "logs")}
    assert {kind: leaks(records) for kind, records in shipped.items()} == {"llmobs": [], "traces": [], "logs": []}
    # what was there, cleaned: metadata, tags, tool definitions, documents, span meta and resource
    workflow = next(e for e in events if e["meta"]["span"]["kind"] == "workflow")
    assert workflow["meta"]["metadata"]["email"] == "see [REDACTED:email] here"
    assert "email:[REDACTED:email]" in workflow["tags"] and "ml_app:privacy-app" in workflow["tags"]
    retrieval = next(e for e in events if e["meta"]["span"]["kind"] == "retrieval")
    assert {d["text"] for d in retrieval["meta"]["output"]["documents"]} >= {"doc [REDACTED:email]",
                                                                              "doc [REDACTED:credit_card]"}
    llm = next(e for e in events if e["meta"]["span"]["kind"] == "llm")
    assert "[REDACTED:email]" in orjson.dumps(llm["meta"].get("tool_definitions")).decode()
    traces = orjson.dumps(shipped["traces"]).decode()
    assert "GET /users/[REDACTED:email]" in traces and "see [REDACTED:ipv6] here" in traces
    for name in SECRETS:
        for kind in ("llmobs", "spans"):
            assert agent.counter("scrub", "scrub_matches", rule=name, action="redact", kind=kind) > 0, (name, kind)


def test_no_default_secret_reaches_the_intake_from_the_logging_snippet(tmp_path, intake, start_agent):
    agent = start_agent("", intake=intake)
    app = LOGGING_SNIPPET.split("log.info(")[0] + textwrap.dedent('''
        import json
        SECRETS = json.loads(sys.argv[2])
        log.info("llm call", extra={"usr": {k: f"see {v} here" for k, v in SECRETS.items()},
                                    "request": {"headers": list(SECRETS.values()),
                                                "items": [{"note": v} for v in SECRETS.values()]},
                                    "model": "gpt-4o-mini", "service": "py-app", "trace_id": "2256081974650575786"})
        handler.close()
    ''')
    script = tmp_path / "app.py"
    script.write_text(app)
    done = subprocess.run([sys.executable, str(script), str(agent.ports["logs_tcp_port"]),
                           orjson.dumps({k: v for k, (v, _) in SECRETS.items()})], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    record = intake.wait_records("logs", 1, where=lambda d: d.get("message") == "llm call")[0]["data"]
    assert leaks(record) == []
    assert record["usr"]["email"] == "see [REDACTED:email] here" and record["trace_id"] == "2256081974650575786"
    assert record["request"]["items"][0]["note"].startswith("[REDACTED:")
    assert agent.counter("scrub", "scrub_matches", action="redact", kind="logs") >= 3 * len(SECRETS)
