"""The OTLP sink's encoders, read back with the intake's decoder (opentelemetry-proto)."""

from __future__ import annotations

import asyncio

import orjson

from llmship.aggregation import COUNT, GAUGE, RATE, Series, SketchSeries
from llmship.config import load_config_text
from llmship.delivery.payload import split
from llmship.delivery.transport import OTLPTransport, RoutingTransport, make_transport
from llmship.intake.decode import decode_payload
from llmship.llm.stage import CallOutput
from llmship.model import Span, TracerInfo
from llmship.sinks.otlp import DURATION_BOUNDS, TOKEN_BOUNDS, OTLPSink, call_attributes
from llmship.sketch import Sketch
from llmship.telemetry import Telemetry
from llmship import workers

CFG = load_config_text('[agent]\nhostname = "h1"\n[sinks.otlp]\nendpoint = "http://127.0.0.1:1"\n'
                       'headers = { "x-token" = "tok-123456" }\n', env={})


def sink(payloads=None, clock=lambda: 100.0):
    return OTLPSink(CFG, (payloads if payloads is not None else []).append, Telemetry(), clock=clock)


def items_body(items) -> bytes:
    return b"".join(items)  # the framing: field-1 items back to back


EVENT = {"meta": {"span.kind": "llm", "model_name": "gpt-4o-mini", "model_provider": "openai",
                  "input": {"messages": [{"role": "user", "content": "hi [REDACTED:email]"}]},
                  "output": {"messages": [{"role": "assistant", "content": "hello"}]}},
         "metrics": {"input_tokens": 3, "output_tokens": 5, "cache_read_input_tokens": 1}}
GENAI = ("chatbot", "prod", "chat", "openai", "gpt-4o-mini", "gpt-4o-mini", None, 3, 5, 0.5)


def test_spans_with_genai_attributes_round_trip():
    root = Span(service="chatbot", name="flask.request", resource="GET /", trace_id=7, span_id=1, start=10,
                duration=100, meta={"env": "prod", "_dd.p.tid": "00000000000000ab", "span.kind": "server",
                                    "http.method": "GET"}, metrics={"_sampling_priority_v1": 1, "x": 2})
    llm = Span(service="chatbot", name="openai.request", resource="createChatCompletion", trace_id=7, span_id=2,
               parent_id=1, start=20, duration=50, error=1, meta={"error.message": "boom", "error.type": "E"})
    items = sink().encode_chunks([[root, llm]], TracerInfo(language="python"),
                                 {2: call_attributes(EVENT, GENAI)})
    assert [item[1:] for item in items] == [(1, 2), (1,)]  # the call's span in an item of its own, with its id
    spans = {s["span_id"]: s for s in decode_payload("otlp_spans", items_body(item[0] for item in items), None)}
    r, c = spans["0000000000000001"], spans["0000000000000002"]
    assert r["trace_id"] == "00000000000000ab0000000000000007" and r["kind"] == 2 and r["name"] == "GET /"
    assert r["attributes"]["operation.name"] == "flask.request" and r["attributes"]["x"] == 2.0
    assert "_sampling_priority_v1" not in r["attributes"] and "_dd.p.tid" not in r["attributes"]
    assert r["resource"] == {"service.name": "chatbot", "deployment.environment.name": "prod", "host.name": "h1",
                             "telemetry.sdk.language": "python"}
    assert c["parent_span_id"] == "0000000000000001" and c["kind"] == 3 and c["name"] == "chat gpt-4o-mini"
    assert c["status"] == {"code": 2, "message": "boom"}
    a = c["attributes"]
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.usage.input_tokens"] == 3
    assert a["gen_ai.usage.cache_read.input_tokens"] == 1
    assert orjson.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi [REDACTED:email]"}]}]


def test_chunks_the_tracer_dropped_are_left_out():
    s = Span(span_id=1, metrics={"_sampling_priority_v1": 0})
    assert sink().encode_chunks([[s]], TracerInfo()) == []


def test_an_evp_event_becomes_a_span_of_its_own():
    event = {**EVENT, "trace_id": "123", "span_id": "456", "parent_id": "undefined", "name": "openai.chat",
             "start_ns": 1000, "duration": 500, "status": "ok", "tags": ["service:bot", "env:e"]}
    item = sink().encode_event_span(event, call_attributes(event, None))
    (span,) = decode_payload("otlp_spans", item, None)
    assert span["span_id"] == f"{456:016x}" and span["parent_span_id"] == "" and span["end_time_unix_nano"] == 1500
    assert span["name"] == "chat gpt-4o-mini" and span["resource"]["service.name"] == "bot"


