"""OTLP -> Datadog, as the Datadog Agent's OTLP ingest maps each signal (the opentelemetry-proto message
classes in, llmship's own types out; no I/O here).

Traces (datadog-agent pkg/trace/api/otlp.go, pkg/trace/transform/transform.go ``OtelSpanToDDSpan`` and
pkg/trace/traceutil/otel_util.go, with the "operation and resource name v2" logic current Agents default to):
- ids: the low 64 bits of the 128-bit trace id are ``trace_id``, the high 64 go to ``meta["_dd.p.tid"]`` as
  16 hex digits (as tracers send them, and as the trace writer expects); span and parent ids big-endian;
  ``meta["otel.trace_id"]`` keeps the whole id in hex;
- service: ``service.name`` (span attribute, then resource), else "otlpresourcenoservicename"; env from
  ``deployment.environment.name`` or ``deployment.environment``, version from ``service.version``;
- name: ``operation.name``, else from the kind and the protocol (``http.server.request``, ``<db>.query``,
  ``client.request``, ...), else the kind's name (``Internal``); resource: ``resource.name``, else the HTTP
  method (and route on servers), messaging operation + destination, RPC method + service, else the span name;
  type: ``span.type``, else web (server), http or db (client), custom;
- error: 1 when the status code is ERROR, with ``error.msg`` from the status message; ``otel.status_code``,
  ``otel.status_description``, ``span.kind``, ``otel.scope.name``/``version`` (and the deprecated
  ``otel.library.*``) in meta; events JSON in ``meta["events"]``, links in ``meta["_dd.span_links"]``;
- attributes: string-valued (and arrays, maps as JSON) to meta, int and double to metrics, span attributes
  over resource attributes; the HTTP ones renamed to Datadog's (``HTTPMappings``: ``url.full`` -> ``http.url``
  and so on, which is also what proxy awareness reads); ``sampling.priority`` -> ``_sampling_priority_v1``;
- ``_top_level`` on roots and on spans whose parent is in another service (``GetTopLevelOTelSpans``).
One deliberate difference: prompt and completion text (``gen_ai.input.messages``, ``input.value``,
``llm.input_messages.*``, the GenAI content events, ...) is removed from the APM span, as it is from
ddtrace's spans, so text leaves the host only in the LLM Observability event, scrubbed, truncated, sampled.

Metrics (DataDog/opentelemetry-mapping-go pkg/otlp/metrics/metrics_translator.go, defaults of the Agent's
``otlp_config.metrics``): gauges -> gauge points; delta sums -> counts; monotonic cumulative sums -> counts
of the difference between points (the first point counts only when its series started after llmship did);
other cumulative sums -> gauges; histograms -> distributions (``histograms.mode: distributions``): a sketch
per point built from the bucket counts with ``InsertInterpolate``, its count and sum replaced by the exact
ones, min and max from the point (delta only); cumulative histograms ship the difference between points and
drop their first point, as the Agent does. Every point keeps its timestamp and is shipped without
aggregation. Tags: the point's attributes, plus service, env and version from the resource (the unified
service tags ``attributes.TagsFromAttributes`` adds). Exponential histograms and summaries are counted as
rejected (not mapped yet).

Logs (opentelemetry-mapping-go pkg/otlp/logs/transform.go): body -> ``message`` (a map body's keys become
attributes), severity -> ``status``, attributes and resource attributes as attributes, ``service`` from
``service.name``, ``env``/``version`` into ``ddtags``, trace context as ``dd.trace_id``/``dd.span_id``
(decimal, low 64 bits) and ``otel.trace_id``/``otel.span_id`` (hex), ``timestamp`` in ms.
"""

from __future__ import annotations

import base64
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmship.aggregation import COUNT, GAUGE
from llmship.llm import otlp as genai
from llmship.model import LLMCall, LogRecord, Span, TracerInfo
from llmship.sketch import Sketch

