"""APM spans to the trace intake (`/api/v0.2/traces`): protobuf AgentPayload, gzip or zstd.

Message and field numbers follow DataDog/datadog-agent ``pkg/proto/datadog/trace/``:
  agent_payload.proto   AgentPayload{hostName=1, env=2, tracerPayloads=5, tags=6, agentVersion=7,
                        targetTPS=8 (double), errorTPS=9 (double), rareSamplerEnabled=10}
  tracer_payload.proto  TracerPayload{containerID=1, languageName=2, languageVersion=3, tracerVersion=4,
                        runtimeID=5, chunks=6, tags=7, env=8, hostname=9, appVersion=10}
                        TraceChunk{priority=1 (int32), origin=2, spans=3, tags=4, droppedTrace=5}
  span.proto            Span{service=1, name=2, resource=3, traceID=4, spanID=5, parentID=6, start=7,
                        duration=8, error=9, meta=10, metrics=11, type=12, meta_struct=13, spanLinks=14}
                        SpanLink{traceID=1, traceID_high=2, spanID=3, attributes=4, tracestate=5, flags=6}
Maps are repeated entry messages {key=1, value=2}.

Like the Agent's trace writer (pkg/trace/writer/trace.go) the sink flushes at 3.2 MB of encoded chunks
or every 5 s, and sends ``Content-Type: application/x-protobuf`` and ``X-Datadog-Reported-Languages``.
Like the Agent's priority sampler it does not ship chunks whose sampling priority is <= 0 (ddtrace
predicts exactly that and sends the LLM Observability events of such traces on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llmship import protobuf as pb
from llmship.compression import compress_fast, decompress
from llmship.config import Config
from llmship.delivery.payload import Payload, register_splitter
from llmship.model import Span, TracerInfo, root_span
from llmship.log import RateLimited, get_logger
from llmship.sinks.batch import BatchedSink, Batcher
from llmship.sinks.spanenc import DEFAULT_SERVICE_NAME, ENCODE_ERRORS, encode_span
from llmship.tags import agent_default_tags
from llmship.telemetry import Telemetry

# The Datadog Agent release whose trace API llmship implements. Tracers read it from /info and the
# Datadog-Agent-Version header (the /info answer in captures/ddtrace-4.16 is from this release), and it
# goes to the intake as AgentPayload.agentVersion.
AGENT_VERSION = "7.64.3"

# 3.2 MB: "the maximum allowed by the Datadog API" (datadog-agent pkg/trace/writer/trace.go MaxPayloadSize)
MAX_PAYLOAD_BYTES = 3_200_000
# 5 s: the Agent trace writer's flush period (pkg/trace/writer/trace.go, tick)
FLUSH_SECS = 5.0
# Not an intake limit: only a bound on how many chunks one payload may gather.
MAX_CHUNKS_PER_PAYLOAD = 100_000
# apm_config.target_traces_per_second and errors_per_second defaults, reported as the Agent does.
TARGET_TPS = 10.0
ERROR_TPS = 10.0
# apm_config.env default: what the Agent reports when neither the span nor the config names an env.
DEFAULT_ENV = "none"
# Room for the AgentPayload fields around the chunks (host, env, version, TPS values).
AGENT_PAYLOAD_OVERHEAD = 256
SAMPLING_PRIORITY_KEY = "_sampling_priority_v1"
AUTO_KEEP = 1  # ddtrace constants.AUTO_KEEP
LANGUAGES_HEADER = "X-Datadog-Reported-Languages"
# Largest body the splitter inflates back (a payload we built ourselves, so well under this).
_SPLIT_MAX_BYTES = 64 << 20
_MAX_CACHED_HEADERS = 1024  # tracer payload headers: one per tracer process, env and version

_LEN, _FIXED64 = pb.LEN, pb.FIXED64
_SPAN_TAG = pb.tag(3, _LEN)  # TraceChunk.spans
_log = RateLimited(get_logger("traces_sink"))


class TraceSink(BatchedSink):
    def __init__(self, cfg: Config, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._tel = telemetry.component("traces_sink")
        self._languages: set[str] = set()  # every language seen, as the Agent reports them
        self._batcher = Batcher(self._encode, submit, max_items=MAX_CHUNKS_PER_PAYLOAD,
                                max_bytes=MAX_PAYLOAD_BYTES, max_age_secs=FLUSH_SECS,
                                telemetry=self._tel, framing_bytes=AGENT_PAYLOAD_OVERHEAD)
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        self._hostname = cfg.agent.hostname
        self._env = cfg.agent.env or DEFAULT_ENV
        self._service = cfg.agent.service  # for spans that name none
        # What every span gets in meta when it lacks the key, passed to the encoder as data: the agent's env,
        # version and tags (the service is a field of its own).
        self._meta_defaults = tuple((key, tag[len(key) + 1:]) for key, tag in agent_default_tags(cfg.agent).items()
                                    if key != "service" and ":" in tag)
        # The trace intake takes gzip (the Agent's default) or zstd (apm_config.compression).
        self._encoding = "zstd" if cfg.sinks.datadog.compression == "zstd" else "gzip"
        self._headers: dict[tuple, bytes] = {}

    def add_chunk(self, spans: list[Span], tracer: TracerInfo) -> None:
        """Queue one trace chunk (spans of one trace from one tracer payload) for the intake."""
        if not spans:
            return
        self._tel.inc("events_received", len(spans))
        root = root_span(spans)
        priority = _priority(spans)
        if priority is not None and priority <= 0:
            self._tel.inc("dropped", len(spans), reason="sampling_priority")
            return
        if tracer.language:
            self._languages.add(tracer.language)
        header = self._header(tracer, root.meta.get("env") or self._env, root.meta.get("_dd.hostname", ""),
                              root.meta.get("version", ""))
        # A chunk without a tracer decision is one we keep: AUTO_KEEP, never 0 (AUTO_REJECT).
        chunk_fields = (pb.f_varint(1, AUTO_KEEP if priority is None else priority)
                        + pb.f_str(2, root.meta.get("_dd.origin", "")))
        fallback_service = self._service or tracer.language or DEFAULT_SERVICE_NAME
        meta_defaults = self._meta_defaults
        encoded = []
        for s in spans:
            try:
                encoded.append(encode_span(s, fallback_service, meta_defaults))
            except ENCODE_ERRORS as e:  # a span built by code with what the wire cannot carry (never decoded ones)
                self._tel.inc("dropped", reason="unencodable_span")
                _log.warning("unencodable_span", "span_dropped", error=f"{type(e).__name__}: {e}")
        # A chunk too large for one payload is cut into several (tracers flush partial chunks too);
        # 32 bytes for the item's prefixes and the chunk's own tag and length.
        room = MAX_PAYLOAD_BYTES - AGENT_PAYLOAD_OVERHEAD - len(header) - len(chunk_fields) - 32
        for group in _groups_within(encoded, room):
            if group is None:
                self._tel.inc("dropped", reason="span_too_large")
                _log.warning("span_too_large", "span_too_large", limit_bytes=MAX_PAYLOAD_BYTES)
                continue
            chunk = chunk_fields + b"".join([_SPAN_TAG + pb.varint(len(s)) + s for s in group])
            self._batcher.add(_item(len(group), header, pb.f_msg(6, chunk)))

    def _header(self, tracer: TracerInfo, env: str, hostname: str, app_version: str) -> bytes:
        key = (tracer.container_id, tracer.language, tracer.language_version, tracer.tracer_version,
               tracer.runtime_id, env, hostname, app_version)
        header = self._headers.get(key)
        if header is None:
            if len(self._headers) >= _MAX_CACHED_HEADERS:
                self._headers.clear()
            header = self._headers[key] = _tracer_payload_header(tracer, env=env, hostname=hostname,
                                                                 app_version=app_version)
        return header

    def _encode(self, items: list[bytes]) -> Payload:
        """Group the chunks by tracer payload header and wrap them in one AgentPayload."""
        by_header: dict[bytes, list[bytes]] = {}
        spans = 0
        for item in items:
            n, header, chunk = _parse_item(item)
            spans += n
            by_header.setdefault(header, []).append(chunk)
        tracer_payloads = [header + b"".join(chunks) for header, chunks in by_header.items()]
        body = _agent_payload(self._hostname, self._env, tracer_payloads)
        headers = {LANGUAGES_HEADER: "|".join(sorted(self._languages))} if self._languages else {}
        return Payload(kind="traces", body=compress_fast(body, self._encoding),
                       content_type="application/x-protobuf", content_encoding=self._encoding,
                       items=spans, extra_headers=headers)


# ------------------------------------------------------------------------------------------ encoding


def _priority(spans: list[Span]) -> int | None:
    """The chunk's sampling priority: tracers set it on the local root, so take the first span that has it."""
    for s in spans:
        value = s.metrics.get(SAMPLING_PRIORITY_KEY)
        if value is not None:
            return int(value)
    return None


