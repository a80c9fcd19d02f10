"""TraceSink: APM spans to AgentPayload protobuf, read back by the intake's decoder and by hand."""

from __future__ import annotations

import json
import time

import msgpack
import orjson
import pytest

from llmship import protobuf as pb
from llmship.compression import decompress
from llmship.config import load_config_text
from llmship.delivery.payload import split
from llmship.model import Span, TracerInfo
from llmship.intake.decode import decode_payload
from llmship.sinks.traces import AGENT_VERSION, MAX_PAYLOAD_BYTES, TraceSink
from llmship.sources.traces import decode_v04
from llmship.telemetry import Telemetry

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"
PYTHON = TracerInfo(language="python", language_version="3.11.7", tracer_version="4.16.0",
                    container_id="c0ffee", runtime_id="rt-1")


class Recorder(list):
    def __call__(self, payload) -> None:
        self.append(payload)


def make_sink(config: str = "[agent]\nhostname = \"host-a\"\nenv = \"prod\"\n"):
    submitted = Recorder()
    telemetry = Telemetry()
    return TraceSink(load_config_text(config), submitted, telemetry), submitted, telemetry.component("traces_sink")


def span(span_id: int, parent_id: int = 0, trace_id: int = 42, **fields) -> Span:
    values = dict(service="svc", name="op", resource="res", type="web", start=1_700_000_000_000_000_000,
                  duration=1000, metrics={"_sampling_priority_v1": 1.0})
    values.update(fields)
    return Span(trace_id=trace_id, span_id=span_id, parent_id=parent_id, **values)


def decoded(payload) -> list[dict]:
    return decode_payload("traces", payload.body, payload.content_encoding, max_bytes=64 << 20)


def capture_chunks() -> list[list[Span]]:
    return decode_v04((CAPTURES / "v04_traces_llmobs_default.msgpack").read_bytes(), "application/msgpack")


def test_capture_round_trips_through_the_intake_decoder():
    sink, submitted, _ = make_sink()
    chunks = capture_chunks()
    sink.add_items(sink.encode_chunks(chunks, PYTHON), PYTHON.language)  # one tracer request, as captured
    sink.flush()
    (payload,) = submitted
    assert (payload.kind, payload.content_type, payload.content_encoding) == (
        "traces", "application/x-protobuf", "zstd")  # the default, as the Agent's trace writer
    assert payload.extra_headers == {"X-Datadog-Reported-Languages": "python"}
    assert payload.items == 12
    spans = decoded(payload)
    sent = [s for c in chunks for s in c]
    assert len(spans) == len(sent)
    for got, want in zip(spans, sent):
        for key in ("service", "name", "resource", "trace_id", "span_id", "parent_id", "start", "duration",
                    "error", "meta", "metrics", "type"):
            assert got[key] == getattr(want, key), key
        assert got["meta_struct"] == {}  # the _llmobs struct travels to the LLM Observability intake instead
        assert got["chunk"]["priority"] == 1
        assert got["tracer_payload"] == {
            "container_id": "c0ffee", "language_name": "python", "language_version": "3.11.7",
            "tracer_version": "4.16.0", "runtime_id": "rt-1", "tags": {}, "env": "staging", "hostname": "",
            "app_version": "1.2.3"}
        assert got["agent_payload"]["hostname"] == "host-a" and got["agent_payload"]["env"] == "prod"
        assert got["agent_payload"]["agent_version"] == AGENT_VERSION
        assert got["agent_payload"]["target_tps"] == 10.0 and got["agent_payload"]["error_tps"] == 10.0
    # all six chunks of the request share one tracer payload header, so they are one TracerPayload
    agent = pb.decode(decompress(payload.body, payload.content_encoding, 64 << 20))
    assert len(agent[5]) == 1 and len(pb.decode(agent[5][0])[6]) == 6


