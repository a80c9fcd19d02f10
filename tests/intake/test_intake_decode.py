"""decode_payload: every kind, every encoding, and malformed input answered with DecodeError only."""

from __future__ import annotations

import json

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmship import protobuf as pb
from llmship.compression import DecompressionLimit, compress
from llmship.intake.decode import KINDS, DecodeError, UnsupportedEncoding, decode_payload

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"

SERIES = {"series": [
    {"metric": "llm.tokens", "type": 1, "interval": 10, "points": [{"timestamp": 1700000000, "value": 42.0}],
     "tags": ["model:gpt-4o"], "resources": [{"type": "host", "name": "h1"}]},
    {"metric": "llm.latency", "type": 3, "points": [{"timestamp": 1700000000, "value": 0.5}]},
]}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "identity", None])
def test_series_json_in_every_encoding(encoding):
    body = compress(orjson.dumps(SERIES), encoding or "identity")
    assert decode_payload("series", body, encoding) == SERIES["series"]


def test_raw_deflate_is_accepted_as_deflate():
    import zlib

    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = raw.compress(orjson.dumps(SERIES)) + raw.flush()
    assert decode_payload("series", body, "deflate")[0]["metric"] == "llm.tokens"


def test_series_protobuf_as_the_agent_sends_it():
    point = pb.f_double(1, 3.5) + pb.f_varint(2, 1700000010)
    series = (pb.f_msg(1, pb.f_str(1, "host") + pb.f_str(2, "h1")) + pb.f_str(2, "llm.requests")
              + pb.f_str(3, "env:prod") + pb.f_str(3, "model:gpt") + pb.f_msg(4, point) + pb.f_varint(5, 2)
              + pb.f_str(6, "request") + pb.f_varint(8, 10))
    [decoded] = decode_payload("series", compress(pb.f_msg(1, series), "zstd"), "zstd")
    assert decoded == {"metric": "llm.requests", "type": 2, "interval": 10,
                       "points": [{"timestamp": 1700000010, "value": 3.5}], "tags": ["env:prod", "model:gpt"],
                       "resources": [{"type": "host", "name": "h1"}], "unit": "request"}


def _dogsketch(packed: bool = True) -> bytes:
    keys, counts = [-1338, 0, 1338], [1, 2, 3]
    if packed:
        bins = pb.packed_varints(7, keys, signed=True) + pb.packed_varints(8, counts)
    else:  # proto parsers must also accept repeated scalars written one by one
        bins = b"".join(pb.tag(7, pb.VARINT) + pb.varint(pb.zigzag(k)) for k in keys)
        bins += b"".join(pb.tag(8, pb.VARINT) + pb.varint(n) for n in counts)
    return (pb.f_varint(1, 1700000000) + pb.f_varint(2, 6) + pb.f_double(3, -2.5) + pb.f_double(4, 9.0)
            + pb.f_double(5, 1.5) + pb.f_double(6, 9.0) + bins)


@pytest.mark.parametrize("packed", [True, False])
def test_sketches(packed):
    sketch = (pb.f_str(1, "llm.latency") + pb.f_str(2, "h1") + pb.f_str(4, "env:prod") + pb.f_str(4, "model:x")
              + pb.f_msg(7, _dogsketch(packed)))
    metadata = pb.f_msg(2, pb.f_str(1, "7.0.0"))
    body = compress(pb.f_msg(1, sketch) + pb.f_msg(1, pb.f_str(1, "empty.sketch")) + metadata, "gzip")
    first, second = decode_payload("sketches", body, "gzip")
    assert first == {"metric": "llm.latency", "host": "h1", "tags": ["env:prod", "model:x"], "dogsketches": [
        {"ts": 1700000000, "cnt": 6, "min": -2.5, "max": 9.0, "avg": 1.5, "sum": 9.0,
         "k": [-1338, 0, 1338], "n": [1, 2, 3]}]}
    assert second == {"metric": "empty.sketch", "host": "", "tags": [], "dogsketches": []}


def _entry(field: int, key: str, value: bytes) -> bytes:
    return pb.f_msg(field, pb.f_str(1, key) + value)