DEFAULT_SERVICE = "otlpresourcenoservicename"  # traceutil.DefaultOTLPServiceName
_MAX_RESOURCE_CHARS = 5000  # normalize.MaxResourceLen
_MASK64 = (1 << 64) - 1
# SpanKind enum (trace.proto) -> meta["span.kind"] (OTelSpanKindName) and the operation name fallback
# (pdata SpanKind.String()).
_KIND_NAMES = ("unspecified", "internal", "server", "client", "producer", "consumer")
_KIND_STRINGS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
_STATUS_CODES = ("Unset", "Ok", "Error")  # otel.status_code values (pdata StatusCode.String())
_KIND_SERVER, _KIND_CLIENT = 2, 3
_STATUS_ERROR = 2
# opentelemetry-mapping-go pkg/otlp/attributes HTTPMappings: OTel HTTP attributes -> Datadog's names.
HTTP_MAPPINGS = {
    "client.address": "http.client_ip",
    "http.response.body.size": "http.response.content_length",
    "http.response.status_code": "http.status_code",
    "http.request.body.size": "http.request.content_length",
    "http.request.header.referrer": "http.referrer",
    "http.request.method": "http.method",
    "http.route": "http.route",
    "network.protocol.version": "http.version",
    "server.address": "http.server_name",
    "url.full": "http.url",
    "user_agent.original": "http.useragent",
}
# Datadog APM convention keys: handled as span fields, never copied to meta (isDatadogAPMConventionKey).
_APM_KEYS = frozenset(("service.name", "operation.name", "resource.name", "span.type"))
_ENV_KEYS = ("deployment.environment.name", "deployment.environment")
_HTTP_METHOD_KEYS = ("http.request.method", "http.method")
# What the name, resource and type mappings look up (OTelSpanAccessor: the first key found in the span's
# attributes, else the first found in the resource's), by lookup. The answers are the resource's alone for every
# span with none of these keys, so they are found once a ResourceSpans (_lookups) and again only for such spans.
_LOOKUPS = {
    "service": ("service.name",), "version": ("service.version",), "env": _ENV_KEYS,
    "operation": ("operation.name",), "resource": ("resource.name",), "type": ("span.type",),
    "http_method": _HTTP_METHOD_KEYS, "http_route": ("http.route",),
    "db_system": ("db.system.name", "db.system"), "db_statement": ("db.query.text", "db.statement"),
    "messaging_system": ("messaging.system",),
    "messaging_operation": ("messaging.operation.type", "messaging.operation"),
    "messaging_destination": ("messaging.destination.name", "messaging.destination"),
    "rpc_system": ("rpc.system",), "rpc_service": ("rpc.service",), "rpc_method": ("rpc.method",),
    "faas_provider": ("faas.invoked_provider",), "faas_invoked": ("faas.invoked_name",),
    "faas_trigger": ("faas.trigger",),
    "graphql_operation": ("graphql.operation.type",), "graphql_name": ("graphql.operation.name",),
    "protocol": ("network.protocol.name",),
}
_LOOKUP_KEYS = frozenset(key for keys in _LOOKUPS.values() for key in keys)
_DB_TYPES = {"redis": "redis", "memcached": "memcached", "mongodb": "mongodb", "elasticsearch": "elasticsearch",
             "opensearch": "opensearch", "cassandra": "cassandra"}  # attributes.DBTypes; others: "db"


def attr_value(v) -> Any:
    """An AnyValue as a Python value (bytes stay bytes)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [attr_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: attr_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value
    return None


def attributes(kvs) -> dict[str, Any]:
    return {kv.key: attr_value(kv.value) for kv in kvs}


def as_string(value) -> str:
    """pcommon Value.AsString: strings as they are, booleans lowercase, bytes base64, structures JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return orjson.dumps(value).decode()
    return orjson.dumps(value, default=_json_default).decode()


