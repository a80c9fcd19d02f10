"""The trace-agent HTTP API that tracers talk to (127.0.0.1:8126 by default, optionally a unix socket).

What it answers, and why (the Datadog Agent's behaviour is in datadog-agent pkg/trace/api/):
- ``GET /info``: the Agent's discovery document listing only what we serve. ``/evp_proxy/v2/`` must be
  listed or ddtrace sends LLM Observability agentless (ddtrace/llmobs/_writer.py should_use_agentless).
  ``client_drop_p0s`` is false and ``/v0.6/stats`` is not listed: we do not forward client stats, so
  tracers must send every trace (the LLM processor derives its metrics from every span, not a sample),
  and the trace sink drops priority <= 0 chunks as the Agent's sampler would. ``span_events`` is false
  so tracers write span events into the ``events`` meta tag, which the trace intake reads as is.
- ``PUT|POST /v0.4/traces`` (msgpack, or JSON) and ``/v0.5/traces`` (msgpack string table + arrays):
  decoded into chunks of ``Span``; a span's ``meta_struct["_llmobs"]`` becomes ``span.llmobs`` in the
  event shape ddtrace posts on the EVP path (``llmobs_event``). Answered with ``rate_by_service`` at 1.0
  for the services just seen (we do not sample by rate; the Agent computes rates for its TPS target).
- ``POST /evp_proxy/v2/api/v2/llmobs`` (``X-Datadog-EVP-Subdomain: llmobs-intake``): JSON envelopes of
  LLM Observability events, answered 202 as the intake does. Other EVP targets (e.g. eval metrics) are
  accepted with 202 and counted as ``requests{endpoint="evp_unsupported"}``.
- ``/telemetry/proxy/...`` and ``/debugger/...`` 202, ``/v0.6/stats`` 200: accepted, counted, not
  forwarded. The debugger endpoints are listed in /info because ddtrace 4.16's signal uploader (code
  origin for spans is on by default) warns "Unsupported Datadog agent detected" on stderr otherwise
  (ddtrace/debugging/_uploader.py ``info_check``).
- ``/v0.7/config`` 404: an Agent with remote configuration disabled never registers the endpoint
  (comp/trace/agent/impl/run.go attaches it only when remote config is enabled) nor lists it in /info,
  and ddtrace 4.16 polls it only once /info lists it (internal/remoteconfig/worker.py ``_agent_check``,
  which logs at debug level only), so tracers stay quiet.
- Every response carries ``Datadog-Agent-Version`` and ``Datadog-Agent-State`` (the /info hash tracers
  compare to know when to read /info again), as the Agent's replyWithVersion does.

Limits: bodies over ``max_body_bytes`` get 413 (before reading when Content-Length says so, otherwise
as soon as the stream passes it, and when a compressed body inflates past it); a body not received
within 5 s gets 408; undecodable bodies 400 with the reason; unsupported media types or encodings 415.
When the delivery queue for traces is full, or no decoder frees up within 1 s, the payload is refused
like the Agent refuses it: 429 with Retry-After if the client sent ``Datadog-Send-Real-Http-Status``,
otherwise 200 with the usual rates body (header.go: "By default, the agent will send a 200 OK response
for every payload, even those dropped"). The EVP path always answers 429, as the intake behind the
Agent's proxy would, and ddtrace's LLM Observability writer retries 429.

Telemetry (component "traces"): requests{endpoint}; received (events: spans, and EVP LLM Observability
events), spans, llmobs_events (LLM Observability events on either path), received_bytes (as sent, before
decompression); refused{reason}, in requests, one per refused request (payload_too_large, decoding_error,
timeout, unsupported_media_type, overloaded, ...: its events were never counted as received);
discarded{reason="poison_value"} for spans with values the wire cannot carry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import msgspec
import orjson
from aiohttp import web
from multidict import istr

from llmship import NO_EXTENSIONS as _NO_EXTENSIONS
from llmship import listeners, unixsock
from llmship.compression import DecompressionLimit, decompress
from llmship.config import Config, parse_host_port
from llmship.model import LLMOBS_STRUCT_KEY, SAMPLING_PRIORITY_KEY, LLMObsEvent, Span, TracerInfo, root_span
from llmship.log import RateLimited, get_logger
from llmship.sinks.spanenc import decode_v04_spans as _compiled_v04
from llmship.sinks.spanenc import llmobs_spans as _compiled_llmobs_spans
from llmship.sinks.spanenc import poison_free as _poison_free
from llmship.sinks.traces import AGENT_VERSION

# 5 s: the Agent's receiver ReadTimeout when apm_config.receiver_timeout is 0 (pkg/trace/api/api.go)
READ_TIMEOUT_SECS = 5.0
# The Agent decodes at most GOMAXPROCS/2 payloads at once (apm_config.decoders) and refuses a payload
# that waits longer than apm_config.decoder_timeout (1000 ms) for a decoder; it also bounds the memory
# held by bodies being read.
DECODERS = max(1, (os.cpu_count() or 2) // 2)
DECODER_WAIT_SECS = 1.0
# Bodies above this are decoded in a worker thread so the event loop keeps serving other clients
# (the GIL still switches every 5 ms); below it the thread hand-off costs more than the decoding.
THREAD_DECODE_BYTES = 256 * 1024
# Spans handed to the pipeline per call before yielding to the event loop, so one huge payload does
# not monopolize it while it is processed and encoded.
SUBMIT_SLICE_SPANS = 200
RETRY_AFTER_SECS = 1
# Rates bodies remembered (TraceSource._rates): a few tracers' root sequences; cleared when full.
MAX_RATES_BODIES = 256
# apm_config.env default, used for rate keys when neither the span nor our config names an env
DEFAULT_ENV = "none"
# What the Agent's EVP proxy forwards (evp_proxy_allowed_headers in its /info); we read the same ones.
EVP_ALLOWED_HEADERS = ["Content-Type", "Accept-Encoding", "Content-Encoding", "User-Agent"]
LLMOBS_SUBDOMAIN, LLMOBS_PATH = "llmobs-intake", "/api/v2/llmobs"
SOCKET_MODE = listeners.UNIX_SOCKET_MODE

_UINT64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_NOT_AN_INTEGER = 1 << 64
_JSON_TYPES = ("application/json", "text/json")
_MSGPACK = "application/msgpack"
# Header names in their case-folded form once, not for each response (multidict's istr keeps it)
_AGENT_VERSION_HEADER, _AGENT_STATE_HEADER = istr("Datadog-Agent-Version"), istr("Datadog-Agent-State")
_TRACES_ENDPOINTS = {version: f"{version}/traces" for version in ("v0.4", "v0.5")}  # requests{endpoint}
# Go's strconv.ParseBool false values: the Agent's isHeaderTrue treats anything else non-empty as true.
_FALSE_VALUES = ("0", "f", "F", "false", "FALSE", "False")

log = get_logger("traces")
_limited = RateLimited(log)

# Chunks of Span; from the transcoder (processing.Emitter.transcode_v04), sinks._spanenc.EncodedChunk among them
Chunks = list


class DecodeError(ValueError):
    """The body is not a valid payload."""


class RequestError(Exception):
    """A request we refuse: HTTP status, the counter's reason label, and the text sent back."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class TraceSource:
    def __init__(self, cfg: Config, pipeline, *, read_timeout_secs: float = READ_TIMEOUT_SECS,
                 sockets: listeners.Sockets | None = None) -> None:
        self._cfg = cfg.sources.traces
        self._pipeline = pipeline
        # Awaited before answering a request whose data was submitted: with workers, the answer must not
        # leave before the data has left the worker (a worker killed then would lose what it accepted).
        self._handed_over = getattr(pipeline, "handed_over", None)
        # Inherited listening sockets (workers); None: bind our own at start.
        self._sockets = sockets
        self._tel = pipeline.telemetry.component("traces")
        self._read_timeout = read_timeout_secs
        self._apply(cfg)
        self._decoders = asyncio.Semaphore(DECODERS)
        self._runner: web.AppRunner | None = None
        self._socket_file: tuple[socket.socket, unixsock.FileId] | None = None

    def _apply(self, cfg: Config) -> None:
        self._default_env = cfg.agent.env or DEFAULT_ENV
        self._rates_bodies: dict[tuple, bytes] = {}  # _rates: by the roots' (service, env); the env may change
        self._info_body = orjson.dumps(info_document(cfg), option=orjson.OPT_INDENT_2)
        # Tracers re-read /info when this hash changes (every response carries it), so they learn a new env.
        self._state = hashlib.sha256(self._info_body).hexdigest()

    def reload(self, cfg: Config) -> None:
        """SIGHUP: a new env reaches /info, its state hash and the rate keys; max_body_bytes applies to the
        next request. Listener addresses need a restart (the /info document keeps reporting the bound ones)."""
        new, old = cfg.sources.traces, self._cfg
        changed = [key for key in ("listen", "socket") if getattr(new, key) != getattr(old, key)]
        if changed:
            log.warning("reload_needs_restart", keys=[f"sources.traces.{key}" for key in changed])
        self._cfg = dataclasses.replace(new, listen=old.listen, socket=old.socket)
        self._apply(dataclasses.replace(cfg, sources=dataclasses.replace(cfg.sources, traces=self._cfg)))

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.on_response_prepare.append(self._add_agent_headers)
        r = app.router
        r.add_get("/info", self._info)
        r.add_route("*", "/v0.4/traces", functools.partial(self._traces, version="v0.4"))
        r.add_route("*", "/v0.5/traces", functools.partial(self._traces, version="v0.5"))
        r.add_route("*", "/evp_proxy/v2/{path:.*}", self._evp_proxy)
        r.add_route("*", "/telemetry/proxy/{path:.*}", self._telemetry)
        r.add_route("*", "/debugger/{path:.*}", self._debugger)
        r.add_route("*", "/v0.6/stats", self._stats)
        r.add_route("*", "/v0.7/config", self._remote_config)
        r.add_route("*", "/{path:.*}", self._not_found)
        # shutdown_timeout: the Agent gives in-flight requests 5 s on stop (api.go Stop).
        # auto_decompress=False: aiohttp would inflate gzip bodies without a bound; we inflate them
        # ourselves within max_body_bytes (a small compressed body must not become gigabytes).
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                               auto_decompress=False)
        await runner.setup()
        try:
            await listeners.start_sites(runner, self._sockets, ("traces.listen", "traces.socket"), self._cfg.listen)
            if self._cfg.socket and self._sockets is None:
                self._socket_file = _bind_unix_socket(self._cfg.socket)
                await web.SockSite(runner, self._socket_file[0]).start()
        except BaseException:
            sock = self._socket_file[0] if self._socket_file else None
            self._remove_socket_file()
            await runner.cleanup()
            if sock is not None:
                sock.close()  # bound but never served: runner.cleanup() does not know it
            raise
        self._runner = runner
        for address in runner.addresses:
            log.info("listener_bound", address=str(address))

    @property
    def addresses(self) -> list:
        """Bound addresses: (host, port) for TCP, the path for the unix socket."""
        return list(self._runner.addresses) if self._runner else []

    async def shutdown(self, deadline: float) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._remove_socket_file()  # first, while the socket is open (see unixsock.remove_if_ours)
        try:
            await asyncio.wait_for(runner.cleanup(), timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("shutdown_deadline_passed", component="traces")

    def _remove_socket_file(self) -> None:
        # only the file this process bound: another agent may own the path now (llmship.unixsock)
        bound, self._socket_file = self._socket_file, None
        if bound is not None:
            unixsock.remove_if_ours(self._cfg.socket, bound[1])

    # ------------------------------------------------------------------------------------ handlers

    async def _add_agent_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers[_AGENT_VERSION_HEADER] = AGENT_VERSION
        headers[_AGENT_STATE_HEADER] = self._state

    async def _info(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="info")
        return web.Response(body=self._info_body, content_type="application/json")

    async def _traces(self, request: web.Request, version: str) -> web.StreamResponse:
        self._tel.inc("requests", endpoint=_TRACES_ENDPOINTS[version])
        if request.method not in ("PUT", "POST"):
            return web.Response(status=405, text="method not allowed\n", headers={"Allow": "PUT, POST"})
        real_status = _header_true(request.headers.get("Datadog-Send-Real-Http-Status", ""))
        try:
            media = _media_type(request)
            if version == "v0.5" and media not in (_MSGPACK, ""):
                raise RequestError(415, "unsupported_media_type", f"unsupported media type: {media!r}")
            if version == "v0.4" and media not in (_MSGPACK, "", *_JSON_TYPES):
                raise RequestError(415, "unsupported_media_type", f"unsupported media type: {media!r}")
            if self._pipeline.overloaded("spans"):
                return self._refuse_traces(real_status, "overloaded")
            # Read first, then take a decoder: a slow client holds only its own connection, never the
            # decoder other tracers wait for.
            body = await self._read_body(request)
            if not await take_decoder(self._decoders):
                return self._refuse_traces(real_status, "no_decoder")
            try:
                decode = (functools.partial(decode_v05, body) if version == "v0.5" else functools.partial(
                    self._decode_v04, body, media, request.headers.get("Datadog-Meta-Lang", "")))
                chunks = await self._decode(decode, len(body))
            finally:
                self._decoders.release()
        except RequestError as e:
            return self._reject(e)
        spans = sum(map(len, chunks))
        self._tel.inc("received", spans)
        self._tel.inc("spans", spans)
        self._tel.inc("llmobs_events", llmobs_spans(chunks))
        poison = drop_poison(chunks)
        if poison:
            self._tel.discard("poison_value", poison)
            _limited.warning("poison_value", "span_value_dropped", values=poison,
                             detail="non-finite _sampling_priority_v1")
        await self._submit_spans(chunks, _tracer_info(request.headers, chunks))
        if self._handed_over is not None:
            await self._handed_over()
        return web.Response(body=self._rates(chunks), content_type="application/json")

    async def _evp_proxy(self, request: web.Request) -> web.StreamResponse:
        subdomain = request.headers.get("X-Datadog-EVP-Subdomain", "")
        path = "/" + request.match_info["path"]
        if (subdomain, path) != (LLMOBS_SUBDOMAIN, LLMOBS_PATH):
            self._tel.inc("requests", endpoint="evp_unsupported")
            if not subdomain:  # the Agent's proxy refuses these too (evp_proxy.go: "no subdomain specified")
                return self._reject(RequestError(400, "missing_subdomain", "no X-Datadog-EVP-Subdomain header"))
            return web.json_response({}, status=202)
        self._tel.inc("requests", endpoint="evp_llmobs")
        try:
            if request.method != "POST":
                raise RequestError(405, "method_not_allowed", "use POST")
            media = _media_type(request)
            if media not in ("", *_JSON_TYPES):
                raise RequestError(415, "unsupported_media_type", f"unsupported media type: {media!r}")
            if self._pipeline.overloaded("llmobs"):
                return self._refuse_llmobs("overloaded")
            body = await self._read_body(request)
            if not await take_decoder(self._decoders):
                return self._refuse_llmobs("no_decoder")
            try:
                events = await self._decode(functools.partial(decode_evp_llmobs, body), len(body))
            finally:
                self._decoders.release()
        except RequestError as e:
            return self._reject(e)
        self._tel.inc("received", len(events))
        self._tel.inc("llmobs_events", len(events))
        self._pipeline.submit_llmobs_events(events)
        if self._handed_over is not None:
            await self._handed_over()
        return web.json_response({}, status=202)

    async def _telemetry(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="telemetry")
        return web.json_response({}, status=202)

    async def _debugger(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="debugger")
        return web.json_response({}, status=202)

    async def _stats(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="v0.6/stats")
        return web.Response(status=200)

    async def _remote_config(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="v0.7/config")
        return web.Response(status=404, text="404 page not found\n")  # Go's ServeMux answer, as the Agent's

    async def _not_found(self, request: web.Request) -> web.Response:
        self._tel.inc("requests", endpoint="unknown")
        return web.Response(status=404, text="404 page not found\n")

    # ------------------------------------------------------------------------------------ helpers

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self._cfg.max_body_bytes, self._read_timeout, self._tel)

    def _decode_v04(self, body: bytes, media: str, language: str) -> Chunks:
        """The pipeline's transcoder's chunks where it takes the body (processing.Emitter.transcode_v04: the
        plain spans of chunks of four or more already encoded), else ``decode_v04``'s."""
        if media == _MSGPACK and (chunks := self._pipeline.transcode_v04(body, language)) is not None:
            return chunks
        return decode_v04(body, media)

    async def _decode(self, decode: Callable[[], Any], size: int) -> Any:
        try:
            if size > THREAD_DECODE_BYTES:
                return await asyncio.to_thread(decode)
            return decode()
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
            # DecodeError, msgpack's and orjson's errors are ValueErrors; TypeError is a wrong shape (an
            # unhashable map key); OverflowError an infinite float where an integer belongs
            raise RequestError(400, "decoding_error", f"decoding-error: {e}") from None

    async def _submit_spans(self, chunks: Chunks, tracer: TracerInfo) -> None:
        """Hand chunks over in slices, yielding between them, so other clients are served meanwhile."""
        batch: Chunks = []
        spans = 0
        for chunk in chunks:
            batch.append(chunk)
            spans += len(chunk)
            if spans >= SUBMIT_SLICE_SPANS:
                self._pipeline.submit_spans(batch, tracer)
                batch, spans = [], 0
                await asyncio.sleep(0)
        if batch:
            self._pipeline.submit_spans(batch, tracer)

    def _rates(self, chunks: Chunks) -> bytes:
        """The rates body for the chunks' roots: made once for each sequence of root services and envs seen
        (a tracer sends the same few again and again; formatting and encoding them cost 250 instructions a
        span of the web mix)."""
        roots = tuple([((root := root_span(c)).service, root.meta.get("env")) if type(c) is list
                       else (c.root_service, c.root_env) for c in chunks])  # or an EncodedChunk
        body = self._rates_bodies.get(roots)
        if body is None:
            rates = {"service:,env:": 1.0}
            for service, env in roots:
                rates[f"service:{service},env:{env or self._default_env}"] = 1.0
            if len(self._rates_bodies) >= MAX_RATES_BODIES:
                self._rates_bodies.clear()
            body = self._rates_bodies[roots] = orjson.dumps({"rate_by_service": rates})
        return body

    def _reject(self, e: RequestError) -> web.Response:
        self._tel.inc("refused", reason=e.reason)
        _limited.warning(e.reason, "request_rejected", status=e.status, reason=e.reason, detail=e.message[:200])
        response = web.Response(status=e.status, text=e.message + "\n")
        if e.status in (408, 413):
            response.force_close()  # do not wait for (or drain) the rest of a body we will not read
        return response

    def _refuse_traces(self, real_status: bool, reason: str) -> web.Response:
        self._tel.inc("refused", reason=reason)
        _limited.warning(reason, "traces_refused", reason=reason, status=429 if real_status else 200)
        body = orjson.dumps({"rate_by_service": {"service:,env:": 1.0}})
        if real_status:
            return web.Response(status=429, body=body, content_type="application/json",
                                headers={"Retry-After": str(RETRY_AFTER_SECS)})
        return web.Response(status=200, body=body, content_type="application/json")

    def _refuse_llmobs(self, reason: str) -> web.Response:
        self._tel.inc("refused", reason=reason)
        _limited.warning(reason, "llmobs_refused", reason=reason)
        return web.Response(status=429, text="too many requests\n", headers={"Retry-After": str(RETRY_AFTER_SECS)})


