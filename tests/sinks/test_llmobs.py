"""LLMObsSink: events batched into ddtrace's envelope list within the intake's limits."""

from __future__ import annotations

import copy
import json
import time

import orjson

from llmship.compression import decompress
from llmship.config import load_config_text
from llmship.delivery.payload import split
from llmship.intake.decode import decode_payload
from llmship.sinks.llmobs import (DROPPED_VALUE_TEXT, MAX_EVENT_BYTES, MAX_EVENTS_PER_PAYLOAD, MAX_PAYLOAD_BYTES,
                                  LLMObsSink)
from llmship.telemetry import Telemetry

from harness import CAPTURES as CAPTURES_ROOT

CAPTURE = CAPTURES_ROOT / "ddtrace-4.16/evp_llmobs_spans_apm_tracing_disabled.json"


class Recorder(list):
    def __call__(self, payload) -> None:
        self.append(payload)


def make_sink(config: str = ""):
    submitted = Recorder()
    telemetry = Telemetry()
    return LLMObsSink(load_config_text(config), submitted, telemetry), submitted, telemetry.component("llmobs_sink")


def capture_events() -> list[dict]:
    return [e for envelope in json.loads(CAPTURE.read_text())["body"] for e in envelope["spans"]]


def body(payload) -> list:
    return orjson.loads(decompress(payload.body, payload.content_encoding, 64 << 20))


def event(i: int = 1, text: str = "hi") -> dict:
    return {"trace_id": "1", "span_id": str(i), "parent_id": "undefined", "name": "llm", "start_ns": 1,
            "duration": 1, "status": "ok", "meta": {"input": {"value": text}, "output": {"value": text},
                                                    "metadata": {"temperature": 0}},
            "metrics": {}, "tags": ["ml_app:app"], "_dd": {"span_id": str(i), "trace_id": "1"}}


def test_envelopes_are_what_ddtrace_posts():
    sink, submitted, tel = make_sink()
    events = capture_events()
    for e in events:
        sink.add(e)
    sink.flush()
    (payload,) = submitted
    assert (payload.kind, payload.content_type, payload.content_encoding, payload.items) == (
        "llmobs", "application/json", "gzip", 6)
    sent = json.loads(CAPTURE.read_text())["body"]
    assert body(payload) == sent  # the capture's own envelopes, byte-for-byte in meaning
    assert [s for s in decode_payload("llmobs", payload.body, "gzip")] == [
        {**e, "_envelope": {k: v for k, v in env.items() if k != "spans"}, "ml_app": "demo-app"}
        for env, e in zip(sent, events)]
    assert tel.get("received") == 6


def test_experiment_spans_get_the_scope_and_unknown_versions_are_left_out():
    sink, submitted, _ = make_sink('[sinks.datadog]\ncompression = "identity"\n')
    e = event()
    e["_dd"]["scope"] = "experiments"
    sink.add(e)
    sink.flush()
    assert submitted[0].content_encoding == "identity"
    assert body(submitted[0]) == [{"_dd.stage": "raw", "event_type": "span", "spans": [e],
                                   "_dd.scope": "experiments"}]


def test_oversized_event_loses_its_io_not_the_event():
    sink, submitted, tel = make_sink()
    big = event(text="x" * MAX_EVENT_BYTES)
    original = copy.deepcopy(big)
    sink.add(big)
    sink.flush()
    (sent,) = body(submitted[0])[0]["spans"]
    assert sent["meta"]["input"] == sent["meta"]["output"] == {"value": DROPPED_VALUE_TEXT}
    assert sent["collection_errors"] == ["dropped_io"]
    assert sent["meta"]["metadata"] == {"temperature": 0} and sent["span_id"] == "1"
    assert big == original  # the caller's event is not modified
    assert tel.get("reduced", reason="dropped_io") == 1 and tel.get("discarded") == 0


def test_event_still_too_large_without_io_is_counted():
    sink, submitted, tel = make_sink()
    e = event()
    e["meta"]["metadata"] = {"blob": "y" * MAX_EVENT_BYTES}
    sink.add(e)
    sink.flush()
    assert submitted == []
    assert tel.get("discarded", reason="event_too_large") == 1


def test_batches_stay_under_5_mib_and_1000_events():
    sink, submitted, _ = make_sink()
    for i in range(3):
        sink.add(event(i, text="z" * 1_000_000))  # ~2 MB each: two fit, the third starts a payload
    for i in range(3, 3 + MAX_EVENTS_PER_PAYLOAD + 10):
        sink.add(event(i))
    sink.flush()
    sizes = [len(decompress(p.body, p.content_encoding, 64 << 20)) for p in submitted]
    assert max(sizes) <= MAX_PAYLOAD_BYTES
    assert max(p.items for p in submitted) <= MAX_EVENTS_PER_PAYLOAD
    ids = [e["span_id"] for p in submitted for env in body(p) for e in env["spans"]]
    assert ids == [str(i) for i in range(3 + MAX_EVENTS_PER_PAYLOAD + 10)]


def test_splitter_halves_the_envelopes():
    sink, submitted, _ = make_sink()
    for i in range(5):
        sink.add(event(i))
    sink.flush()
    halves = split(submitted[0])
    assert [p.items for p in halves] == [2, 3]
    assert [e["span_id"] for p in halves for env in body(p) for e in env["spans"]] == ["0", "1", "2", "3", "4"]
    assert all(p.content_encoding == "gzip" and p.kind == "llmobs" for p in halves)


async def test_shutdown_flushes_what_is_pending():
    sink, submitted, _ = make_sink()
    await sink.start()
    sink.add(event())
    await sink.shutdown(time.monotonic() + 5)
    assert len(submitted) == 1


def test_bytes_from_msgpack_structs_are_serialized():
    sink, submitted, _ = make_sink()
    e = event()
    e["meta"]["metadata"] = {"raw": b"\xffabc", 3: "int key"}
    sink.add(e)
    sink.flush()
    assert body(submitted[0])[0]["spans"][0]["meta"]["metadata"] == {"raw": "\ufffdabc", "3": "int key"}


def test_reload_changes_compression():
    sink, submitted, _ = make_sink()
    sink.reload(load_config_text('[sinks.datadog]\ncompression = "identity"\n'))
    sink.add(event())
    sink.flush()
    assert submitted[0].content_encoding == "identity"