def _json_default(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError


# ---------------------------------------------------------------------------------------------- traces


@dataclass(slots=True)
class TraceBatch:
    """What one ResourceSpans gives: its tracer header, its chunks (one per trace id) and, aligned with
    them, the LLM calls its GenAI spans are."""

    tracer: TracerInfo
    chunks: list[list[Span]] = field(default_factory=list)
    calls: list[list[LLMCall]] = field(default_factory=list)


@dataclass(slots=True)
class TracesResult:
    batches: list[TraceBatch]
    spans: int = 0
    rejected: int = 0  # spans refused (invalid ids): the partial_success count
    error: str = ""


def convert_traces(request) -> TracesResult:
    """An ExportTraceServiceRequest -> batches of APM span chunks and LLM calls."""
    result = TracesResult([])
    for resource_spans in request.resource_spans:
        res = attributes(resource_spans.resource.attributes)
        tracer = TracerInfo(language=as_string(res.get("telemetry.sdk.language", "")),
                            tracer_version=f"otlp-{as_string(res.get('telemetry.sdk.version', ''))}",
                            container_id=as_string(res.get("container.id", "")))
        res_meta: dict[str, str] = {}  # with the HTTP names mapped; the first of two that map to one name
        for key, value in res.items():
            if key not in _APM_KEYS:
                res_meta.setdefault(HTTP_MAPPINGS.get(key, key), as_string(value))
        res_found = _lookups({}, res)
        by_trace: dict[int, list[Span]] = {}
        genai_spans: dict[int, tuple] = {}  # span id -> what from_otlp needs, once the chunk is known
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope_attrs = {kv.key: as_string(attr_value(kv.value)) for kv in scope.attributes}
            for otel in scope_spans.spans:
                result.spans += 1
                trace_id, span_id = otel.trace_id, otel.span_id
                if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id) or not any(span_id):
                    result.rejected += 1  # IndexOTelSpans skips these too
                    result.error = "spans with an invalid trace_id or span_id were rejected"
                    continue
                attrs = attributes(otel.attributes)
                kind = genai.genai_kind(attrs)
                span, events = _convert_span(otel, attrs, res, res_meta, res_found, scope, scope_attrs,
                                             kind is not None)
                by_trace.setdefault(span.trace_id, []).append(span)
                if kind is not None:
                    genai_spans[span.span_id] = (otel, attrs, events, kind)
        if not by_trace:
            continue
        batch = TraceBatch(tracer)
        for chunk in by_trace.values():
            _mark_top_level(chunk)
            batch.chunks.append(chunk)
            batch.calls.append(_calls(chunk, genai_spans, tracer.language) if genai_spans else [])
        result.batches.append(batch)
    return result


