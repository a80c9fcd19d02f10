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

Every kind registers a splitter (decode, halve, re-encode) so delivery can split a payload on a 413.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import orjson

from llmship import protobuf as pb
from llmship.aggregation import FlushResult, Series, SketchSeries
from llmship.compression import compress, decompress
from llmship.delivery.payload import Payload, register_splitter
from llmship.log import RateLimited, get_logger
from llmship.tags import add_missing, agent_default_tags, split_tags
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

_JSON = "application/json"
_PROTOBUF = "application/x-protobuf"
_SERIES_HEAD, _SERIES_TAIL = b'{"series":[', b"]}"
_ARRAY_HEAD, _ARRAY_TAIL = b"[", b"]"
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
        "tags": list(series.tags),
    }
    if series.host:
        item["resources"] = [{"type": "host", "name": series.host}]
    return orjson.dumps(item)


def encode_sketch(sketch: SketchSeries) -> bytes:
    """One SketchPayload.sketches entry (field 1, length-delimited), see the module docstring."""
    body = [pb.f_str(1, sketch.metric), pb.f_str(2, sketch.host)]
    body.extend(pb.f_str(4, tag) for tag in sketch.tags)
    for ts, sk in sketch.points:
        keys, counts = sk.cols()
        body.append(pb.f_msg(7, b"".join((
            pb.f_varint(1, ts),
            pb.f_varint(2, sk.cnt),
            pb.f_double(3, sk.min),
            pb.f_double(4, sk.max),
            pb.f_double(5, sk.avg),
            pb.f_double(6, sk.sum),
            pb.packed_varints(7, keys, signed=True),
            pb.packed_varints(8, counts),
        ))))
    return pb.f_msg(1, b"".join(body))


def _frame_json(head: bytes, tail: bytes) -> Callable[[list[bytes]], bytes]:
    return lambda items: head + b",".join(items) + tail


def _frame_sketches(items: list[bytes]) -> bytes:
    return b"".join(items) + _SKETCH_FOOTER


class _Kind:
    """How one payload kind is framed, limited and labelled."""

    def __init__(self, name: str, content_type: str, frame: Callable[[list[bytes]], bytes],
                 overhead: int, separator: int, max_bytes: int, max_uncompressed: int) -> None:
        self.name = name
        self.content_type = content_type
        self.frame = frame
        self.overhead = overhead  # framing bytes around the items
        self.separator = separator  # bytes between items
        self.max_bytes = max_bytes  # as sent (compressed)
        self.max_uncompressed = max_uncompressed


SERIES = _Kind("series", _JSON, _frame_json(_SERIES_HEAD, _SERIES_TAIL),
               len(_SERIES_HEAD) + len(_SERIES_TAIL), 1, SERIES_MAX_BYTES, SERIES_MAX_UNCOMPRESSED_BYTES)
SKETCHES = _Kind("sketches", _PROTOBUF, _frame_sketches, len(_SKETCH_FOOTER), 0,
                 AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES)
SERVICE_CHECKS = _Kind("service_checks", _JSON, _frame_json(_ARRAY_HEAD, _ARRAY_TAIL), 2, 1,
                       AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES)
EVENTS = _Kind("events", _JSON, lambda items: items[0], 0, 0,
               AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES)


def build_payloads(kind: _Kind, items: list[bytes], encoding: str,
                   on_too_large: Callable[[int], None] = lambda n: None) -> list[Payload]:
    """Pack pre-encoded items into as few payloads as the kind's limits allow.

    Items are packed greedily up to the uncompressed limit; a compressed body over the limit is cut in
    two and each half tried again. An item that cannot fit even alone is reported to ``on_too_large``.
    """
    payloads: list[Payload] = []
    batch: list[bytes] = []
    size = kind.overhead
    for item in items:
        grow = len(item) + (kind.separator if batch else 0)
        if batch and size + grow > kind.max_uncompressed:
            _emit(kind, batch, encoding, payloads, on_too_large)
            batch, size, grow = [], kind.overhead, len(item)
        if kind.overhead + len(item) > kind.max_uncompressed:
            on_too_large(1)
            continue
        batch.append(item)
        size += grow
    if batch:
        _emit(kind, batch, encoding, payloads, on_too_large)
    return payloads


def _emit(kind: _Kind, batch: list[bytes], encoding: str, out: list[Payload],
          on_too_large: Callable[[int], None]) -> None:
    body = compress(kind.frame(batch), encoding)
    if len(body) <= kind.max_bytes:
        out.append(Payload(kind.name, body, kind.content_type, encoding, items=len(batch)))
    elif len(batch) == 1:
        on_too_large(1)
    else:
        half = len(batch) // 2
        _emit(kind, batch[:half], encoding, out, on_too_large)
        _emit(kind, batch[half:], encoding, out, on_too_large)


# ---------------------------------------------------------------------------------------------- splitters


def _split(kind: _Kind, payload: Payload, items: list[bytes]) -> list[Payload]:
    if len(items) < 2:
        return [payload]
    half = len(items) // 2
    return [
        Payload(kind.name, compress(kind.frame(part), payload.content_encoding), kind.content_type,
                payload.content_encoding, items=len(part), extra_headers=dict(payload.extra_headers))
        for part in (items[:half], items[half:])
    ]


def _inflate(payload: Payload, kind: _Kind) -> bytes:
    return decompress(payload.body, payload.content_encoding, kind.max_uncompressed * 2)


