"""Where payloads go: Datadog's intakes over HTTP, or local NDJSON files when there is nowhere to ship.

A transport makes one attempt and reports what happened (``SendResult``); deciding what that means and
when to try again is retry.py's job. Neither ever puts the API key in a result, a log or telemetry.
Delivery is given one by ``make_transport`` (its caller injects it) and never looks at a payload's route:
the transport resolves it.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from llmship import __version__
from llmship.compression import DecompressionLimit
from llmship.config import Config
from llmship.delivery import proxy
from llmship.delivery.payload import PAYLOAD_ID_HEADER, Payload, Route, iter_items
from llmship.intake.decode import DecodeError, decode_payload

USER_AGENT = f"llmship/{__version__}"
# How much of an error response to keep for the log line saying why (intakes answer short JSON errors).
_DETAIL_CHARS = 300
_RESPONSE_READ_BYTES = 4096
LINES_PER_WRITE = 1000  # file sink: items encoded per write() (a few hundred kB for series)


@dataclass(frozen=True)
class SendResult:
    status: int | None  # None: no answer (refused, reset, timed out, DNS)
    retry_after: str | None = None  # the raw Retry-After header, if any
    detail: str = ""  # why it failed, for logs; never contains the API key


class Transport(Protocol):
    destination: str  # for logs and `llmship status`; never contains the API key

    async def send(self, payload: Payload) -> SendResult: ...

    async def close(self) -> None: ...


def make_transport(cfg: Config) -> Transport:
    """Datadog over HTTP, or the file sink when there is nowhere to ship; routed by payload route to an
    OTLP transport too when [sinks.otlp] endpoint is set (the OTLP sink's routes have host "otlp")."""
    datadog = HttpTransport(cfg) if cfg.ships_to_datadog else FileTransport(cfg.file_sink_dir)
    if not cfg.ships_to_otlp:
        return datadog
    return RoutingTransport({OTLP_HOST: OTLPTransport(cfg)}, datadog,
                            datadog_used=cfg.uses_datadog_sinks)


OTLP_HOST = "otlp"  # sinks.otlp.ROUTES: resolved against [sinks.otlp] endpoint


def public_url(url: str) -> str:
    """``url`` without any user:password@ (for logs and status)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


class RoutingTransport:
    """Sends each payload through the transport of its route's host (the default for any other)."""

    def __init__(self, by_host: dict[str, Transport], default: Transport, *, datadog_used: bool = True) -> None:
        self._by_host = by_host
        self._default = default
        used = ([default] if datadog_used else []) + list(by_host.values())
        self.destination = " and ".join(t.destination for t in used)

    async def send(self, payload: Payload) -> SendResult:
        return await self._by_host.get(payload.route.host, self._default).send(payload)

    async def close(self) -> None:
        await self._default.close()
        for transport in self._by_host.values():
            await transport.close()


def base_url(cfg: Config, route: Route) -> str:
    """``https://<route.host>.<site>``, or the scheme and host of [sinks.datadog] url."""
    if cfg.sinks.datadog.url:
        parts = urlsplit(cfg.sinks.datadog.url)
        host = parts.netloc.rpartition("@")[2]  # drop any user:password@, which we never log
        return f"{parts.scheme}://{host}"
    return f"https://{route.host}.{cfg.sinks.datadog.site}"


def url_for(cfg: Config, route: Route) -> str:
    return base_url(cfg, route) + route.path


class _InFlight:
    """Counts sends under way so a transport replaced by a reload closes only once they finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


class _Poster:
    """One attempt to POST a payload over one aiohttp ClientSession (one connection pool): a subclass says
    where a route goes (``_url_and_proxy``), which headers authenticate (``auth``, added at send time, so
    never in a payload or the spool) and which values must never show in a result (``secrets``)."""

    destination: str

    def __init__(self, timeout_secs: float, *, auth: dict[str, str], secrets: dict[str, str]) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_secs)
        self._auth = auth
        self._secrets = secrets  # value -> what stands for it in a detail
        self._session: aiohttp.ClientSession | None = None
        self._inflight = _InFlight()
        # route -> (url, extra headers, proxy options); the environment is read once per route
        self._targets: dict[Route, tuple[str, dict[str, str], dict]] = {}

    def _url_and_proxy(self, route: Route) -> tuple[str, proxy.Proxy | None]:
        raise NotImplementedError

    def _target(self, route: Route) -> tuple[str, dict[str, str], dict]:
        target = self._targets.get(route)
        if target is None:
            url, via = self._url_and_proxy(route)
            target = self._targets[route] = (url, *(via.request_options(url) if via else ({}, {})))
        return target

    async def send(self, payload: Payload) -> SendResult:
        url, proxy_headers, proxy_options = self._target(payload.route)
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        headers = {**payload.extra_headers, **proxy_headers, **self._auth, "Content-Type": payload.content_type,
                   PAYLOAD_ID_HEADER: payload.id}
        if payload.content_encoding not in ("", "identity"):
            headers["Content-Encoding"] = payload.content_encoding
        with self._inflight:
            try:
                async with self._session.post(url, data=payload.body, headers=headers, timeout=self._timeout,
                                              **proxy_options) as resp:
                    if 200 <= resp.status < 300:
                        await resp.read()  # small acknowledgements; reading them lets the connection be reused
                        return SendResult(resp.status)
                    text = (await resp.content.read(_RESPONSE_READ_BYTES)).decode("utf-8", "replace")
                    return SendResult(resp.status, resp.headers.get("Retry-After"),
                                      self._scrub(text[:_DETAIL_CHARS]))
            except TimeoutError:
                return SendResult(None, detail=f"timed out after {self._timeout.total}s")
            except (aiohttp.ClientError, OSError) as e:
                return SendResult(None, detail=self._scrub(f"{type(e).__name__}: {e}"[:_DETAIL_CHARS]))

    def _scrub(self, text: str) -> str:
        """Belt and braces: an intake or a proxy echoing our headers must not put a secret in our logs."""
        for secret, stand_in in self._secrets.items():
            text = text.replace(secret, stand_in)
        return text

    async def close(self) -> None:
        await self._inflight.idle()
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpTransport(_Poster):
    """Datadog's intakes (or [sinks.datadog] url), with the API key."""

    def __init__(self, cfg: Config) -> None:
        key = cfg.sinks.datadog.api_key
        super().__init__(cfg.sinks.datadog.timeout_secs, auth={"DD-API-KEY": key} if key else {},
                         secrets={key: "<api key>"} if key else {})
        self._cfg = cfg
        url = cfg.sinks.datadog.url
        self.destination = base_url(cfg, Route("", "")) if url else f"Datadog ({cfg.sinks.datadog.site})"
        # Said where the destination is said (logs, status), without credentials: the proxy for the API
        # intake stands for all (only NO_PROXY could make them differ).
        via = proxy.proxy_for(url or url_for(cfg, Route("api", "")), cfg.sinks.datadog.proxy)
        if via is not None:
            self.destination += f" via proxy {via.describe()}"

    def _url_and_proxy(self, route: Route) -> tuple[str, proxy.Proxy | None]:
        url = url_for(self._cfg, route)
        return url, proxy.proxy_for(url, self._cfg.sinks.datadog.proxy)


class OTLPTransport(_Poster):
    """OTLP/HTTP to [sinks.otlp] endpoint: the route's path (/v1/traces, /v1/metrics, /v1/logs) is appended
    to the base URL, as OTLP exporters do with OTEL_EXPORTER_OTLP_ENDPOINT. The configured headers (tokens,
    typically) are added here at send time: never stored in a payload, so never in the spool, and never in a
    result, a log line or the status (their values are scrubbed from error details)."""

    def __init__(self, cfg: Config) -> None:
        o = cfg.sinks.otlp
        super().__init__(o.timeout_secs, auth=dict(o.headers),
                         secrets={v: "<header value>" for v in o.headers.values() if len(v) >= 4})
        self._base = o.endpoint.rstrip("/")
        self.destination = f"OTLP ({public_url(o.endpoint)})"

    def _url_and_proxy(self, route: Route) -> tuple[str, proxy.Proxy | None]:
        url = self._base + route.path
        return url, proxy.proxy_for(url, "")  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as OTLP exporters honour


# Kinds whose items are JSON objects written to their NDJSON file exactly as packed: what the intake's
# decoder returns for them re-serializes byte for byte to the item (orjson both ways, keys in order).
_VERBATIM = frozenset({"series", "service_checks", "events", "logs"})


class FileTransport:
    """Appends one JSON line per item to ``<dir>/<kind>.ndjson``: data stays visible with no API key.

    Items are read from the compressed body one at a time, at the boundaries the payload records, and
    written as they are for JSON kinds whose items are the lines (series, service checks, events, logs).
    For the others (sketches and traces, which are protobuf, and LLM Observability envelopes, whose lines
    are their spans) each item alone is framed and decoded with the intake's decoder: the lines are the
    ones ``llmship intake`` would show, and only one item is ever decoded at a time. A payload without
    boundaries (a spool record of format 1) is decoded whole, as before. LINES_PER_WRITE lines go out per
    write. An item the decoder refuses, or a body that does not inflate to its boundaries, answers 400 and
    leaves none of the payload's lines in the file.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.destination = f"files in {self.directory}"
        # One thread writes every file, a payload at a time: lines stay whole.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmship-file-sink")
        self._inflight = _InFlight()

    async def send(self, payload: Payload) -> SendResult:
        with self._inflight:
            try:
                await asyncio.get_running_loop().run_in_executor(self._writer, self._append, payload)
            except DecompressionLimit as e:
                return SendResult(413, detail=str(e)[:_DETAIL_CHARS])
            except (DecodeError, ValueError) as e:  # ValueError: a body shorter than its boundaries
                return SendResult(400, detail=str(e)[:_DETAIL_CHARS])
            except OSError as e:  # disk full, permissions: not the payload's fault, so retryable
                return SendResult(None, detail=f"{type(e).__name__}: {e}"[:_DETAIL_CHARS])
        return SendResult(200)

    def _lines(self, payload: Payload):
        """The payload's NDJSON lines, an item's worth at a time."""
        framing = payload.framing
        if framing is None:  # no boundaries: decode it whole
            for item in decode_payload(payload.kind, payload.body, payload.content_encoding):
                yield orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE)
            return
        verbatim = payload.kind in _VERBATIM
        for item in iter_items(payload):
            if verbatim:
                yield item + b"\n"
                continue
            for decoded in decode_payload(payload.kind, framing.head + item + framing.tail, "identity"):
                yield orjson.dumps(decoded, option=orjson.OPT_APPEND_NEWLINE)

    def _append(self, payload: Payload) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{payload.kind}.ndjson", "ab") as f:
            start = f.tell()
            try:
                lines = bytearray()
                count = 0
                for line in self._lines(payload):
                    lines += line
                    count += 1
                    if count == LINES_PER_WRITE:
                        f.write(lines)
                        lines, count = bytearray(), 0
                f.write(lines)
            except Exception:
                f.truncate(start)  # a payload refused part way leaves none of its lines
                raise

    async def close(self) -> None:
        await self._inflight.idle()
        self._writer.shutdown(wait=False)
