"""Encode flushed metrics, DogStatsD events and service checks for Datadog's intakes, within their limits.

Payload layouts (the intake decoder in llmship/intake/decode.py reads exactly these):

series -> POST /api/v2/series, application/json, the public v2 JSON form:
  {"series": [{"metric": str, "type": 1 count | 2 rate | 3 gauge, "interval": int,
               "points": [{"timestamp": int, "value": float}], "tags": [str],
               "resources": [{"type": "host", "name": str}]}]}     ("resources" absent for an empty host)
  Limits (Datadog API docs, Submit metrics v2): at most 512,000 bytes as sent and 5,242,880 bytes
  once decompressed.

sketches -> POST /api/beta/sketches, application/x-protobuf, agent-payload proto/metrics/agent_payload.proto:
  SketchPayload   { repeated Sketch sketches = 1; CommonMetadata metadata = 2 (written empty, as the Agent) }
  Sketch          { string metric = 1; string host = 2; repeated string tags = 4;
                    repeated Dogsketch dogsketches = 7 }
  Dogsketch       { int64 ts = 1; int64 cnt = 2; double min = 3; double max = 4; double avg = 5;
                    double sum = 6; repeated sint32 k = 7 [packed]; repeated uint32 n = 8 [packed] }
  Proto3: zero-valued scalars are omitted. Limits: the Agent's serializer_max_payload_size (2,621,440 B
  compressed) and serializer_max_uncompressed_payload_size (4,194,304 B).

events -> POST /api/v1/events, application/json, one event per request (the public API takes one):
  {"title", "text", "date_happened", "priority", "host", "tags", "alert_type", "aggregation_key",
   "source_type_name"} (absent fields left out; text cut to 4,000 characters, the documented limit).

service_checks -> POST /api/v1/check_run, application/json, an array batched per flush:
  [{"check": str, "host_name": str, "status": 0..3, "timestamp": int, "message": str, "tags": [str]}]
  Limits: the Agent posts check runs to this endpoint within serializer_max_payload_size and
  serializer_max_uncompressed_payload_size, so we do too.

Payloads are built as the items come (llmship.shipping.packer, the Agent's stream compressor): each item is
encoded and handed to the packer of its kind, which compresses as the payload grows and submits it once full,
so a flush of 100k contexts holds one open payload per kind, never every encoded series. ``ship_async`` does
it in slices of about SLICE_SECS and lets the event loop run between them. A payload records its item
boundaries, so delivery splits it on a 413 without decoding it.

Compression: [sinks.datadog] compression where the intake takes it (see each encoding), else gzip.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import replace
from collections.abc import Callable, Iterable, Iterator

import orjson

from llmship import protobuf as pb
from llmship.aggregation import FlushResult, Series, SketchSeries
from llmship.delivery.payload import Framing, Payload
from llmship.log import RateLimited, get_logger
from llmship.shipping.packer import Encoding, Packer, accepted, build_payloads
from llmship.sinks.intakes import ROUTES
from llmship.tags import add_missing, agent_default_tags, split_tags
from llmship.tap import IDLE
from llmship.telemetry import Telemetry

# Datadog API docs, Submit metrics (v2): "The maximum payload size is 500 kilobytes (512000 bytes).
# Compressed payloads must have a decompressed size of less than 5 megabytes (5242880 bytes)."
SERIES_MAX_BYTES = 512_000
SERIES_MAX_UNCOMPRESSED_BYTES = 5_242_880
# The Agent's serializer_max_payload_size / serializer_max_uncompressed_payload_size defaults, used for
# sketches and check runs ("do not change ... your payloads will get dropped by Datadog's intake").
AGENT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024 + 512 * 1024
AGENT_MAX_UNCOMPRESSED_BYTES = 4 * 1024 * 1024
EVENT_TEXT_MAX_CHARS = 4000  # Datadog API docs, Post an event: text is limited to 4000 characters
EVENT_AGGREGATION_KEY_MAX_CHARS = 100  # same page: aggregation_key is limited to 100 characters
MAX_PENDING_SERVICE_CHECKS = 10_000  # per flush interval; a bound of ours, beyond it drop newest
# How long ship_async encodes before giving the event loop a turn: DogStatsD datagrams wait at most about
# this long for their reader (the kernel's receive buffer holds them meanwhile).
SLICE_SECS = 0.005
_CLOCK_EVERY_ITEMS = 32  # items encoded between looks at the clock (a look costs about an item's encoding)

_JSON = "application/json"
_PROTOBUF = "application/x-protobuf"
_SKETCH_FOOTER = pb.f_msg(2, b"")  # empty CommonMetadata, as the Agent's serializer writes it
_EVENT_FIELDS = ("title", "text", "date_happened", "priority", "host", "tags", "alert_type",
                 "aggregation_key", "source_type_name")


# ---------------------------------------------------------------------------------------------- encoders


def encode_series(series: Series) -> bytes:
    """One JSON entry of the /api/v2/series "series" array."""
    item = {
        "metric": series.metric,
        "type": series.type,
        "interval": series.interval,
        "points": [{"timestamp": ts, "value": value} for ts, value in series.points],
        "tags": series.tags,  # orjson writes a tuple as an array
    }
    if series.host:
        item["resources"] = [{"type": "host", "name": series.host}]
    return orjson.dumps(item)


# Field keys of Sketch and Dogsketch (see the module docstring).
_METRIC, _HOST, _TAG, _DOGSKETCH = (pb.tag(field, pb.LEN) for field in (1, 2, 4, 7))
_TS, _CNT = (pb.tag(field, pb.VARINT) for field in (1, 2))
_MIN, _MAX, _AVG, _SUM = (pb.tag(field, pb.FIXED64) for field in (3, 4, 5, 6))
_KEYS, _COUNTS = (pb.tag(field, pb.LEN) for field in (7, 8))
_TAG_SKETCH = pb.tag(1, pb.LEN)  # SketchPayload.sketches
_double = struct.Struct("<d").pack


def _zigzag_varint(n: int) -> bytes:
    return pb.varint(pb.zigzag(n))


def _len_field(key: bytes, body: bytes) -> bytes:
    return key + pb.varint(len(body)) + body


def encode_sketch(sketch: SketchSeries) -> bytes:
    """One SketchPayload.sketches entry (field 1, length-delimited), see the module docstring. Proto3:
    empty strings and zero numbers are left out (bytes for bytes what the llmship.protobuf helpers write)."""
    fields = [_len_field(_METRIC, sketch.metric.encode())]
    if sketch.host:
        fields.append(_len_field(_HOST, sketch.host.encode()))
    fields.extend(_len_field(_TAG, tag.encode()) for tag in sketch.tags if tag)
    for ts, sk in sketch.points:
        keys, counts = sk.cols()
        dogsketch = [_TS + pb.varint(ts) if ts else b"", _CNT + pb.varint(sk.cnt) if sk.cnt else b""]
        dogsketch.extend(key + _double(x) if x else b""
                         for key, x in ((_MIN, sk.min), (_MAX, sk.max), (_AVG, sk.avg), (_SUM, sk.sum)))
        if keys:
            dogsketch.append(_len_field(_KEYS, b"".join(map(_zigzag_varint, keys))))
            dogsketch.append(_len_field(_COUNTS, b"".join(map(pb.varint, counts))))
        fields.append(_len_field(_DOGSKETCH, b"".join(dogsketch)))
    return _len_field(_TAG_SKETCH, b"".join(fields))


# The Agent's serializer compresses series, sketches and check runs with serializer_compressor_kind: zlib
# (Content-Encoding: deflate) or zstd, zstd by default in current Agents (datadog-agent
# pkg/config/setup/config.go DefaultCompressorKind = "zstd", pkg/serializer/compression/internal/
# zstd_strategy.go ContentEncoding "zstd"); the v2 series API documents deflate, zstd and gzip (Datadog API
# docs, Submit metrics, Content-Encoding). We have always sent gzip to all three, so gzip stays accepted.
_METRICS_ENCODINGS = ("gzip", "deflate", "zstd", "identity")
# POST /api/v1/events is the public API, not the Agent's path (it posts events to /intake/): gzip and
# deflate are what we have sent it; zstd is not documented for it, so zstd falls back to gzip.
_EVENTS_ENCODINGS = ("gzip", "deflate", "identity")

SERIES = Encoding("series", ROUTES["series"], _JSON, SERIES_MAX_BYTES, SERIES_MAX_UNCOMPRESSED_BYTES,
                  Framing(b'{"series":[', b",", b"]}"))
SKETCHES = Encoding("sketches", ROUTES["sketches"], _PROTOBUF, AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES,
                    Framing(b"", b"", _SKETCH_FOOTER))
SERVICE_CHECKS = Encoding("service_checks", ROUTES["service_checks"], _JSON, AGENT_MAX_PAYLOAD_BYTES,
                          AGENT_MAX_UNCOMPRESSED_BYTES, Framing(b"[", b",", b"]"))
EVENTS = Encoding("events", ROUTES["events"], _JSON, AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES,
                  max_items=1)  # POST /api/v1/events takes one event


def metrics_encodings(compression: str) -> dict[str, Encoding]:
    """The four encodings for [sinks.datadog] compression (levels: the codecs' defaults, as before)."""
    metrics, events = accepted(compression, _METRICS_ENCODINGS), accepted(compression, _EVENTS_ENCODINGS)
    return {"series": replace(SERIES, compression=metrics), "sketches": replace(SKETCHES, compression=metrics),
            "service_checks": replace(SERVICE_CHECKS, compression=metrics),
            "events": replace(EVENTS, compression=events)}


# ---------------------------------------------------------------------------------------------- the sink


class MetricsSink:
    """Turns aggregator flushes, DogStatsD events and service checks into payloads for delivery."""

    def __init__(self, cfg, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._submit = submit
        self._tel = telemetry.component("metrics_sink")
        self._rl = RateLimited(get_logger("metrics_sink"))
        self._checks: list[bytes] = []
        # Flushes being encoded, oldest first. One interrupted (ship_async cancelled) stays here and is
        # finished by the next ship or by shutdown: its aggregates were taken from the aggregator already.
        self._shipments: list[Iterator[None]] = []
        self.tap = IDLE  # the agent's Tap, given by agent.build
        # transforms.privacy.MetricScrubber, given by agent.build: events' and checks' text and tag values
        self.privacy = None
        self._tel.gauge("pending_service_checks", lambda: len(self._checks))
        self.reload(cfg)

    def reload(self, cfg) -> None:
        self._encodings = metrics_encodings(cfg.sinks.datadog.compression)
        self._hostname = cfg.agent.hostname
        self._default_tags = agent_default_tags(cfg.agent)

    async def start(self) -> None:
        """Nothing runs in the background: the agent's flush loop calls ``ship_async`` (or ``ship``)."""

    async def shutdown(self, deadline: float | None = None) -> None:
        """Finish a flush whose encoding was interrupted and hand over the service checks still waiting
        (idempotent)."""
        for _ in self._slices(None):
            pass
        self._flush_service_checks()

    def ship(self, result: FlushResult) -> None:
        """Encode one aggregator flush (series, sketches) and this interval's service checks; submit each
        payload as soon as it is full. All at once: see ``ship_async`` for the event loop's sake."""
        for _ in self._slices(result):
            pass

    async def ship_async(self, result: FlushResult) -> None:
        """``ship`` in slices of about SLICE_SECS, giving the event loop a turn between them, so sockets are
        read while a flush of 100k contexts is encoded. Cancelled, it leaves the rest of the flush to the
        next ``ship``/``ship_async`` or to ``shutdown``: nothing is lost."""
        for _ in self._slices(result):
            await asyncio.sleep(0)

    def _slices(self, result: FlushResult | None) -> Iterator[None]:
        """Run the shipments (``result``'s after any interrupted one), yielding between slices."""
        if result is not None:
            self._shipments.append(self._encode(result))
        while self._shipments:
            shipment = self._shipments[0]
            # A plain loop, not ``yield from``: closing this generator (its caller was cancelled) must leave
            # the shipment open for the next caller to finish.
            for _ in shipment:
                yield
            if self._shipments and self._shipments[0] is shipment:
                self._shipments.pop(0)

    def _encode(self, result: FlushResult) -> Iterator[None]:
        series = Packer(self._encodings["series"], self._submit_one, on_too_large=self._too_large("series"))
        sketches = Packer(self._encodings["sketches"], self._submit_one, on_too_large=self._too_large("sketches"))
        encoded = {Series: 0, SketchSeries: 0}
        slice_end = time.perf_counter() + SLICE_SECS
        tap = self.tap if self.tap.wants("metrics") else None  # asked once a flush: nothing per item otherwise
        for i, item in enumerate(result.drain(), 1):
            if tap is not None:
                tap.offer("metrics", item)
            if type(item) is Series:
                series.add(encode_series(item))
            else:
                sketches.add(encode_sketch(item))
            encoded[type(item)] += 1
            if i % _CLOCK_EVERY_ITEMS == 0 and time.perf_counter() > slice_end:
                self._count_encoded(encoded)
                yield
                slice_end = time.perf_counter() + SLICE_SECS
        series.flush()
        sketches.flush()
        self._count_encoded(encoded)
        self._flush_service_checks()

    def _count_encoded(self, encoded: dict[type, int]) -> None:
        for cls, counter in ((Series, "series_encoded"), (SketchSeries, "sketches_encoded")):
            if encoded[cls]:
                self._tel.inc(counter, encoded[cls])
                encoded[cls] = 0

    def send_event(self, event: dict) -> None:
        """Submit one DogStatsD event at once. Keys as the /api/v1/events body (see module docstring);
        ``tags`` may be a raw "k:v,..." string or a list. A missing host is the agent's hostname."""
        event = self._scrubbed(self.privacy.event if self.privacy else None, event)
        if event is None:
            return
        body = {k: event[k] for k in _EVENT_FIELDS if event.get(k) not in (None, "")}
        if not body.get("title"):
            self._tel.discard("event_without_title")
            self._rl.warning("event_without_title", "event_rejected", reason="no title")
            return
        body.setdefault("host", self._hostname)
        body["tags"] = self._tags(event.get("tags"))
        # "text" is required by POST /api/v1/events even when a DogStatsD event's text is empty
        body["text"] = str(body.get("text", ""))[:EVENT_TEXT_MAX_CHARS]
        if "aggregation_key" in body:
            body["aggregation_key"] = str(body["aggregation_key"])[:EVENT_AGGREGATION_KEY_MAX_CHARS]
        self._tel.inc("events_encoded")
        self._submit_all(build_payloads(self._encodings["events"], [orjson.dumps(body)], self._too_large("events")))

    def _scrubbed(self, scrub: Callable[[dict], dict] | None, item: dict) -> dict | None:
        """``item`` scrubbed; None (dropped and counted, never sent raw) when scrubbing raised."""
        if scrub is None:
            return item
        try:
            return scrub(item)
        except Exception as e:
            self._tel.discard("scrub_failed")
            self._rl.error("scrub_failed", "event_scrub_failed", error=f"{type(e).__name__}: {e}")
            return None

    def send_service_check(self, check: dict) -> None:
        """Queue one service check for the next ``ship``. Keys: check (or name), status 0-3, host_name
        (or host; default the agent's hostname), timestamp (default now), message, tags (str or list)."""
        check = self._scrubbed(self.privacy.service_check if self.privacy else None, check)
        if check is None:
            return
        name = check.get("check") or check.get("name")
        try:
            status = int(check.get("status"))
            timestamp = int(check.get("timestamp") or time.time())
        except (TypeError, ValueError, OverflowError):
            status = timestamp = -1
        if not name or status not in (0, 1, 2, 3) or timestamp < 0:
            self._tel.discard("bad_service_check")
            self._rl.warning("bad_service_check", "service_check_rejected", check=str(name)[:200])
            return
        if len(self._checks) >= MAX_PENDING_SERVICE_CHECKS:
            self._tel.discard("service_checks_full")
            return
        host = check.get("host_name", check.get("host"))
        item = {
            "check": str(name),
            "host_name": self._hostname if host is None else str(host),
            "status": status,
            "timestamp": timestamp,
            "tags": self._tags(check.get("tags")),
        }
        if check.get("message"):
            item["message"] = str(check["message"])
        self._checks.append(_compact(orjson.dumps(item)))

    # ------------------------------------------------------------------------------------------ helpers

    def _flush_service_checks(self) -> None:
        if not self._checks:
            return
        items, self._checks = self._checks, []
        self._tel.inc("service_checks_encoded", len(items))
        self._submit_all(build_payloads(self._encodings["service_checks"], items,
                                        self._too_large("service_checks")))

    def _tags(self, raw: str | Iterable[str] | None) -> list[str]:
        tags = split_tags(raw if isinstance(raw, str) else ",".join(map(str, raw or ())))
        return add_missing(tags, self._default_tags)

    def _too_large(self, kind: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            self._tel.inc("discarded", n, reason="item_too_large", intentional="false", kind=kind)
            self._rl.warning(f"too_large_{kind}", "item_too_large", kind=kind)
        return count

    def _submit_all(self, payloads: list[Payload]) -> None:
        for payload in payloads:
            self._submit_one(payload)

    def _submit_one(self, payload: Payload) -> None:
        self._tel.inc("payloads", kind=payload.kind)
        self._tel.inc("bytes_encoded", len(payload.body), kind=payload.kind)
        self._submit(payload)


def _compact(encoded: bytes) -> bytes:
    """A copy of exactly its size. What orjson.dumps returns keeps an allocation of about 4 KiB however
    short it is (measured with orjson 3.13: 100k results of 20 bytes held 393 MiB of RSS), so one that is
    kept beyond the moment is copied."""
    return bytes(memoryview(encoded))
