"""Decode what a sink sends to an intake back into one dict per item.

Used by `llmship intake` and by the agent's local file sink, so it is pure: bytes in, dicts out, no I/O.
Malformed input raises ``DecodeError`` (a body that inflates past ``max_bytes`` raises
``compression.DecompressionLimit``, an unknown ``Content-Encoding`` raises ``UnsupportedEncoding``).

Protobuf field numbers come from DataDog/agent-payload ``proto/metrics/agent_payload.proto``
(MetricPayload, SketchPayload) and DataDog/datadog-agent ``pkg/proto/datadog/trace/{agent_payload,
tracer_payload,span}.proto`` (AgentPayload, TracerPayload, TraceChunk, Span, SpanLink).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from llmship import protobuf as pb
from llmship.compression import ENCODINGS, DecompressionLimit, decompress

KINDS = ("series", "sketches", "events", "service_checks", "logs", "llmobs", "traces", "otlp_spans",
         "otlp_metrics", "otlp_logs")

# Largest decompressed body accepted per kind, in bytes (the intake's documented limits).
MAX_DECOMPRESSED_BYTES: dict[str, int] = {
    # 5 MiB decompressed: Datadog docs, POST /api/v2/series
    "series": 5_242_880,
    # 4 MiB uncompressed: the Agent's serializer_max_uncompressed_payload_size default, which its source
    # says must not change or "payloads will get dropped by Datadog's intake"
    "sketches": 4_194_304,
    "events": 4_194_304,
    "service_checks": 4_194_304,
    # 5 MB uncompressed: Datadog docs, POST /api/v2/logs
    "logs": 5_000_000,
    # 5 MiB: ddtrace DEFAULT_EVP_PAYLOAD_SIZE_LIMIT ("actual server limit is 5.1 MB")
    "llmobs": 5 << 20,
    # 3.2 MB uncompressed: "the maximum content size ... the Datadog Trace API accepts" (datadog-agent
    # pkg/trace/writer/trace.go, as cited by DataDog/serverless-components)
    "traces": 3_200_000,
    # OTLP: the Collector's otlpreceiver default (confighttp max_request_body_size, 20 MiB)
    "otlp_spans": 20 << 20,
    "otlp_metrics": 20 << 20,
    "otlp_logs": 20 << 20,
}


class DecodeError(ValueError):
    """The body is not a valid payload for its kind."""


class UnsupportedEncoding(DecodeError):
    """A Content-Encoding the intakes do not accept."""


def decode_payload(kind: str, body: bytes, content_encoding: str | None,
                   max_bytes: int | None = None) -> list[dict[str, Any]]:
    """One dict per item (series, sketch, event, service check, log, LLM Obs span, APM span).

    ``max_bytes`` bounds the decompressed size; None means the kind's intake limit.
    """
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise DecodeError(f"unknown payload kind {kind!r}")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ENCODINGS and encoding not in ("", "x-gzip"):
        raise UnsupportedEncoding(f"unsupported Content-Encoding {content_encoding!r}")
    limit = MAX_DECOMPRESSED_BYTES[kind] if max_bytes is None else max_bytes
    try:
        raw = decompress(body, encoding, limit)
    except DecompressionLimit:
        raise  # too large rather than malformed: the intake answers 413, not 400
    except Exception as e:  # zlib.error, zstd.ZstdError: a corrupt stream
        raise DecodeError(f"cannot decompress {encoding} body: {e}") from e
    if not raw:
        raise DecodeError("empty body")
    try:
        return decoder(raw)
    except DecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error) as e:
        # orjson.JSONDecodeError, UnicodeDecodeError and truncated protobuf all land here
        raise DecodeError(f"malformed {kind} payload: {e}") from e


# ---------------------------------------------------------------------------------------------- JSON


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise DecodeError(f"{what} must be a JSON array of objects")
    return value


def _require(items: list[dict[str, Any]], what: str, **fields: type | tuple[type, ...]) -> None:
    for i, item in enumerate(items):
        for name, typ in fields.items():
            if not isinstance(item.get(name), typ) or isinstance(item.get(name), bool):
                raise DecodeError(f"{what}[{i}].{name} is missing or not {_type_name(typ)}")


def _type_name(typ: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))


def _decode_series(raw: bytes) -> list[dict[str, Any]]:
    # JSON is what our sink sends; the Agent itself sends MetricPayload protobuf to the same path
    if raw.lstrip()[:1] != b"{":
        return _decode_series_protobuf(raw)
    doc = orjson.loads(raw)
    if not isinstance(doc, dict) or "series" not in doc:
        raise DecodeError('series body must be a JSON object {"series": [...]}')
    series = _objects(doc["series"], "series")
    _require(series, "series", metric=str, points=list)
    return series


def _decode_events(raw: bytes) -> list[dict[str, Any]]:
    # POST /api/v1/events takes one event object; accept a list or the Agent's {"events": [...]} too
    doc = orjson.loads(raw)
    if isinstance(doc, dict):
        events = _objects(doc["events"], "events") if "events" in doc else [doc]
    else:
        events = _objects(doc, "events")
    # the docs (POST /api/v1/events) mark title and text required; only title is enforced, because
    # DogStatsD events may carry empty text and whether the intake refuses it is unconfirmed
    _require(events, "events", title=str)
    return events


def _decode_service_checks(raw: bytes) -> list[dict[str, Any]]:
    checks = _objects(orjson.loads(raw), "service checks")
    # check, host_name and status are required fields: Datadog docs, POST /api/v1/check_run
    _require(checks, "service_checks", check=str, host_name=str, status=int)
    for i, check in enumerate(checks):
        if check["status"] not in (0, 1, 2, 3):
            raise DecodeError(f"service_checks[{i}].status must be 0, 1, 2 or 3")
    return checks


def _decode_logs(raw: bytes) -> list[dict[str, Any]]:
    # a JSON array of log objects, or a single object: Datadog docs, POST /api/v2/logs
    doc = orjson.loads(raw)
    return [doc] if isinstance(doc, dict) else _objects(doc, "logs")


def _decode_llmobs(raw: bytes) -> list[dict[str, Any]]:
    """Flatten [{"_dd.stage", "event_type": "span", "spans": [...]}, ...] (or one envelope) to spans.

    Each span keeps its fields as sent, plus "_envelope" (the envelope minus "spans") and "ml_app"
    (from the span, its "ml_app:" tag or the envelope) so tests can filter on it.
    """
    doc = orjson.loads(raw)
    envelopes = _objects([doc] if isinstance(doc, dict) else doc, "llmobs envelopes")
    spans: list[dict[str, Any]] = []
    for i, envelope in enumerate(envelopes):
        events = _objects(envelope.get("spans"), f"llmobs envelope[{i}].spans")
        header = {k: v for k, v in envelope.items() if k != "spans"}
        for event in events:
            span = {**event, "_envelope": header}
            ml_app = event.get("ml_app") or _tag_value(event.get("tags"), "ml_app") or header.get("ml_app")
            if ml_app is not None:
                span["ml_app"] = ml_app
            spans.append(span)
    return spans


def _tag_value(tags: Any, key: str) -> str | None:
    if isinstance(tags, list):
        prefix = key + ":"
        for tag in tags:
            if isinstance(tag, str) and tag.startswith(prefix):
                return tag[len(prefix):]
    return None


# ------------------------------------------------------------------------------------------ protobuf


def _str(fields: dict[int, list], n: int) -> str:
    values = fields.get(n)
    if not values:
        return ""
    if not isinstance(values[-1], bytes):
        raise DecodeError(f"field {n} should be length-delimited")
    return values[-1].decode()


def _strs(fields: dict[int, list], n: int) -> list[str]:
    out = []
    for v in fields.get(n, ()):
        if not isinstance(v, bytes):
            raise DecodeError(f"field {n} should be length-delimited")
        out.append(v.decode())
    return out


def _int(fields: dict[int, list], n: int, signed: bool = True) -> int:
    """A varint field (int32/int64 when signed, uint32/uint64 otherwise); last value wins."""
    values = fields.get(n)
    if not values:
        return 0
    if not isinstance(values[-1], int):
        raise DecodeError(f"field {n} should be a varint")
    return pb.as_int64(values[-1]) if signed else values[-1]


def _double(fields: dict[int, list], n: int) -> float:
    values = fields.get(n)
    if not values:
        return 0.0
    if not isinstance(values[-1], bytes) or len(values[-1]) != 8:
        raise DecodeError(f"field {n} should be a 64-bit double")
    return pb.as_double(values[-1])


def _repeated_varints(fields: dict[int, list], n: int, zigzag: bool = False) -> list[int]:
    """A repeated integer field, packed (proto3's default) or not: parsers must accept both."""
    out: list[int] = []
    for v in fields.get(n, ()):
        if isinstance(v, bytes):
            out.extend(pb.unpack_varints(v, signed=zigzag))
        else:
            out.append(pb.unzigzag(v) if zigzag else v)
    return out


def _messages(fields: dict[int, list], n: int) -> list[dict[int, list]]:
    out = []
    for v in fields.get(n, ()):
        if not isinstance(v, bytes):
            raise DecodeError(f"field {n} should be a sub-message")
        out.append(pb.decode(v))
    return out


def _map(fields: dict[int, list], n: int, value: Callable[[dict[int, list], int], Any] = _str) -> dict[str, Any]:
    """A protobuf map: repeated entry messages with key = field 1 and value = field 2."""
    return {_str(entry, 1): value(entry, 2) for entry in _messages(fields, n)}


def _bytes(fields: dict[int, list], n: int) -> bytes:
    values = fields.get(n)
    if not values:
        return b""
    if not isinstance(values[-1], bytes):
        raise DecodeError(f"field {n} should be length-delimited")
    return values[-1]


def _decode_series_protobuf(raw: bytes) -> list[dict[str, Any]]:
    """MetricPayload{series=1: MetricSeries{resources=1, metric=2, tags=3, points=4, type=5, unit=6,
    source_type_name=7, interval=8}}, returned in the v2 JSON shape (type: 0 gauge... as in the proto)."""
    out = []
    for s in _messages(pb.decode(raw), 1):
        series: dict[str, Any] = {
            "metric": _str(s, 2),
            "type": _int(s, 5),
            "interval": _int(s, 8),
            "points": [{"timestamp": _int(p, 2), "value": _double(p, 1)} for p in _messages(s, 4)],
            "tags": _strs(s, 3),
            "resources": [{"type": _str(r, 1), "name": _str(r, 2)} for r in _messages(s, 1)],
        }
        for key, n in (("unit", 6), ("source_type_name", 7)):
            if value := _str(s, n):
                series[key] = value
        if not series["metric"]:
            raise DecodeError("series without a metric name")
        out.append(series)
    return out


def _decode_sketches(raw: bytes) -> list[dict[str, Any]]:
    """SketchPayload{sketches=1: Sketch{metric=1, host=2, tags=4, dogsketches=7: Dogsketch{ts=1, cnt=2,
    min=3, max=4, avg=5, sum=6, k=7 (sint32), n=8 (uint32)}}}."""
    out = []
    for s in _messages(pb.decode(raw), 1):
        sketch = {
            "metric": _str(s, 1),
            "host": _str(s, 2),
            "tags": _strs(s, 4),
            "dogsketches": [
                {"ts": _int(d, 1), "cnt": _int(d, 2), "min": _double(d, 3), "max": _double(d, 4),
                 "avg": _double(d, 5), "sum": _double(d, 6),
                 "k": _repeated_varints(d, 7, zigzag=True),
                 "n": _repeated_varints(d, 8)}
                for d in _messages(s, 7)
            ],
        }
        if not sketch["metric"]:
            raise DecodeError("sketch without a metric name")
        for d in sketch["dogsketches"]:
            if len(d["k"]) != len(d["n"]):
                raise DecodeError(f"sketch {sketch['metric']}: {len(d['k'])} bin keys but {len(d['n'])} counts")
        out.append(sketch)
    return out


def _decode_traces(raw: bytes) -> list[dict[str, Any]]:
    """AgentPayload{hostName=1, env=2, tracerPayloads=5, tags=6, agentVersion=7, targetTPS=8, errorTPS=9,
    rareSamplerEnabled=10} -> TracerPayload{containerID=1, languageName=2, languageVersion=3,
    tracerVersion=4, runtimeID=5, chunks=6, tags=7, env=8, hostname=9, appVersion=10}
    -> TraceChunk{priority=1, origin=2, spans=3, tags=4, droppedTrace=5} -> Span (see _span).

    One dict per span, with the levels above it under "chunk", "tracer_payload" and "agent_payload".
    """
    payload = pb.decode(raw)
    agent = {
        "hostname": _str(payload, 1),
        "env": _str(payload, 2),
        "tags": _map(payload, 6),
        "agent_version": _str(payload, 7),
        "target_tps": _double(payload, 8),
        "error_tps": _double(payload, 9),
        "rare_sampler_enabled": bool(_int(payload, 10)),
    }
    spans = []
    for tp in _messages(payload, 5):
        tracer = {
            "container_id": _str(tp, 1),
            "language_name": _str(tp, 2),
            "language_version": _str(tp, 3),
            "tracer_version": _str(tp, 4),
            "runtime_id": _str(tp, 5),
            "tags": _map(tp, 7),
            "env": _str(tp, 8),
            "hostname": _str(tp, 9),
            "app_version": _str(tp, 10),
        }
        for c in _messages(tp, 6):
            chunk = {
                "priority": _int(c, 1),
                "origin": _str(c, 2),
                "tags": _map(c, 4),
                "dropped_trace": bool(_int(c, 5)),
            }
            for s in _messages(c, 3):
                spans.append({**_span(s), "chunk": chunk, "tracer_payload": tracer, "agent_payload": agent})
    return spans


def _span(s: dict[int, list]) -> dict[str, Any]:
    """Span{service=1, name=2, resource=3, traceID=4, spanID=5, parentID=6, start=7, duration=8, error=9,
    meta=10, metrics=11, type=12, meta_struct=13, spanLinks=14}."""
    span: dict[str, Any] = {
        "service": _str(s, 1),
        "name": _str(s, 2),
        "resource": _str(s, 3),
        "trace_id": _int(s, 4, signed=False),
        "span_id": _int(s, 5, signed=False),
        "parent_id": _int(s, 6, signed=False),
        "start": _int(s, 7),
        "duration": _int(s, 8),
        "error": _int(s, 9),
        "meta": _map(s, 10),
        "metrics": _map(s, 11, _double),
        "type": _str(s, 12),
        "meta_struct": {k: _meta_struct_value(v) for k, v in _map(s, 13, _bytes).items()},
    }
    links = [
        {"trace_id": _int(link, 1, signed=False), "trace_id_high": _int(link, 2, signed=False),
         "span_id": _int(link, 3, signed=False), "attributes": _map(link, 4), "tracestate": _str(link, 5),
         "flags": _int(link, 6, signed=False)}
        for link in _messages(s, 14)
    ]
    if links:
        span["span_links"] = links
    return span


def _meta_struct_value(raw: bytes) -> Any:
    """meta_struct values are msgpack by convention (tracers and the Agent); show them decoded.

    A value that is not msgpack is kept as {"base64": ...} so nothing is lost.
    """
    try:
        return _jsonable(msgpack.unpackb(raw, raw=False, strict_map_key=False))
    except Exception:  # any byte string may be stored there; it is data, not an error
        return {"base64": base64.b64encode(raw).decode()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 64:
        return str(value)  # JSON (and orjson) stop at 64 bits
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "base64": base64.b64encode(value.data).decode()}
    return value


# ---------------------------------------------------------------------------------------------- OTLP


def _otlp_request(signal_name: str, raw: bytes):
    """An Export*ServiceRequest, protobuf or OTLP/JSON (told apart by the first byte: a JSON object starts
    with "{", a protobuf request with field 1's tag 0x0a), decoded with opentelemetry-proto."""
    from google.protobuf.message import DecodeError as ProtobufDecodeError

    from llmship.sources import otlp as otlp_source

    signal = {"traces": otlp_source.TRACES, "metrics": otlp_source.METRICS, "logs": otlp_source.LOGS}[signal_name]
    try:
        return otlp_source.decode_request(signal, raw, raw.lstrip()[:1] == b"{")
    except ProtobufDecodeError as e:
        raise DecodeError(f"malformed OTLP {signal_name} request: {e}") from e
    except Exception as e:  # json_format.ParseError and friends
        raise DecodeError(f"malformed OTLP {signal_name} request: {e}") from e


def _otlp_value(v) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_otlp_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _otlp_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, which)