def test_genai_histograms_have_the_conventions_buckets():
    payloads = []
    s = sink(payloads, clock=iter([100.0, 110.0]).__next__)
    for tin, secs in ((3, 0.5), (4, 0.01), (5, 100.0)):
        s.record_call(("bot", "", "chat", "openai", "m", "m", None, tin, 7, secs))
    s.end_metrics()
    (payload,) = payloads
    assert payload.kind == "otlp_metrics" and payload.route.path == "/v1/metrics"
    points = decode_payload("otlp_metrics", payload.body, payload.content_encoding)
    by = {(p["name"], p["attributes"].get("gen_ai.token.type")): p for p in points}
    usage_in = by[("gen_ai.client.token.usage", "input")]
    assert usage_in["explicit_bounds"] == list(TOKEN_BOUNDS) and usage_in["unit"] == "{token}"
    assert usage_in["bucket_counts"][:3] == [0, 2, 1]  # (1, 4] holds 3 and 4; (4, 16] holds 5
    assert usage_in["sum"] == 12 and usage_in["count"] == 3 and usage_in["temporality"] == 1
    assert by[("gen_ai.client.token.usage", "output")]["sum"] == 21
    duration = by[("gen_ai.client.operation.duration", None)]
    assert duration["explicit_bounds"] == list(DURATION_BOUNDS) and duration["bucket_counts"][0] == 1
    assert duration["bucket_counts"][-1] == 1 and duration["max"] == 100.0  # past the last bound
    assert duration["attributes"] == {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                      "gen_ai.request.model": "m", "gen_ai.response.model": "m"}
    assert usage_in["start_time_unix_nano"] == 100 * 10**9 and usage_in["time_unix_nano"] == 110 * 10**9


def test_series_and_sketches_as_otlp_points():
    payloads = []
    s = sink(payloads)
    sk = Sketch()
    for v in (1.0, 2.0, 3.0):
        sk.insert(v)
    s.add_metric(Series("c", COUNT, 10, [(1000, 3.0)], ("a:b", "solo"), "h"))
    s.add_metric(Series("r", RATE, 10, [(1000, 0.5)], (), ""))
    s.add_metric(Series("g", GAUGE, 10, [(1000, -2.0)], (), ""))
    s.add_metric(SketchSeries("d", "h", (), [(1000, sk)]))
    s.add_metric(Series("gen_ai.client.token.usage", COUNT, 10, [(1000, 1.0)], (), ""))  # derived here instead
    s.end_metrics()
    points = {p["name"]: p for p in decode_payload("otlp_metrics", payloads[0].body, "gzip")}
    assert set(points) == {"c", "r", "g", "d"}
    assert points["c"]["type"] == "sum" and points["c"]["monotonic"] and points["c"]["value"] == 3.0
    assert points["c"]["attributes"] == {"a": "b", "solo": ""} and points["c"]["resource"] == {"host.name": "h"}
    assert points["c"]["start_time_unix_nano"] == 990 * 10**9
    assert points["r"]["value"] == 5.0  # rate x interval
    assert points["g"]["type"] == "gauge" and points["g"]["value"] == -2.0
    assert points["d"]["type"] == "histogram" and points["d"]["count"] == 3 and points["d"]["sum"] == 6.0


def test_logs_as_log_records():
    item = sink().encode_log({"message": "hello", "status": "error", "service": "svc", "hostname": "web1",
                              "ddsource": "python", "timestamp": 1_700_000_000_000, "ddtags": "a:b",
                              "usr": {"id": 3}})
    (record,) = decode_payload("otlp_logs", item, None)
    assert record["body"] == "hello" and record["severity_number"] == 17 and record["severity_text"] == "error"
    assert record["time_unix_nano"] == 1_700_000_000_000 * 10**6
    assert record["resource"] == {"service.name": "svc", "host.name": "web1"}
    assert record["attributes"] == {"ddsource": "python", "usr": '{"id":3}', "ddtags": "a:b"}


def test_a_413_splits_between_resource_items():
    payloads = []
    s = sink(payloads)
    for i in range(6):
        s.add_log_item(s.encode_log({"message": f"m{i}"}))
    s.flush()
    halves = split(payloads[0])
    assert len(halves) == 2
    assert [r["body"] for h in halves for r in decode_payload("otlp_logs", h.body, h.content_encoding)] == \
        [f"m{i}" for i in range(6)]


def test_call_outputs_and_otlp_items_cross_the_worker_channel():
    out = CallOutput(5, b"ev", [("llm.requests", "c", 1, "a:b")], None, GENAI, b"", b"log")
    message = (workers.CALLS, [(out.span_id, out.event, out.samples, out.log, out.genai, out.otlp_span,
                                out.otlp_log)])
    reader = workers.FrameReader()
    (frame,) = reader.feed(workers.frame([message, (workers.OTLP, "spans", [[b"x", 2]])]))
    calls, otlp = frame
    back = CallOutput(*calls[1][0])
    assert back.genai == list(GENAI) and back.otlp_span == b"" and back.otlp_log == b"log"
    assert otlp == [workers.OTLP, "spans", [[b"x", 2]]]


def test_transport_routes_otlp_payloads_and_keeps_headers_secret():
    transport = make_transport(CFG)
    assert isinstance(transport, RoutingTransport) and "127.0.0.1:1" in transport.destination
    assert "tok-123456" not in transport.destination and "files" not in transport.destination
    otlp = OTLPTransport(CFG)
    assert otlp._scrub("echo x-token: tok-123456") == "echo x-token: <header value>"
    assert "tok-123456" not in repr(CFG)
    asyncio.run(transport.close())
