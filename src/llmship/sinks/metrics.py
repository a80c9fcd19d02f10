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

Payloads are built as the items come (``_Packer``, the Agent's stream compressor): each item is encoded and
appended to the open payload, which is compressed as it grows and submitted once full, so a flush of 100k
contexts holds one open payload per kind, never every encoded series. ``ship_async`` does it in slices of
about SLICE_SECS and lets the event loop run between them.

Every kind registers a splitter (decode, halve, re-encode) so delivery can split a payload on a 413.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterable, Iterator

import orjson

from llmship import protobuf as pb
from llmship.aggregation import FlushResult, Series, SketchSeries
from llmship.compression import compress, compress_bound, decompress, stream_compressor
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
# How long ship_async encodes before giving the event loop a turn: DogStatsD datagrams wait at most about
# this long for their reader (the kernel's receive buffer holds them meanwhile).
SLICE_SECS = 0.005
_CLOCK_EVERY_ITEMS = 32  # items encoded between looks at the clock (a look costs about an item's encoding)
# The Agent's stream compressor stops flushing a payload for an exact size after this many times and
# calls it full: each flush costs a little compression (datadog-agent pkg/serializer/internal/stream).
MAX_REPACKS = 40

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


class _Kind:
    """How one payload kind is framed, limited and labelled."""

    def __init__(self, name: str, content_type: str, head: bytes, tail: bytes, separator: bytes,
                 max_bytes: int, max_uncompressed: int, max_items: int | None = None) -> None:
        self.name = name
        self.content_type = content_type
        self.head = head  # framing bytes before the items
        self.tail = tail  # and after them
        self.separator = separator  # bytes between items
        self.max_bytes = max_bytes  # as sent (compressed)
        self.max_uncompressed = max_uncompressed
        self.max_items = max_items  # None: as many as the sizes allow

    def frame(self, items: Iterable[bytes]) -> bytes:
        """One body with every item (to split a payload on a 413)."""
        body = bytearray(self.head)
        for i, item in enumerate(items):
            if i:
                body += self.separator
            body += item
        body += self.tail
        return bytes(body)


SERIES = _Kind("series", _JSON, b'{"series":[', b"]}", b",", SERIES_MAX_BYTES, SERIES_MAX_UNCOMPRESSED_BYTES)
SKETCHES = _Kind("sketches", _PROTOBUF, b"", _SKETCH_FOOTER, b"", AGENT_MAX_PAYLOAD_BYTES,
                 AGENT_MAX_UNCOMPRESSED_BYTES)
SERVICE_CHECKS = _Kind("service_checks", _JSON, b"[", b"]", b",", AGENT_MAX_PAYLOAD_BYTES,
                       AGENT_MAX_UNCOMPRESSED_BYTES)
EVENTS = _Kind("events", _JSON, b"", b"", b"", AGENT_MAX_PAYLOAD_BYTES, AGENT_MAX_UNCOMPRESSED_BYTES,
               max_items=1)  # POST /api/v1/events takes one event


# ---------------------------------------------------------------------------------------------- packing


class _Packer:
    """Packs encoded items of one kind into payloads as they come, compressing as it goes, like the
    Agent's stream compressor (datadog-agent pkg/serializer/internal/stream/compressor.go).

    Items wait uncompressed until the worst case of compressing them (``compress_bound``) would not fit
    in what is left below the compressed limit. Then they are compressed and the compressor flushed, which
    gives the exact compressed size so far, and the item is checked again; if it still does not fit (or
    after MAX_REPACKS such flushes) the payload is submitted and a new one started. The uncompressed
    limit is checked exactly. So no payload is over either limit, nothing is compressed twice, and only
    the open payload is held. An item that cannot fit even alone goes to ``on_too_large``.
    """

    def __init__(self, kind: _Kind, encoding: str, submit: Callable[[Payload], None],
                 on_too_large: Callable[[int], None]) -> None:
        self._kind = kind
        self._encoding = encoding
        self._submit = submit
        self._on_too_large = on_too_large
        self._framing = len(kind.separator) + len(kind.tail)  # what an item adds besides itself, at most
        self._open()
        self._max_item = self._max_pending - len(kind.head) - len(kind.tail)  # the largest that fits alone

    def _open(self) -> None:
        self._compressor, self._flush_mode = stream_compressor(self._encoding)
        self._chunks: list[bytes] = []  # compressed so far
        self._compressed = 0  # their length
        self._fed = 0  # uncompressed bytes given to the compressor
        self._pending = bytearray(self._kind.head)  # not compressed yet
        self._items = 0
        self._repacks = 0
        self._max_pending = self._room()

    def add(self, item: bytes) -> None:
        if len(item) > self._max_item:
            self._on_too_large(1)
            return
        if self._items and not self._fits(item):
            self.close()
        if self._items:
            self._pending += self._kind.separator
        self._pending += item
        self._items += 1

    def close(self) -> None:
        """Submit the open payload, if it holds anything, and open a new one."""
        if not self._items:
            return
        self._pending += self._kind.tail
        self._feed()
        self._chunks.append(self._compressor.flush())
        body = b"".join(self._chunks)
        self._submit(Payload(self._kind.name, body, self._kind.content_type, self._encoding, items=self._items))
        self._open()

    def _fits(self, item: bytes) -> bool:
        """Can ``item`` join the open payload? Compresses what waits, to learn the exact size, when that is
        what it takes to know."""
        if self._kind.max_items is not None and self._items >= self._kind.max_items:
            return False
        return self._has_room(item) or self._repack_for(item)

    def _has_room(self, item: bytes) -> bool:
        return len(self._pending) + self._framing + len(item) <= self._max_pending

    def _room(self) -> int:
        """The most uncompressed bytes that may wait: fed to the compressor, even incompressible, they would
        still fit below both limits. Computed once per flush of the compressor, not per item."""
        space = self._kind.max_bytes - self._compressed
        n = space
        while n > 0 and (excess := compress_bound(self._encoding, n) - space) > 0:
            n -= excess  # the bound shrinks about as fast as n: this ends in a step or two
        return max(0, min(n, self._kind.max_uncompressed - self._fed))

    def _repack_for(self, item: bytes) -> bool:
        """Compress what waits and learn the exact size: is there room for ``item`` now?"""
        if self._flush_mode is None or self._repacks >= MAX_REPACKS:
            return False
        self._feed()
        flushed = self._compressor.flush(self._flush_mode)
        self._chunks.append(flushed)
        self._compressed += len(flushed)
        self._repacks += 1
        self._max_pending = self._room()
        return self._has_room(item)

    def _feed(self) -> None:
        out = self._compressor.compress(self._pending)
        self._fed += len(self._pending)
        self._pending = bytearray()
        if out:
            self._chunks.append(out)
            self._compressed += len(out)


def build_payloads(kind: _Kind, items: Iterable[bytes], encoding: str,
                   on_too_large: Callable[[int], None] = lambda n: None) -> list[Payload]:
    """Pack pre-encoded items into as few payloads as the kind's limits allow (see _Packer)."""
    payloads: list[Payload] = []
    packer = _Packer(kind, encoding, payloads.append, on_too_large)
    for item in items:
        packer.add(item)
    packer.close()
    return payloads


# ---------------------------------------------------------------------------------------------- splitters


def _split(kind: _Kind, payload: Payload, entries: list, encode: Callable[[object], bytes]) -> list[Payload]:
    if len(entries) < 2:
        return [payload]
    half = len(entries) // 2
    return [
        Payload(kind.name, compress(kind.frame(map(encode, part)), payload.content_encoding), kind.content_type,
                payload.content_encoding, items=len(part), extra_headers=dict(payload.extra_headers))
        for part in (entries[:half], entries[half:])
    ]


def _inflate(payload: Payload, kind: _Kind) -> bytes:
    return decompress(payload.body, payload.content_encoding, kind.max_uncompressed * 2)


def split_series(payload: Payload) -> list[Payload]:
    return _split(SERIES, payload, orjson.loads(_inflate(payload, SERIES))["series"], orjson.dumps)


def split_sketches(payload: Payload) -> list[Payload]:
    return _split(SKETCHES, payload, pb.decode(_inflate(payload, SKETCHES)).get(1, []), lambda s: pb.f_msg(1, s))


def split_service_checks(payload: Payload) -> list[Payload]:
    return _split(SERVICE_CHECKS, payload, orjson.loads(_inflate(payload, SERVICE_CHECKS)), orjson.dumps)


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
        # Flushes being encoded, oldest first. One interrupted (ship_async cancelled) stays here and is
        # finished by the next ship or by shutdown: its aggregates were taken from the aggregator already.
        self._shipments: list[Iterator[None]] = []
        self._tel.gauge("pending_service_checks", lambda: len(self._checks))
        self.reload(cfg)

    def reload(self, cfg) -> None:
        self._encoding = cfg.sinks.datadog.compression
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
        series = _Packer(SERIES, self._encoding, self._submit_one, self._too_large("series"))
        sketches = _Packer(SKETCHES, self._encoding, self._submit_one, self._too_large("sketches"))
        encoded = {Series: 0, SketchSeries: 0}
        slice_end = time.perf_counter() + SLICE_SECS
        for i, item in enumerate(result.drain(), 1):
            if type(item) is Series:
                series.add(encode_series(item))
            else:
                sketches.add(encode_sketch(item))
            encoded[type(item)] += 1
            if i % _CLOCK_EVERY_ITEMS == 0 and time.perf_counter() > slice_end:
                self._count_encoded(encoded)
                yield
                slice_end = time.perf_counter() + SLICE_SECS
        series.close()
        sketches.close()
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
        self._checks.append(_compact(orjson.dumps(item)))

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
