"""End to end with real clients: an app using the openai package, instrumented by ddtrace 4.16 with LLM
Observability on, calls a local fake OpenAI API and sends its traces to `llmship run`; we look at what
reaches `llmship intake`: LLM Observability events, derived llm.* metrics and prompt sample logs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from llmship.llm import extract
from llmship.sources.traces import decode_v04

from fake_openai import FakeOpenAI
from harness import wait_for
from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"
MARKER = "…[truncated]"
ESTIMATED = "tokens_estimated:true"
SYSTEM_PROMPT = "You are a helpful assistant."

APP = r'''
import ddtrace.auto  # noqa: F401  (first: patches openai before it is imported)
import os
import sys

from ddtrace.llmobs import LLMObs
from ddtrace.trace import tracer
from openai import OpenAI, OpenAIError


def client(url):
    return OpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0)


def chat(c, text, model="gpt-4o-mini", **kwargs):
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]
    response = c.chat.completions.create(model=model, messages=messages, **kwargs)
    if kwargs.get("stream"):
        return "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)
    return response.choices[0].message.content


direct = client(os.environ["FAKE_OPENAI_URL"])
scenario = sys.argv[1]
if scenario == "standard":
    chat(direct, "What is the capital of France?")
    chat(direct, "Stream me the capital of France.", stream=True)
    chat(direct, "Stream without usage please.", stream=True, stream_options={"include_usage": False})
    direct.completions.create(model="gpt-3.5-turbo-instruct", prompt="The capital of France is")
    direct.embeddings.create(model="text-embedding-3-small", input="The capital of France is Paris.")
    chat(direct, "word " * 200)
    try:
        chat(direct, "This will fail", model="rate-limited")
    except OpenAIError:
        pass
    if "PROXY_URL" in os.environ:  # the same model and endpoint, through an instrumented proxy
        chat(client(os.environ["PROXY_URL"]), "Through the proxy?")
elif scenario == "many":
    for i in range(int(sys.argv[2])):
        chat(direct, f"Question number {i}?")
elif scenario == "web":  # a web request's trace: a few spans of its own around each call
    for i in range(int(sys.argv[2])):
        with tracer.trace("web.request", service="chatbot", resource="POST /chat", span_type="web") as root:
            root.set_tag("http.url", "https://chat.example.com/chat")
            with tracer.trace("postgres.query", resource="SELECT plan FROM users WHERE id = %s", span_type="sql"):
                pass
            with tracer.trace("redis.command", resource="GET", span_type="redis") as cache:
                cache.set_tag("out.host", "cache.internal")
            with tracer.trace("auth.check") as auth:
                auth.set_tag("customer.email", f"user{i}@example.com")
            chat(direct, f"Question number {i}?")
LLMObs.flush()
tracer.flush()
'''


def words(text: str) -> int:  # the fake API's token count
    return len(text.split())


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.stop()


def run_app(tmp_path: Path, agent, scenario: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> str:
    """Run the instrumented app to completion; return its stderr (where ddtrace logs its problems)."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    app_env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "OTEL_"))}
    app_env.update({
        "DD_TRACE_AGENT_URL": f"http://127.0.0.1:{agent.ports['trace_port']}",
        "DD_DOGSTATSD_URL": f"udp://127.0.0.1:{agent.ports['dsd_port']}",
        "DD_LLMOBS_ENABLED": "1",
        "DD_LLMOBS_ML_APP": "demo-app",
        "DD_SERVICE": "chatbot",
        "DD_ENV": "staging",
        "DD_VERSION": "1.2.3",
        **(env or {}),
    })
    proc = subprocess.run([sys.executable, str(script), scenario, *args], env=app_env, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def assert_tracer_happy(stderr: str) -> None:
    """ddtrace says nothing on stderr when its agent answers everything the way a Datadog Agent does; any
    line there is a complaint (refused payloads, bad answers, an agent it calls unsupported)."""
    complaints = [line for line in stderr.splitlines() if line.strip()]
    assert complaints == [], "\n".join(complaints)


def events_by_span_id(intake) -> dict[str, dict]:
    return {r["data"]["span_id"]: r["data"] for r in intake.records("llmobs")}


def user_text(event: dict) -> str:
    return event["meta"]["input"]["messages"][-1]["content"]


def has_tags(tags: list[str] | str, *wanted: str) -> bool:
    tags = tags.split(",") if isinstance(tags, str) else tags
    return all(w in tags for w in wanted)


def series_total(intake, metric: str, *tags: str, after: float = 0.0) -> tuple[float, bool]:
    """(sum of the metric's values over every shipped bucket of the series having ``tags`` and not
    tokens_estimated:true unless asked for, whether a point exists past ``after``).
    Counters are shipped as rates over ``interval`` seconds."""
    total, later = 0.0, False
    for record in intake.records("series"):
        s = record["data"]
        if s["metric"] != metric or not has_tags(s["tags"], *tags):
            continue
        if ESTIMATED in s["tags"] and ESTIMATED not in tags:
            continue
        per = s.get("interval") or 1 if s.get("type") == 2 else 1
        for point in s["points"]:
            total += point["value"] * per
            later = later or point["timestamp"] > after
    return total, later


def settled_total(intake, agent, metric: str, *tags: str, expected: float, calls: int) -> float:
    """Once the agent has processed ``calls`` LLM calls and flushed a bucket after that, the metric's total."""
    wait_for(lambda: agent.counter("llm", "llm_calls") >= calls, timeout=30, what=f"{calls} LLM calls processed")
    processed_at = time.time()

    def settled():
        total, later = series_total(intake, metric, *tags, after=processed_at)
        return later and math.isclose(total, expected, rel_tol=1e-9, abs_tol=1e-12)

    try:
        wait_for(settled, timeout=20, what=f"{metric} {tags} to reach {expected}")
    except AssertionError:
        raise AssertionError(f"{metric} {tags}: {series_total(intake, metric, *tags)[0]} != {expected}") from None
    return series_total(intake, metric, *tags)[0]


def sketch_count(intake, metric: str, *tags: str) -> int:
    return sum(d["cnt"] for r in intake.records("sketches") if r["data"]["metric"] == metric
               and has_tags(r["data"]["tags"], *tags) for d in r["data"]["dogsketches"])


APP_TAGS = ("service:chatbot", "env:staging", "version:1.2.3", "team:ml")
CHAT_TAGS = (*APP_TAGS, "model:gpt-4o-mini", "provider:openai", "endpoint:/v1/chat/completions")

STANDARD_CONFIG = """
[agent]
tags = ["team:ml"]
[llm.sampling]
prompt_log_rate = 1.0
[llm]
max_text_chars = 64
"""


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture
def proxy_openai():
    """A second fake API standing for an instrumented LLM proxy (one that reports its own LLM spans)."""
    server = FakeOpenAI()
    yield server
    server.stop()


def test_ddtrace_openai_calls_reach_the_intake_processed(tmp_path, intake, start_agent, fake_openai,
                                                         proxy_openai):
    from ddtrace.llmobs._integrations.utils import _est_tokens  # ddtrace's estimate for streams without usage

    config = STANDARD_CONFIG + f'instrumented_proxy_urls = ["{proxy_openai.url}/v1/"]\n'
    agent = start_agent(config, intake=intake)
    stderr = run_app(tmp_path, agent, "standard",
                     env={"FAKE_OPENAI_URL": fake_openai.url, "PROXY_URL": proxy_openai.url})
    intake.wait_records("llmobs", 8)
    assert_tracer_happy(stderr)
    events = {user_text(e) if "input" in e["meta"] and "messages" in e["meta"]["input"] else e["name"]: e
              for e in events_by_span_id(intake).values()}
    assert len(events) == 8
    kinds = sorted(e["meta"]["span"]["kind"] for e in events.values())
    assert kinds == ["embedding", "llm", "llm", "llm", "llm", "llm", "llm", "workflow"]

    # the proxy's client side: a workflow span without model or token metrics, and no llm.* metrics below
    proxied = events["Through the proxy?"]
    assert proxied["meta"]["span"]["kind"] == "workflow" and "model_name" not in proxied["meta"]
    assert not any(k.endswith("_tokens") for k in proxied["metrics"])
    assert agent.counter("llm", "proxied_calls") == 1

    plain = events["What is the capital of France?"]
    assert plain["metrics"]["input_tokens"] == words(SYSTEM_PROMPT) + 6 and plain["metrics"]["output_tokens"] == 8
    assert has_tags(plain["tags"], *CHAT_TAGS, "ml_app:demo-app")
    assert not has_tags(plain["tags"], "tokens_estimated:true")
    completion = events["The capital of France is"]
    assert has_tags(completion["tags"], "model:gpt-3.5-turbo-instruct", "endpoint:/v1/completions")
    embedding = events["OpenAI.createEmbedding"]
    assert has_tags(embedding["tags"], "model:text-embedding-3-small", "endpoint:/v1/embeddings")
    assert embedding["metrics"]["input_tokens"] == 6

    no_usage = events["Stream without usage please."]
    assert has_tags(no_usage["tags"], "tokens_estimated:true")
    estimated_in = _est_tokens(SYSTEM_PROMPT) + _est_tokens("Stream without usage please.")
    estimated_out = _est_tokens("You said: Stream without usage please.")
    assert no_usage["metrics"]["input_tokens"] == estimated_in
    assert no_usage["metrics"]["output_tokens"] == estimated_out

    long = next(e for text, e in events.items() if text.startswith("word word"))
    for content in (user_text(long), long["meta"]["output"]["messages"][0]["content"]):
        assert content.endswith(MARKER) and len(content) == 64
    assert has_tags(long["tags"], "llmship.truncated:true")
    assert long["meta"]["metadata"]["llmship"] == {"truncated": True, "max_text_chars": 64}
    assert long["metrics"]["input_tokens"] == words(SYSTEM_PROMPT) + 200  # counted before truncation

    error = events["This will fail"]
    assert error["status"] == "error" and has_tags(error["tags"], "model:rate-limited", "error:1")

    chat_in = 2 * (words(SYSTEM_PROMPT) + 6) + words(SYSTEM_PROMPT) + 200
    chat_out = 8 + 8 + 202
    settled_total(intake, agent, "llm.requests", *CHAT_TAGS, expected=3, calls=7)  # not the proxied one
    assert series_total(intake, "llm.tokens.input", *CHAT_TAGS)[0] == chat_in
    assert series_total(intake, "llm.tokens.output", *CHAT_TAGS)[0] == chat_out
    chat_cost = (chat_in * 0.15 + chat_out * 0.60) / 1e6  # gpt-4o-mini list prices
    assert series_total(intake, "llm.cost.usd", *CHAT_TAGS)[0] == pytest.approx(chat_cost)
    assert series_total(intake, "llm.tokens.input", *CHAT_TAGS, "tokens_estimated:true")[0] == estimated_in
    assert series_total(intake, "llm.errors", "model:rate-limited", *APP_TAGS)[0] == 1
    assert series_total(intake, "llm.cost.usd", "model:text-embedding-3-small")[0] == pytest.approx(6 * 0.02 / 1e6)
    assert sketch_count(intake, "llm.request.duration", "service:chatbot") == 7

    logs = intake.wait_records("logs", 7)
    sample = next(r["data"] for r in logs
                  if r["data"].get("completion") == "You said: What is the capital of France?")
    assert sample["prompt"] == f"system: {SYSTEM_PROMPT}\nuser: What is the capital of France?"
    assert sample["tokens"] == {"input": 11, "output": 8, "total": 19}
    assert sample["ddsource"] == "llmship" and sample["service"] == "chatbot" and sample["model"] == "gpt-4o-mini"
    assert has_tags(sample["ddtags"], *CHAT_TAGS)
    assert sample["span_id"] == plain["span_id"]
    assert sum(r["data"]["status"] == "error" for r in logs) == 1


def test_apm_tracing_disabled_sends_events_on_the_evp_path(tmp_path, intake, start_agent, fake_openai):
    agent = start_agent(STANDARD_CONFIG, intake=intake)
    stderr = run_app(tmp_path, agent, "standard",
                     env={"FAKE_OPENAI_URL": fake_openai.url, "DD_APM_TRACING_ENABLED": "false"})
    events = intake.wait_records("llmobs", 7)
    assert_tracer_happy(stderr)
    assert agent.counter("traces", "requests", endpoint="evp_llmobs") >= 1
    plain = next(r["data"] for r in events if r["data"]["meta"].get("input", {}).get("messages", [{}])[-1]
                 .get("content") == "What is the capital of France?")
    assert has_tags(plain["tags"], *CHAT_TAGS)
    settled_total(intake, agent, "llm.requests", *CHAT_TAGS, expected=3, calls=7)
    assert series_total(intake, "llm.tokens.output", *CHAT_TAGS)[0] == 8 + 8 + 202


def test_text_sampling_and_prompt_logs_over_many_traces(tmp_path, intake, start_agent, fake_openai):
    from llmship.transforms.sampling import sampled

    n = 300
    config = "[llm.sampling]\nspan_text_rate = 0.5\nprompt_log_rate = 0.25\n"
    agent = start_agent(config, intake=intake)
    stderr = run_app(tmp_path, agent, "many", str(n), env={"FAKE_OPENAI_URL": fake_openai.url})
    assert_tracer_happy(stderr)
    events = [r["data"] for r in intake.wait_records("llmobs", n, timeout=60)]
    trace_ids = {e["span_id"]: int(e["_dd"]["apm_trace_id"][-16:], 16) for e in events}
    with_text = {e["span_id"] for e in events if "input" in e["meta"]}
    assert with_text == {span_id for span_id, t in trace_ids.items() if sampled(t, 0.5)}  # per trace id
    assert abs(len(with_text) / n - 0.5) <= 4 * math.sqrt(0.25 / n), len(with_text)
    for e in events:
        if e["span_id"] not in with_text:  # timings, tokens and tags stay; the text goes, and says so
            assert has_tags(e["tags"], "llmship.text_sampled:false", "model:gpt-4o-mini")
            assert e["metrics"]["total_tokens"] > 0 and e["duration"] > 0 and "output" not in e["meta"]
    should_log = {span_id for span_id, t in trace_ids.items() if sampled(t, 0.25)}
    assert abs(len(should_log) / n - 0.25) <= 4 * math.sqrt(0.25 * 0.75 / n), len(should_log)
    assert should_log <= with_text  # one hash: a trace logged at 0.25 kept its text at 0.5
    logs = intake.wait_records("logs", len(should_log), timeout=30)
    assert {r["data"]["span_id"] for r in logs} == should_log
    assert all(r["data"]["prompt"].startswith("system: ") for r in logs)


# The fake API answers with openai-organization: Acme-Research and these x-ratelimit-* headers
# (fake_openai.RATE_LIMIT_HEADERS); ddtrace records them on the APM span of every call it reads an answer of.
ORG_TAG = "org:acme-research"
RATE_LIMIT_GAUGES = {"llm.ratelimit.requests.limit": 5000, "llm.ratelimit.requests.remaining": 4999,
                     "llm.ratelimit.tokens.limit": 4000000, "llm.ratelimit.tokens.remaining": 3999950}
# ddtrace 2.21's names for the same headers (contrib/internal/openai/patch.py patched_convert)
OPENAI_RATE_LIMIT_GAUGES = {"openai.ratelimit.requests": 5000, "openai.ratelimit.remaining.requests": 4999,
                            "openai.ratelimit.tokens": 4000000, "openai.ratelimit.remaining.tokens": 3999950}


def openai_tags(model: str, endpoint: str, *extra: str) -> tuple[str, ...]:
    """Every tag ddtrace 2.21's OpenAI integration put on its metrics that ddtrace 4.16's spans still tell
    (llmobs/_integrations/openai.py _metrics_tags), normalized as Datadog does, and the agent's tags."""
    return ("service:chatbot", "env:staging", "version:1.2.3", "team:ml", f"openai.request.model:{model}",
            f"model:{model}", f"openai.request.endpoint:{endpoint}", "openai.request.method:post", *extra)


OPENAI_CHAT = openai_tags("gpt-4o-mini", "/v1/chat/completions", "openai.organization.name:acme-research", "error:0")


def series_of(intake, metric: str, *tags: str) -> list[dict]:
    return [r["data"] for r in intake.records("series")
            if r["data"]["metric"] == metric and has_tags(r["data"]["tags"], *tags)]


def sketch_totals(intake, metric: str, tags: tuple[str, ...]) -> tuple[int, float]:
    """(count, sum) of the distribution whose tags are exactly ``tags``, over every bucket shipped."""
    count, total = 0, 0.0
    for r in intake.records("sketches"):
        if r["data"]["metric"] == metric and sorted(r["data"]["tags"]) == sorted(tags):
            for d in r["data"]["dogsketches"]:
                count, total = count + d["cnt"], total + d["sum"]
    return count, total


def test_org_rate_limit_gauges_and_openai_compat_metrics(tmp_path, intake, start_agent, fake_openai):
    from ddtrace.llmobs._integrations.utils import _est_tokens

    agent = start_agent(STANDARD_CONFIG + 'compat_metrics = ["openai"]\n', intake=intake)
    stderr = run_app(tmp_path, agent, "standard", env={"FAKE_OPENAI_URL": fake_openai.url})
    assert_tracer_happy(stderr)

    # 1. the organization tags llm.* series, LLM Observability events and sample logs; the 429's answer was
    # never read by ddtrace, so that call has no organization
    settled_total(intake, agent, "llm.requests", *CHAT_TAGS, ORG_TAG, expected=3, calls=7)
    assert series_total(intake, "llm.errors", "model:rate-limited")[0] == 1
    assert series_total(intake, "llm.errors", "model:rate-limited", ORG_TAG)[0] == 0
    events = {user_text(e): e for e in events_by_span_id(intake).values() if "messages" in e["meta"]["input"]}
    assert has_tags(events["What is the capital of France?"]["tags"], *CHAT_TAGS, ORG_TAG)
    assert not any(t.startswith("org:") for t in events["This will fail"]["tags"])
    logs = intake.wait_records("logs", 7)
    sample = next(r["data"] for r in logs if r["data"]["completion"] == "You said: What is the capital of France?")
    assert has_tags(sample["ddtags"], *CHAT_TAGS, ORG_TAG)

    # 2. the rate-limit gauges, with the header values, tagged like llm.requests
    for name, value in RATE_LIMIT_GAUGES.items():
        found = series_of(intake, name, *CHAT_TAGS, ORG_TAG)
        assert found and {p["value"] for s in found for p in s["points"]} == {value}, name
        assert all(s["type"] == 3 for s in found)  # gauge (series v2 MetricType)
    assert series_of(intake, "llm.ratelimit.requests.limit", "model:rate-limited") == []

    # 3. the nine names of ddtrace 2.21's OpenAI integration, its types, values and tags
    for name, value in OPENAI_RATE_LIMIT_GAUGES.items():
        found = [s for s in series_of(intake, name) if "openai.request.model:gpt-4o-mini" in s["tags"]]
        assert found and all(sorted(s["tags"]) == sorted(OPENAI_CHAT) and s["type"] == 3 for s in found), name
        assert {p["value"] for s in found for p in s["points"]} == {value}, name
    error_tags = openai_tags("rate-limited", "/v1/chat/completions", "error:1", "error_type:openai.ratelimiterror")
    errors = series_of(intake, "openai.request.error")
    # a DogStatsD count, shipped as a rate (and as 0 for a while after) as the Datadog Agent does
    assert {tuple(sorted(s["tags"])) for s in errors} == {tuple(sorted(error_tags))}
    assert all(s["type"] == 2 for s in errors)
    assert series_total(intake, "openai.request.error")[0] == 1

    durations = [r["data"] for r in intake.records("sketches") if r["data"]["metric"] == "openai.request.duration"]
    assert sum(d["cnt"] for s in durations for d in s["dogsketches"]) == 7
    chat_count, chat_ns = sketch_totals(intake, "openai.request.duration", OPENAI_CHAT)
    assert chat_count == 4 and 1e5 < chat_ns / 4 < 30e9  # nanoseconds, as span.duration_ns was
    assert sketch_totals(intake, "openai.request.duration", error_tags)[0] == 1

    prompt_plain, prompt_long = words(SYSTEM_PROMPT) + 6, words(SYSTEM_PROMPT) + 200
    not_streamed = (*OPENAI_CHAT, "openai.estimated:false")  # record_usage: the two plain calls
    assert sketch_totals(intake, "openai.tokens.prompt", not_streamed) == (2, prompt_plain + prompt_long)
    assert sketch_totals(intake, "openai.tokens.completion", not_streamed) == (2, 8 + 202)
    assert sketch_totals(intake, "openai.tokens.total", not_streamed) == (2, prompt_plain + prompt_long + 210)
    streamed = words(SYSTEM_PROMPT) + words("Stream me the capital of France.")
    assert sketch_totals(intake, "openai.tokens.prompt", OPENAI_CHAT) == (1, streamed)  # usage chunk: no tag
    estimated_in = _est_tokens(SYSTEM_PROMPT) + _est_tokens("Stream without usage please.")
    estimated_out = _est_tokens("You said: Stream without usage please.")
    estimated = (*OPENAI_CHAT, "openai.estimated:true")
    assert sketch_totals(intake, "openai.tokens.prompt", estimated) == (1, estimated_in)
    assert sketch_totals(intake, "openai.tokens.completion", estimated) == (1, estimated_out)
    assert sketch_totals(intake, "openai.tokens.total", estimated) == (1, estimated_in + estimated_out)
    embedding = openai_tags("text-embedding-3-small", "/v1/embeddings", "openai.organization.name:acme-research",
                            "error:0", "openai.estimated:false")
    assert sketch_totals(intake, "openai.tokens.prompt", embedding) == (1, 6)
    assert sketch_totals(intake, "openai.tokens.completion", embedding) == (0, 0)  # zero: not sent


def _post(url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> int:
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_an_event_sent_on_both_paths_is_shipped_and_counted_once(tmp_path, intake, start_agent):
    """ddtrace's own bytes: the captured v0.4 payload, and the first call's event again on the EVP path."""
    agent = start_agent("", intake=intake)
    base = f"http://127.0.0.1:{agent.ports['trace_port']}"
    v04 = (CAPTURES / "v04_traces_llmobs_default.msgpack").read_bytes()
    first = decode_v04(v04, "application/msgpack")[0][0]
    event = extract.from_span(first, "", "", "").event  # the first call's event, as ddtrace posts it on EVP
    envelope = orjson.dumps([{"_dd.stage": "raw", "event_type": "span", "spans": [event]}])
    assert _post(base + "/v0.4/traces", v04, "application/msgpack") == 200
    assert _post(base + "/evp_proxy/v2/api/v2/llmobs", envelope, "application/json",
                 {"X-Datadog-EVP-Subdomain": "llmobs-intake"}) in (200, 202)
    wait_for(lambda: agent.counter("llm", "discarded", reason="duplicate_event", intentional="true") == 1, timeout=10,
             what="the second copy recognised")
    chat = ("service:chatbot", "model:gpt-4o-mini-2024-07-18", "endpoint:/v1/chat/completions")
    settled_total(intake, agent, "llm.requests", *chat, expected=2, calls=6)  # the two chat calls, once each
    assert series_total(intake, "llm.tokens.input", *chat)[0] == 18 + 13
    events = [r["data"] for r in intake.wait_records("llmobs", 6)]
    assert sum(e["span_id"] == str(first.span_id) for e in events) == 1


def test_web_traces_are_written_straight_with_their_calls_processed_and_secrets_scrubbed(tmp_path, intake, start_agent,
                                                                                          fake_openai):
    """Traces of six spans (a request, three spans of its own, the OpenAI call and its HTTP request): the plain
    ones are written straight from the tracer's msgpack (processing: spans_written_straight); the call goes
    through the LLM stage, the HTTP request to 127.0.0.1 and the span with an e-mail through the scrub."""
    agent = start_agent(STANDARD_CONFIG, intake=intake)
    calls = 3
    assert_tracer_happy(run_app(tmp_path, agent, "web", str(calls), env={"FAKE_OPENAI_URL": fake_openai.url}))
    spans = wait_for(lambda: (got := intake.records("traces")) and len(got) >= 6 * calls and got,
                     what="the web traces at the intake")
    names = sorted(r["data"]["name"] for r in spans)
    assert names == sorted(["web.request", "postgres.query", "redis.command", "auth.check", "openai.request",
                            "http.request"] * calls)
    by_name = {}
    for r in spans:
        by_name.setdefault(r["data"]["name"], []).append(r["data"])
    assert all(s["meta"]["customer.email"] == "[REDACTED:email]" for s in by_name["auth.check"])
    assert all("127.0.0.1" not in s["meta"]["http.url"] and "[REDACTED:ipv4]" in s["meta"]["http.url"]
               for s in by_name["http.request"])
    assert all(s["meta"]["env"] == "staging" and s["meta"]["team"] == "ml" for s in by_name["postgres.query"])
    assert {r["data"]["chunk"]["priority"] for r in spans} == {1}
    assert all(s["meta"].get("_dd.llmobs.model_name") or s["meta"].get("openai.request.model")
               for s in by_name["openai.request"])
    assert not any(b"@example.com" in orjson.dumps(r["data"]) for r in spans)
    wait_for(lambda: len(events_by_span_id(intake)) >= calls, what="the calls' LLM Observability events")
    # the request, its three spans (but the one with an e-mail) of each trace went straight
    assert agent.counter("processing", "spans_written_straight") == 3 * calls