# ---------------------------------------------------------------------------------------------- /info


def info_document(cfg: Config) -> dict[str, Any]:
    """The /info answer: the fields of the Agent's infoPayload (pkg/trace/api/info.go) we can vouch for."""
    traces = cfg.sources.traces
    return {
        "version": AGENT_VERSION,
        "git_commit": "llmship",
        "endpoints": ["/v0.4/traces", "/v0.5/traces", "/telemetry/proxy/", "/evp_proxy/v2/",
                      "/debugger/v1/input", "/debugger/v1/diagnostics", "/debugger/v2/input"],
        "feature_flags": [],
        "client_drop_p0s": False,
        "span_meta_structs": True,
        "long_running_spans": False,
        "span_events": False,
        "evp_proxy_allowed_headers": EVP_ALLOWED_HEADERS,
        "config": {
            "default_env": cfg.agent.env or DEFAULT_ENV,
            "target_tps": 10,
            "max_eps": 200,
            "receiver_port": _port(traces.listen),
            "receiver_socket": traces.socket,
            "connection_limit": 0,
            "receiver_timeout": int(READ_TIMEOUT_SECS),
            "max_request_bytes": traces.max_body_bytes,
            "statsd_port": _port(cfg.sources.dogstatsd.udp),
            "max_memory": 0,
            "max_cpu": 0,
            "analyzed_spans_by_service": {},
        },
        "peer_tags": [],
    }