def test_field_numbers_by_hand():
    """The wire layout checked with the bare protobuf reader, independently of the intake decoder."""
    sink, submitted, _ = make_sink()
    s = span(7, meta={"k": "v"}, meta_struct={"appsec": msgpack.packb({"a": 1})}, error=1)
    sink.add_chunk([s], PYTHON)
    sink.flush()
    agent = pb.decode(decompress(submitted[0].body, submitted[0].content_encoding, 1 << 20))
    assert agent[1] == [b"host-a"] and agent[2] == [b"prod"] and agent[7] == [AGENT_VERSION.encode()]
    tracer = pb.decode(agent[5][0])
    assert tracer[2] == [b"python"] and tracer[5] == [b"rt-1"] and tracer[8] == [b"prod"]
    chunk = pb.decode(tracer[6][0])
    assert chunk[1] == [1]
    fields = pb.decode(chunk[3][0])
    assert fields[1] == [b"svc"] and fields[4] == [42] and fields[5] == [7] and fields[9] == [1]
    assert pb.decode(fields[10][0]) == {1: [b"k"], 2: [b"v"]}
    assert pb.decode(fields[11][0])[1] == [b"_sampling_priority_v1"]
    assert pb.as_double(pb.decode(fields[11][0])[2][0]) == 1.0
    assert pb.decode(fields[13][0]) == {1: [b"appsec"], 2: [msgpack.packb({"a": 1})]}


def test_zstd_when_configured():
    sink, submitted, _ = make_sink('[sinks.datadog]\ncompression = "zstd"\n')
    sink.add_chunk([span(1)], PYTHON)
    sink.flush()
    assert submitted[0].content_encoding == "zstd"
    assert decoded(submitted[0])[0]["span_id"] == 1


@pytest.mark.parametrize("priority", [0.0, -1.0])
def test_chunks_the_agent_would_not_keep_are_dropped_and_counted(priority):
    sink, submitted, tel = make_sink()
    sink.add_chunk([span(1, metrics={"_sampling_priority_v1": priority}), span(2, parent_id=1)], PYTHON)
    sink.flush()
    assert submitted == []
    assert tel.get("discarded", reason="sampling_priority", intentional="true") == 2


def test_chunk_without_priority_is_kept_as_auto_keep():
    sink, submitted, _ = make_sink()
    sink.add_chunk([span(1, metrics={})], PYTHON)
    sink.flush()
    assert decoded(submitted[0])[0]["chunk"]["priority"] == 1


def test_missing_names_get_the_agent_normalizer_fallbacks():
    sink, submitted, _ = make_sink()
    sink.add_chunk([span(1, service="", name="", resource="", duration=-5)], PYTHON)
    sink.flush()
    (got,) = decoded(submitted[0])
    assert (got["service"], got["name"], got["resource"], got["duration"]) == (
        "python", "service.trace", "service.trace", 0)


def test_span_links_and_native_span_events():
    sink, submitted, _ = make_sink()
    link = {"trace_id": 5, "trace_id_high": 6, "span_id": 7, "attributes": {"a": "b"}, "tracestate": "x=1",
            "flags": 1 | 1 << 31}
    events = [{"name": "retry", "time_unix_nano": 123,
               "attributes": {"n": {"type": 2, "int_value": 3}, "s": {"type": 0, "string_value": "x"},
                              "l": {"type": 4, "array_value": {"values": [{"type": 1, "bool_value": True}]}}}}]
    s = span(1)
    s.span_links, s.span_events = [link], events
    sink.add_chunk([s], PYTHON)
    sink.flush()
    (got,) = decoded(submitted[0])
    assert got["span_links"] == [{**link, "flags": 1 | 1 << 31}]
    assert json.loads(got["meta"]["events"]) == [
        {"name": "retry", "time_unix_nano": 123, "attributes": {"n": 3, "s": "x", "l": [True]}}]


def test_payloads_stay_within_the_intake_size():
    sink, submitted, _ = make_sink()
    big = "x" * 50_000
    for trace_id in range(1, 101):  # ~5 MB of spans
        sink.add_chunk([span(1, trace_id=trace_id, meta={"big": big})], PYTHON)
    sink.flush()
    assert len(submitted) >= 2
    sizes = [len(decompress(p.body, p.content_encoding, 64 << 20)) for p in submitted]
    assert max(sizes) <= MAX_PAYLOAD_BYTES
    assert sorted(s["trace_id"] for p in submitted for s in decoded(p)) == list(range(1, 101))