def _tracer_payload_header(tracer: TracerInfo, *, env: str, hostname: str, app_version: str) -> bytes:
    """Every TracerPayload field but the chunks (field 6), which are appended after it."""
    return b"".join((
        pb.f_str(1, tracer.container_id), pb.f_str(2, tracer.language), pb.f_str(3, tracer.language_version),
        pb.f_str(4, tracer.tracer_version), pb.f_str(5, tracer.runtime_id), pb.f_str(8, env),
        pb.f_str(9, hostname), pb.f_str(10, app_version),
    ))


def _agent_payload(hostname: str, env: str, tracer_payloads: Iterable[bytes]) -> bytes:
    return b"".join((
        pb.f_str(1, hostname), pb.f_str(2, env),
        *(pb.f_msg(5, tp) for tp in tracer_payloads),
        pb.f_str(7, AGENT_VERSION), pb.f_double(8, TARGET_TPS), pb.f_double(9, ERROR_TPS),
    ))


def _groups_within(encoded: list[bytes], limit: int) -> Iterable[list[bytes] | None]:
    """Spans in groups whose encoding fits ``limit``; None for a span too large on its own."""
    group: list[bytes] = []
    size = 0
    for span in encoded:
        cost = len(span) + 6  # tag and length prefix
        if cost > limit:
            yield None
            continue
        if group and size + cost > limit:
            yield group
            group, size = [], 0
        group.append(span)
        size += cost
    if group:
        yield group