def _agent_payload() -> bytes:
    llmobs = msgpack.packb({"meta": {"span.kind": "llm"}, "metrics": {"input_tokens": 3}, "raw": b"\x00\x01"})
    link = pb.f_varint(1, 11) + pb.f_varint(2, 12) + pb.f_varint(3, 13) + _entry(4, "k", pb.f_str(2, "v"))
    span = (pb.f_str(1, "chatbot") + pb.f_str(2, "openai.request") + pb.f_str(3, "createChatCompletion")
            + pb.f_varint(4, 2**64 - 5) + pb.f_varint(5, 2**63 + 1) + pb.f_varint(7, 1_700_000_000_000_000_000)
            + pb.f_varint(8, 28_885_515) + pb.f_varint(9, 1)
            + _entry(10, "openai.request.model", pb.f_str(2, "gpt-4o-mini"))
            + _entry(11, "_dd.measured", pb.f_double(2, 1.0)) + _entry(11, "zero", b"")
            + pb.f_str(12, "llm") + _entry(13, "_llmobs", pb.f_bytes(2, llmobs))
            + _entry(13, "opaque", pb.f_bytes(2, b"\xc1")) + pb.f_msg(14, link))
    child = pb.f_str(1, "chatbot") + pb.f_str(2, "http.request") + pb.f_varint(4, 2**64 - 5) + pb.f_varint(5, 9) \
        + pb.f_varint(6, 2**63 + 1)
    chunk = (pb.f_varint(1, -1) + pb.f_str(2, "lambda") + pb.f_msg(3, span) + pb.f_msg(3, child)
             + _entry(4, "_dd.p.dm", pb.f_str(2, "-0")) + pb.f_varint(5, 1))
    tracer = (pb.f_str(1, "c0ffee") + pb.f_str(2, "python") + pb.f_str(3, "3.11.9") + pb.f_str(4, "4.16.0")
              + pb.f_str(5, "rid-1") + pb.f_msg(6, chunk) + _entry(7, "_dd.apm_mode", pb.f_str(2, "full"))
              + pb.f_str(8, "staging") + pb.f_str(9, "app-host") + pb.f_str(10, "1.2.3"))
    return (pb.f_str(1, "agent-host") + pb.f_str(2, "prod") + pb.f_msg(5, tracer)
            + _entry(6, "region", pb.f_str(2, "eu")) + pb.f_str(7, "llmship 0.1.0") + pb.f_double(8, 10.0)
            + pb.f_double(9, 10.0) + pb.f_varint(10, 1))


def test_traces_one_dict_per_span_with_its_chunk_tracer_and_agent_payload():
    first, second = decode_payload("traces", compress(_agent_payload(), "zstd"), "zstd")
    chunk, tracer, agent = first.pop("chunk"), first.pop("tracer_payload"), first.pop("agent_payload")
    assert first == {
        "service": "chatbot", "name": "openai.request", "resource": "createChatCompletion",
        "trace_id": 2**64 - 5, "span_id": 2**63 + 1, "parent_id": 0, "start": 1_700_000_000_000_000_000,
        "duration": 28_885_515, "error": 1, "meta": {"openai.request.model": "gpt-4o-mini"},
        "metrics": {"_dd.measured": 1.0, "zero": 0.0}, "type": "llm",
        "meta_struct": {"_llmobs": {"meta": {"span.kind": "llm"}, "metrics": {"input_tokens": 3},
                                    "raw": {"base64": "AAE="}},
                        "opaque": {"base64": "wQ=="}},
        "span_links": [{"trace_id": 11, "trace_id_high": 12, "span_id": 13, "attributes": {"k": "v"},
                        "tracestate": "", "flags": 0}],
    }
    assert chunk == {"priority": -1, "origin": "lambda", "tags": {"_dd.p.dm": "-0"}, "dropped_trace": True}
    assert tracer == {"container_id": "c0ffee", "language_name": "python", "language_version": "3.11.9",
                      "tracer_version": "4.16.0", "runtime_id": "rid-1", "tags": {"_dd.apm_mode": "full"},
                      "env": "staging", "hostname": "app-host", "app_version": "1.2.3"}
    assert agent == {"hostname": "agent-host", "env": "prod", "tags": {"region": "eu"},
                     "agent_version": "llmship 0.1.0", "target_tps": 10.0, "error_tps": 10.0,
                     "rare_sampler_enabled": True}
    assert second["name"] == "http.request" and second["parent_id"] == 2**63 + 1
    assert "span_links" not in second and second["meta"] == {} and second["chunk"]["priority"] == -1
    orjson.dumps(first)  # every value is JSON-able, to be stored