def test_a_chunk_larger_than_a_payload_is_cut_and_a_huge_span_counted():
    sink, submitted, tel = make_sink()
    big = "x" * 100_000
    chunk = [span(i, parent_id=0 if i == 1 else 1, meta={"big": big}) for i in range(1, 51)]  # ~5 MB
    chunk.append(span(99, parent_id=1, meta={"huge": "y" * MAX_PAYLOAD_BYTES}))
    sink.add_chunk(chunk, PYTHON)
    sink.flush()
    shipped = sorted(s["span_id"] for p in submitted for s in decoded(p))
    assert shipped == list(range(1, 51))
    assert all(s["chunk"]["priority"] == 1 for p in submitted for s in decoded(p))
    assert tel.get("discarded", reason="span_too_large") == 1


def test_a_413_splits_between_tracer_payloads_without_decoding():
    sink, submitted, _ = make_sink()
    sink.add_chunk([span(1, trace_id=1)], PYTHON)
    sink.add_chunk([span(1, trace_id=2)], TracerInfo(language="go"))  # a second tracer payload
    sink.add_chunk([span(1, trace_id=3), span(2, parent_id=1, trace_id=3)], PYTHON)
    sink.flush()
    (payload,) = submitted
    assert payload.items == 4 and len(payload.item_lengths()) == 3  # three TracerPayloads, four spans
    halves = split(payload)
    assert len(halves) == 2 and sum(p.items for p in halves) == 4
    assert sorted((s["trace_id"], s["span_id"]) for p in halves for s in decoded(p)) == [(1, 1), (2, 1), (3, 1), (3, 2)]
    for part in halves:
        assert part.extra_headers == payload.extra_headers and part.content_encoding == payload.content_encoding
        assert {s["agent_payload"]["agent_version"] for s in decoded(part)} == {AGENT_VERSION}  # tail kept
    two = next(p for p in halves if len(p.item_lengths()) == 2)
    assert sorted(p.items for p in split(two)) == sorted(two.item_counts(2))

    # consecutive chunks of one tracer request with one header are one TracerPayload: it cannot be cut further
    sink.add_items(sink.encode_chunks([[span(i, parent_id=0 if i == 1 else 1) for i in range(1, 5)],
                                       [span(9, trace_id=9)]], PYTHON), "python")
    sink.flush()
    single = split(submitted[1])
    assert len(single) == 1 and single[0].items == 5
    agent = pb.decode(decompress(submitted[1].body, submitted[1].content_encoding, 1 << 20))
    assert len(agent[5]) == 1 and len(pb.decode(agent[5][0])[6]) == 2


async def test_shutdown_flushes_what_is_pending():
    sink, submitted, _ = make_sink()
    await sink.start()
    sink.add_chunk([span(1)], PYTHON)
    await sink.shutdown(time.monotonic() + 5)
    assert len(submitted) == 1 and decoded(submitted[0])[0]["span_id"] == 1


def test_events_json_is_not_overwritten():
    sink, submitted, _ = make_sink()
    s = span(1, meta={"events": "[]"})
    s.span_events = [{"name": "e"}]
    sink.add_chunk([s], PYTHON)
    sink.flush()
    assert orjson.loads(decoded(submitted[0])[0]["meta"]["events"]) == []


def test_reload_changes_host_env_and_compression():
    sink, submitted, _ = make_sink()
    sink.reload(load_config_text('[agent]\nhostname = "host-b"\n[sinks.datadog]\ncompression = "zstd"\n'))
    sink.add_chunk([span(1)], PYTHON)
    sink.flush()
    agent = decoded(submitted[0])[0]["agent_payload"]
    assert submitted[0].content_encoding == "zstd"
    assert (agent["hostname"], agent["env"]) == ("host-b", "none")