def _item(spans: int, header: bytes, chunk_field: bytes) -> bytes:
    """A batcher item: span count and tracer payload header (both varint-prefixed), then the chunk field."""
    return b"".join((pb.varint(spans), pb.varint(len(header)), header, chunk_field))


def _parse_item(item: bytes) -> tuple[int, bytes, bytes]:
    spans, pos = pb.read_varint(item, 0)
    header_len, pos = pb.read_varint(item, pos)
    return spans, item[pos:pos + header_len], item[pos + header_len:]


# ------------------------------------------------------------------------------------------ splitting


def _raw_fields(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, the field's bytes as written, its payload if length-delimited) in order."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = pb.read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        payload = b""
        if wire_type == pb.VARINT:
            _, pos = pb.read_varint(buf, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _LEN:
            n, pos = pb.read_varint(buf, pos)
            payload = buf[pos:pos + n]
            pos += n
        elif wire_type == pb.FIXED32:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("truncated message")
        out.append((field, buf[start:pos], payload))
    return out


def _split_message(message: bytes, repeated_field: int) -> tuple[bytes, list[bytes]]:
    """A message's other fields, and the payloads of ``repeated_field``."""
    rest, repeated = [], []
    for field, raw, payload in _raw_fields(message):
        if field == repeated_field:
            repeated.append(payload)
        else:
            rest.append(raw)
    return b"".join(rest), repeated


def _count_spans(tracer_payload: bytes) -> int:
    return sum(len(_split_message(chunk, 3)[1]) for chunk in _split_message(tracer_payload, 6)[1])


def _halves(items: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Two non-empty groups of about equal encoded size."""
    total = sum(len(i) for i in items)
    best_cut, best_gap, size = 1, total, 0
    for cut, item in enumerate(items[:-1], start=1):
        size += len(item)
        if abs(2 * size - total) < best_gap:
            best_cut, best_gap = cut, abs(2 * size - total)
    return items[:best_cut], items[best_cut:]


def split_traces_payload(payload: Payload) -> list[Payload]:
    """Cut an AgentPayload in two (by tracer payloads, else chunks, else spans) for a 413."""
    raw = decompress(payload.body, payload.content_encoding, _SPLIT_MAX_BYTES)
    agent_rest, tracer_payloads = _split_message(raw, 5)
    if len(tracer_payloads) >= 2:
        halves = _halves(tracer_payloads)
    elif len(tracer_payloads) == 1:
        tp_rest, chunks = _split_message(tracer_payloads[0], 6)
        if len(chunks) >= 2:
            halves = tuple([tp_rest + b"".join(pb.f_msg(6, c) for c in half)] for half in _halves(chunks))
        elif len(chunks) == 1:
            chunk_rest, spans = _split_message(chunks[0], 3)
            if len(spans) < 2:
                return [payload]
            halves = tuple(
                [tp_rest + pb.f_msg(6, chunk_rest + b"".join(pb.f_msg(3, s) for s in half))]
                for half in _halves(spans))
        else:
            return [payload]
    else:
        return [payload]
    out = []
    for half in halves:
        body = agent_rest + b"".join(pb.f_msg(5, tp) for tp in half)
        out.append(Payload(kind=payload.kind, body=compress_fast(body, payload.content_encoding),
                           content_type=payload.content_type, content_encoding=payload.content_encoding,
                           items=sum(_count_spans(tp) for tp in half),
                           extra_headers=dict(payload.extra_headers)))
    return out


register_splitter("traces", split_traces_payload)
