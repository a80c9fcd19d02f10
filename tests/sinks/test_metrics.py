from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from llmship import protobuf as pb
from llmship.aggregation import GAUGE, RATE, Aggregator, FlushResult, Series, SketchSeries
from llmship.compression import decompress
from llmship.config import load_config_text
from llmship.delivery.payload import Payload, split
from llmship.intake.decode import decode_payload
from llmship.sinks.metrics import (
    AGENT_MAX_PAYLOAD_BYTES,
    AGENT_MAX_UNCOMPRESSED_BYTES,
    SERIES_MAX_BYTES,
    SERIES_MAX_UNCOMPRESSED_BYTES,
    MetricsSink,
)
from llmship.sketch import Sketch, key
from llmship.telemetry import Telemetry

T0 = 1_700_000_000.0
BIG = 64 * 1024 * 1024


def make_sink(compression: str = "gzip", extra: str = "") -> tuple[MetricsSink, list[Payload], Telemetry]:
    cfg = load_config_text(f'[agent]\nhostname = "host-a"\nenv = "prod"\n{extra}\n'
                           f'[sinks.datadog]\ncompression = "{compression}"\n')
    sent: list[Payload] = []
    telemetry = Telemetry()
    return MetricsSink(cfg, sent.append, telemetry), sent, telemetry


def body(p: Payload) -> bytes:
    return decompress(p.body, p.content_encoding, BIG)


def series_of(payloads: list[Payload]) -> list[dict]:
    return [s for p in payloads if p.kind == "series" for s in orjson.loads(body(p))["series"]]


@pytest.mark.parametrize("compression", ["gzip", "deflate", "zstd", "identity"])
def test_series_json_shape(compression: str) -> None:
    sink, sent, telemetry = make_sink(compression)
    sink.ship(FlushResult(series=[
        Series("req", RATE, 10, [(1700000000, 0.5), (1700000010, 0.0)], ("a:1", "env:prod"), "host-a"),
        Series("depth", GAUGE, 10, [(1700000000, 3.0)], (), ""),
    ]))
    [payload] = sent
    assert (payload.kind, payload.content_type, payload.content_encoding, payload.items) == (
        "series", "application/json", compression, 2)
    assert orjson.loads(body(payload)) == {"series": [
        {"metric": "req", "type": 2, "interval": 10, "tags": ["a:1", "env:prod"],
         "points": [{"timestamp": 1700000000, "value": 0.5}, {"timestamp": 1700000010, "value": 0.0}],
         "resources": [{"type": "host", "name": "host-a"}]},
        {"metric": "depth", "type": 3, "interval": 10, "tags": [], "points": [{"timestamp": 1700000000, "value": 3.0}]},
    ]}
    comp = telemetry.component("metrics_sink")
    assert comp.get("series_encoded") == 2
    assert comp.get("bytes_encoded", kind="series") == len(payload.body)


def flushed_contexts(n: int, tag_value) -> FlushResult:
    """n counter contexts through the real aggregator."""
    now = [T0 + 1]
    agg = Aggregator(load_config_text('[agent]\nhostname = "host-a"\n'), Telemetry(), clock=lambda: now[0])
    for i in range(n):
        agg.add(f"app.requests.{i % 50}", "c", 1, f"endpoint:/v1/chat,shard:{tag_value(i)}")
    now[0] = T0 + 10
    return agg.flush(now[0])


def test_series_split_at_the_uncompressed_limit() -> None:
    # Repetitive series compress ~50x: the 5,242,880-byte decompressed limit is the one that binds.
    result = flushed_contexts(40_000, lambda i: f"{i:08d}" + "x" * 60)
    sink, sent, _ = make_sink("zstd")
    sink.ship(result)
    assert len(sent) >= 2
    assert all(len(body(p)) <= SERIES_MAX_UNCOMPRESSED_BYTES and len(p.body) <= SERIES_MAX_BYTES for p in sent)
    assert max(len(body(p)) for p in sent) > SERIES_MAX_UNCOMPRESSED_BYTES * 0.9  # packed close to the limit
    shipped = series_of(sent)
    assert len(shipped) == 40_000 and sum(p.items for p in sent) == 40_000
    assert len({tuple(s["tags"]) + (s["metric"],) for s in shipped}) == 40_000


def test_series_split_at_the_compressed_limit() -> None:
    # Random tag values barely compress: the 512,000-byte limit on the body as sent binds (each 5 MB
    # batch compresses to ~700 kB and is cut again).
    rng = random.Random(1)
    result = flushed_contexts(30_000, lambda i: "%064x" % rng.getrandbits(256))
    sink, sent, _ = make_sink("gzip")
    sink.ship(result)
    assert len(sent) >= 3
    assert all(len(p.body) <= SERIES_MAX_BYTES for p in sent)
    assert all(len(body(p)) < SERIES_MAX_UNCOMPRESSED_BYTES * 0.8 for p in sent)  # cut by compressed size
    assert sum(p.items for p in sent) == len(series_of(sent)) == 30_000