def _convert_span(otel, attrs: dict, res: dict, res_meta: dict, res_found: dict[str, str], scope,
                  scope_attrs: dict, is_genai: bool) -> tuple[Span, list]:
    """``res_meta``: the resource's attributes as meta (HTTP names mapped); ``res_found``: the resource's
    answers to the _LOOKUPS."""
    trace_id = otel.trace_id
    found = res_found if _LOOKUP_KEYS.isdisjoint(attrs) else _lookups(attrs, res)
    kind = otel.kind if 0 <= otel.kind < len(_KIND_NAMES) else 0
    meta: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for key, value in attrs.items():
        key = _meta_key_cached(key, is_genai) if len(key) <= _MAX_CACHED_KEY_CHARS else _meta_key(key, is_genai)
        if key is None:
            continue
        cls = value.__class__  # attr_value's classes exactly: a bool is no int here
        if cls is int or cls is float:
            metrics.setdefault("_sampling_priority_v1" if key == "sampling.priority" else key, float(value))
        elif key not in meta:
            meta[key] = value if cls is str else as_string(value)
    status = otel.status
    high = int.from_bytes(trace_id[:8], "big")
    if high:
        meta["_dd.p.tid"] = trace_id[:8].hex()
    meta["otel.trace_id"] = trace_id.hex()
    meta["span.kind"] = _KIND_NAMES[kind]
    version = found["version"]
    if version and "version" not in meta:
        meta["version"] = version
    env = found["env"]
    if env and "env" not in meta:
        meta["env"] = env.lower()
    events = [(e.name, e.time_unix_nano, attributes(e.attributes)) for e in otel.events]
    exception = None  # the first exception event's attributes
    if events:
        shown = [e for e in events if not (is_genai and e[0].startswith(genai.CONTENT_EVENT_PREFIX))]
        if shown:
            meta["events"] = orjson.dumps([_event_json(e) for e in shown], default=_json_default).decode()
        exception = next((e[2] for e in events if e[0] == "exception"), None)
        if exception is not None:
            meta["_dd.span_events.has_exception"] = "true"
    if otel.links:
        meta["_dd.span_links"] = orjson.dumps([_link_json(link) for link in otel.links]).decode()
    if scope.name:
        meta["otel.scope.name"] = meta["otel.library.name"] = scope.name
    if scope.version:
        meta["otel.scope.version"] = meta["otel.library.version"] = scope.version
    status_code = status.code if 0 <= status.code < 3 else 0
    meta["otel.status_code"] = _STATUS_CODES[status_code]
    if status.message:
        meta["otel.status_description"] = status.message
    error = 0
    if status_code == _STATUS_ERROR:
        error = 1
        if "error.msg" not in meta:
            message = status.message or (as_string(exception.get("exception.message", "")) if exception else "")
            if message:
                meta["error.msg"] = message
    for key, value in res_meta.items():
        if key not in meta:
            meta[key] = value
    meta.update(scope_attrs)
    code = metrics.get("http.status_code")
    if code is not None and code < 0:
        del metrics["http.status_code"]
    span = Span(
        service=found["service"] or DEFAULT_SERVICE,
        name=_operation_name(found, kind),
        resource=_resource_name(otel.name, found, kind)[:_MAX_RESOURCE_CHARS],
        trace_id=int.from_bytes(trace_id[8:], "big"),
        span_id=int.from_bytes(otel.span_id, "big"),
        parent_id=int.from_bytes(otel.parent_span_id, "big") if len(otel.parent_span_id) == 8 else 0,
        start=otel.start_time_unix_nano,
        duration=max(0, otel.end_time_unix_nano - otel.start_time_unix_nano),
        error=error,
        meta=meta,
        metrics=metrics,
        type=found["type"] or _span_type(found, kind),
    )
    return span, events


def _meta_key(key: str, is_genai: bool) -> str | None:
    """The meta or metrics key a span attribute goes to (the HTTP names mapped, request headers renamed), or
    None for one that stays off the span: the APM convention keys, and on GenAI spans the content."""
    if key in _APM_KEYS or (is_genai and genai.is_content_key(key)):
        return None
    key = HTTP_MAPPINGS.get(key, key)
    if key.startswith("http.request.header."):
        return "http.request.headers." + key[len("http.request.header."):]
    return key


# An instrumentation sends the same keys on every span: their mapping is remembered, for keys short enough
# that what is remembered stays small (4096 keys of at most 128 characters) whatever clients send.
_MAX_CACHED_KEY_CHARS = 128
_meta_key_cached = functools.lru_cache(maxsize=4096)(_meta_key)


def _first(attrs: dict, res: dict, keys) -> str:
    """The first key's value, span attributes over resource attributes (OTelSpanAccessor)."""
    for source in (attrs, res):
        for key in keys:
            value = source.get(key)
            if value is not None and value != "":
                return as_string(value)
    return ""


def _lookups(attrs: dict, res: dict) -> dict[str, str]:
    """The answer to each of the _LOOKUPS."""
    return {lookup: _first(attrs, res, keys) for lookup, keys in _LOOKUPS.items()}


