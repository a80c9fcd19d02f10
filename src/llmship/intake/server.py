"""`llmship intake`: a local stand-in for Datadog's intakes, recording what it accepts to SQLite.

It answers like the real intakes (status codes, bodies, size limits), on any Host, so the agent's sinks
and delivery can be tested end to end, and it can inject faults (errors, Retry-After, latency, small
body limits) to exercise retries, backoff and splitting.

Per request, in this order: injected fault (fail_first / fail_for_secs) -> API key -> size limits
(--max-body-bytes, then the intake's compressed limit) -> decompress and decode -> item count -> store.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from llmship.compression import DecompressionLimit
from llmship.delivery.payload import PAYLOAD_ID_HEADER
from llmship.intake.decode import DecodeError, UnsupportedEncoding, decode_payload
from llmship.intake.store import IntakeStore
from llmship.log import RateLimited, get_logger
from llmship.sinks.intakes import ROUTES
from llmship.sinks.otlp import ROUTES as OTLP_ROUTES

API_KEY_HEADER = "DD-API-KEY"

# Largest body accepted on the wire (compressed), per kind, in bytes.
MAX_BODY_BYTES: dict[str, int] = {
    "series": 512_000,  # "maximum payload size is 500 kilobytes (512000 bytes)": docs, POST /api/v2/series
    # 2.5 MiB compressed: the Agent's serializer_max_payload_size default ("do not change ... your payloads
    # will get dropped by Datadog's intake")
    "sketches": 2_621_440,
    "events": 2_621_440,
    "service_checks": 2_621_440,
    "logs": 5_000_000,  # 5 MB uncompressed per request (docs, POST /api/v2/logs): a body can't beat it
    "llmobs": 5 << 20,  # 5 MiB: ddtrace DEFAULT_EVP_PAYLOAD_SIZE_LIMIT, the Agent's EVP proxy body limit
    "traces": 3_200_000,  # 3.2 MB: datadog-agent pkg/trace/writer/trace.go, the Trace API's maximum
    # OTLP/HTTP: the Collector's otlpreceiver (confighttp max_request_body_size default, 20 MiB)
    "otlp_spans": 20 << 20,
    "otlp_metrics": 20 << 20,
    "otlp_logs": 20 << 20,
}
# OTLP endpoints need no API key (a Collector takes whatever auth its extensions ask for; none here). Their
# answer is the signal's Export*ServiceResponse: empty, as protobuf or JSON like the request.
OTLP_KINDS = frozenset(("otlp_spans", "otlp_metrics", "otlp_logs"))

# At most this many items per request.
MAX_ITEMS: dict[str, int] = {
    "logs": 1000,  # "Maximum array size if sending multiple logs in an array: 1000 entries": docs, /api/v2/logs
}

# What the intakes answer on success (all 202 Accepted).
ACCEPTED_BODY: dict[str, dict[str, Any]] = {
    "series": {"errors": []},  # IntakePayloadAccepted: docs, POST /api/v2/series
    "sketches": {},  # undocumented endpoint; the Agent only looks at the status
    "events": {"status": "ok"},  # EventCreateResponse.status: docs, POST /api/v1/events
    "service_checks": {"status": "ok"},  # IntakePayloadAccepted: docs, POST /api/v1/check_run
    "logs": {},  # "Response from server (always 202 empty JSON)": docs, POST /api/v2/logs
    "llmobs": {},  # not documented; ddtrace treats any status < 300 as success
    "traces": {},  # not documented; the trace-agent's sender treats any 2xx as success
    "otlp_spans": {}, "otlp_metrics": {}, "otlp_logs": {},  # empty Export*ServiceResponse (OTLP/HTTP: 200)
}

_KIND_BY_PATH = {route.path: kind for kind, route in {**ROUTES, **OTLP_ROUTES}.items()}


@dataclass(frozen=True, slots=True)
class Faults:
    """Scripted misbehaviour, for tests. ``fail_kind`` restricts every fault but latency to one kind."""

    fail_first: int = 0  # answer the first N requests with fail_status
    fail_status: int = 503
    retry_after: str | None = None  # Retry-After on faulted answers, verbatim (seconds or HTTP-date)
    latency_ms: float = 0.0  # delay every response
    fail_kind: str | None = None
    max_body_bytes: int | None = None  # answer 413 above this many bytes on the wire
    fail_for_secs: float = 0.0  # fail everything for this long after start


@dataclass(slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    fault: str | None = None
    reason: str | None = None
    items: list[dict[str, Any]] | None = None


class IntakeServer:
    def __init__(self, store: IntakeStore, faults: Faults = Faults()) -> None:
        self.store = store
        self.faults = faults
        self.url = ""
        self._log = get_logger("intake")
        self._limited = RateLimited(self._log)
        self._started = time.monotonic()
        self._seen_for_fail_first = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        # no client_max_size: bodies are read from the stream against each kind's own limit (_read_body)
        app = web.Application()
        for path in _KIND_BY_PATH:
            app.router.add_post(path, self._handle)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and serve; returns the base URL (with the real port when ``port`` is 0)."""
        # auto_decompress=False: aiohttp would otherwise inflate bodies itself, unbounded
        self._runner = web.AppRunner(self.app(), auto_decompress=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._started = time.monotonic()
        self.url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
        return self.url

    async def shutdown(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.time()
        kind = _KIND_BY_PATH.get(request.path) if request.method == "POST" else None
        fault = self._scripted_fault(kind)
        api_key_present = bool(request.headers.get(API_KEY_HEADER, "").strip()) or kind in OTLP_KINDS
        encoding = request.headers.get("Content-Encoding")
        body, wire_bytes = await self._read_body(request, kind)
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)  # the scripted slowness itself

        answer = (_Answer(self.faults.fail_status, _error_body(kind, self.faults.fail_status, "injected fault"),
                          fault=fault, reason="injected fault") if fault
                  else self._answer(kind, body, wire_bytes, encoding, api_key_present))
        payload_id = request.headers.get(PAYLOAD_ID_HEADER)
        self.store.add_request(
            method=request.method, path=request.path, kind=kind, status=answer.status, payload_id=payload_id,
            api_key_present=api_key_present, content_encoding=encoding, body_bytes=wire_bytes,
            fault=answer.fault, reason=answer.reason, records=answer.items, at=arrived)
        if answer.status >= 400 and not answer.fault:
            self._limited.warning(f"{kind}:{answer.status}", "intake_request_refused", kind=kind,
                                  path=request.path, status=answer.status, reason=answer.reason)
        headers = {"Retry-After": self.faults.retry_after} if fault and self.faults.retry_after else None
        if kind in OTLP_KINDS and answer.status < 300:
            # OTLP/HTTP: 200 with an empty Export*ServiceResponse, encoded as the request was
            if "json" in request.headers.get("Content-Type", ""):
                return web.json_response({}, status=200, headers=headers)
            return web.Response(body=b"", status=200, content_type="application/x-protobuf", headers=headers)
        return web.json_response(answer.body, status=answer.status, headers=headers)

    def _scripted_fault(self, kind: str | None) -> str | None:
        """Which injected fault (if any) decides this request, judged on arrival."""
        if not self._fault_applies(kind):
            return None
        self._seen_for_fail_first += 1
        if self._seen_for_fail_first <= self.faults.fail_first:
            return "fail_first"
        if time.monotonic() - self._started < self.faults.fail_for_secs:
            return "fail_for_secs"
        return None

    def _body_limit(self, kind: str | None) -> int:
        limit = MAX_BODY_BYTES.get(kind or "", 1 << 20)  # unknown paths: read enough to count, not more
        if self.faults.max_body_bytes is not None and self._fault_applies(kind):
            limit = min(limit, self.faults.max_body_bytes)
        return limit

    def _fault_applies(self, kind: str | None) -> bool:
        return kind is not None and (not self.faults.fail_kind or kind == self.faults.fail_kind)

    async def _read_body(self, request: web.Request, kind: str | None) -> tuple[bytes | None, int]:
        """(body, bytes on the wire); body is None when it exceeds the limit (then only partly read)."""
        limit = self._body_limit(kind)
        if request.content_length is not None and request.content_length > limit:
            return None, request.content_length
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                return None, request.content_length or len(buf)
        return bytes(buf), len(buf)

    def _answer(self, kind: str | None, body: bytes | None, wire_bytes: int, encoding: str | None,
                api_key_present: bool) -> _Answer:
        if kind is None:
            return _Answer(404, {"errors": ["Not found"]}, reason="no intake at this method and path")
        if not api_key_present:
            # Logs answer 401 for a missing key ("Unauthorized (likely a missing API Key)": docs,
            # POST /api/v2/logs); the API endpoints answer 403 ("Authentication error": docs, /api/v2/series)
            status = 401 if kind == "logs" else 403
            return self._refuse(kind, status, f"missing {API_KEY_HEADER} header")
        if body is None:
            if self.faults.max_body_bytes is not None and wire_bytes > self.faults.max_body_bytes \
                    and self._fault_applies(kind):
                return _Answer(413, _error_body(kind, 413, "body over --max-body-bytes"), fault="max_body_bytes",
                               reason=f"body of {wire_bytes} bytes over --max-body-bytes "
                                      f"{self.faults.max_body_bytes}")
            return self._refuse(kind, 413, f"body of {wire_bytes} bytes over the {kind} intake's limit of "
                                           f"{MAX_BODY_BYTES[kind]} bytes")
        try:
            items = decode_payload(kind, body, encoding)
        except DecompressionLimit as e:
            return self._refuse(kind, 413, f"decompressed body too large: {e}")
        except UnsupportedEncoding as e:
            return self._refuse(kind, 415, str(e))
        except DecodeError as e:
            return self._refuse(kind, 400, str(e))
        max_items = MAX_ITEMS.get(kind)
        if max_items is not None and len(items) > max_items:
            return self._refuse(kind, 413, f"{len(items)} {kind} items in one request, over {max_items}")
        return _Answer(200 if kind in OTLP_KINDS else 202, ACCEPTED_BODY[kind], items=items)

    @staticmethod
    def _refuse(kind: str, status: int, reason: str) -> _Answer:
        return _Answer(status, _error_body(kind, status, reason), reason=reason)


def _error_body(kind: str | None, status: int, reason: str) -> dict[str, Any]:
    """Error bodies as the intakes write them: HTTPLogErrors for logs, APIErrorResponse elsewhere (docs)."""
    if kind == "logs":
        try:
            title = HTTPStatus(status).phrase
        except ValueError:  # a --fail-status outside the standard set
            title = "Error"
        return {"errors": [{"status": str(status), "title": title, "detail": reason}]}
    return {"errors": [reason]}
