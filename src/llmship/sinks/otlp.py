"""Everything llmship ships, as OTLP/HTTP protobuf, to an OpenTelemetry Collector or any OTLP endpoint
([sinks.otlp]): spans (`/v1/traces`), metrics (`/v1/metrics`) and log records (`/v1/logs`).

Framing: an ``Export{Trace,Metrics,Logs}ServiceRequest`` is nothing but its field 1 repeated
(``resource_spans`` / ``resource_metrics`` / ``resource_logs``), so an item is one such field, tag and
length included, and items concatenate with no head, separator or tail. The one packer and the 413 split
then work unchanged. Messages are built with opentelemetry-proto's classes (the canonical definitions) and
``SerializeToString``.

What becomes what:
- every APM span (ddtrace v0.4/v0.5, and OTLP spans after their conversion), after scrubbing, as an OTLP
  span: one ResourceSpans per chunk and service (``service.name``, ``deployment.environment.name``,
  ``service.version``, ``host.name``), name = the Datadog resource (``operation.name``, ``resource.name``,
  ``span.type`` keep the Datadog names, as Datadog's OTLP ingest reads them back), meta as string and
  metrics as double attributes (``_``-prefixed internals left out), ``span.kind`` as the kind, errors as
  status ERROR with ``error.message``. Chunks the tracer dropped (priority <= 0) are left out, as for the
  trace intake;
- a span that carries an LLM call also gets the GenAI attributes (``gen_ai.operation.name``,
  ``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.*``,
  ``gen_ai.input.messages`` / ``gen_ai.output.messages`` from its LLM Observability event after scrubbing,
  truncation and sampling), kind CLIENT and the name ``{operation} {model}``;
- an LLM Observability event that came without its APM span (EVP) becomes an OTLP span of its own;
- derived and DogStatsD metrics at each flush: counts as delta sums (monotonic when no point is negative),
  rates as delta sums of rate x interval (the count they stand for), gauges as gauges, distributions as
  delta histograms with count, sum, min and max and a single bucket (a DDSketch's bins do not map onto an
  exponential histogram's base-2 scales); plus ``gen_ai.client.token.usage`` and
  ``gen_ai.client.operation.duration`` (delta explicit-bucket histograms with the semantic conventions'
  boundaries and attributes), aggregated here per flush interval;
- log records (received logs and LLM sample logs) as OTLP log records: ``message`` as the body,
  ``status`` as severity, ``service``/``hostname`` as resource, the rest as attributes.

DogStatsD events and service checks have no OTLP form: they go to Datadog only.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from llmship import __version__
from llmship import protobuf as pb
from llmship.aggregation import GAUGE, RATE, Series, SketchSeries
from llmship.config import Config
from llmship.delivery.payload import Framing, Payload, Route
from llmship.log import RateLimited, get_logger
from llmship.model import Span, TracerInfo, sampling_priority
from llmship.shipping.packer import Encoding, Packer
from llmship.tap import IDLE
from llmship.telemetry import Telemetry

# opentelemetry-proto's message classes (and protobuf) are imported where a message is built: every agent
# builds this sink (a reload may give it an endpoint), and they cost about 2 MiB that an agent which never
# ships OTLP would carry for nothing (bench/contexts.py).
if TYPE_CHECKING:
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

ROUTES: dict[str, Route] = {
    "otlp_spans": Route("otlp", "/v1/traces"),
    "otlp_metrics": Route("otlp", "/v1/metrics"),
    "otlp_logs": Route("otlp", "/v1/logs"),
}
# No OTLP limit is written down; the Collector's otlpreceiver reads HTTP bodies up to confighttp's
# max_request_body_size (20 MiB by default) and gRPC messages up to 4 MiB: 4 MiB fits both, as sent and
# once inflated (so a payload relayed over gRPC by a Collector fits too).
MAX_PAYLOAD_BYTES = 4 << 20
# The Collector's batch processor's send_batch_size default: a payload is a batch the gateway would make.
MAX_ITEMS = 8192
# The OpenTelemetry SDKs' BatchSpanProcessor / BatchLogRecordProcessor schedule delay is 5 s; so is the
# Datadog sinks' batch wait.
BATCH_WAIT_SECS = 5.0
SCOPE_NAME = "llmship"
# gen_ai.client.token.usage / gen_ai.client.operation.duration: the semantic conventions' advice
# (gen-ai-metrics.md, ExplicitBucketBoundaries).
TOKEN_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# Enum values of the OTLP protos (stable: they are wire values): Span.SpanKind, Status.StatusCode,
# AggregationTemporality.
_KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_KIND_INTERNAL, _KIND_CLIENT = _KINDS["internal"], _KINDS["client"]
_STATUS_ERROR = 2
_DELTA = 1
_ITEM = pb.tag(1, pb.LEN)  # Export*ServiceRequest field 1
# LLM Observability span kinds -> gen_ai.operation.name (semantic conventions' well-known values)
_OPERATIONS = {"embedding": "embeddings", "tool": "execute_tool", "agent": "invoke_agent"}
# Severity of a Datadog log status (logs data model: SeverityNumber ranges)
_SEVERITY = {"trace": 1, "debug": 5, "info": 9, "notice": 10, "ok": 9, "warn": 13, "warning": 13, "error": 17,
             "err": 17, "critical": 21, "crit": 21, "alert": 22, "emergency": 23, "emerg": 23, "fatal": 21}
# meta keys that become the resource, the kind or the status rather than attributes
_META_MAPPED = frozenset(("span.kind", "env", "version", "error.message", "_dd.p.tid"))

_log = RateLimited(get_logger("otlp_sink"))

# (service, env, operation, provider, request model, response model, error type, input tokens, output
# tokens, duration seconds): what an LLM call gives the GenAI histograms. A plain tuple: it crosses the
# worker channel as it is (``CallOutput.genai``).
GenAICall = tuple


def operation_name(kind: str, endpoint: str) -> str:
    """gen_ai.operation.name of an LLM Observability span kind and its endpoint."""
    if kind == "llm":
        return "text_completion" if endpoint.rstrip("/").endswith("/completions") and "chat" not in endpoint \
            else "chat"
    return _OPERATIONS.get(kind, kind)


def _set(value: common_pb2.AnyValue, v) -> None:
    if isinstance(v, bool):
        value.bool_value = v
    elif isinstance(v, int) and -(1 << 63) <= v < (1 << 63):
        value.int_value = v
    elif isinstance(v, float):
        value.double_value = v
    elif isinstance(v, str):
        value.string_value = v
    else:
        value.string_value = orjson.dumps(v, default=str).decode()


def _add_attributes(target, items: Iterable[tuple[str, object]]) -> None:
    for key, v in items:
        if v is None:
            continue
        kv = target.add()
        kv.key = key
        _set(kv.value, v)


def _tag_attributes(tags: Iterable[str]) -> Iterator[tuple[str, str]]:
    for tag in tags:
        key, sep, value = tag.partition(":")
        yield key, value


def _item(message) -> bytes:
    body = message.SerializeToString()
    return _ITEM + pb.varint(len(body)) + body


def _messages(section) -> list[dict] | None:
    """An LLM Observability event's input/output messages as the GenAI convention's message objects."""
    if not isinstance(section, dict):
        return None
    messages = section.get("messages")
    out = []
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            entry = {"role": m.get("role") or "user", "parts": []}
            content = m.get("content")
            if content not in (None, ""):
                entry["parts"].append({"type": "text", "content": content})
            for call in m.get("tool_calls") or ():
                if isinstance(call, dict):
                    entry["parts"].append({"type": "tool_call", "id": call.get("tool_id"),
                                           "name": call.get("name"), "arguments": call.get("arguments")})
            out.append(entry)
    elif isinstance(section.get("value"), str):
        out.append({"role": "user", "parts": [{"type": "text", "content": section["value"]}]})
    return out or None


def call_attributes(event: dict | None, genai: GenAICall | None) -> list[tuple[str, object]]:
    """The GenAI attributes of a call's span: from the call (``genai``) and its event (messages, kind)."""
    attrs: list[tuple[str, object]] = []
    meta = event.get("meta") if isinstance(event, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    metrics = event.get("metrics") if isinstance(event, dict) else None
    metrics = metrics if isinstance(metrics, dict) else {}
    if genai is not None:
        _, _, operation, provider, request_model, response_model, error_type, tokens_in, tokens_out, _ = genai
    else:
        kind = meta.get("span.kind") or ""
        operation = _OPERATIONS.get(kind) or ("chat" if kind == "llm" else None)
        provider, request_model, response_model = str(meta.get("model_provider") or "").lower(), meta.get("model_name"), None
        error_type = meta.get("error.type") if event and event.get("status") == "error" else None
        tokens_in, tokens_out = metrics.get("input_tokens"), metrics.get("output_tokens")
    attrs += [("gen_ai.operation.name", operation), ("gen_ai.provider.name", provider or None),
              ("gen_ai.request.model", request_model or None), ("gen_ai.response.model", response_model or None),
              ("error.type", error_type or None)]
    for key, value in (("gen_ai.usage.input_tokens", tokens_in), ("gen_ai.usage.output_tokens", tokens_out),
                       ("gen_ai.usage.cache_read.input_tokens", metrics.get("cache_read_input_tokens")),
                       ("gen_ai.usage.cache_creation.input_tokens", metrics.get("cache_write_input_tokens")),
                       ("gen_ai.usage.reasoning.output_tokens", metrics.get("reasoning_output_tokens"))):
        if isinstance(value, (int, float)):
            attrs.append((key, int(value)))
    for key, section in (("gen_ai.input.messages", meta.get("input")), ("gen_ai.output.messages", meta.get("output"))):
        messages = _messages(section)
        if messages:
            attrs.append((key, orjson.dumps(messages).decode()))
    return [(k, v) for k, v in attrs if v is not None]


@dataclass(slots=True)
class _Histogram:
    counts: list[int]
    total: float = 0.0
    n: int = 0
    lo: float = float("inf")
    hi: float = float("-inf")

    def add(self, bounds: tuple, value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1  # buckets are (previous bound, bound]
        self.total += value
        self.n += 1
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)


class OTLPSink:
    """Encodes items for OTLP (processing plane) and packs them (shipping plane); see the module docstring.

    ``enabled`` ([sinks.otlp] endpoint set) and ``datadog`` (the Datadog sinks run: Datadog or, with no
    destination at all, the file sink) are read by the emitter and the router on every call, so a reload
    that adds or removes a destination takes effect everywhere."""

    def __init__(self, cfg: Config, submit: Callable[[Payload], object], telemetry: Telemetry,
                 clock: Callable[[], float] = time.time) -> None:
        self._tel = telemetry.component("otlp_sink")
        self._submit = submit
        self._clock = clock
        self._packers: dict[str, Packer] = {}
        self._tokens: dict[tuple, _Histogram] = {}
        self._durations: dict[tuple, _Histogram] = {}
        self._since = clock()  # start of the GenAI histograms' current interval
        self._metric_items = 0
        self.tap = IDLE  # the agent's Tap, given by agent.build (nothing offered: the Datadog sinks' items are)
        self.reload(cfg)
        self._tel.gauge("batch_items", lambda: sum(len(p) for p in self._packers.values()))

    def reload(self, cfg: Config) -> None:
        self.enabled = cfg.ships_to_otlp
        self.datadog = cfg.uses_datadog_sinks
        self._hostname = cfg.agent.hostname
        self._env = cfg.agent.env
        compression = "identity" if cfg.sinks.otlp.compression in ("none", "identity") else "gzip"
        wait = min(BATCH_WAIT_SECS, cfg.agent.flush_interval_secs)
        for kind, route in ROUTES.items():
            encoding = Encoding(kind, route, "application/x-protobuf", MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES,
                                Framing(), max_items=MAX_ITEMS, compression=compression,
                                max_age_secs=None if kind == "otlp_metrics" else wait)
            if kind in self._packers:
                self._packers[kind].reconfigure(encoding)
            else:
                self._packers[kind] = Packer(encoding, self._submit_payload, on_too_large=self._too_large(kind))

    async def start(self) -> None:
        for packer in self._packers.values():
            packer.start()

    async def shutdown(self, deadline: float) -> None:
        for packer in self._packers.values():
            await packer.shutdown(deadline)

    def flush(self) -> None:
        for packer in self._packers.values():
            packer.flush()

    # ----------------------------------------------------------------------------- spans (processing)

    def encode_chunks(self, chunks: list[list[Span]], tracer: TracerInfo,
                      calls: dict[int, list] | None = None) -> list[tuple]:
        """One ResourceSpans item per chunk and service, with its span count; a span that carries a call
        gets an item of its own, (item, 1, span id), which the router drops when the call's EVP copy went
        first. ``calls``: span id -> GenAI attributes of the call that span carries (``call_attributes``)."""
        items: list[tuple] = []
        calls = calls or {}
        for spans in chunks:
            if not spans or dropped_by_tracer(spans):
                continue
            by_service: dict[str, list[Span]] = {}
            for s in spans:
                by_service.setdefault(s.service, []).append(s)
            for service, group in by_service.items():
                # env and version as tracers set them: on some spans of the chunk (the root at least)
                env = next((s.meta["env"] for s in group if s.meta.get("env")), "") or self._env
                version = next((s.meta["version"] for s in group if s.meta.get("version")), "")
                resource = (service, env, version, tracer)
                rest = []
                for s in group:
                    if s.span_id not in calls:
                        rest.append(s)
                    elif (encoded := self._resource_spans(resource, [s], calls)) is not None:
                        items.append((*encoded, s.span_id))
                if (encoded := self._resource_spans(resource, rest, calls)) is not None:
                    items.append(encoded)
        self._tel.inc("spans_encoded", sum(item[1] for item in items))
        return items

    def _resource_spans(self, resource: tuple, spans: list[Span], calls: dict) -> tuple[bytes, int] | None:
        """One ResourceSpans item of ``spans`` (a span that cannot be encoded is dropped and counted), with
        its span count; None when none is left."""
        from opentelemetry.proto.trace.v1 import trace_pb2

        if not spans:
            return None
        rs = trace_pb2.ResourceSpans()
        self._resource(rs.resource.attributes, *resource)
        ss = rs.scope_spans.add()
        ss.scope.name = SCOPE_NAME
        ss.scope.version = __version__
        for s in spans:
            try:
                _span(ss.spans.add(), s, calls.get(s.span_id))
            except (ValueError, TypeError, OverflowError) as e:
                del ss.spans[-1]
                self._tel.discard("unencodable_span")
                _log.warning("unencodable_span", "span_dropped", error=f"{type(e).__name__}: {e}")
        return (_item(rs), len(ss.spans)) if ss.spans else None

    def encode_event_span(self, event: dict, attrs: list[tuple[str, object]]) -> bytes | None:
        """An LLM Observability event that came without its APM span (EVP) as one OTLP span."""
        from opentelemetry.proto.trace.v1 import trace_pb2

        try:
            tags = dict(t.partition(":")[::2] for t in event.get("tags") or () if isinstance(t, str))
            rs = trace_pb2.ResourceSpans()
            self._resource(rs.resource.attributes, tags.get("service", ""), tags.get("env", "") or self._env,
                           tags.get("version", ""), None)
            ss = rs.scope_spans.add()
            ss.scope.name = SCOPE_NAME
            ss.scope.version = __version__
            span = ss.spans.add()
            trace_id = _int_id(event.get("trace_id"))
            span.trace_id = (trace_id & ((1 << 128) - 1)).to_bytes(16, "big")
            span.span_id = (_int_id(event.get("span_id")) & ((1 << 64) - 1)).to_bytes(8, "big")
            parent = _int_id(event.get("parent_id"))
            if parent:
                span.parent_span_id = (parent & ((1 << 64) - 1)).to_bytes(8, "big")
            start = int(event.get("start_ns") or 0)
            span.start_time_unix_nano = start
            span.end_time_unix_nano = start + int(event.get("duration") or 0)
            span.kind = _KIND_CLIENT if _is_call(attrs) else _KIND_INTERNAL
            span.name = _genai_name(attrs) or str(event.get("name") or "llm")
            if event.get("status") == "error":
                span.status.code = _STATUS_ERROR
                meta = event.get("meta") or {}
                span.status.message = str(meta.get("error.message") or "")
            _add_attributes(span.attributes, attrs)
            _add_attributes(span.attributes, (("llm.tags", ",".join(event.get("tags") or ())),))
            self._tel.inc("spans_encoded")
            return _item(rs)
        except (ValueError, TypeError, OverflowError, AttributeError) as e:
            self._tel.discard("unencodable_span")
            _log.warning("unencodable_event_span", "span_dropped", error=f"{type(e).__name__}: {e}")
            return None

    def _resource(self, attributes, service: str, env: str, version: str, tracer: TracerInfo | None) -> None:
        _add_attributes(attributes, (
            ("service.name", service or "unknown_service"), ("deployment.environment.name", env or None),
            ("service.version", version or None), ("host.name", self._hostname or None),
            ("telemetry.sdk.language", (tracer.language or None) if tracer else None)))

    # ------------------------------------------------------------------------------ logs (processing)

    def encode_log(self, record: dict) -> bytes | None:
        """One log record (the Datadog logs intake's shape) as a ResourceLogs item."""
        from opentelemetry.proto.logs.v1 import logs_pb2

        try:
            rl = logs_pb2.ResourceLogs()
            _add_attributes(rl.resource.attributes, (
                ("service.name", str(record.get("service") or "") or None),
                ("host.name", str(record.get("hostname") or self._hostname) or None)))
            sl = rl.scope_logs.add()
            sl.scope.name = SCOPE_NAME
            lr = sl.log_records.add()
            now = time.time_ns()
            ts = record.get("timestamp")
            if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 0:
                lr.time_unix_nano = int(ts * 1_000_000) if ts < 1e14 else int(ts)  # Datadog: milliseconds
            lr.observed_time_unix_nano = now
            status = str(record.get("status") or "info")
            lr.severity_text = status
            lr.severity_number = _SEVERITY.get(status.lower(), 9)
            _set(lr.body, record.get("message", ""))
            ddtags = record.get("ddtags")
            if isinstance(ddtags, list):
                ddtags = ",".join(map(str, ddtags))
            attrs: list[tuple[str, object]] = []
            for key, value in record.items():
                if key in ("message", "service", "hostname", "status", "timestamp", "ddtags"):
                    continue
                attrs.append((key, value))
            if ddtags:
                attrs.append(("ddtags", ddtags))
            _add_attributes(lr.attributes, attrs)
            self._tel.inc("logs_encoded")
            return _item(rl)
        except (ValueError, TypeError, OverflowError) as e:
            self._tel.discard("unencodable_log")
            _log.warning("unencodable_log", "log_dropped", error=f"{type(e).__name__}: {e}")
            return None

    # ------------------------------------------------------------------------------ shipping plane

    def add_span_items(self, items: list[tuple[bytes, int]]) -> None:
        packer = self._packers["otlp_spans"]
        for item, n in items:
            packer.add(item, n)

    def add_log_item(self, item: bytes) -> None:
        self._packers["otlp_logs"].add(item)

    def record_call(self, genai: GenAICall) -> None:
        """One LLM call for the GenAI histograms (once per span id: the router de-duplicates)."""
        service, env, operation, provider, request_model, response_model, error_type, tin, tout, secs = genai
        base = (service or "", env or "", operation or "", provider or "", request_model or "",
                response_model or "", error_type or "")
        for token_type, value in (("input", tin), ("output", tout)):
            if isinstance(value, (int, float)):
                h = self._tokens.get(base + (token_type,))
                if h is None:
                    h = self._tokens[base + (token_type,)] = _Histogram([0] * (len(TOKEN_BOUNDS) + 1))
                h.add(TOKEN_BOUNDS, value)
        if isinstance(secs, (int, float)):
            h = self._durations.get(base)
            if h is None:
                h = self._durations[base] = _Histogram([0] * (len(DURATION_BOUNDS) + 1))
            h.add(DURATION_BOUNDS, secs)

    def add_metric(self, item: Series | SketchSeries) -> None:
        """One flushed series or sketch (the aggregator's) as a ResourceMetrics item. An app's own
        gen_ai.client.* histograms (received over OTLP, aggregated into sketches) are left out: this sink
        derives them, with their buckets, from every call, and a gateway must not count calls twice."""
        if item.metric.startswith("gen_ai.client."):
            self._tel.discard("genai_metric_derived_here", intentional=True)
            return
        from opentelemetry.proto.metrics.v1 import metrics_pb2

        rm = metrics_pb2.ResourceMetrics()
        if item.host:
            _add_attributes(rm.resource.attributes, (("host.name", item.host),))
        sm = rm.scope_metrics.add()
        sm.scope.name = SCOPE_NAME
        m = sm.metrics.add()
        m.name = item.metric
        tags = list(_tag_attributes(item.tags))
        if type(item) is SketchSeries:
            hist = m.histogram
            hist.aggregation_temporality = _DELTA
            for ts, sketch in item.points:
                dp = hist.data_points.add()
                dp.time_unix_nano = int(ts) * 1_000_000_000
                dp.count = int(sketch.cnt)
                dp.sum = float(sketch.sum)
                dp.min = float(sketch.min)
                dp.max = float(sketch.max)
                dp.bucket_counts.append(int(sketch.cnt))
                _add_attributes(dp.attributes, tags)
        else:
            if item.type == GAUGE:
                points = m.gauge.data_points
            else:
                m.sum.aggregation_temporality = _DELTA
                m.sum.is_monotonic = all(v >= 0 for _, v in item.points)
                points = m.sum.data_points
            for ts, value in item.points:
                dp = points.add()
                dp.time_unix_nano = int(ts) * 1_000_000_000
                if item.type != GAUGE:
                    dp.start_time_unix_nano = (int(ts) - item.interval) * 1_000_000_000
                dp.as_double = float(value) * (item.interval if item.type == RATE else 1)
                _add_attributes(dp.attributes, tags)
        self._packers["otlp_metrics"].add(_item(rm))
        self._metric_items += 1

    def end_metrics(self) -> None:
        """End of a flush: the GenAI histograms of the interval, then submit what is packed."""
        from opentelemetry.proto.metrics.v1 import metrics_pb2

        now = self._clock()
        start_ns, end_ns = int(self._since * 1e9), int(now * 1e9)
        self._since = now
        tokens, self._tokens = self._tokens, {}
        durations, self._durations = self._durations, {}
        by_service: dict[tuple, list] = {}
        for key, h in tokens.items():
            by_service.setdefault(key[:2], []).append(("gen_ai.client.token.usage", key, h))
        for key, h in durations.items():
            by_service.setdefault(key[:2], []).append(("gen_ai.client.operation.duration", key, h))
        for (service, env), entries in by_service.items():
            rm = metrics_pb2.ResourceMetrics()
            self._resource(rm.resource.attributes, service, env, "", None)
            sm = rm.scope_metrics.add()
            sm.scope.name = SCOPE_NAME
            sm.scope.version = __version__
            metrics: dict[str, metrics_pb2.Metric] = {}
            for name, key, h in entries:
                m = metrics.get(name)
                if m is None:
                    m = metrics[name] = sm.metrics.add()
                    m.name = name
                    m.unit = "{token}" if name == "gen_ai.client.token.usage" else "s"
                    m.description = ("Number of input and output tokens used" if name == "gen_ai.client.token.usage"
                                     else "GenAI operation duration")
                    m.histogram.aggregation_temporality = _DELTA
                dp = m.histogram.data_points.add()
                dp.start_time_unix_nano = start_ns
                dp.time_unix_nano = end_ns
                dp.count = h.n
                dp.sum = h.total
                dp.min = h.lo
                dp.max = h.hi
                dp.bucket_counts.extend(h.counts)
                dp.explicit_bounds.extend(TOKEN_BOUNDS if name == "gen_ai.client.token.usage" else DURATION_BOUNDS)
                _, _, operation, provider, request_model, response_model, error_type = key[:7]
                _add_attributes(dp.attributes, (
                    ("gen_ai.operation.name", operation or None), ("gen_ai.provider.name", provider or None),
                    ("gen_ai.request.model", request_model or None), ("gen_ai.response.model", response_model or None),
                    ("error.type", error_type or None),
                    ("gen_ai.token.type", key[7] if len(key) > 7 else None)))
            self._packers["otlp_metrics"].add(_item(rm))
        if self._metric_items:
            self._tel.inc("metric_items_encoded", self._metric_items)
            self._metric_items = 0
        self._packers["otlp_metrics"].flush()

    def tee(self, items: Iterator) -> Iterator:
        """The flush's series and sketches, each also added here; the GenAI histograms at the end."""
        for item in items:
            self.add_metric(item)
            yield item
        self.end_metrics()

    def _submit_payload(self, payload: Payload) -> None:
        self._tel.inc("payloads", kind=payload.kind)
        self._submit(payload)

    def _too_large(self, kind: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            self._tel.discard("item_too_large", n)
            _log.warning(f"too_large_{kind}", "item_too_large", kind=kind)
        return count


# ------------------------------------------------------------------------------------------ spans


def dropped_by_tracer(spans: list[Span]) -> bool:
    value = sampling_priority(spans)
    return value is not None and value <= 0


def _int_id(value) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _is_call(attrs) -> bool:
    return any(k == "gen_ai.operation.name" and v in ("chat", "text_completion", "embeddings") for k, v in attrs or ())


def _genai_name(attrs) -> str | None:
    values = dict(attrs or ())
    operation = values.get("gen_ai.operation.name")
    if not operation:
        return None
    model = values.get("gen_ai.request.model")
    return f"{operation} {model}" if model else str(operation)


def _span(out: trace_pb2.Span, s: Span, call_attrs) -> None:
    meta = s.meta
    high = meta.get("_dd.p.tid")
    high_bits = int(high, 16) if high else 0
    out.trace_id = ((high_bits << 64) | s.trace_id).to_bytes(16, "big")
    out.span_id = s.span_id.to_bytes(8, "big")
    if s.parent_id:
        out.parent_span_id = s.parent_id.to_bytes(8, "big")
    out.start_time_unix_nano = s.start
    out.end_time_unix_nano = s.start + s.duration
    out.kind = _KINDS.get(meta.get("span.kind", ""), 1)
    out.name = s.resource or s.name
    if s.error:
        out.status.code = _STATUS_ERROR
        out.status.message = meta.get("error.message", "")
    attrs = out.attributes
    _add_attributes(attrs, (("operation.name", s.name), ("resource.name", s.resource), ("span.type", s.type or None)))
    _add_attributes(attrs, ((k, v) for k, v in meta.items() if k not in _META_MAPPED and not k.startswith("_")))
    _add_attributes(attrs, ((k, float(v)) for k, v in s.metrics.items() if not k.startswith("_")))
    if call_attrs:
        present = {k for k, _ in call_attrs}
        keep = [kv for kv in attrs if kv.key not in present]
        del attrs[:]
        attrs.extend(keep)
        _add_attributes(attrs, call_attrs)
        name = _genai_name(call_attrs)
        if name:
            out.name = name
        if _is_call(call_attrs):
            out.kind = _KIND_CLIENT