def _operation_name(found: dict[str, str], kind: int) -> str:
    """getOTelOperationNameV2 (pkg/trace/traceutil/otel_util.go)."""
    name = found["operation"]
    if name:
        return name.lower()
    client, server = kind == _KIND_CLIENT, kind == _KIND_SERVER
    if found["http_method"]:
        if server:
            return "http.server.request"
        if client:
            return "http.client.request"
    db = found["db_system"]
    if db and client:
        return f"{db.lower()}.query"
    system = found["messaging_system"]
    operation = found["messaging_operation"]
    if system and operation and kind >= _KIND_SERVER:
        return f"{system.lower()}.{operation.lower()}"
    rpc = found["rpc_system"].lower()
    if rpc == "aws-api" and client:
        service = found["rpc_service"].lower()
        return f"aws.{service}.request" if service else "aws.client.request"
    if rpc and client:
        return f"{rpc}.client.request"
    if rpc and server:
        return f"{rpc}.server.request"
    provider, invoked = found["faas_provider"], found["faas_invoked"]
    if provider and invoked and client:
        return f"{provider.lower()}.{invoked.lower()}.invoke"
    trigger = found["faas_trigger"]
    if trigger and server:
        return f"{trigger.lower()}.invoke"
    if found["graphql_operation"]:
        return "graphql.server.request"
    protocol = found["protocol"].lower()
    if server:
        return f"{protocol}.server.request" if protocol else "server.request"
    if client:
        return f"{protocol}.client.request" if protocol else "client.request"
    return _KIND_STRINGS[kind] if kind else "Internal"


def _resource_name(name: str, found: dict[str, str], kind: int) -> str:
    """getOTelResourceV2 (pkg/trace/traceutil/otel_util.go)."""
    resource = found["resource"]
    if resource:
        return resource
    method = found["http_method"]
    if method:
        method = "HTTP" if method == "_OTHER" else method
        route = found["http_route"] if kind == _KIND_SERVER else ""
        return f"{method} {route}" if route else method
    operation = found["messaging_operation"]
    if operation:
        dest = found["messaging_destination"]
        return f"{operation} {dest}" if dest else operation
    method = found["rpc_method"]
    if method:
        service = found["rpc_service"]
        return f"{method} {service}" if service else method
    operation = found["graphql_operation"]
    if operation:
        op_name = found["graphql_name"]
        return f"{operation} {op_name}" if op_name else operation
    if found["db_system"]:
        statement = found["db_statement"]
        if statement:
            return statement
    return name


def _span_type(found: dict[str, str], kind: int) -> str:
    """GetOTelSpanTypeWithAccessor: web for servers, db types or http for clients, custom otherwise."""
    if kind == _KIND_SERVER:
        return "web"
    if kind == _KIND_CLIENT:
        db = found["db_system"].lower()
        return (_DB_TYPES.get(db, "db")) if db else "http"
    return "custom"


def _event_json(event: tuple) -> dict:
    """transform.go MarshalEvents: time_unix_nano, name, attributes (as raw values)."""
    name, time_ns, attrs = event
    out: dict[str, Any] = {}
    if time_ns:
        out["time_unix_nano"] = time_ns
    if name:
        out["name"] = name
    if attrs:
        out["attributes"] = attrs
    return out


