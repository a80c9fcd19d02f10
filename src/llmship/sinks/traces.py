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
Payloads are built by the packer (llmship.shipping.packer): an item is one TracerPayload (AgentPayload field
5: the tracer payload header and the chunks that share it, as the Agent's writer appends one TracerPayload
per tracer request), between the AgentPayload's head (hostName, env) and tail (agentVersion, targetTPS,
errorTPS). Consecutive chunks with the same header gather into one TracerPayload of at most
TRACER_PAYLOAD_MAX_BYTES; a 413 splits a payload between TracerPayloads.
Like the Agent's priority sampler it does not ship chunks whose sampling priority is <= 0 (ddtrace
predicts exactly that and sends the LLM Observability events of such traces on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llmship import protobuf as pb
from llmship.compression import FAST_LEVELS
from llmship.config import Config
from llmship.delivery.payload import Framing, Payload
from llmship.model import Span, TracerInfo, root_span, sampling_priority
from llmship.log import RateLimited, get_logger
from llmship.shipping.packer import Encoding, PackedSink, Packer, accepted
from llmship.sinks.intakes import ROUTES
from llmship.sinks.spanenc import DEFAULT_SERVICE_NAME, encode_spans
from llmship.tags import agent_default_tags
from llmship.tap import IDLE
from llmship.telemetry import Telemetry

# The Datadog Agent release whose trace API llmship implements. Tracers read it from /info and the
# Datadog-Agent-Version header (the /info answer in captures/ddtrace-4.16 is from this release), and it
# goes to the intake as AgentPayload.agentVersion.
AGENT_VERSION = "7.64.3"

# 3.2 MB: "the maximum allowed by the Datadog API" (datadog-agent pkg/trace/writer/trace.go MaxPayloadSize)
MAX_PAYLOAD_BYTES = 3_200_000
# 5 s: the Agent trace writer's flush period (pkg/trace/writer/trace.go, tick)
FLUSH_SECS = 5.0
# Not an intake limit: only a bound on how many tracer payloads one payload may gather.
MAX_CHUNKS_PER_PAYLOAD = 100_000
# Not an intake limit: consecutive chunks sharing a tracer payload header are gathered into one TracerPayload
# up to this size, which is also the smallest a 413 can cut a payload into.
TRACER_PAYLOAD_MAX_BYTES = 256 * 1024
# apm_config.target_traces_per_second and errors_per_second defaults, reported as the Agent does.
TARGET_TPS = 10.0
ERROR_TPS = 10.0
# apm_config.env default: what the Agent reports when neither the span nor the config names an env.
DEFAULT_ENV = "none"
AUTO_KEEP = 1  # ddtrace constants.AUTO_KEEP
LANGUAGES_HEADER = "X-Datadog-Reported-Languages"
# The trace intake takes gzip or zstd; current Agents send zstd by default (DataDog/datadog-agent#28603,
# "[APM] Use zstd compression by default", at zstd.BestSpeed: pkg/trace/writer/zstd.go) and gzip at
# BestSpeed before that (pkg/trace/writer/trace.go). deflate and identity fall back to gzip: the Agent always
# compresses trace payloads.
_ACCEPTS = ("gzip", "zstd")
_MAX_CACHED_HEADERS = 1024  # tracer payload headers: one per tracer process, env and version

_log = RateLimited(get_logger("traces_sink"))


