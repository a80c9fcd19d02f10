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
import socket
import subprocess
import sys
import textwrap

import urllib.request

import orjson
from datadog.dogstatsd import DogStatsd

from fake_openai import FakeOpenAI
from harness import NEEDLES, SECRETS
from llmship.tags import normalize_tag
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


def test_no_default_secret_reaches_the_intake_in_dogstatsd_tags_events_and_service_checks(intake, start_agent):
    """Every default kind of secret in the tag values of a counter and a distribution, an event's title and
    text and a service check's message and tags: sent with datadog's DogStatsd, and as a raw datagram the
    way clients that leave tags alone send them (datadog-go, dd-trace's runtime metrics). The agent
    normalizes tags as Datadog does ("@" and spaces become "_"), which would hide an unscrubbed e-mail from
    a plain search: the normalized needles are looked for too."""
    agent = start_agent("[agent]\nflush_interval_secs = 3600\n", intake=intake)
    needles = {k: v for k, (v, _) in SECRETS.items()}
    tags = [f"{name}:see {value} here" for name, value in needles.items()] + ["user_id:2256081974650575786"]
    every = " ".join(f"see {v} here" for v in needles.values())
    statsd = DogStatsd(host="127.0.0.1", port=agent.ports["dsd_port"], disable_telemetry=True,
                       disable_buffering=True)
    statsd.increment("privacy.requests", tags=tags)
    statsd.distribution("privacy.latency", 12.5, tags=tags)
    statsd.event(f"deploy by {needles['email']}", every, tags=tags, aggregation_key="privacy-deploy")
    statsd.service_check("privacy.check", DogStatsd.WARNING, tags=tags, message=every)
    statsd.close_socket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(f"privacy.raw:1|c|#{','.join(tags)}".encode(), ("127.0.0.1", agent.ports["dsd_port"]))
    request = urllib.request.Request(agent.status_url + "/flush?timeout=20", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:  # the open bucket shipped now, and delivered
        assert orjson.loads(r.read())["status"] == "delivered"
    raw_series = intake.wait_records("series", where=lambda d: d["metric"] == "privacy.raw")[0]["data"]
    series = intake.wait_records("series", where=lambda d: d["metric"] == "privacy.requests")[0]["data"]
    sketch = intake.wait_records("sketches", where=lambda d: d["metric"] == "privacy.latency")[0]["data"]
    event = intake.wait_records("events", where=lambda d: d.get("aggregation_key") == "privacy-deploy")[0]["data"]
    check = intake.wait_records("service_checks", where=lambda d: d["check"] == "privacy.check")[0]["data"]

    def found(shipped, needles: list[str]) -> list[str]:
        text = orjson.dumps(shipped).decode()
        return [n for n in needles + [normalize_tag(f"x:{n}")[2:] for n in needles] if n in text]

    texts = [event["title"], event["text"], check["message"]]
    assert [found(shipped, NEEDLES) for shipped in (raw_series, texts)] == [[], []]
    def cleaned(name: str, before: str = "see ") -> str:  # as the agent normalizes it
        return normalize_tag(f"{name}:{before}[REDACTED:{name}] here")

    assert cleaned("email") in raw_series["tags"] and cleaned("credit_card") in raw_series["tags"]
    assert "user_id:2256081974650575786" in raw_series["tags"]  # an id stays
    assert event["title"] == "deploy by [REDACTED:email]" and "see [REDACTED:ipv4] here" in event["text"]
    assert "see [REDACTED:openai_api_key] here" in check["message"]
    # datadog's DogStatsd replaces what tags may not hold ("@", spaces, "=") with "_" before sending: the
    # agent reads a tag's "_" as a separator too (the card, the bearer token, the address after "see_"),
    # but an e-mail without its "@" is beyond any rule (README: Privacy)
    others = [n for n in NEEDLES if n != SECRETS["email"][1]]
    client_tags = [series["tags"], sketch["tags"], event["tags"], check["tags"]]
    assert [found(t, others) for t in client_tags] == [[], [], [], []]
    assert cleaned("credit_card") in sketch["tags"]
    assert cleaned("bearer_token", "see Authorization: Bearer ") in series["tags"]
    for name in SECRETS:
        assert agent.counter("scrub", "scrub_matches", rule=name, action="redact", kind="metrics") > 0, name