def split_series(payload: Payload) -> list[Payload]:
    entries = orjson.loads(_inflate(payload, SERIES))["series"]
    return _split(SERIES, payload, [orjson.dumps(e) for e in entries])


def split_sketches(payload: Payload) -> list[Payload]:
    sketches = pb.decode(_inflate(payload, SKETCHES)).get(1, [])
    return _split(SKETCHES, payload, [pb.f_msg(1, s) for s in sketches])


def split_service_checks(payload: Payload) -> list[Payload]:
    checks = orjson.loads(_inflate(payload, SERVICE_CHECKS))
    return _split(SERVICE_CHECKS, payload, [orjson.dumps(c) for c in checks])


register_splitter("series", split_series)
register_splitter("sketches", split_sketches)
register_splitter("service_checks", split_service_checks)


# ---------------------------------------------------------------------------------------------- the sink


class MetricsSink:
    """Turns aggregator flushes, DogStatsD events and service checks into payloads for delivery."""

    def __init__(self, cfg, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._submit = submit
        self._tel = telemetry.component("metrics_sink")
        self._rl = RateLimited(get_logger("metrics_sink"))
        self._checks: list[bytes] = []
        self._tel.gauge("pending_service_checks", lambda: len(self._checks))
        self.reload(cfg)

    def reload(self, cfg) -> None:
        self._encoding = cfg.sinks.datadog.compression
        self._hostname = cfg.agent.hostname
        self._default_tags = agent_default_tags(cfg.agent)

    async def start(self) -> None:
        """Nothing runs in the background: the agent's flush loop calls ``ship``."""

    async def shutdown(self, deadline: float | None = None) -> None:
        """Hand over the service checks still waiting (idempotent)."""
        self._flush_service_checks()

    def ship(self, result: FlushResult) -> None:
        """Encode one aggregator flush (series, sketches) and this interval's service checks; submit them."""
        if result.series:
            items = [encode_series(s) for s in result.series]
            self._tel.inc("series_encoded", len(items))
            self._submit_all(build_payloads(SERIES, items, self._encoding, self._too_large("series")))
        if result.sketches:
            items = [encode_sketch(s) for s in result.sketches]
            self._tel.inc("sketches_encoded", len(items))
            self._submit_all(build_payloads(SKETCHES, items, self._encoding, self._too_large("sketches")))
        self._flush_service_checks()

    def send_event(self, event: dict) -> None:
        """Submit one DogStatsD event at once. Keys as the /api/v1/events body (see module docstring);
        ``tags`` may be a raw "k:v,..." string or a list. A missing host is the agent's hostname."""
        body = {k: event[k] for k in _EVENT_FIELDS if event.get(k) not in (None, "")}
        if not body.get("title"):
            self._tel.inc("dropped", reason="event_without_title")
            self._rl.warning("event_without_title", "event_rejected", reason="no title")
            return
        body.setdefault("host", self._hostname)
        body["tags"] = self._tags(event.get("tags"))
        # "text" is required by POST /api/v1/events even when a DogStatsD event's text is empty
        body["text"] = str(body.get("text", ""))[:EVENT_TEXT_MAX_CHARS]
        if "aggregation_key" in body:
            body["aggregation_key"] = str(body["aggregation_key"])[:EVENT_AGGREGATION_KEY_MAX_CHARS]
        self._tel.inc("events_encoded")
        self._submit_all(build_payloads(EVENTS, [orjson.dumps(body)], self._encoding, self._too_large("events")))

    def send_service_check(self, check: dict) -> None:
        """Queue one service check for the next ``ship``. Keys: check (or name), status 0-3, host_name
        (or host; default the agent's hostname), timestamp (default now), message, tags (str or list)."""
        name = check.get("check") or check.get("name")
        try:
            status = int(check.get("status"))
            timestamp = int(check.get("timestamp") or time.time())
        except (TypeError, ValueError, OverflowError):
            status = timestamp = -1
        if not name or status not in (0, 1, 2, 3) or timestamp < 0:
            self._tel.inc("dropped", reason="bad_service_check")
            self._rl.warning("bad_service_check", "service_check_rejected", check=str(name)[:200])
            return
        if len(self._checks) >= MAX_PENDING_SERVICE_CHECKS:
            self._tel.inc("dropped", reason="service_checks_full")
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
        self._checks.append(orjson.dumps(item))

    # ------------------------------------------------------------------------------------------ helpers

    def _flush_service_checks(self) -> None:
        if not self._checks:
            return
        items, self._checks = self._checks, []
        self._tel.inc("service_checks_encoded", len(items))
        self._submit_all(build_payloads(SERVICE_CHECKS, items, self._encoding, self._too_large("service_checks")))

    def _tags(self, raw: str | Iterable[str] | None) -> list[str]:
        tags = split_tags(raw if isinstance(raw, str) else ",".join(map(str, raw or ())))
        return add_missing(tags, self._default_tags)

    def _too_large(self, kind: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            self._tel.inc("dropped", n, reason="item_too_large", kind=kind)
            self._rl.warning(f"too_large_{kind}", "item_too_large", kind=kind)
        return count

    def _submit_all(self, payloads: list[Payload]) -> None:
        for payload in payloads:
            self._tel.inc("payloads", kind=payload.kind)
            self._tel.inc("bytes_encoded", len(payload.body), kind=payload.kind)
            self._submit(payload)