def _otlp_attrs(kvs) -> dict[str, Any]:
    return {kv.key: _otlp_value(kv.value) for kv in kvs}


def _decode_otlp_spans(raw: bytes) -> list[dict[str, Any]]:
    """One dict per span, with its resource's and scope's attributes."""
    out = []
    for rs in _otlp_request("traces", raw).resource_spans:
        resource = _otlp_attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "resource": resource, "scope": ss.scope.name, "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(), "parent_span_id": s.parent_span_id.hex(), "name": s.name,
                    "kind": s.kind, "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano, "attributes": _otlp_attrs(s.attributes),
                    "status": {"code": s.status.code, "message": s.status.message},
                    "events": [{"name": e.name, "time_unix_nano": e.time_unix_nano,
                                "attributes": _otlp_attrs(e.attributes)} for e in s.events],
                })
    return out


def _decode_otlp_metrics(raw: bytes) -> list[dict[str, Any]]:
    """One dict per data point: the metric's name, type, unit, temporality and the point's fields."""
    out = []
    for rm in _otlp_request("metrics", raw).resource_metrics:
        resource = _otlp_attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                data = m.WhichOneof("data")
                if data is None:
                    continue
                container = getattr(m, data)
                base = {"resource": resource, "scope": sm.scope.name, "name": m.name, "type": data, "unit": m.unit}
                if data in ("sum", "histogram", "exponential_histogram"):
                    base["temporality"] = container.aggregation_temporality
                if data == "sum":
                    base["monotonic"] = container.is_monotonic
                for p in container.data_points:
                    point = {**base, "attributes": _otlp_attrs(p.attributes),
                             "start_time_unix_nano": p.start_time_unix_nano, "time_unix_nano": p.time_unix_nano}
                    if data in ("sum", "gauge"):
                        point["value"] = getattr(p, p.WhichOneof("value") or "as_double")
                    elif data == "histogram":
                        point.update(count=p.count, sum=p.sum, min=p.min, max=p.max,
                                     bucket_counts=list(p.bucket_counts), explicit_bounds=list(p.explicit_bounds))
                    elif data == "exponential_histogram":
                        point.update(count=p.count, sum=p.sum, scale=p.scale, zero_count=p.zero_count)
                    elif data == "summary":
                        point.update(count=p.count, sum=p.sum)
                    out.append(point)
    return out


def _decode_otlp_logs(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for rl in _otlp_request("logs", raw).resource_logs:
        resource = _otlp_attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                out.append({
                    "resource": resource, "scope": sl.scope.name, "time_unix_nano": r.time_unix_nano,
                    "observed_time_unix_nano": r.observed_time_unix_nano, "severity_number": r.severity_number,
                    "severity_text": r.severity_text, "body": _otlp_value(r.body),
                    "attributes": _otlp_attrs(r.attributes), "trace_id": r.trace_id.hex(), "span_id": r.span_id.hex(),
                })
    return out


_DECODERS: dict[str, Callable[[bytes], list[dict[str, Any]]]] = {
    "otlp_spans": _decode_otlp_spans,
    "otlp_metrics": _decode_otlp_metrics,
    "otlp_logs": _decode_otlp_logs,
    "series": _decode_series,
    "sketches": _decode_sketches,
    "events": _decode_events,
    "service_checks": _decode_service_checks,
    "logs": _decode_logs,
    "llmobs": _decode_llmobs,
    "traces": _decode_traces,
}