def _port(address: str) -> int:
    return parse_host_port(address)[1] if address else 0


# ---------------------------------------------------------------------------------------------- decoding


# strict_map_key=False: v0.5 maps are keyed by string-table indexes. unicode_errors="replace": the Agent
# replaces invalid UTF-8 too (normalizer.go toUTF8) rather than refusing the payload.
_MSGPACK_OPTIONS = {"raw": False, "strict_map_key": False, "unicode_errors": "replace"}

# The fast paths, tried in turn: the compiled decoder (sinks/_spanenc.pyx ``decode_v04_spans``; None when
# not built or LLMSHIP_NO_EXTENSIONS), then a typed decode into Span structs (msgspec), about 7x faster
# than building them from msgpack's dicts (bench/traces.py). The compiled one gives the same spans as
# msgspec and declines whatever it does not take exactly as msgspec does (span links, unknown keys, any
# odd value), which msgspec then decodes. msgspec rejects what the tolerant decoder below accepts (invalid
# UTF-8, a float where an integer belongs, a nil, an id outside uint64, a meta_struct value that is not
# bin); such a body is decoded again by the tolerant decoder, so every odd payload is answered as before.
_fast_v04 = msgspec.msgpack.Decoder(list[list[Span]])


def _unpacker(body: bytes) -> msgpack.Unpacker:
    """Unpack a body element by element: one ``unpackb`` of a 10 MB body holds the GIL for ~250 ms,
    stalling the event loop even from a worker thread; between elements the loop gets the GIL back."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(body), 1), **_MSGPACK_OPTIONS)
    unpacker.feed(body)
    return unpacker


def _array_header(unpacker: msgpack.Unpacker, what: str) -> int:
    try:
        return unpacker.read_array_header()
    except ValueError:  # "Unexpected type header on stream"
        raise DecodeError(f"expected {what}") from None


def decode_v04(body: bytes, media_type: str = _MSGPACK, fast: bool = not _NO_EXTENSIONS) -> Chunks:
    """A v0.4 body (an array of traces, each an array of span maps) -> chunks of spans. ``fast``: try the
    compiled and typed decodes first (the tolerant decoder is their twin: same spans for every body all
    accept)."""
    if media_type in _JSON_TYPES or (not media_type and body[:1] in (b"[", b" ", b"\n", b"\r", b"\t")):
        traces = orjson.loads(body)
        if not isinstance(traces, list):
            raise DecodeError("expected an array of traces")
    elif fast:
        if _compiled_v04 is not None and (chunks := _compiled_v04(body)) is not None:
            return chunks
        try:
            return [chunk for chunk in _fast_v04.decode(body) if chunk]
        except (msgspec.ValidationError, msgspec.DecodeError):
            traces = _tolerant_traces(body)
    else:
        traces = _tolerant_traces(body)
    chunks: Chunks = []
    for trace in traces:
        if not isinstance(trace, list):
            raise DecodeError("expected each trace to be an array of spans")
        chunk = [_span_v04(fields) for fields in trace]
        if chunk:
            chunks.append(chunk)
    return chunks


def _tolerant_traces(body: bytes):
    unpacker = _unpacker(body)
    return (unpacker.unpack() for _ in range(_array_header(unpacker, "an array of traces")))


def _span_v04(fields: Any) -> Span:
    if not isinstance(fields, dict):
        raise DecodeError("expected a span to be a map")
    meta_struct = {_text(key, "meta_struct key"): value if isinstance(value, bytes) else msgpack.packb(value)
                   for key, value in _mapping(fields.get("meta_struct"), "meta_struct").items()}
    return Span(
        trace_id=_integer(fields.get("trace_id"), "trace_id") & _UINT64,
        span_id=_integer(fields.get("span_id"), "span_id") & _UINT64,
        parent_id=_integer(fields.get("parent_id"), "parent_id") & _UINT64,
        service=_text(fields.get("service"), "service"),
        name=_text(fields.get("name"), "name"),
        resource=_text(fields.get("resource"), "resource"),
        type=_text(fields.get("type"), "type"),
        start=_integer(fields.get("start"), "start"),
        duration=_integer(fields.get("duration"), "duration"),
        error=_integer(fields.get("error"), "error"),
        meta=_text_map(fields.get("meta")),
        metrics=_number_map(fields.get("metrics")),
        meta_struct=meta_struct,
        span_links=fields.get("span_links") or None,
        span_events=fields.get("span_events") or None,
    )


def decode_v05(body: bytes) -> Chunks:
    """A v0.5 body: [string_table, traces], each span a 12-element array of string-table indexes:
    [service, name, resource, trace_id, span_id, parent_id, start, duration, error, meta, metrics, type]."""
    unpacker = _unpacker(body)
    if _array_header(unpacker, "[string_table, traces]") != 2:
        raise DecodeError("expected [string_table, traces]")
    table_doc = unpacker.unpack()
    if not isinstance(table_doc, list):
        raise DecodeError("expected [string_table, traces]")
    table = [_text(s, "string table entry") for s in table_doc]
    traces = (unpacker.unpack() for _ in range(_array_header(unpacker, "an array of traces")))

    def string(index: Any) -> str:
        if not isinstance(index, int) or not 0 <= index < len(table):
            raise DecodeError(f"string index {index!r} outside the table of {len(table)}")
        return table[index]

    chunks: Chunks = []
    for trace in traces:
        if not isinstance(trace, list):
            raise DecodeError("expected each trace to be an array of spans")
        chunk = []
        for s in trace:
            if not isinstance(s, list) or len(s) != 12:
                raise DecodeError("expected a span to be an array of 12 elements")
            chunk.append(Span(
                service=string(s[0]), name=string(s[1]), resource=string(s[2]),
                trace_id=_integer(s[3], "trace_id") & _UINT64, span_id=_integer(s[4], "span_id") & _UINT64,
                parent_id=_integer(s[5], "parent_id") & _UINT64,
                start=_integer(s[6], "start"), duration=_integer(s[7], "duration"), error=_integer(s[8], "error"),
                meta={string(k): string(v) for k, v in _mapping(s[9], "meta").items()},
                metrics={string(k): _number(v, "metric") for k, v in _mapping(s[10], "metrics").items()},
                type=string(s[11]),
            ))
        if chunk:
            chunks.append(chunk)
    return chunks


def llmobs_spans_py(chunks: Chunks) -> int:
    """How many spans carry an LLM Observability event (``meta_struct["_llmobs"]``). Compiled:
    ``sinks/_spanenc.pyx llmobs_spans`` (the same count; this generator cost 420 instructions a span of the
    web mix)."""
    return sum(1 for c in chunks for s in (c if type(c) is list else c.objects)  # or an EncodedChunk's
               if LLMOBS_STRUCT_KEY in s.meta_struct)


llmobs_spans = _compiled_llmobs_spans or llmobs_spans_py


def drop_poison(chunks: Chunks) -> int:
    """Remove, in place, the values the span encoder and the sampler cannot carry, so they cost only
    themselves, never the payload around them: a non-finite sampling priority (the trace writer reads it
    as an integer), and a start, duration or error outside int64 (only the tolerant decoder lets one
    through: the typed decode refuses it). Returns how many values were removed. The compiled
    ``poison_free`` (sinks/_spanenc.pyx) first tells in one pass over the spans' slots when none is there,
    as for nearly every payload."""
    if _poison_free is not None and _poison_free(chunks):
        return 0
    removed = 0
    for chunk in chunks:
        if type(chunk) is not list:  # an EncodedChunk: the transcoder left poison to the decoded chunks
            continue
        for span in chunk:
            priority = span.metrics.get(SAMPLING_PRIORITY_KEY)
            if priority is not None and not math.isfinite(priority):
                del span.metrics[SAMPLING_PRIORITY_KEY]
                removed += 1
            if not (_INT64_MIN <= span.start <= _INT64_MAX and _INT64_MIN <= span.duration <= _INT64_MAX
                    and _INT64_MIN <= span.error <= _INT64_MAX):
                removed += _zero_out_of_range(span)
    return removed


def _zero_out_of_range(span: Span) -> int:
    zeroed = 0
    for name in ("start", "duration", "error"):
        if not _INT64_MIN <= getattr(span, name) <= _INT64_MAX:
            setattr(span, name, 0)
            zeroed += 1
    return zeroed


def decode_evp_llmobs(body: bytes) -> list[LLMObsEvent]:
    """An EVP LLM Observability body: a list of envelopes (or one) {"event_type", "spans": [event]}."""
    doc = orjson.loads(body)
    envelopes = doc if isinstance(doc, list) else [doc]
    events: list[LLMObsEvent] = []
    for envelope in envelopes:
        if not isinstance(envelope, dict) or not isinstance(envelope.get("spans"), list):
            raise DecodeError("expected envelopes with a \"spans\" list")
        for event in envelope["spans"]:
            if not isinstance(event, dict):
                raise DecodeError("expected each span event to be an object")
            events.append(event)
    return events


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, float)):
        return str(value)
    raise DecodeError(f"{what}: expected a string, got {type(value).__name__}")


def _integer(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        # NaN and infinities have no integer: a value outside every protobuf integer range stands in for
        # them, and drop_poison zeroes and counts it (ids are masked to 64 bits: they become 0).
        return int(value) if math.isfinite(value) else _NOT_AN_INTEGER
    raise DecodeError(f"{what}: expected an integer, got {type(value).__name__}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    raise DecodeError(f"{what}: expected a number, got {type(value).__name__}")


def _mapping(value: Any, what: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a map, got {type(value).__name__}")
    return value


# The two maps below hold most of a span's fields: strings and floats are taken as they come without a
# call per entry (decoding a ddtrace span went from ~155 to ~95 us measured on the capture).


def _text_map(value: Any) -> dict[str, str]:
    return {k if type(k) is str else _text(k, "meta key"): v if type(v) is str else _text(v, "meta value")
            for k, v in _mapping(value, "meta").items()}


def _number_map(value: Any) -> dict[str, float]:
    return {k if type(k) is str else _text(k, "metrics key"): v if type(v) is float else _number(v, "metrics value")
            for k, v in _mapping(value, "metrics").items()}


# ---------------------------------------------------------------------------------------------- requests


_CONTENT_ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate", "zstd")


async def take_decoder(decoders: asyncio.Semaphore) -> bool:
    """Wait for a free decoder (the caller releases it), or give up after DECODER_WAIT_SECS."""
    if not decoders.locked():  # one is free: taken at once, without arming a timer only to cancel it
        return await decoders.acquire()
    try:
        async with asyncio.timeout(DECODER_WAIT_SECS):
            await decoders.acquire()
    except TimeoutError:
        return False
    return True


async def read_body(request: web.Request, limit: int, read_timeout: float, tel,
                    too_large: str = "payload-too-large") -> bytes:
    """The request's body, inflated, within ``limit`` bytes before and after inflating and within
    ``read_timeout``; RequestError (413, 415, 408, 400) otherwise. Shared by the HTTP sources that answer
    as the Agent's receiver does; ``too_large`` spells the 413 text (the Agent's "payload-too-large")."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, "payload_too_large", f"{too_large}: over {limit} bytes")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in _CONTENT_ENCODINGS:
        raise RequestError(415, "unsupported_encoding", f"unsupported Content-Encoding: {encoding!r}")
    if request.content_length is not None and request.content.is_eof():
        # Received whole before the handler ran (as nearly every tracer request on loopback is): no wait,
        # so no timer to arm and cancel.
        body = await _read_declared(request)
    else:
        body = await _read_waiting(request, limit, read_timeout, too_large)
    tel.inc("received_bytes", len(body))
    try:
        return decompress(body, encoding, limit)
    except DecompressionLimit:
        raise RequestError(413, "payload_too_large", f"{too_large}: inflates past {limit} bytes") from None
    except Exception as e:  # zlib.error, zstd.ZstdError: a corrupt stream
        raise RequestError(400, "decoding_error", f"cannot decompress {encoding} body: {e}") from None


