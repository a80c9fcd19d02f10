"""LogsSink: payloads within the logs intake's limits (1000 entries, 5 MB, 1 MB per entry), encodings, 413 split."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from llmship.compression import decompress
from llmship.config import load_config_text
from llmship.delivery.payload import Payload, split
from llmship.sinks.logs import (MAX_ENTRIES_PER_PAYLOAD, MAX_ENTRY_BYTES, MAX_PAYLOAD_BYTES, LogsSink,
                                shrink_to_fit)
from llmship.telemetry import Telemetry
from llmship.transforms.logs import TRUNCATED_TAG
from llmship.transforms.truncate import TRUNCATION_MARKER


def make(compression: str = "gzip") -> tuple[LogsSink, list[Payload], Telemetry]:
    cfg = load_config_text(f'[agent]\nhostname = "sink-host"\n[sinks.datadog]\ncompression = "{compression}"\n')
    sent: list[Payload] = []
    telemetry = Telemetry()
    return LogsSink(cfg, sent.append, telemetry), sent, telemetry


def body(payload: Payload) -> bytes:
    return decompress(payload.body, payload.content_encoding, 64 << 20)


def records(payload: Payload) -> list[dict]:
    return orjson.loads(body(payload))


def test_a_payload_is_a_json_array_for_the_logs_intake():
    sink, sent, _ = make()
    sink.add({"message": "hello", "ddsource": "python", "ddtags": ["env:dev", "team:ml"], "status": "info"})
    sink.flush()
    (payload,) = sent
    assert payload.kind == "logs" and payload.content_type == "application/json"
    assert payload.content_encoding == "gzip" and payload.items == 1
    assert records(payload) == [{"message": "hello", "ddsource": "python", "ddtags": "env:dev,team:ml",
                                 "status": "info", "hostname": "sink-host"}]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "identity"])
def test_the_configured_compression_is_used(encoding):
    sink, sent, _ = make(encoding)
    sink.add({"message": "x" * 1000})
    sink.flush()
    assert sent[0].content_encoding == encoding
    assert records(sent[0])[0]["message"] == "x" * 1000


def test_at_most_1000_entries_per_payload():
    sink, sent, _ = make()
    for i in range(2 * MAX_ENTRIES_PER_PAYLOAD + 500):
        sink.add({"message": f"m{i}"})
    sink.flush()
    assert [p.items for p in sent] == [1000, 1000, 500]
    got = [r["message"] for p in sent for r in records(p)]
    assert got == [f"m{i}" for i in range(2500)]  # all of them, in order


def test_at_most_5_mb_uncompressed_per_payload():
    sink, sent, _ = make()
    entry = "y" * 300_000  # 17 of them would make 5.1 MB
    for i in range(40):
        sink.add({"message": entry, "i": i})
    sink.flush()
    assert len(sent) >= 3
    for payload in sent:
        raw = body(payload)
        assert len(raw) <= MAX_PAYLOAD_BYTES
        assert payload.items == len(orjson.loads(raw))
    assert sorted(r["i"] for p in sent for r in records(p)) == list(range(40))
    # cut as late as possible: a payload is full when the next entry would not fit
    assert len(body(sent[0])) + 300_100 > MAX_PAYLOAD_BYTES


def test_an_entry_over_1_mb_is_truncated_not_dropped():
    sink, sent, telemetry = make()
    sink.add({"message": "start " + "z" * 3_000_000, "prompt": "p" * 10, "service": "svc", "ddtags": "env:dev"})
    sink.flush()
    (payload,) = sent
    (record,) = records(payload)
    assert len(orjson.dumps(record)) <= MAX_ENTRY_BYTES
    assert record["message"].startswith("start zzz") and record["message"].endswith(TRUNCATION_MARKER)
    assert len(orjson.dumps(record)) > MAX_ENTRY_BYTES - 100  # cut to the limit, not far below it
    assert record["prompt"] == "p" * 10 and record["service"] == "svc"
    assert record["ddtags"] == f"env:dev,{TRUNCATED_TAG}"
    assert telemetry.component("logs_sink").get("reduced", reason="entry_too_large") == 1
    assert telemetry.component("logs_sink").get("discarded") == 0


def test_escaped_and_multibyte_text_is_cut_within_the_entry_limit():
    record = {"message": "\u0001é\n" * 400_000, "completion": "日本語" * 200_000}
    data = shrink_to_fit(record, orjson.dumps(record), MAX_ENTRY_BYTES)
    assert len(data) <= MAX_ENTRY_BYTES
    assert TRUNCATED_TAG in orjson.loads(data)["ddtags"]


def test_an_entry_whose_bulk_is_not_strings_becomes_its_json_text_cut():
    record = {"message": "m", "service": "svc", "numbers": list(range(300_000))}
    data = shrink_to_fit(record, orjson.dumps(record), MAX_ENTRY_BYTES)
    out = orjson.loads(data)
    assert len(data) <= MAX_ENTRY_BYTES
    assert out["service"] == "svc" and out["message"].startswith('{"message":"m"')
    assert TRUNCATED_TAG in out["ddtags"]


def test_a_record_json_cannot_hold_is_counted_not_raised():
    sink, sent, telemetry = make()
    sink.add({"message": object()})
    sink.flush()
    assert sent == []
    assert telemetry.component("logs_sink").get("discarded", reason="not_serializable") == 1


def test_a_413_split_keeps_every_record_and_the_encoding():
    sink, sent, _ = make("zstd")
    for i in range(7):
        sink.add({"message": f"m{i}"})
    sink.flush()
    sent[0].extra_headers["X-Test"] = "1"
    halves = split(sent[0])
    assert [h.items for h in halves] == [3, 4]
    assert [r["message"] for h in halves for r in records(h)] == [f"m{i}" for i in range(7)]
    assert all(h.content_encoding == "zstd" and h.extra_headers == {"X-Test": "1"} for h in halves)
    assert halves[0].id != halves[1].id != sent[0].id


async def test_a_batch_waits_at_most_the_flush_interval_and_shutdown_flushes():
    cfg = load_config_text('[agent]\nhostname = "h"\nflush_interval_secs = 0.2\n')
    sent: list[Payload] = []
    sink = LogsSink(cfg, sent.append, Telemetry())
    await sink.start()
    sink.add({"message": "soon"})
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [r["message"] for r in records(sent[0])] == ["soon"]
    sink.add({"message": "at shutdown"})
    await sink.shutdown(time.monotonic() + 1)
    assert [r["message"] for r in records(sent[-1])] == ["at shutdown"]