def test_identity_encoding_respects_the_body_limit() -> None:
    result = flushed_contexts(8_000, lambda i: f"{i:06d}")
    sink, sent, _ = make_sink("identity")
    sink.ship(result)
    assert len(sent) >= 2 and all(len(p.body) <= SERIES_MAX_BYTES for p in sent)
    assert len(series_of(sent)) == 8_000


def test_sketch_protobuf_layout_roundtrip() -> None:
    now = [T0 + 1]
    agg = Aggregator(load_config_text('[agent]\nhostname = "host-a"\n'), Telemetry(), clock=lambda: now[0])
    for v in (1.0, 2.0, 2.0, -3.5, 0.0):
        agg.add("llm.request.duration", "d", v, "service:x,env:y,model:gpt-4o")
    now[0] = T0 + 12
    agg.add("llm.request.duration", "d", 7.0, "service:x,env:y,model:gpt-4o")
    now[0] = T0 + 20
    sink, sent, telemetry = make_sink()
    sink.ship(agg.flush(now[0]))
    [payload] = sent
    assert (payload.kind, payload.content_type, payload.items) == ("sketches", "application/x-protobuf", 1)
    top = pb.decode(body(payload))
    assert top[2] == [b""]  # empty CommonMetadata, as the Agent writes it
    [raw_sketch] = top[1]
    sk = pb.decode(raw_sketch)
    assert sk[1] == [b"llm.request.duration"] and sk[2] == [b"host-a"]
    assert sk[4] == [b"env:y", b"model:gpt-4o", b"service:x"]
    first, second = (pb.decode(d) for d in sk[7])
    assert pb.as_int64(first[1][0]) == int(T0) and first[2] == [5]
    assert (pb.as_double(first[3][0]), pb.as_double(first[4][0])) == (-3.5, 2.0)
    assert pb.as_double(first[5][0]) == pytest.approx(0.3) and pb.as_double(first[6][0]) == 1.5
    assert pb.unpack_varints(first[7][0], signed=True) == [key(-3.5), 0, key(1.0), key(2.0)]
    assert pb.unpack_varints(first[8][0]) == [1, 1, 1, 2]
    assert pb.as_int64(second[1][0]) == int(T0) + 10 and second[2] == [1]
    assert pb.unpack_varints(second[7][0], signed=True) == [key(7.0)]
    assert telemetry.component("metrics_sink").get("sketches_encoded") == 1


def test_splitters_halve_and_keep_everything() -> None:
    sink, sent, _ = make_sink()
    result = flushed_contexts(101, lambda i: str(i))
    sink.ship(result)
    for check in range(3):
        sink.send_service_check({"check": f"c{check}", "status": check})
    sink.ship(FlushResult())
    series_payload, checks_payload = sent
    halves = split(series_payload)
    # cut at the item boundary nearest the middle of the bytes, without decoding
    assert sorted(p.items for p in halves) == [50, 51] and all(p.content_encoding == "gzip" for p in halves)
    assert series_of(halves) == series_of([series_payload])
    check_halves = split(checks_payload)
    assert [c["check"] for p in check_halves for c in orjson.loads(body(p))] == ["c0", "c1", "c2"]

    now = [T0 + 1]
    agg = Aggregator(load_config_text('[agent]\nhostname = "h"\n'), Telemetry(), clock=lambda: now[0])
    for i in range(5):
        agg.add(f"d{i}", "d", float(i))
    now[0] = T0 + 10
    sent.clear()
    sink.ship(agg.flush(now[0]))
    [sketches] = sent
    parts = split(sketches)
    assert sorted(p.items for p in parts) == [2, 3]
    names = [pb.decode(s)[1][0] for p in parts for s in pb.decode(body(p))[1]]
    assert sorted(names) == [b"d0", b"d1", b"d2", b"d3", b"d4"]
    assert all(pb.decode(body(p))[2] == [b""] for p in parts)


def test_sketch_payloads_respect_agent_limits() -> None:
    # 800 sketches of 1,500 distinct keys: ~4.7 MB of protobuf, over the Agent's 2,621,440-byte limit
    sketches = []
    for i in range(800):
        sk = Sketch()
        sk.insert(1.0)
        sk.bins = {k: 1 + (k % 3) for k in range(-750, 750)}
        sketches.append(SketchSeries(f"dist.{i}", "h", ("k:v",), [(int(T0), sk)]))
    sink, sent, _ = make_sink("identity")
    sink.ship(FlushResult(sketches=sketches))
    assert len(sent) >= 2
    assert all(len(p.body) <= min(AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES) for p in sent)
    assert sum(len(pb.decode(p.body)[1]) for p in sent) == sum(p.items for p in sent) == 800