async def _read_declared(request: web.Request) -> bytes:
    """The declared length in one read: aiohttp then joins its chunks once. Appending 64 KiB pieces to a
    bytearray and copying it out cost 676,000 instructions a request for an 83 KiB body, this 393,000
    (callgrind, aiohttp alone)."""
    try:
        return await request.content.readexactly(request.content_length)
    except asyncio.IncompleteReadError as e:
        return e.partial  # the client stopped short: decoding says what is wrong, as with chunks


async def _read_waiting(request: web.Request, limit: int, read_timeout: float, too_large: str) -> bytes:
    """The body as it arrives, within ``read_timeout``."""
    try:
        async with asyncio.timeout(read_timeout):
            if request.content_length is not None:
                return await _read_declared(request)
            else:  # chunked transfer encoding: no length to trust, so the limit is checked as pieces come
                pieces, size = [], 0
                async for piece in request.content.iter_chunked(64 * 1024):
                    pieces.append(piece)
                    size += len(piece)
                    if size > limit:
                        raise RequestError(413, "payload_too_large", f"{too_large}: over {limit} bytes")
                return b"".join(pieces)
    except TimeoutError:
        raise RequestError(408, "timeout", "timeout reading the body") from None


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _header_true(value: str) -> bool:
    """The Agent's isHeaderTrue: any non-empty value but Go's ParseBool false values."""
    return bool(value) and value not in _FALSE_VALUES


