"""The LLM stage and the router on what ddtrace 4.16 really sent (captures/ddtrace-4.16): tags, derived metrics read back
from a real Aggregator, proxy detection, truncation, scrubbing, text sampling and sample logs."""

from __future__ import annotations

import copy
import json
import math
import timeit

import pytest

import msgpack

from llmship.aggregation import Aggregator
from llmship.config import load_config_text
from llmship.llm import extract
from llmship.llm.policies import normalize_url
from llmship.llm.stage import LLMStage
from llmship.model import Span, TracerInfo
from llmship.processing import Emitter
from llmship.shipping.router import Router
from llmship.sources.traces import decode_v04
from llmship.telemetry import Telemetry
from llmship.transforms.scrub import Scrubber
from llmship.transforms.truncate import TRUNCATION_MARKER

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"
NOW = 1000.5  # the aggregator's clock: every sample lands in the bucket [1000, 1001)

BASE_CONFIG = """
[agent]
hostname = "test-host"
tags = ["team:ml", "Region:EU-West"]
flush_interval_secs = 1
"""

CHAT = "gpt-4o-mini-2024-07-18"
INSTRUCT = "gpt-3.5-turbo-instruct"
EMBED = "text-embedding-3-small"
APP = ("env:staging", "region:eu-west", "service:chatbot", "team:ml", "version:1.2.3")
# The capture's fake server answered with openai-organization and x-ratelimit-* headers: ddtrace put them on
# the APM spans of the calls it answered (not on the 429), never in the events.
ORG = "org:fake-org-123"
RATE_LIMITS = {"llm.ratelimit.requests.limit": 10000, "llm.ratelimit.requests.remaining": 9999,
               "llm.ratelimit.tokens.limit": 2000000, "llm.ratelimit.tokens.remaining": 1999980}


def call_tags(model: str, endpoint: str, *extra: str) -> tuple[str, ...]:
    return tuple(sorted((*APP, f"model:{model}", "provider:openai", f"endpoint:{endpoint}", *extra)))


# ------------------------------------------------------------------------------------------ fixtures


def capture_chunks() -> list[list[Span]]:
    """The six traces of v04_traces_llmobs_default, decoded by the trace source (fresh objects every call):
    each OpenAI call's APM span carries its event in ``meta_struct["_llmobs"]``."""
    return decode_v04((CAPTURES / "v04_traces_llmobs_default.msgpack").read_bytes(), "application/msgpack")


def edit_struct(span: Span, edit) -> None:
    """Change the ``_llmobs`` struct a span carries (``edit`` gets it as a dict), as a tracer could have sent it."""
    data = msgpack.unpackb(span.meta_struct["_llmobs"], raw=False, strict_map_key=False)
    edit(data)
    span.meta_struct["_llmobs"] = msgpack.packb(data)


def evp_copy(span: Span) -> dict:
    """The event ddtrace posts to the EVP proxy for the call this span carries."""
    return extract.llmobs_event(msgpack.unpackb(span.meta_struct["_llmobs"], raw=False), span)