def _link_json(link) -> dict:
    out: dict[str, Any] = {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
    if link.trace_state:
        out["tracestate"] = link.trace_state
    if link.attributes:
        out["attributes"] = {kv.key: as_string(attr_value(kv.value)) for kv in link.attributes}
    if link.dropped_attributes_count:
        out["dropped_attributes_count"] = link.dropped_attributes_count
    return out


def _mark_top_level(chunk: list[Span]) -> None:
    """GetTopLevelOTelSpans: roots, spans whose parent is not in the chunk or in another service."""
    services = {s.span_id: s.service for s in chunk}
    for s in chunk:
        parent_service = services.get(s.parent_id) if s.parent_id else None
        if parent_service is None or parent_service != s.service:
            s.metrics["_top_level"] = 1.0


def _calls(chunk: list[Span], genai_spans: dict[int, tuple], language: str) -> list[LLMCall]:
    """The LLM calls of one chunk: ml_app from its root's service (Datadog's mapping), each event's parent
    the nearest ancestor that is an LLM Observability span too."""
    by_id = {s.span_id: s for s in chunk}
    root = next((s for s in chunk if s.parent_id == 0 or s.parent_id not in by_id), chunk[0])
    calls = []
    for span in chunk:
        found = genai_spans.get(span.span_id)
        if found is None:
            continue
        otel, attrs, events, kind = found
        parent, seen = span.parent_id, 0
        while parent and parent not in genai_spans and parent in by_id and seen < len(chunk):
            parent, seen = by_id[parent].parent_id, seen + 1
        parent_id = str(parent) if parent in genai_spans else ""
        ml_app = as_string(attrs.get("ml_app") or "") or root.service
        calls.append(genai.from_otlp(
            span, otel.name, attrs, events, kind, trace_hex=otel.trace_id.hex(), parent_id=parent_id,
            ml_app=ml_app, status_message=otel.status.message, language=language))
    return calls


# ---------------------------------------------------------------------------------------------- metrics

# How long a cumulative series' last point is remembered (the mapping's deltaTTL, 3600 s), and how many
# series at most (ours: a bound against junk input; the oldest half is dropped when full).
CUMULATIVE_TTL_SECS = 3600
MAX_CUMULATIVE_SERIES = 100_000
_TEMPORALITY_DELTA, _TEMPORALITY_CUMULATIVE = 1, 2


@dataclass(slots=True)
class MetricsResult:
    points: int = 0
    rejected: int = 0
    error: str = ""


class MetricsMapper:
    """OTLP metrics -> the shipping plane's calls (``pipeline``: the emitter), remembering nothing: gauges,
    delta sums and delta histograms go as points and sketches (``add_point``, ``add_sketch``); cumulative sums
    and histograms go as they came (``add_cumulative_sum``, ``add_cumulative_histogram``) to ``Cumulative``,
    which ships their differences."""

    def __init__(self, pipeline) -> None:
        self._pipeline = pipeline

    def map(self, request) -> MetricsResult:
        result = MetricsResult()
        for resource_metrics in request.resource_metrics:
            res = attributes(resource_metrics.resource.attributes)
            base = _unified_service_tags(res)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self._metric(metric, base, result)
        return result

    def _metric(self, metric, base: list[str], result: MetricsResult) -> None:
        name = metric.name
        data = metric.WhichOneof("data")
        if data == "gauge":
            for p in metric.gauge.data_points:
                self._number(name, GAUGE, p, base, result, False)
        elif data == "sum":
            s = metric.sum
            cumulative = s.aggregation_temporality == _TEMPORALITY_CUMULATIVE
            for p in s.data_points:
                if not cumulative:
                    self._number(name, COUNT, p, base, result, False)
                elif s.is_monotonic:
                    self._number(name, COUNT, p, base, result, True)
                else:
                    self._number(name, GAUGE, p, base, result, False)
        elif data == "histogram":
            cumulative = metric.histogram.aggregation_temporality == _TEMPORALITY_CUMULATIVE
            for p in metric.histogram.data_points:
                self._histogram(name, p, base, result, cumulative)
        else:  # exponential_histogram, summary: not mapped yet
            n = len(getattr(metric, data).data_points) if data else 0
            result.points += n
            result.rejected += n
            result.error = f"metric types not supported: {data}"

    def _number(self, name: str, series_type: int, p, base: list[str], result: MetricsResult,
                cumulative: bool) -> None:
        result.points += 1
        value = float(p.as_int) if p.WhichOneof("value") == "as_int" else p.as_double
        if value - value != 0.0:  # NaN or infinite: isSkippable
            result.rejected += 1
            result.error = "non-finite values were rejected"
            return
        tags = ",".join(base + _point_tags(p.attributes))
        if cumulative:
            self._pipeline.add_cumulative_sum(name, value, tags, p.start_time_unix_nano, p.time_unix_nano)
        else:
            self._pipeline.add_point(name, series_type, value, tags, p.time_unix_nano / 1e9)

    def _histogram(self, name: str, p, base: list[str], result: MetricsResult, cumulative: bool) -> None:
        result.points += 1
        counts = list(p.bucket_counts)
        bounds = list(p.explicit_bounds)
        if len(counts) != len(bounds) + 1 and counts:
            result.rejected += 1
            result.error = "histogram points whose bucket_counts do not match explicit_bounds were rejected"
            return
        tags = ",".join(base + _point_tags(p.attributes))
        if cumulative:
            self._pipeline.add_cumulative_histogram(name, tags, p.start_time_unix_nano, p.time_unix_nano, counts,
                                                    bounds, p.count, p.sum)
            return
        sketch = bucket_sketch(counts, bounds, p.count, p.sum)
        if sketch is None:
            return
        if p.HasField("min"):
            sketch.min = p.min
        if p.HasField("max"):
            sketch.max = p.max
        self._pipeline.add_sketch(name, sketch, tags, p.time_unix_nano / 1e9)


def bucket_sketch(counts: list[int], bounds: list[float], count: int, total: float) -> Sketch | None:
    """getSketchBuckets: a histogram point's sketch from its bucket counts, with the exact count and sum when
    known; None when it holds nothing."""
    sketch = Sketch()
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        lower = bounds[i - 1] if i > 0 else float("-inf")
        upper = bounds[i] if i < len(bounds) else float("inf")
        if upper == float("inf"):  # InsertInterpolate needs finite bounds: the finite one stands for both
            upper = lower
        elif lower == float("-inf"):
            lower = upper
        sketch.insert_interpolate(lower, upper, n)
    if sketch.cnt == 0:
        return None
    if count and total - total == 0.0:  # exact count, sum and average override the approximate ones
        sketch.cnt, sketch.sum = int(count), total
        sketch.avg = total / count
    return sketch


class Cumulative:
    """Cumulative OTLP series -> their differences between points, as points and sketches (``add_point``,
    ``add_sketch``: the aggregator's). Holds the previous point of each series (the Agent's ``prevPts`` TTL
    cache), so it is the shipping plane's, one per agent whatever ``[agent] workers`` says: a client that
    reconnects may reach another worker, and two workers each remembering a series would ship overlapping
    differences (and its first point, which may count as is, twice)."""

    def __init__(self, add_point, add_sketch, clock=time.time, started_ns: int | None = None) -> None:
        """``started_ns``: when the agent started (getProcessStartTime), if before now."""
        self._add_point = add_point
        self._add_sketch = add_sketch
        self._clock = clock
        self._started_ns = int(clock() * 1e9) if started_ns is None else started_ns
        self._previous: dict[tuple, tuple[int, int, float, float]] = {}  # key -> (start, ts, value, seen at)

    def add_sum(self, name: str, value: float, tags: str, start: int, ts: int) -> None:
        """A monotonic cumulative sum's point -> a count of its difference (mapNumberMonotonicMetrics)."""
        dx, first = self._diff((name, "sum", tags), start, ts, value, monotonic=True)
        # The first point of a series that started after llmship counts as is ("Report the first value if the
        # timeseries started after the Datadog Agent process started").
        if first and self._started_ns < start and start != ts:
            dx = value
        if dx is not None:
            self._add_point(name, COUNT, dx, tags, ts / 1e9)

    def add_histogram(self, name: str, tags: str, start: int, ts: int, counts: list[int], bounds: list[float],
                      count: int, total: float) -> None:
        """A cumulative histogram's point -> the sketch of its difference; the first point is dropped
        (prevPts.Diff not ok), and min and max are unknown for a difference."""
        key = (name, "hist", tags)
        deltas = [self._diff(key + (i,), start, ts, float(c), monotonic=False)[0] for i, c in enumerate(counts)]
        d_count = self._diff(key + ("count",), start, ts, float(count), monotonic=False)[0]
        d_sum = self._diff(key + ("sum",), start, ts, total, monotonic=False)[0]
        if d_count is None:
            return
        sketch = bucket_sketch([int(d) if d is not None else 0 for d in deltas], bounds, int(d_count),
                               d_sum if d_sum is not None else 0.0)
        if sketch is not None:
            self._add_sketch(name, sketch, tags, ts / 1e9)

    def _diff(self, key: tuple, start: int, ts: int, value: float, monotonic: bool) -> tuple[float | None, bool]:
        """(the change since the series' previous point, whether this is a first point): None for a first
        point, a reset (a new start time, or a monotonic value going down) and a repeated or out-of-order
        point (the mapping's ttlCache ``Diff``/``MonotonicDiff``)."""
        now = self._clock()
        previous = self._previous.get(key)
        if (previous is None or now - previous[3] > CUMULATIVE_TTL_SECS or (start and previous[0] and start != previous[0])
                or (monotonic and value < previous[2] and ts > previous[1])):
            self._remember(key, (start, ts, value, now))
            return None, True
        if ts <= previous[1]:
            return None, False
        self._previous[key] = (start, ts, value, now)
        return value - previous[2], False

    def _remember(self, key: tuple, entry: tuple) -> None:
        if len(self._previous) >= MAX_CUMULATIVE_SERIES:
            for old in list(self._previous)[: MAX_CUMULATIVE_SERIES // 2]:
                del self._previous[old]
        self._previous[key] = entry


def _unified_service_tags(res: dict) -> list[str]:
    tags = []
    for tag, keys in (("service", ("service.name",)), ("env", _ENV_KEYS), ("version", ("service.version",))):
        value = _first({}, res, keys)
        if value:
            tags.append(f"{tag}:{value}")
    return tags


def _point_tags(kvs) -> list[str]:
    return [f"{kv.key}:{as_string(attr_value(kv.value))}" for kv in kvs]


# ---------------------------------------------------------------------------------------------- logs

# severity_number ranges (logs data model) -> Datadog status (pkg/otlp/logs/transform.go statusFromSeverityNumber)
_STATUSES = ((4, "trace"), (8, "debug"), (12, "info"), (16, "warn"), (20, "error"), (24, "fatal"))
LOG_SOURCE = "otlp_log_ingestion"  # the ddsource the Agent's OTLP logs pipeline gives logs without one


def convert_logs(request, hostname: str) -> list[LogRecord]:
    records: list[LogRecord] = []
    for resource_logs in request.resource_logs:
        res = attributes(resource_logs.resource.attributes)
        service = _first({}, res, ("service.name",))
        ddtags = ",".join(t for t in _unified_service_tags(res) if not t.startswith("service:"))
        res_flat = {k: as_string(v) for k, v in res.items()}
        for scope_logs in resource_logs.scope_logs:
            for lr in scope_logs.log_records:
                record: LogRecord = dict(res_flat)
                attrs = attributes(lr.attributes)
                record.update((k, v if isinstance(v, (str, int, float, bool)) else as_string(v))
                              for k, v in attrs.items())
                body = attr_value(lr.body) if lr.HasField("body") else None
                if isinstance(body, dict):
                    record.update((k, v if isinstance(v, (str, int, float, bool)) else as_string(v))
                                  for k, v in body.items())
                    message = body.get("message", body.get("msg", ""))
                    record["message"] = message if isinstance(message, str) else as_string(message)
                else:
                    record["message"] = as_string(body)
                record["status"] = _status(lr)
                record["service"] = service or record.get("service", "")
                record["hostname"] = hostname
                record["ddsource"] = as_string(attrs.get("datadog.log.source") or attrs.get("ddsource") or LOG_SOURCE)
                if ddtags:
                    record["ddtags"] = ddtags
                ts = lr.time_unix_nano or lr.observed_time_unix_nano
                if ts:
                    record["timestamp"] = ts // 1_000_000
                    record["otel.timestamp"] = str(ts)
                if len(lr.trace_id) == 16 and any(lr.trace_id):
                    record["otel.trace_id"] = lr.trace_id.hex()
                    record["dd.trace_id"] = str(int.from_bytes(lr.trace_id[8:], "big"))
                if len(lr.span_id) == 8 and any(lr.span_id):
                    record["otel.span_id"] = lr.span_id.hex()
                    record["dd.span_id"] = str(int.from_bytes(lr.span_id, "big"))
                if lr.severity_text:
                    record["otel.severity_text"] = lr.severity_text
                if lr.severity_number:
                    record["otel.severity_number"] = str(lr.severity_number)
                if lr.event_name:
                    record["event.name"] = lr.event_name
                records.append(record)
    return records


def _status(lr) -> str:
    if lr.severity_number:
        for top, status in _STATUSES:
            if lr.severity_number <= top:
                return status
        return "fatal"
    return lr.severity_text.lower() if lr.severity_text else "info"