def test_event_payload() -> None:
    sink, sent, telemetry = make_sink(extra='service = "svc"')
    sink.send_event({"title": "Deploy finished", "text": "x" * 5000, "priority": "normal", "alert_type": "info",
                     "aggregation_key": "deploy-123", "source_type_name": "my_apps", "date_happened": 1700000000,
                     "tags": "env:staging,team:llm", "ignored": "field"})
    sink.send_event({"title": "", "text": "no title"})
    [payload] = sent
    assert (payload.kind, payload.content_type, payload.items) == ("events", "application/json", 1)
    event = orjson.loads(body(payload))
    assert event == {"title": "Deploy finished", "text": "x" * 4000, "priority": "normal", "alert_type": "info",
                     "aggregation_key": "deploy-123", "source_type_name": "my_apps", "date_happened": 1700000000,
                     "host": "host-a", "tags": ["env:staging", "team:llm", "service:svc"]}
    comp = telemetry.component("metrics_sink")
    assert comp.get("events_encoded") == 1 and comp.get("discarded", reason="event_without_title") == 1


def test_service_checks_are_batched_per_flush() -> None:
    sink, sent, telemetry = make_sink()
    sink.send_service_check({"check": "chatbot.can_connect", "status": 0, "host_name": "vm-test",
                             "tags": ["service:chatbot"], "message": "all good", "timestamp": 1700000000})
    sink.send_service_check({"name": "chatbot.upstream", "status": 2, "tags": "env:staging"})
    sink.send_service_check({"check": "bad", "status": 7})
    assert sent == []  # waits for the flush
    sink.ship(FlushResult())
    [payload] = sent
    assert (payload.kind, payload.items) == ("service_checks", 2)
    first, second = orjson.loads(body(payload))
    assert first == {"check": "chatbot.can_connect", "host_name": "vm-test", "status": 0, "timestamp": 1700000000,
                     "message": "all good", "tags": ["service:chatbot", "env:prod"]}
    assert (second["check"], second["host_name"], second["status"], second["tags"]) == (
        "chatbot.upstream", "host-a", 2, ["env:staging"])
    assert isinstance(second["timestamp"], int) and "message" not in second
    assert telemetry.component("metrics_sink").get("discarded", reason="bad_service_check") == 1
    sink.ship(FlushResult())
    assert len(sent) == 1  # nothing new: no empty payload


async def test_shutdown_hands_over_pending_service_checks() -> None:
    sink, sent, _ = make_sink()
    sink.send_service_check({"check": "c", "status": 1})
    await sink.shutdown(0)
    await sink.shutdown(0)
    assert [p.kind for p in sent] == ["service_checks"]


async def test_ship_async_lets_the_loop_run_and_ships_everything() -> None:
    result = flushed_contexts(20_000, lambda i: f"{i:06d}")
    sink, sent, _ = make_sink("gzip")
    turns = 0
    done = False

    async def other_work() -> None:  # stands for the DogStatsD reader: counts the turns it gets
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await sink.ship_async(result)
    done = True
    await other
    assert turns > 1  # the flush gave the loop away between slices
    shipped = series_of(sent)
    assert len(shipped) == 20_000 and len({tuple(s["tags"]) for s in shipped}) == 20_000


async def test_a_cancelled_ship_async_is_finished_by_shutdown_exactly_once() -> None:
    result = flushed_contexts(20_000, lambda i: f"{i:06d}")
    sink, sent, _ = make_sink("gzip")
    task = asyncio.create_task(sink.ship_async(result))
    await asyncio.sleep(0)  # the task encodes its first slice, then gives the loop away
    assert not task.done()
    task.cancel()  # as the agent's drain cancels its flush loop
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(series_of(sent)) < 20_000
    await sink.shutdown(0)
    shipped = series_of(sent)
    assert len(shipped) == 20_000 and len({tuple(s["tags"]) for s in shipped}) == 20_000


def test_a_timestamp_beyond_64_bits_costs_only_its_own_line():
    """A `T` timestamp the series JSON cannot carry used to fail the whole flush (orjson refuses ints past 64
    bits); it is now refused where it enters and the rest of the flush ships."""
    from llmship import agent as agentmod
    from llmship.config import load_config_text

    top = agentmod.build(load_config_text('[sinks.datadog]\nurl = "http://127.0.0.1:9"\napi_key = "x"\n'))
    payloads = []
    top.metrics_sink._submit = payloads.append
    parser = top.sources[0].parser
    parser.feed(b"poison:1|g|T99999999999999999999999\nfine:1|g|T1700000000\nalso.fine:2|c")
    top.metrics_sink.ship(top.aggregator.flush(time.time() + 100, final=True))
    names = [s["metric"] for p in payloads if p.kind == "series" for s in decode_payload(
        "series", p.body, p.content_encoding, max_bytes=1 << 20)]
    assert sorted(set(names)) == ["also.fine", "fine"]
    assert top.telemetry.component("dogstatsd").get("discarded", reason="invalid_timestamp") == 1
