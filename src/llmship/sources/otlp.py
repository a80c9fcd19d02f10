"""OTLP in: OpenTelemetry SDKs and Collectors export traces, metrics and logs here (``[sources.otlp]``).

OTLP/HTTP (``http``, e.g. 127.0.0.1:4318; the OTLP specification, "OTLP/HTTP"): ``POST /v1/traces``,
``/v1/metrics``, ``/v1/logs`` with an ``Export{Trace,Metrics,Logs}ServiceRequest`` as
``application/x-protobuf`` or ``application/json`` (proto3 JSON, ids in hex as OTLP/JSON requires; base64
ids are accepted too), optionally gzip (or deflate, zstd). Answers as the spec says:
- 200 with the ``Export*ServiceResponse`` in the request's encoding, with ``partial_success``
  (``rejected_spans``/``rejected_data_points``/``rejected_log_records`` and a message) when part of the request
  was refused (spans with invalid ids, non-finite points, unsupported metric types);
- 400 with a ``google.rpc.Status`` (code 3, INVALID_ARGUMENT, and the reason) when the body does not
  decode; 413 over ``max_body_bytes``, 415 for another media type or encoding, 405/404 otherwise;
- when the data cannot be taken now, 429 (a delivery queue is full) or 503 (no decoder free within 1 s)
  with ``Retry-After``: both are retryable for OTLP clients, which wait at least that long.
Limits, timeouts and decoder slots are the trace API's (``sources/traces.py``): a body must arrive within
5 s (408), bodies over 256 KiB are decoded in a worker thread.

OTLP/gRPC (``grpc``, e.g. 127.0.0.1:4317; optional, needs ``grpcio``: ``pip install 'llmship[grpc]'``): the
three ``Export`` methods of the same services, answering RESOURCE_EXHAUSTED / UNAVAILABLE when overloaded
and INVALID_ARGUMENT never (gRPC decodes the message itself).

With ``[agent] workers`` > 1 both are served by the workers: OTLP/HTTP on the listener the parent bound
(``sockets``), OTLP/gRPC on the port each worker binds with SO_REUSEPORT (llmship.listeners says why).

Decoding uses the canonical classes of the ``opentelemetry-proto`` package (upb-backed protobuf: a
ExportTraceServiceRequest of 7 spans parses in ~7 µs); mapping is ``sources/otlp_map.py`` and, for GenAI
spans, ``llm/otlp.py``. Telemetry (component "otlp"): requests{endpoint}, spans_received,
points_received, logs_received, bytes_received, rejected{signal} (partial success), dropped{reason}.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from llmship import listeners
from llmship import protobuf as pb
from llmship.config import Config
from llmship.log import RateLimited, get_logger
from llmship.sources import otlp_map
from llmship.sources.traces import (DECODERS, READ_TIMEOUT_SECS, RETRY_AFTER_SECS,
                                    SUBMIT_SLICE_SPANS, THREAD_DECODE_BYTES, RequestError, read_body,
                                    take_decoder)
from llmship.transforms.privacy import MAX_NESTING

log = get_logger("otlp")
_limited = RateLimited(log)

_PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
_JSON = "application/json"
_ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate", "zstd")
_INVALID_ARGUMENT = 3  # google.rpc.Code
# Keys of OTLP/JSON whose values are ids: hex in OTLP/JSON, base64 in the generic proto3 JSON mapping.
_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"))
_ID_HEX_LENGTHS = (32, 16)


class Signal:
    """One OTLP signal: its request and response classes and the partial-success count field."""

    def __init__(self, name: str, request, response, rejected_field: str) -> None:
        self.name, self.request, self.response, self.rejected_field = name, request, response, rejected_field


TRACES = Signal("traces", trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse,
                "rejected_spans")
METRICS = Signal("metrics", metrics_service_pb2.ExportMetricsServiceRequest,
                 metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points")
LOGS = Signal("logs", logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse,
              "rejected_log_records")


class Overloaded(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OTLPSource:
    def __init__(self, cfg: Config, pipeline, *, read_timeout_secs: float = READ_TIMEOUT_SECS,
                 sockets: listeners.Sockets | None = None) -> None:
        self._cfg = cfg.sources.otlp
        self._pipeline = pipeline
        self._handed_over = getattr(pipeline, "handed_over", None)  # see TraceSource
        # Inherited listening sockets (workers); None: bind our own at start. gRPC binds its own either way.
        self._sockets = sockets
        self._hostname = cfg.agent.hostname
        self._tel = pipeline.telemetry.component("otlp")
        self._read_timeout = read_timeout_secs
        self._decoders = asyncio.Semaphore(DECODERS)
        self._metrics = otlp_map.MetricsMapper(pipeline)
        self._runner: web.AppRunner | None = None
        self._grpc = None

    def reload(self, cfg: Config) -> None:
        self._hostname = cfg.agent.hostname

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._cfg.http:
            app = web.Application()
            for path, signal in (("/v1/traces", TRACES), ("/v1/metrics", METRICS), ("/v1/logs", LOGS)):
                app.router.add_route("*", path, functools.partial(self._http, signal=signal))
            app.router.add_route("*", "/{path:.*}", self._not_found)
            # auto_decompress=False: gzip bodies are inflated within max_body_bytes (see traces.py)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                                   auto_decompress=False)
            await runner.setup()
            try:
                await listeners.start_sites(runner, self._sockets, ("otlp.http",), self._cfg.http)
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            for address in runner.addresses:
                log.info("listener_bound", address=str(address), protocol="otlp/http")
        if self._cfg.grpc:
            from llmship.sources import otlp_grpc  # grpcio is optional: imported only when configured

            # grpc.aio takes no listening socket: in workers each binds the port itself, shared with
            # SO_REUSEPORT (the parent checked that no other process holds it: listeners.check_free)
            self._grpc = await otlp_grpc.serve(self._cfg.grpc, self, self._cfg.max_body_bytes,
                                               share_port=self._sockets is not None)
            log.info("listener_bound", address=self._cfg.grpc, protocol="otlp/grpc")

    @property
    def addresses(self) -> list:
        return list(self._runner.addresses) if self._runner else []

    async def shutdown(self, deadline: float) -> None:
        runner, self._runner = self._runner, None
        grpc_server, self._grpc = self._grpc, None
        remaining = max(0.1, deadline - time.monotonic())
        if grpc_server is not None:
            await grpc_server.stop(min(5.0, remaining))
        if runner is not None:
            try:
                await asyncio.wait_for(runner.cleanup(), timeout=remaining)
            except TimeoutError:
                log.warning("shutdown_deadline_passed", component="otlp")

    # ------------------------------------------------------------------------------------ the work

    async def export(self, signal: Signal, message) -> tuple[int, str]:
        """Hand one decoded request to the pipeline; (rejected items, message) for partial_success.
        Raises Overloaded when the lanes it fans into are full (checked before any work). Returns once
        what it handed over has left this process (with workers: before the client hears "accepted")."""
        answer = await self._export(signal, message)
        if self._handed_over is not None:
            await self._handed_over()
        return answer

    async def _export(self, signal: Signal, message) -> tuple[int, str]:
        if signal is TRACES:
            if self._pipeline.overloaded("spans"):
                raise Overloaded("overloaded")
            result = otlp_map.convert_traces(message)
            self._tel.inc("spans_received", result.spans)
            await self._submit_traces(result.batches)
            return self._partial(signal, result.rejected, result.error)
        if signal is METRICS:
            if self._pipeline.overloaded("metrics"):
                raise Overloaded("overloaded")
            result = self._metrics.map(message)
            self._tel.inc("points_received", result.points)
            return self._partial(signal, result.rejected, result.error)
        if self._pipeline.overloaded("logs"):
            raise Overloaded("overloaded")
        records = otlp_map.convert_logs(message, self._hostname)
        self._tel.inc("logs_received", len(records))
        self._pipeline.submit_logs(records)
        return 0, ""

    def _partial(self, signal: Signal, rejected: int, error: str) -> tuple[int, str]:
        if rejected:
            self._tel.inc("rejected", rejected, signal=signal.name)
            _limited.warning(f"rejected_{signal.name}", "otlp_partial_success", signal=signal.name,
                             rejected=rejected, reason=error)
        return rejected, error

    async def _submit_traces(self, batches) -> None:
        """Chunks in slices, yielding between them, so other clients are served meanwhile (as traces.py)."""
        for batch in batches:
            chunks, calls, spans = [], [], 0
            for chunk, chunk_calls in zip(batch.chunks, batch.calls):
                chunks.append(chunk)
                calls.append(chunk_calls)
                spans += len(chunk)
                if spans >= SUBMIT_SLICE_SPANS:
                    self._pipeline.submit_otlp(chunks, calls, batch.tracer)
                    chunks, calls, spans = [], [], 0
                    await asyncio.sleep(0)
            if chunks:
                self._pipeline.submit_otlp(chunks, calls, batch.tracer)

    # ------------------------------------------------------------------------------------ OTLP/HTTP

    async def _http(self, request: web.Request, signal: Signal) -> web.StreamResponse:
        self._tel.inc("requests", endpoint=f"v1/{signal.name}")
        media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        is_json = media == _JSON
        try:
            if request.method != "POST":
                return web.Response(status=405, text="method not allowed\n", headers={"Allow": "POST"})
            if media not in (*_PROTOBUF_TYPES, _JSON):
                raise RequestError(415, "unsupported_media_type",
                                   f"unsupported media type {media!r}: use application/x-protobuf or application/json")
            body = await self._read_body(request)
            if not await take_decoder(self._decoders):
                raise Overloaded("no_decoder")
            try:
                decode = functools.partial(decode_request, signal, body, is_json)
                message = await asyncio.to_thread(decode) if len(body) > THREAD_DECODE_BYTES else decode()
            except (ValueError, ProtobufDecodeError, json_format.ParseError, orjson.JSONDecodeError,
                    TypeError, RecursionError) as e:
                raise RequestError(400, "decoding_error", f"cannot decode {signal.name} request: {e}") from None
            finally:
                self._decoders.release()
            rejected, error = await self.export(signal, message)
        except RequestError as e:
            return self._reject(e, is_json)
        except Overloaded as e:
            return self._refuse(e.reason)
        return self._response(signal, rejected, error, is_json)

    async def _not_found(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="unknown")
        return web.Response(status=404, text="404 page not found\n")

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self._cfg.max_body_bytes, self._read_timeout, self._tel,
                               too_large="payload too large")

    def _response(self, signal: Signal, rejected: int, error: str, is_json: bool) -> web.Response:
        response = signal.response()
        if rejected:
            setattr(response.partial_success, signal.rejected_field, rejected)
            response.partial_success.error_message = error
        if is_json:
            body = json_format.MessageToJson(response, indent=None).encode()
            return web.Response(body=body, content_type=_JSON)
        return web.Response(body=response.SerializeToString(), content_type="application/x-protobuf")

    def _reject(self, e: RequestError, is_json: bool) -> web.Response:
        """The spec's error answer: a google.rpc.Status (code, message) in the request's encoding."""
        self._tel.inc("dropped", reason=e.reason)
        _limited.warning(e.reason, "otlp_request_rejected", status=e.status, reason=e.reason, detail=e.message[:200])
        if is_json:
            response = web.Response(status=e.status, body=orjson.dumps({"code": _INVALID_ARGUMENT,
                                                                        "message": e.message}),
                                    content_type=_JSON)
        else:  # google/rpc/status.proto: code = 1, message = 2
            response = web.Response(status=e.status, body=pb.f_varint(1, _INVALID_ARGUMENT) + pb.f_str(2, e.message),
                                    content_type="application/x-protobuf")
        if e.status in (408, 413):
            response.force_close()
        return response

    def _refuse(self, reason: str) -> web.Response:
        """429 when a delivery queue is full, 503 when no decoder frees up: the spec's retryable answers,
        with Retry-After (OTLP/HTTP "Failures": clients wait at least that long)."""
        self._tel.inc("dropped", reason=reason)
        _limited.warning(reason, "otlp_refused", reason=reason)
        status = 503 if reason == "no_decoder" else 429
        return web.Response(status=status, text="try again later\n", headers={"Retry-After": str(RETRY_AFTER_SECS)})


def decode_request(signal: Signal, body: bytes, is_json: bool):
    """Bytes -> the signal's Export*ServiceRequest (protobuf, or OTLP/JSON)."""
    message = signal.request()
    if is_json:
        doc = orjson.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        json_format.ParseDict(_ids_to_base64(doc), message, ignore_unknown_fields=True)
    else:
        message.ParseFromString(body)
    return message


def _ids_to_base64(node, depth: int = 0):
    """OTLP/JSON writes trace and span ids in hex, unlike proto3's JSON mapping of bytes (base64) that
    ``json_format`` reads: convert them (a base64 id, as protobuf's own JSON printer writes it, is left
    as is; lengths tell them apart: 32/16 hex digits vs 24/12 base64 characters). Depth is counted
    (privacy.MAX_NESTING) because compiled this does not count against Python's recursion limit;
    ``json_format`` refuses more than 100 levels anyway."""
    if depth > MAX_NESTING:
        raise ValueError(f"nested more than {MAX_NESTING} levels deep")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                if len(value) in _ID_HEX_LENGTHS:
                    try:
                        node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                    except ValueError:
                        raise ValueError(f"{key}: not a hex id: {value[:40]!r}") from None
            elif isinstance(value, (dict, list)):
                _ids_to_base64(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _ids_to_base64(value, depth + 1)
    return node