def capture_evp_events() -> list[dict]:
    body = json.loads((CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json").read_text())["body"]
    return [event for envelope in body for event in envelope["spans"]]


class Recorder:
    """The trace sink as the emitter and the router see it: chunks "encode" as themselves, and what reaches
    the router is recorded."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.events: list[dict] = []
        self.logs: list[dict] = []

    def encode_chunks(self, chunks, tracer):
        return [(chunk, len(chunk)) for chunk in chunks]

    def add_items(self, items, language) -> None:
        for chunk, _ in items:
            self.spans += chunk


class _Add:
    """An event or log sink whose items are the objects themselves, recorded as they reach the router."""

    def __init__(self, into: list) -> None:
        self.add_item = into.append
        self.add_items = into.extend

    @staticmethod
    def encode(item):
        return item

    @staticmethod
    def encode_many(items):
        return list(items)


class Rig:
    """The LLM stage, the emitter and the router wired to a real Aggregator (fixed clock), the real Scrubber
    and telemetry; sinks record what reaches them."""

    def __init__(self, extra_config: str = "") -> None:
        self.cfg = load_config_text(BASE_CONFIG + extra_config)
        self.telemetry = Telemetry()
        self.aggregator = Aggregator(self.cfg, self.telemetry, clock=lambda: NOW)
        self.llm = LLMStage(self.cfg, Scrubber(self.cfg.scrub.rules), self.telemetry)
        self.sinks = Recorder()
        events, logs = _Add(self.sinks.events), _Add(self.sinks.logs)
        router = Router(telemetry=self.telemetry, aggregator=self.aggregator, delivery=None, metrics_sink=None,
                        trace_sink=self.sinks, llmobs_sink=events, logs_sink=logs)
        self.emitter = Emitter(telemetry=self.telemetry, router=router, llm=self.llm, log_processor=None,
                               trace_sink=self.sinks, llmobs_sink=events, logs_sink=logs)
        self.comp = self.telemetry.component("llm")

    def process_chunk(self, chunk: list[Span]) -> tuple[list, list, list]:
        """(spans, events, logs) that reached the sinks for this chunk."""
        before = len(self.sinks.spans), len(self.sinks.events), len(self.sinks.logs)
        self.emitter.submit_spans([chunk], TracerInfo())
        return (self.sinks.spans[before[0]:], self.sinks.events[before[1]:], self.sinks.logs[before[2]:])

    def process_llmobs_events(self, events: list) -> tuple[list, list]:
        before = len(self.sinks.events), len(self.sinks.logs)
        self.emitter.submit_llmobs_events(events)
        return self.sinks.events[before[0]:], self.sinks.logs[before[1]:]

    def run_chunks(self, chunks):
        spans, events, logs = [], [], []
        for chunk in chunks:
            s, e, lg = self.process_chunk(chunk)
            spans += s
            events += e
            logs += lg
        return spans, events, logs

    def metrics(self) -> tuple[dict, dict]:
        """({(name, sorted tags): summed value}, {(name, sorted tags): (count, sum)}) for distributions."""
        result = self.aggregator.flush(NOW + 2)
        series: dict = {}
        for s in result.series:
            key = (s.metric, tuple(sorted(s.tags)))
            series[key] = series.get(key, 0) + sum(v for _, v in s.points)
        sketches = {(s.metric, tuple(sorted(s.tags))): (sum(p.cnt for _, p in s.points),
                                                         sum(p.sum for _, p in s.points))
                    for s in result.sketches}
        return series, sketches


def by_name(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["name"], []).append(e)
    return out


# ------------------------------------------------------------------------------------------ tags


def test_apm_spans_get_identity_and_agent_tags():
    rig = Rig()
    spans, events, logs = rig.run_chunks(capture_chunks())
    assert len(spans) == 12 and len(events) == 6
    assert [log["status"] for log in logs] == ["error"]  # at prompt_log_rate 0.1 only the error (always) here
    llm_span, http_span = spans[0], spans[1]
    assert {k: llm_span.meta[k] for k in ("model", "provider", "endpoint")} == {
        "model": CHAT, "provider": "openai", "endpoint": "/v1/chat/completions"}
    # the agent's own tags are not written into spans here: the span encoder adds them as data
    assert llm_span.meta["env"] == "staging" and "team" not in llm_span.meta
    assert "model" not in http_span.meta
    assert [s.meta["endpoint"] for s in spans if s.type == "llm"] == [
        "/v1/chat/completions", "/v1/chat/completions", "/v1/completions", "/v1/completions",
        "/v1/embeddings", "/v1/chat/completions"]


def test_event_tags_are_the_tracers_plus_identity_and_agent_tags():
    rig = Rig()
    _, events, _ = rig.run_chunks(capture_chunks())
    assert events[0]["tags"] == [
        "agent_service:demo-app", "ddtrace.version:4.16.0", "env:staging", "error:0", "integration:openai",
        "language:python", "ml_app:demo-app", "service:chatbot", "source:integration", "version:1.2.3",
        f"model:{CHAT}", "provider:openai", "endpoint:/v1/chat/completions", ORG, "team:ml", "region:eu-west"]
    streamed_completion = by_name(events)["OpenAI.createCompletion"][1]
    assert streamed_completion["tags"][-1] == "tokens_estimated:true"


# ------------------------------------------------------------------------------------------ metrics


def expected_capture_metrics(apm: bool = True) -> dict:
    """The capture's metrics from its APM spans, or (``apm=False``) from its EVP events: those carry no
    organization and no rate limits."""
    org = (ORG,) if apm else ()
    chat, instruct, embed = (call_tags(CHAT, "/v1/chat/completions", *org),
                             call_tags(INSTRUCT, "/v1/completions", *org), call_tags(EMBED, "/v1/embeddings", *org))
    instruct_est = call_tags(INSTRUCT, "/v1/completions", "tokens_estimated:true", *org)
    error = call_tags("error-model", "/v1/chat/completions")  # a 429: ddtrace read no headers
    gauges = {(name, tags): value for name, value in RATE_LIMITS.items()
              for tags in (chat, instruct, instruct_est, embed)} if apm else {}
    return {**gauges,
        ("llm.requests", chat): 2, ("llm.tokens.input", chat): 18 + 13, ("llm.tokens.output", chat): 7 + 7,
        ("llm.tokens.total", chat): 25 + 20, ("llm.cost.usd", chat): (31 * 0.15 + 14 * 0.60) / 1e6,
        ("llm.requests", instruct): 1, ("llm.tokens.input", instruct): 5, ("llm.tokens.output", instruct): 6,
        ("llm.tokens.total", instruct): 11, ("llm.cost.usd", instruct): (5 * 1.50 + 6 * 2.00) / 1e6,
        # streamed legacy completion: no stream_options.include_usage, so ddtrace's counts are estimates
        ("llm.requests", instruct_est): 1, ("llm.tokens.input", instruct_est): 7,
        ("llm.tokens.output", instruct_est): 7, ("llm.tokens.total", instruct_est): 14,
        ("llm.cost.usd", instruct_est): (7 * 1.50 + 7 * 2.00) / 1e6,
        ("llm.requests", embed): 1, ("llm.tokens.input", embed): 6, ("llm.tokens.output", embed): 0,
        ("llm.tokens.total", embed): 6, ("llm.cost.usd", embed): 6 * 0.02 / 1e6,
        ("llm.requests", error): 1, ("llm.errors", error): 1,  # no usage on a 429: no tokens, no cost
    }


def assert_series(series: dict, expected: dict) -> None:
    assert set(series) == set(expected)
    for key, value in expected.items():
        assert series[key] == pytest.approx(value, rel=1e-9), key


def test_derived_metrics_from_apm_spans():
    rig = Rig()
    rig.run_chunks(capture_chunks())
    series, sketches = rig.metrics()
    assert_series(series, expected_capture_metrics())
    chat = call_tags(CHAT, "/v1/chat/completions", ORG)
    count, total = sketches[("llm.request.duration", chat)]
    assert count == 2 and total == pytest.approx((31289846 + 54456903) / 1e9)
    assert sum(c for c, _ in sketches.values()) == 6
    assert rig.comp.get("llm_calls") == 6 and rig.comp.get("unknown_model_cost") == 0


def test_evp_events_derive_the_same_metrics_as_apm_spans():
    rig = Rig("[llm.sampling]\nprompt_log_rate = 0.0\n")
    events, logs = rig.process_llmobs_events(capture_evp_events())
    assert len(events) == 6 and [log["status"] for log in logs] == ["error"]
    series, sketches = rig.metrics()
    assert_series(series, expected_capture_metrics(apm=False))
    assert sum(c for c, _ in sketches.values()) == 6
    assert events[0]["tags"][-5:] == [f"model:{CHAT}", "provider:openai", "endpoint:/v1/chat/completions",
                                      "team:ml", "region:eu-west"]


def test_an_event_seen_on_both_paths_counts_and_ships_once():
    rig = Rig()
    chunk = capture_chunks()[0]
    evp = evp_copy(chunk[0])
    _, first, _ = rig.process_chunk(chunk)
    shipped, _ = rig.process_llmobs_events([evp])
    again, _ = rig.process_llmobs_events([copy.deepcopy(evp)])
    assert len(first) == 1 and shipped == [] and again == []
    series, _ = rig.metrics()
    assert series[("llm.requests", call_tags(CHAT, "/v1/chat/completions", ORG))] == 1
    assert series[("llm.tokens.input", call_tags(CHAT, "/v1/chat/completions", ORG))] == 18
    assert rig.comp.get("discarded", reason="duplicate_event", intentional="true") == 2


def test_evp_first_then_apm_span_also_counts_once_and_keeps_the_apm_span():
    rig = Rig()
    chunk = capture_chunks()[0]
    shipped, _ = rig.process_llmobs_events([evp_copy(chunk[0])])
    spans, events, _ = rig.process_chunk(chunk)
    assert len(shipped) == 1 and events == [] and len(spans) == 2
    series, _ = rig.metrics()  # counted from the first copy, the event: without the span's organization
    assert series[("llm.requests", call_tags(CHAT, "/v1/chat/completions"))] == 1


def test_apm_only_llm_span_without_event_still_derives_metrics():
    rig = Rig()
    chunk = capture_chunks()[0]
    del chunk[0].meta_struct["_llmobs"]  # what v0.5 (APM only) sends: the span and its token metrics, no event
    spans, events, logs = rig.process_chunk(chunk)
    assert events == [] and logs == [] and spans[0].meta["model"] == CHAT
    series, _ = rig.metrics()
    tags = call_tags(CHAT, "/v1/chat/completions", ORG)
    assert series[("llm.requests", tags)] == 1 and series[("llm.tokens.total", tags)] == 25


def test_unknown_model_gets_no_cost_and_is_counted():
    rig = Rig()
    chunk = capture_chunks()[0]
    edit_struct(chunk[0], lambda e: e["meta"].update(model_name="acme-llm-7"))
    rig.process_chunk(chunk)
    series, _ = rig.metrics()
    assert not any(name == "llm.cost.usd" for name, _ in series)
    assert series[("llm.tokens.input", call_tags("acme-llm-7", "/v1/chat/completions", ORG))] == 18
    assert rig.comp.get("unknown_model_cost") == 1


def test_pricing_overrides_from_config_apply():
    rig = Rig('[llm.pricing]\n"gpt-4o-mini-20*" = { input = 1.0, output = 2.0 }\n')
    rig.run_chunks(capture_chunks()[:1])
    series, _ = rig.metrics()
    assert series[("llm.cost.usd", call_tags(CHAT, "/v1/chat/completions", ORG))] == pytest.approx((18 + 14) / 1e6)


def test_streamed_call_without_any_usage_gets_estimated_tokens():
    rig = Rig()
    chunk = capture_chunks()[1]  # the streamed chat completion
    def no_usage(event):
        event["metrics"] = {}
        event["meta"]["metadata"]["stream_options"] = {"include_usage": False}
    edit_struct(chunk[0], no_usage)
    _, events, _ = rig.process_chunk(chunk)
    prompt_chars = len("Stream me the capital of France.")
    completion_chars = len("Hello! The capital of France is Paris.")
    expected_in, expected_out = math.ceil(prompt_chars / 4), math.ceil(completion_chars / 4)
    assert events[0]["metrics"] == {"input_tokens": expected_in, "output_tokens": expected_out,
                                    "total_tokens": expected_in + expected_out}
    assert "tokens_estimated:true" in events[0]["tags"]
    series, _ = rig.metrics()
    tags = call_tags(CHAT, "/v1/chat/completions", "tokens_estimated:true", ORG)
    assert series[("llm.tokens.input", tags)] == expected_in
    assert series[("llm.tokens.output", tags)] == expected_out
    assert rig.comp.get("tokens_estimated") == 1


def test_streamed_chat_with_usage_chunk_is_not_estimated():
    rig = Rig()
    _, events, _ = rig.process_chunk(capture_chunks()[1])
    assert "tokens_estimated:true" not in events[0]["tags"] and events[0]["metrics"]["input_tokens"] == 13


# ------------------------------------------------------------------------------------------ compatibility metrics


def openai_tags(model: str, endpoint: str, *extra: str, org: bool = True) -> tuple[str, ...]:
    """The tags ddtrace 2.21's OpenAI integration put on its metrics (_metrics_tags), as Datadog normalizes
    them (POST -> post), plus the agent's tags; ddtrace 4.16 records no organization id or API key."""
    return tuple(sorted(("env:staging", "region:eu-west", "service:chatbot", "team:ml", "version:1.2.3",
                         f"openai.request.model:{model}", f"model:{model}", f"openai.request.endpoint:{endpoint}",
                         "openai.request.method:post", *(("openai.organization.name:fake-org-123",) if org else ()),
                         *extra)))


def compat_metrics(rig: Rig) -> tuple[dict, dict]:
    """The openai.* series and sketches of the flush (a flush empties the aggregator)."""
    series, sketches = rig.metrics()
    return ({k: v for k, v in series.items() if k[0].startswith("openai.")},
            {k: v for k, v in sketches.items() if k[0].startswith("openai.")})


def test_openai_compat_metrics_from_apm_spans():
    rig = Rig('[llm]\ncompat_metrics = ["openai"]\n')
    rig.run_chunks(capture_chunks())
    series, sketches = rig.metrics()
    assert_series({k: v for k, v in series.items() if k[0].startswith("llm.")}, expected_capture_metrics())
    compat = ({k: v for k, v in series.items() if k[0].startswith("openai.")},
              {k: v for k, v in sketches.items() if k[0].startswith("openai.")})
    chat, instruct, embed = (openai_tags("gpt-4o-mini", "/v1/chat/completions", "error:0"),
                             openai_tags(INSTRUCT, "/v1/completions", "error:0"),
                             openai_tags(EMBED, "/v1/embeddings", "error:0"))
    error = openai_tags("error-model", "/v1/chat/completions", "error:1", "error_type:openai.ratelimiterror",
                        org=False)
    gauges = {"openai.ratelimit.requests": 10000, "openai.ratelimit.remaining.requests": 9999,
              "openai.ratelimit.tokens": 2000000, "openai.ratelimit.remaining.tokens": 1999980}
    assert compat[0] == {**{(name, tags): value for name, value in gauges.items()
                            for tags in (chat, instruct, embed)},
                         ("openai.request.error", error): 1}

    def tokens(tags, estimated, prompt, completion, total):
        tags = tuple(sorted((*tags, f"openai.estimated:{estimated}"))) if estimated else tags
        return {("openai.tokens.prompt", tags): (1, prompt), ("openai.tokens.total", tags): (1, total),
                **({("openai.tokens.completion", tags): (1, completion)} if completion else {})}

    assert compat[1] == {
        # nanoseconds, as ddtrace sent span.duration_ns
        ("openai.request.duration", chat): (2, 31289846 + 54456903),
        ("openai.request.duration", instruct): (2, 22801662), ("openai.request.duration", embed): (1, 11520872),
        ("openai.request.duration", error): (1, 11681342),
        **tokens(chat, "false", 18, 7, 25),  # not streamed: record_usage
        **tokens(chat, None, 13, 7, 20),  # streamed with a usage chunk: no openai.estimated tag
        **tokens(instruct, "false", 5, 6, 11),
        **tokens(instruct, "true", 7, 7, 14),  # streamed without usage: estimated
        **tokens(embed, "false", 6, 0, 6),  # no completion tokens: not sent
    }


def test_openai_compat_metrics_on_the_evp_path_have_no_organization_or_rate_limits():
    rig = Rig('[llm]\ncompat_metrics = ["openai"]\n')
    rig.process_llmobs_events(capture_evp_events())
    series, sketches = compat_metrics(rig)
    assert list(series) == [("openai.request.error", openai_tags(
        "error-model", "/v1/chat/completions", "error:1", "error_type:openai.ratelimiterror", org=False))]
    assert sum(count for (name, _), (count, _) in sketches.items() if name == "openai.request.duration") == 6
    assert not any(t.startswith("openai.organization") for _, tags in sketches for t in tags)
    assert ("openai.tokens.total", openai_tags(CHAT, "/v1/chat/completions", "error:0", "openai.estimated:false",
                                               org=False)) in sketches  # the model the event names


def test_compat_metrics_are_off_by_default_and_follow_reload():
    rig = Rig()
    rig.run_chunks(capture_chunks()[:1])
    assert compat_metrics(rig) == ({}, {})
    rig.llm.reload(load_config_text(BASE_CONFIG + '[llm]\ncompat_metrics = ["openai"]\n'))
    rig.run_chunks(capture_chunks()[1:2])
    assert len(compat_metrics(rig)[1]) == 4  # duration, three token distributions
    rig.llm.reload(load_config_text(BASE_CONFIG))
    rig.run_chunks(capture_chunks()[2:3])
    assert compat_metrics(rig) == ({}, {})


# ------------------------------------------------------------------------------------------ proxies


PROXY_CASES = [
    # (configured proxy URL, URL the client called, is it the proxy?)
    ("http://127.0.0.1:18080/v1", "http://127.0.0.1:18080/v1/chat/completions", True),
    ("http://LocalHost:4000/", "http://localhost:4000/v1/chat/completions", True),
    ("http://localhost:4000", "HTTP://LOCALHOST:4000/v1/chat/completions", True),
    ("http://proxy", "http://proxy:80/v1/embeddings", True),  # default port made explicit
    ("https://proxy.example.com/", "https://PROXY.example.com:443/v1/chat/completions", True),
    ("http://proxy:4000/v1/", "http://proxy:4000/v1", True),  # trailing slash either way
    ("http://proxy:4000/v1", "http://proxy:4000/v1/?stream=true", True),
    ("http://[::1]:4000", "http://[::1]:4000/v1/chat/completions", True),
    ("http://proxy", "http://user:secret@proxy/v1/chat/completions", True),
    ("http://proxy:4000", "http://proxy:40001/v1/chat/completions", False),  # a longer port
    ("http://proxy:4000/v1", "http://proxy:4000/v10/chat/completions", False),  # a longer path segment
    ("http://proxy:4000", "http://proxy:4000.evil.example/v1", False),  # the host merely starts the same
    ("http://proxy:4000", "http://evil.example/?next=http://proxy:4000/v1", False),  # contains it
    ("http://proxy:4000", "https://proxy:4000/v1/chat/completions", False),  # another scheme
    ("http://proxy:4000", "not a url", False),
]


@pytest.mark.parametrize("proxy, called, expected", PROXY_CASES)
def test_proxy_url_matching(proxy, called, expected):
    rig = Rig(f'[llm]\ninstrumented_proxy_urls = ["{proxy}"]\n')
    chunk = capture_chunks()[0]
    chunk[1].meta["http.url"] = called
    _, events, _ = rig.process_chunk(chunk)
    assert (events[0]["meta"]["span"]["kind"] == "workflow") is expected


def test_a_span_whose_name_contains_the_proxy_url_is_not_a_proxy_call():
    rig = Rig('[llm]\ninstrumented_proxy_urls = ["http://proxy:4000"]\n')
    chunk = capture_chunks()[0]
    chunk[1].name = chunk[1].resource = "POST http://proxy:4000/v1/chat/completions"
    chunk[1].meta["out.host"] = "proxy:4000"
    _, events, _ = rig.process_chunk(chunk)
    assert events[0]["meta"]["span"]["kind"] == "llm"


def test_normalize_url():
    assert normalize_url("HTTPS://Example.COM") == "https://example.com:443/"
    assert normalize_url("http://h:8080/a/b?q=1#f") == "http://h:8080/a/b/"
    assert normalize_url("ftp://h/") is None and normalize_url("http://h:99999/") is None


def test_a_proxied_call_becomes_a_workflow_span_and_derives_no_llm_metrics():
    rig = Rig('[llm]\ninstrumented_proxy_urls = ["http://127.0.0.1:18080/"]\n')
    spans, events, _ = rig.run_chunks(capture_chunks())
    assert len(events) == 6
    for event in events:
        assert event["meta"]["span"]["kind"] == "workflow"
        assert "model_name" not in event["meta"] and "model_provider" not in event["meta"]
        assert not any(k.endswith("_tokens") for k in event["metrics"])
        assert event["meta"]["input"]  # the text stays: only the model/token parts go
    llm_spans = [s for s in spans if s.type == "llm"]
    assert all(s.meta["_dd.llmobs.span_kind"] == "workflow" for s in llm_spans)
    assert not any(k.startswith("_dd.llmobs.") and k.endswith("_tokens") for s in llm_spans for k in s.metrics)
    series, sketches = rig.metrics()
    assert not any(name.startswith("llm.") for name, _ in series) and not sketches
    assert rig.comp.get("proxied_calls") == 6


def test_calls_to_other_urls_are_unaffected_by_proxy_config():
    rig = Rig('[llm]\ninstrumented_proxy_urls = ["http://127.0.0.1:18081/"]\n')
    rig.run_chunks(capture_chunks())
    series, _ = rig.metrics()
    assert_series(series, expected_capture_metrics())


# ------------------------------------------------------------------------------------------ text


def long_chat_chunk(user_text: str, answer: str) -> list[Span]:
    chunk = capture_chunks()[0]
    def texts(event):
        event["meta"]["input"]["messages"][1]["content"] = user_text
        event["meta"]["output"]["messages"][0]["content"] = answer
    edit_struct(chunk[0], texts)
    return chunk


def test_long_message_contents_are_truncated_and_marked():
    rig = Rig("[llm]\nmax_text_chars = 40\n")
    _, events, _ = rig.process_chunk(long_chat_chunk("q" * 100, "é" * 41))
    meta = events[0]["meta"]
    assert meta["input"]["messages"][0]["content"] == "You are a helpful assistant."  # short: untouched
    assert meta["input"]["messages"][1]["content"] == "q" * (40 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER
    assert meta["output"]["messages"][0]["content"] == "é" * (40 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER
    assert meta["input"]["messages"][1]["role"] == "user"
    assert meta["metadata"]["llmship"] == {"truncated": True, "max_text_chars": 40}
    assert meta["metadata"]["temperature"] == 0.2  # the tracer's metadata is kept
    assert "llmship.truncated:true" in events[0]["tags"]
    assert rig.comp.get("text_truncated") == 1


def test_text_exactly_at_the_limit_is_not_marked():
    rig = Rig("[llm]\nmax_text_chars = 40\n")
    _, events, _ = rig.process_chunk(long_chat_chunk("q" * 40, "ok"))
    assert events[0]["meta"]["input"]["messages"][1]["content"] == "q" * 40
    assert "llmship.truncated:true" not in events[0]["tags"] and "llmship" not in events[0]["meta"]["metadata"]


def test_documents_and_values_are_truncated_too():
    rig = Rig("[llm]\nmax_text_chars = 20\n")
    chunk = capture_chunks()[4]  # the embedding: input documents, output value
    edit_struct(chunk[0], lambda e: e["meta"]["input"]["documents"][0].update(text="d" * 50))
    _, events, _ = rig.process_chunk(chunk)
    meta = events[0]["meta"]
    assert meta["input"]["documents"][0]["text"].endswith(TRUNCATION_MARKER)
    assert len(meta["input"]["documents"][0]["text"]) == 20
    assert meta["output"]["value"] == "[1 embed" + TRUNCATION_MARKER  # "[1 embedding(s) returned with size 8]"


def test_scrubbing_happens_before_truncation():
    rig = Rig("[llm]\nmax_text_chars = 30\n")
    _, events, _ = rig.process_chunk(long_chat_chunk("mail john.doe@example.com about the invoice", "ok"))
    content = events[0]["meta"]["input"]["messages"][1]["content"]
    assert content.startswith("mail [REDACTED") and content.endswith(TRUNCATION_MARKER)
    assert "john" not in content and "doe" not in content
    assert len(content) <= 30


def test_error_message_is_scrubbed():
    rig = Rig()
    chunk = capture_chunks()[5]
    edit_struct(chunk[0], lambda e: e["meta"]["error"].update(message="failed for ops@example.com"))
    _, events, _ = rig.process_chunk(chunk)
    assert "ops@example.com" not in events[0]["meta"]["error"]["message"]


# ------------------------------------------------------------------------------------------ sampling


def test_text_not_sampled_ships_timings_tokens_and_tags_without_text():
    rig = Rig("[llm.sampling]\nspan_text_rate = 0.0\nprompt_log_rate = 0.0\n")
    _, events, logs = rig.run_chunks(capture_chunks())
    ok = [e for e in events if e["status"] == "ok"]
    assert len(ok) == 5 and [log["status"] for log in logs] == ["error"]  # errors always log
    for event in ok:
        assert "input" not in event["meta"] and "output" not in event["meta"]
        assert "llmship.text_sampled:false" in event["tags"]
        assert event["meta"]["metadata"]["llmship"] == {"text_sampled": False}
        assert event["metrics"]["total_tokens"] > 0 and event["duration"] > 0 and event["meta"]["model_name"]
    error = next(e for e in events if e["status"] == "error")
    assert error["meta"]["input"]["messages"][0]["content"] == "This will fail"  # errors keep their text
    assert "llmship.text_sampled:false" not in error["tags"]
    series, _ = rig.metrics()
    assert_series(series, expected_capture_metrics())  # metrics do not depend on text sampling


def test_text_sampling_rules_match_service_model_endpoint():
    rig = Rig('[[llm.sampling.rules]]\nmodel = "text-embedding-*"\nspan_text_rate = 0.0\n')
    _, events, _ = rig.run_chunks(capture_chunks())
    sampled_out = [e["name"] for e in events if "llmship.text_sampled:false" in e["tags"]]
    assert sampled_out == ["OpenAI.createEmbedding"]


def test_sample_log_shape_from_processed_text():
    rig = Rig("[llm]\nmax_text_chars = 20\n[llm.sampling]\nprompt_log_rate = 1.0\n")
    _, events, logs = rig.run_chunks(capture_chunks())
    assert len(logs) == 6
    assert logs[0] == {
        "message": "Hello! T…[truncated]",
        "ddsource": "llmship",
        "service": "chatbot",
        "hostname": "test-host",
        "status": "info",
        "ddtags": "service:chatbot,env:staging,version:1.2.3,model:gpt-4o-mini-2024-07-18,provider:openai,"
                  "endpoint:/v1/chat/completions,org:fake-org-123,team:ml,region:eu-west",
        "prompt": "system: You are …[truncated]\nuser: What is …[truncated]",
        "completion": "Hello! T…[truncated]",
        "model": CHAT,
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "trace_id": "11736565019625699723",
        "span_id": "10415123789521304977",
        "tokens": {"input": 18, "output": 7, "total": 25},
        "duration_ms": 31.289846,
        "timestamp": 1795415957059,
    }
    error_log = logs[5]
    assert error_log["status"] == "error" and error_log["message"].startswith("Error code: 429")
    assert error_log["tokens"] == {"input": None, "output": None, "total": None}
    assert logs[4]["prompt"] == "The capital of Fran…"[:20 - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def test_prompt_logs_and_span_text_share_the_trace_decision():
    """Over many traces: the log rate holds within 4 sigma, every logged trace kept its span text, and
    errors always log."""
    rig = Rig("[llm.sampling]\nspan_text_rate = 0.5\nprompt_log_rate = 0.2\n")
    template = capture_chunks()[0]
    n, logged, text_kept, logged_with_text = 4000, 0, 0, 0
    for i in range(n):
        chunk = copy.deepcopy(template)
        for span in chunk:
            span.trace_id = (i * 0x9E3779B97F4A7C15 + 12345) & ((1 << 64) - 1)
            span.span_id += i * 7919
        chunk[1].parent_id = chunk[0].span_id
        _, events, logs = rig.process_chunk(chunk)
        kept = "input" in events[0]["meta"]
        text_kept += kept
        logged += len(logs)
        logged_with_text += bool(logs) and kept
    assert abs(logged / n - 0.2) <= 4 * math.sqrt(0.2 * 0.8 / n)
    assert abs(text_kept / n - 0.5) <= 4 * math.sqrt(0.25 / n)
    assert logged_with_text == logged
    rig_errors = Rig("[llm.sampling]\nprompt_log_rate = 0.0\nspan_text_rate = 0.0\n")
    _, _, error_logs = rig_errors.process_chunk(capture_chunks()[5])
    assert len(error_logs) == 1


def test_reload_swaps_rates_and_proxies():
    rig = Rig("[llm.sampling]\nprompt_log_rate = 0.0\n")
    assert rig.run_chunks(capture_chunks()[:1])[2] == []
    rig.llm.reload(load_config_text(BASE_CONFIG + "[llm.sampling]\nprompt_log_rate = 1.0\n"
                                    '[llm]\ninstrumented_proxy_urls = ["http://127.0.0.1:18080"]\n'))
    _, events, logs = rig.run_chunks(capture_chunks()[1:2])
    assert len(logs) == 0 and events[0]["meta"]["span"]["kind"] == "workflow"  # proxied: not an LLM call
    rig.llm.reload(load_config_text(BASE_CONFIG + "[llm.sampling]\nprompt_log_rate = 1.0\n"))
    assert len(rig.run_chunks(capture_chunks()[2:3])[2]) == 1


# ------------------------------------------------------------------------------------------ bad input


def test_bad_events_are_counted_and_do_not_stop_the_batch():
    rig = Rig()
    good = capture_evp_events()
    bad = ["not an object", {"meta": {"span": "llm"}, "span_id": "1"}, {"span_id": "2", "start_ns": "soon"}]
    events, _ = rig.process_llmobs_events([bad[0], good[0], bad[1], bad[2], good[1]])
    assert [e["span_id"] for e in events] == [good[0]["span_id"], good[1]["span_id"]]
    assert rig.comp.get("discarded", reason="bad_llmobs_event") == 3


def test_odd_but_valid_event_shapes_are_processed():
    rig = Rig()
    odd = {"span_id": "77", "name": "my-step", "meta": {"span": {"kind": "task"}, "input": {"value": 3}},
           "tags": "not-a-list"}
    events, logs = rig.process_llmobs_events([odd])
    assert len(events) == 1 and events[0]["tags"] == ["team:ml", "region:eu-west"]
    assert rig.comp.get("llm_calls") == 0  # a task span is not an LLM call


def test_bad_event_on_an_apm_span_keeps_the_span():
    rig = Rig()
    chunk = capture_chunks()[0]
    edit_struct(chunk[0], lambda e: e["meta"].update(span="llm"))
    spans, events, _ = rig.process_chunk(chunk)
    assert len(spans) == 2 and events == []
    assert rig.comp.get("discarded", reason="bad_llmobs_event") == 1
    # the call still counts, from what the event said before it failed and from the span
    series, _ = rig.metrics()
    assert series[("llm.requests", call_tags(CHAT, "/v1/chat/completions", ORG))] == 1


# ------------------------------------------------------------------------------------------ speed


def _unique_copies(chunks: list[list[Span]], n: int) -> list[list[list[Span]]]:
    """``n`` copies of ``chunks`` with distinct span ids, so none is taken for a duplicate."""
    batches = []
    for b in range(1, n + 1):
        batch = copy.deepcopy(chunks)
        for chunk in batch:
            for span in chunk:
                span.span_id ^= b << 40
                span.parent_id = span.parent_id ^ (b << 40) if span.parent_id else 0
        batches.append(batch)
    return batches


def _us_per_span(rig: Rig, batches: list[list[list[Span]]]) -> float:
    it = iter(batches)

    def run():
        rig.emitter.submit_spans(next(it), TracerInfo())

    seconds = timeit.timeit(run, number=len(batches))
    return seconds / sum(len(c) for c in batches[0]) / len(batches) * 1e6


def test_process_chunk_speed_report(capsys):
    """Not a pass/fail benchmark: prints µs per span for the capture (6 LLM spans with text, events and
    metrics, 6 HTTP children) and for plain APM spans (the common case on the trace path)."""
    rig = Rig()
    llm_heavy = _us_per_span(rig, _unique_copies(capture_chunks(), 300))
    web = [Span(trace_id=9, span_id=i + 1, parent_id=i, service="web", name="http.request", resource="GET /",
                type="web", start=0, duration=1000, meta={"http.url": "http://x/", "env": "prod"})
           for i in range(12)]
    plain = _us_per_span(rig, _unique_copies([web], 2000))
    with capsys.disabled():
        print(f"\nLLM stage + router: {llm_heavy:.2f} µs/span on the capture, {plain:.2f} µs/span on plain APM spans")
    assert llm_heavy > plain > 0


def test_a_call_whose_processing_fails_is_still_counted_from_its_other_copy():
    """Nothing is marked counted or shipped until a call's processing finished: when the v0.4 copy fails
    (here the scrubber raises), the EVP copy of the same call is counted and shipped, not discarded."""
    rig = Rig()
    chunk = capture_chunks()[0]
    evp = evp_copy(chunk[0])
    real_scrub = rig.llm._text._scrub
    rig.llm._text._scrub = lambda text: 1 / 0
    spans, events, _ = rig.process_chunk(chunk)
    assert len(spans) == 2 and events == []  # the APM spans still go on
    assert rig.telemetry.component("processing").get("errors") == 1
    rig.llm._text._scrub = real_scrub
    shipped, _ = rig.process_llmobs_events([evp])
    assert len(shipped) == 1
    series, _ = rig.metrics()
    assert series[("llm.requests", call_tags(CHAT, "/v1/chat/completions"))] == 1


def test_llmobs_structs_read_the_same_by_msgspec_and_msgpack():
    """The struct reader's fast path (msgspec) and its twin (msgpack) agree; a struct with invalid UTF-8,
    which msgspec refuses, is read with the bad bytes replaced."""
    for chunk in capture_chunks():
        raw = chunk[0].meta_struct["_llmobs"]
        assert extract._decode_struct(raw) == msgpack.unpackb(raw, raw=False, strict_map_key=False)
    bad = msgpack.packb({"name": b"\xffoops"}, use_bin_type=False)
    assert extract._unpack_struct(bad) == {"name": "\ufffdoops"}