class TraceSink(PackedSink):
    def __init__(self, cfg: Config, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._tel = telemetry.component("traces_sink")
        self._submit = submit
        self._languages: set[str] = set()  # every language seen, as the Agent reports them
        self._packer: Packer | None = None
        self.tap = IDLE  # the agent's Tap, given by agent.build
        self.reload(cfg)
        self._tel.gauge("batch_items", lambda: len(self._packer))

    def reload(self, cfg: Config) -> None:
        self._hostname = cfg.agent.hostname
        self._env = cfg.agent.env or DEFAULT_ENV
        self._service = cfg.agent.service  # for spans that name none
        # What every span gets in meta when it lacks the key, passed to the encoder as data: the agent's env,
        # version and tags (the service is a field of its own).
        self._meta_defaults = tuple((key, tag[len(key) + 1:]) for key, tag in agent_default_tags(cfg.agent).items()
                                    if key != "service" and ":" in tag)
        compression = accepted(cfg.sinks.datadog.compression, _ACCEPTS)
        encoding = Encoding(
            "traces", ROUTES["traces"], "application/x-protobuf", MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES,
            Framing(pb.f_str(1, self._hostname) + pb.f_str(2, self._env), b"",
                    pb.f_str(7, AGENT_VERSION) + pb.f_double(8, TARGET_TPS) + pb.f_double(9, ERROR_TPS)),
            max_items=MAX_CHUNKS_PER_PAYLOAD, compression=compression, level=FAST_LEVELS.get(compression),
            max_age_secs=FLUSH_SECS)
        if self._packer is None:
            self._packer = Packer(encoding, self._submit_payload, on_too_large=self._too_large)
        else:
            self._packer.reconfigure(encoding)
        self._headers: dict[tuple, bytes] = {}
        self._chunk_heads: dict[tuple[int, str], bytes] = {}  # TraceChunk priority and origin by their values

    def add_chunk(self, spans: list[Span], tracer: TracerInfo) -> None:
        """``add_items(encode_chunks([spans], tracer), tracer.language)``, for callers in one process."""
        self.add_items(self.encode_chunks([spans], tracer), tracer.language)

    def add_items(self, items: list[tuple[bytes, int]], language: str) -> None:
        """Pack encoded TracerPayloads with their span counts (shipping plane)."""
        if language:
            self._languages.add(language)
        for item, spans in items:
            self._packer.add(item, spans)

    def encode_chunks(self, chunks: list[list[Span]], tracer: TracerInfo) -> list[tuple[bytes, int]]:
        """One tracer request's chunks as TracerPayloads (AgentPayload.tracerPayloads, field 5), each with
        its span count (processing plane). Consecutive chunks with the same header share a TracerPayload
        up to TRACER_PAYLOAD_MAX_BYTES, as the Agent sends one per tracer request."""
        items: list[tuple[bytes, int]] = []
        open_header, open_chunks, open_bytes, open_spans = None, [], 0, 0
        for header, chunk, spans in self._encoded_chunks(chunks, tracer):
            if open_header != header or open_bytes + len(chunk) > TRACER_PAYLOAD_MAX_BYTES:
                if open_chunks:
                    items.append((_message(_TRACER_PAYLOADS, open_bytes, [open_header, *open_chunks]), open_spans))
                open_header, open_chunks, open_bytes, open_spans = header, [], len(header), 0
            open_chunks.append(chunk)
            open_bytes += len(chunk)
            open_spans += spans
        if open_chunks:
            items.append((_message(_TRACER_PAYLOADS, open_bytes, [open_header, *open_chunks]), open_spans))
        return items

    def _encoded_chunks(self, chunks: list[list[Span]], tracer: TracerInfo):
        """(tracer payload header, TraceChunk field, span count) per chunk, or per part of a chunk too large
        for one payload; chunks the tracer decided to drop (priority <= 0) are left out, as the Agent does."""
        fallback_service, meta_defaults = self.encoder_args(tracer.language)
        tap = self.tap
        chunk_heads = self._chunk_heads
        received = 0
        for spans in chunks:
            if not spans:
                continue
            received += len(spans)
            encoded = type(spans) is not list  # an EncodedChunk (processing.Emitter.transcode_v04)
            value = spans.priority if encoded else sampling_priority(spans)
            priority = None if value is None else int(value)  # the integer the TraceChunk carries
            if encoded:
                env, hostname, version, origin = (spans.root_env, spans.root_hostname, spans.root_version,
                                                  spans.root_origin)
            else:
                root_meta = root_span(spans).meta
                env, hostname, version, origin = (root_meta.get("env"), root_meta.get("_dd.hostname", ""),
                                                  root_meta.get("version", ""), root_meta.get("_dd.origin", ""))
            if priority is not None and priority <= 0:
                self._tel.discard("sampling_priority", len(spans), intentional=True)  # the Agent drops them too
                continue
            if tap.active:
                if encoded:
                    spans, encoded = spans.decode(), False
                tap.offer("spans", (spans, tracer))
            header = self._header(tracer, env or self._env, hostname, version)
            # A chunk without a tracer decision is one we keep: AUTO_KEEP, never 0 (AUTO_REJECT).
            head_key = (AUTO_KEEP if priority is None else priority, origin)
            chunk_fields = chunk_heads.get(head_key)
            if chunk_fields is None:
                if len(chunk_heads) >= _MAX_CACHED_HEADERS:
                    chunk_heads.clear()
                chunk_fields = chunk_heads[head_key] = pb.f_varint(1, head_key[0]) + pb.f_str(2, head_key[1])
            if encoded:
                pieces, sizes, errors = [spans.data], spans.sizes, []
                if spans.objects:  # after the LLM stage and the scrub
                    pieces, sizes = spans.pieces([_span_field(span, fallback_service, meta_defaults, errors)
                                                  for span in spans.objects])
                message = _message(_CHUNKS, len(chunk_fields) + sum(sizes), [chunk_fields, *pieces])
            else:  # the TraceChunk message (TracerPayload.chunks) at once: the spans are not copied again
                message, sizes, errors = encode_spans(spans, fallback_service, meta_defaults,
                                                      (_CHUNKS, chunk_fields))
            for error in errors:  # spans built by code with what the wire cannot carry
                self._tel.discard("unencodable_span")
                _log.warning("unencodable_span", "span_dropped", error=error)
            # A chunk too large for one payload is cut into several (tracers flush partial chunks too);
            # 32 bytes for the TracerPayload's and the chunk's own tags and lengths.
            room = self._packer.max_item - len(header) - len(chunk_fields) - 32
            size = sum(sizes)
            if size <= room:
                if sizes:
                    yield header, message, len(sizes)
                continue
            for group, spans_in in _groups_within(message[len(message) - size:], sizes, room):
                if group is None:
                    self._tel.discard("span_too_large")
                    _log.warning("span_too_large", "span_too_large", limit_bytes=MAX_PAYLOAD_BYTES)
                    continue
                yield header, _message(_CHUNKS, len(chunk_fields) + len(group), [chunk_fields, group]), spans_in
        if received:
            self._tel.inc("received", received)

    def encoder_args(self, language: str) -> tuple[str, tuple]:
        """What the span encoder (and the transcoder) take besides the spans: the service of a span that
        names none, and the agent's meta defaults."""
        return self._service or language or DEFAULT_SERVICE_NAME, self._meta_defaults

    def _submit_payload(self, payload: Payload) -> None:
        if self._languages:
            payload.extra_headers[LANGUAGES_HEADER] = "|".join(sorted(self._languages))
        self._submit(payload)

    def _too_large(self, spans: int) -> None:
        self._tel.discard("span_too_large", spans)

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


# ------------------------------------------------------------------------------------------ encoding


_TRACER_PAYLOADS, _CHUNKS = pb.tag(5, pb.LEN), pb.tag(6, pb.LEN)  # AgentPayload.tracerPayloads, TracerPayload.chunks


def _span_field(span: Span, fallback_service: str, meta_defaults: tuple, errors: list) -> bytes | None:
    """``span``'s TraceChunk.spans field as ``encode_spans`` writes it; None, with its error added to
    ``errors``, for a span that does not encode (``encode_spans`` drops it)."""
    field, _, failed = encode_spans([span], fallback_service, meta_defaults)
    errors += failed
    return None if failed else field


def _message(field_tag: bytes, size: int, parts: list[bytes]) -> bytes:
    """``pb.f_msg`` of the ``parts`` joined (``size`` bytes): the span bytes are copied once, not once for
    the join and again for the tag and length in front."""
    return b"".join([field_tag, pb.varint(size), *parts])


def _tracer_payload_header(tracer: TracerInfo, *, env: str, hostname: str, app_version: str) -> bytes:
    """Every TracerPayload field but the chunks (field 6), which are appended after it."""
    return b"".join((
        pb.f_str(1, tracer.container_id), pb.f_str(2, tracer.language), pb.f_str(3, tracer.language_version),
        pb.f_str(4, tracer.tracer_version), pb.f_str(5, tracer.runtime_id), pb.f_str(8, env),
        pb.f_str(9, hostname), pb.f_str(10, app_version),
    ))


def _groups_within(fields: bytes, sizes: list[int], limit: int) -> Iterable[tuple[bytes | None, int]]:
    """The span fields in groups whose size fits ``limit``, with their span counts; (None, 1) for a span
    too large on its own."""
    start = end = count = 0
    for size in sizes:
        if size > limit:
            if count:
                yield fields[start:end], count
            yield None, 1
            start = end = end + size
            count = 0
            continue
        if count and end + size - start > limit:
            yield fields[start:end], count
            start, count = end, 0
        end += size
        count += 1
    if count:
        yield fields[start:end], count