def _tracer_info(headers: Mapping[str, str], chunks: Chunks) -> TracerInfo:
    container_id = headers.get("Datadog-Container-ID", "")
    entity_id = headers.get("Datadog-Entity-ID", "")
    if not container_id and entity_id.startswith("ci-"):  # "ci-<container id>" ("in-<inode>" otherwise)
        container_id = entity_id[3:]
    # No header carries the runtime id: tracers tag every local root with it (runtime-id).
    runtime_id = _runtime_id(chunks)
    return TracerInfo(
        language=headers.get("Datadog-Meta-Lang", ""),
        language_version=headers.get("Datadog-Meta-Lang-Version", ""),
        tracer_version=headers.get("Datadog-Meta-Tracer-Version", ""),
        container_id=container_id,
        runtime_id=runtime_id,
    )


def _runtime_id(chunks: Chunks) -> str:
    """The first runtime-id tag of the chunks' spans (Span lists, or EncodedChunks that found it)."""
    for chunk in chunks:
        if type(chunk) is list:
            for span in chunk:
                if "runtime-id" in span.meta:
                    return span.meta["runtime-id"]
        elif chunk.runtime_id is not None:
            return chunk.runtime_id
    return ""


def _bind_unix_socket(path: str) -> tuple[socket.socket, unixsock.FileId]:
    """A listening unix stream socket at ``path`` (llmship.listeners.bind_unix)."""
    return listeners.bind_unix(path, "traces")