def test_llmobs_envelopes_from_a_real_ddtrace_capture_flatten_to_spans():
    envelopes = json.loads((CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json").read_text())["body"]
    spans = decode_payload("llmobs", compress(orjson.dumps(envelopes), "gzip"), "gzip")
    assert len(spans) == sum(len(e["spans"]) for e in envelopes) == 6
    assert {s["ml_app"] for s in spans} == {"demo-app"}
    assert spans[0]["_envelope"] == {"_dd.stage": "raw", "_dd.tracer_version": "4.16.0", "event_type": "span"}
    assert spans[0]["span_id"] == envelopes[0]["spans"][0]["span_id"]
    assert spans[0]["meta"] == envelopes[0]["spans"][0]["meta"]


def test_llmobs_single_envelope_and_envelope_ml_app():
    envelope = {"_dd.stage": "raw", "event_type": "span", "ml_app": "from-envelope",
                "spans": [{"span_id": "1", "tags": []}, {"span_id": "2", "tags": ["ml_app:own"]}]}
    spans = decode_payload("llmobs", orjson.dumps(envelope), None)
    assert [(s["span_id"], s["ml_app"]) for s in spans] == [("1", "from-envelope"), ("2", "own")]


def test_logs_array_or_single_object():
    logs = [{"message": "hi", "ddsource": "llmship"}, {"message": "there"}]
    assert decode_payload("logs", compress(orjson.dumps(logs), "gzip"), "gzip") == logs
    assert decode_payload("logs", orjson.dumps(logs[0]), "identity") == [logs[0]]


def test_events_single_list_or_batch():
    event = {"title": "deploy", "text": "v2", "tags": ["env:prod"]}
    assert decode_payload("events", orjson.dumps(event), None) == [event]
    assert decode_payload("events", orjson.dumps([event, event]), None) == [event, event]
    assert decode_payload("events", orjson.dumps({"events": [event]}), None) == [event]


def test_service_checks():
    checks = [{"check": "llm.up", "host_name": "h1", "status": 2, "tags": [], "message": "down"}]
    assert decode_payload("service_checks", orjson.dumps(checks), None) == checks


@pytest.mark.parametrize("kind, body, reason", [
    ("series", b"{not json", "malformed"),
    ("series", b'{"metrics": []}', '"series"'),
    ("series", b'{"series": [{"points": []}]}', "metric"),
    ("series", b'{"series": [1]}', "array of objects"),
    ("logs", b'"a string"', "array of objects"),
    ("logs", b"[1, 2]", "array of objects"),
    ("events", b'{"text": "no title"}', "title"),
    ("service_checks", b'[{"check": "x", "host_name": "h", "status": 7}]', "status"),
    ("service_checks", b'{"check": "x"}', "array"),
    ("llmobs", b'[{"event_type": "span"}]', "spans"),
    ("sketches", b"\x0a\xff", "malformed"),  # a length running past the end
    ("sketches", pb.f_msg(1, pb.f_varint(1, 5)), "length-delimited"),  # metric sent as a number
    ("traces", pb.f_varint(5, 3), "sub-message"),
    ("traces", b"\x0f", "wire type"),
    ("logs", b"", "empty"),
])
def test_malformed_bodies_raise_decode_error(kind, body, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_payload(kind, body, None)


def test_corrupt_compressed_stream_is_a_decode_error():
    for encoding in ("gzip", "deflate", "zstd"):
        with pytest.raises(DecodeError, match="decompress"):
            decode_payload("logs", b"definitely not compressed", encoding)


def test_unknown_encoding_and_kind():
    with pytest.raises(UnsupportedEncoding):
        decode_payload("logs", b"[]", "br")
    with pytest.raises(DecodeError, match="unknown payload kind"):
        decode_payload("metrics", b"[]", None)


def test_decompression_is_bounded_by_the_kind_limit_or_max_bytes():
    bomb = compress(b"[" + b" " * 6_000_000 + b"]", "zstd")  # a few hundred bytes, inflating to 6 MB
    assert len(bomb) < 10_000
    with pytest.raises(DecompressionLimit):
        decode_payload("logs", bomb, "zstd")  # logs: 5 MB decompressed
    with pytest.raises(DecompressionLimit):
        decode_payload("logs", compress(b"[{}]" * 100, "gzip"), "gzip", max_bytes=100)
    assert decode_payload("logs", compress(b"[{}]", "gzip"), "gzip", max_bytes=100) == [{}]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), body=st.binary(max_size=300),
       encoding=st.sampled_from([None, "gzip", "deflate", "zstd"]))
def test_arbitrary_bytes_only_ever_raise_decode_errors(kind, body, encoding):
    try:
        items = decode_payload(kind, body, encoding)
    except DecodeError:
        return
    orjson.dumps(items)  # whatever decodes is storable
