"""Logs sources: newline-delimited JSON over TCP, and Datadog's HTTP logs intake API.

TCP (``sources.logs.tcp``, default 127.0.0.1:10514): one log per line. A JSON object is a record as is
(an array gives one record per element); any other line is kept as a plain ``message``. A line longer
than ``max_line_bytes`` is cut there, kept as a plain message, tagged ``llmship.truncated:true`` with its
full size in ``llmship.line_bytes`` (the rest of the line is read and discarded, never buffered). Every
connection has its own bounded buffer and is closed after ``idle_timeout_secs`` without data, so a client
that sends garbage or holds a connection idle costs the others nothing. When the logs delivery queue is
full, reading pauses (TCP back-pressure, as the Datadog Agent's logs pipeline does) until it drains.

HTTP (``sources.logs.http``, default 127.0.0.1:10518): what Datadog's logs intake accepts, so an app's
Datadog logs handler can point here unchanged: ``POST /api/v2/logs`` (also ``/v1/input``,
``/v1/input/<key>`` and ``/``) with one JSON object or an array of them, optionally gzip, deflate or zstd
compressed; ``text/plain`` bodies are read as lines like TCP. The ``DD-API-KEY`` header is accepted and
ignored (never logged). The query parameters ``ddtags``, ``ddsource``, ``service`` and ``hostname`` apply
to every log of the request that lacks them. Answers: 202 ``{}`` (200 on v1 paths, as the intake does),
400/413/415 with a reason, 429 with Retry-After while the logs delivery queue is full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import orjson
from aiohttp import web

from llmship import listeners
from llmship.compression import DecompressionLimit, decompress
from llmship.config import Config, parse_host_port
from llmship.model import LogRecord
from llmship.log import RateLimited, get_logger
from llmship.telemetry import Component
from llmship.transforms.logs import TRUNCATED_TAG

# 5 MiB: the logs intake refuses requests over 5 MB uncompressed (docs.datadoghq.com/api/latest/logs/);
# clients written for it stay under that, so anything larger is not a well-behaved client.
MAX_HTTP_BODY_BYTES = 5 << 20
# Connections held at once; each may buffer up to max_line_bytes, so this bounds memory (256 x 256 kB).
MAX_TCP_CONNECTIONS = 256
# Logs handed to the pipeline between two yields to the event loop, so one big request cannot stall others.
SUBMIT_SLICE = 200
# How often idle connections are closed and paused ones resumed.
SWEEP_SECS = 0.1
RETRY_AFTER_SECS = 1  # the logs queue drains at intake speed; asking again within a second is reasonable
# Query parameters of the intake API that apply to every log of the request.
_QUERY_ATTRIBUTES = ("ddsource", "service", "hostname")

log = get_logger("logs_source")
_limited = RateLimited(log)


# ------------------------------------------------------------------------------------------- decoding


def _plain(text: str) -> LogRecord:
    return {"message": text}


def records_from_json(value: Any, into: list[LogRecord]) -> None:
    """An object is a record, an array one record per element; anything else becomes a message."""
    if isinstance(value, dict):
        into.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                into.append(item)
            else:
                into.append(_plain(item if isinstance(item, str) else orjson.dumps(item).decode()))
    elif isinstance(value, str):
        into.append(_plain(value))
    else:
        into.append(_plain(orjson.dumps(value).decode()))


def parse_line(line: bytes, into: list[LogRecord], tel: Component) -> None:
    """One complete line (without its newline, within the size limit) into zero or more records."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line or line.isspace():
        return
    first = line[:1]
    if first in b"{[" or first.isspace():  # only these can be a JSON object or array: no exception cost
        try:
            records_from_json(orjson.loads(line), into)
            return
        except orjson.JSONDecodeError:
            pass
    tel.inc("plain_lines")
    into.append(_plain(line.decode("utf-8", "replace")))


def oversize_record(head: bytes, line_bytes: int) -> LogRecord:
    """A line cut at the size limit: kept as a plain message, tagged, its real size noted."""
    return {"message": head.decode("utf-8", "replace"), "ddtags": TRUNCATED_TAG,
            "llmship": {"line_bytes": line_bytes}}


class LineSplitter:
    """Cuts a byte stream into lines with a bounded buffer; an oversize line is truncated, not lost."""

    __slots__ = ("max_line", "_buf", "_head", "_skipped", "_tel")

    def __init__(self, max_line: int, tel: Component) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._head: bytes | None = None  # the kept start of an oversize line whose end is still to come
        self._skipped = 0  # bytes of that line seen so far
        self._tel = tel

    def feed(self, data: bytes, into: list[LogRecord]) -> None:
        if self._head is not None:  # inside an oversize line: discard up to its end
            nl = data.find(b"\n")
            if nl < 0:
                self._skipped += len(data)
                return
            self._skipped += nl
            self._emit_oversize(self._head, self._skipped, into)
            self._head = None
            data = data[nl + 1:]
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            self._buf += data
            self._check_partial()
            return
        view = memoryview(data)  # orjson parses a slice of it: no line is copied out of the read
        pos = 0
        if self._buf:  # the line an earlier read began: completed alone (one line copied, not the whole read)
            pos = data.find(b"\n") + 1
            line = b"".join((self._buf, view[:pos]))
            self._buf.clear()
            self._lines(line, 0, len(line) - 1, into)
        self._buf += view[last_nl + 1:]
        self._check_partial()
        self._lines(data, pos, last_nl, into)

    def _lines(self, data: bytes, pos: int, last_nl: int, into: list[LogRecord]) -> None:
        """The lines of ``data`` from ``pos`` to the newline at ``last_nl``, each read where it lies."""
        view = memoryview(data)
        max_line, loads, append, tel, find = self.max_line, orjson.loads, into.append, self._tel, data.find
        while pos <= last_nl:
            end = find(b"\n", pos)
            if end - pos > max_line:
                self._emit_oversize(data[pos:pos + max_line], end - pos, into)
            elif data[pos] == 0x7B and data[end - 1] == 0x7D:  # "{...}" (an empty line: "\n"): the common case, inline
                try:
                    value = loads(view[pos:end])
                except orjson.JSONDecodeError:
                    value = None
                if type(value) is dict:
                    append(value)
                else:
                    parse_line(data[pos:end], into, tel)
            else:
                parse_line(data[pos:end], into, tel)
            pos = end + 1

    def finish(self, into: list[LogRecord]) -> None:
        """The stream ended: what was sent without a final newline is a log too."""
        if self._head is not None:
            self._emit_oversize(self._head, self._skipped, into)
            self._head = None
        elif self._buf:
            parse_line(bytes(self._buf), into, self._tel)
        self._buf.clear()

    def _check_partial(self) -> None:
        if len(self._buf) > self.max_line:  # no newline within the limit: keep the head, skip the rest
            self._head = bytes(self._buf[:self.max_line])
            self._skipped = len(self._buf)
            self._buf.clear()

    def _emit_oversize(self, head: bytes, line_bytes: int, into: list[LogRecord]) -> None:
        self._tel.inc("truncated_lines")
        _limited.warning("line_too_long", "log_line_truncated", line_bytes=line_bytes, max_line_bytes=self.max_line)
        into.append(oversize_record(head, line_bytes))


# ------------------------------------------------------------------------------------------- TCP


class _TcpConnection(asyncio.Protocol):
    def __init__(self, source: LogsSource) -> None:
        self._source = source
        self._tel = source.tcp_telemetry
        self._splitter = LineSplitter(source.max_line_bytes, self._tel)
        self.transport: asyncio.Transport | None = None
        self.last_active = time.monotonic()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._source.register(self):
            self._tel.inc("connections_refused", reason="too_many_connections")
            _limited.warning("too_many_connections", "log_connection_refused", limit=MAX_TCP_CONNECTIONS)
            transport.close()
            return
        self._tel.inc("connections")

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self._tel.inc("received_bytes", len(data))
        records: list[LogRecord] = []
        self._splitter.feed(data, records)
        self._submit(records)

    def eof_received(self) -> bool:
        self._flush_partial()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush_partial()
        self._source.unregister(self)

    def close(self, reason: str) -> None:
        self._tel.inc("closed", reason=reason)
        self._flush_partial()
        if self.transport is not None:
            self.transport.close()

    def _flush_partial(self) -> None:
        records: list[LogRecord] = []
        self._splitter.finish(records)
        self._submit(records)

    def _submit(self, records: list[LogRecord]) -> None:
        if not records:
            return
        self._tel.inc("received", len(records))
        pipeline = self._source.pipeline
        pipeline.submit_logs(records)
        if pipeline.overloaded("logs") and self.transport is not None and not self.paused:
            self.transport.pause_reading()  # resumed by the sweeper once the queue drains
            self.paused = True
            self._tel.inc("paused")


# ------------------------------------------------------------------------------------------- source


class LogsSource:
    def __init__(self, cfg: Config, pipeline, *, sockets: listeners.Sockets | None = None) -> None:
        self._cfg = cfg.sources.logs
        self.pipeline = pipeline
        self._handed_over = getattr(pipeline, "handed_over", None)  # see TraceSource
        self._sockets = sockets  # inherited listening sockets (workers); None: bind our own
        self.max_line_bytes = self._cfg.max_line_bytes
        self._idle_timeout = self._cfg.idle_timeout_secs
        self.tcp_telemetry = pipeline.telemetry.component("logs_tcp")
        self._http_tel = pipeline.telemetry.component("logs_http")
        self._connections: set[_TcpConnection] = set()
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_servers: list = []
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task | None = None
        self.tcp_telemetry.gauge("open_connections", lambda: len(self._connections))

    def reload(self, cfg: Config) -> None:
        """SIGHUP: max_line_bytes applies to new connections and requests, idle_timeout_secs to the next
        sweep and body read (the HTTP keep-alive timeout is set at start); listener addresses need a restart."""
        new, old = cfg.sources.logs, self._cfg
        changed = [key for key in ("tcp", "http") if getattr(new, key) != getattr(old, key)]
        if changed:
            log.warning("reload_needs_restart", keys=[f"sources.logs.{key}" for key in changed])
        self._cfg = dataclasses.replace(new, tcp=old.tcp, http=old.http)
        self.max_line_bytes = new.max_line_bytes
        self._idle_timeout = new.idle_timeout_secs

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            inherited = (self._sockets or {}).get("logs.tcp")
            if inherited:
                # One server per socket; the source keeps the first (tcp_address) and closes all.
                self._tcp_servers = [await asyncio.get_running_loop().create_server(
                    lambda: _TcpConnection(self), sock=sock) for sock in inherited]
                self._tcp_server = self._tcp_servers[0]
            elif self._cfg.tcp and self._sockets is None:
                host, port = parse_host_port(self._cfg.tcp)
                self._tcp_server = await asyncio.get_running_loop().create_server(
                    lambda: _TcpConnection(self), host, port)
                self._tcp_servers = [self._tcp_server]
            for server in self._tcp_servers:
                for sock in server.sockets:
                    log.info("listener_bound", protocol="tcp", address=str(sock.getsockname()))
            if self._cfg.http:
                await self._start_http()
        except BaseException:
            await self.shutdown(time.monotonic() + 1)
            raise
        self._sweeper = asyncio.create_task(self._sweep(), name="logs-sweeper")

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=MAX_HTTP_BODY_BYTES)
        for path in ("/api/v2/logs", "/v1/input", "/v1/input/{key}", "/"):
            app.router.add_post(path, self._http_logs)
        # auto_decompress=False: we inflate bodies ourselves, bounded. keepalive_timeout: an idle HTTP
        # connection is closed like an idle TCP one.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0,
                               auto_decompress=False, keepalive_timeout=self._idle_timeout)
        await runner.setup()
        self._runner = runner
        await listeners.start_sites(runner, self._sockets, ("logs.http",), self._cfg.http)
        for address in runner.addresses:
            log.info("listener_bound", protocol="http", address=str(address))

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        if self._tcp_server is None or not self._tcp_server.sockets:
            return None
        return self._tcp_server.sockets[0].getsockname()[:2]

    @property
    def http_address(self) -> tuple[str, int] | None:
        return tuple(self._runner.addresses[0][:2]) if self._runner and self._runner.addresses else None

    async def shutdown(self, deadline: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        servers, self._tcp_servers, self._tcp_server = self._tcp_servers, [], None
        for server in servers:
            server.close()  # stop accepting; then close each connection, submitting its partial line
        if servers:
            for conn in list(self._connections):
                conn.close("shutdown")
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                await asyncio.wait_for(runner.cleanup(), timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("shutdown_deadline_passed", component="logs_http")

    def register(self, conn: _TcpConnection) -> bool:
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            return False
        self._connections.add(conn)
        return True

    def unregister(self, conn: _TcpConnection) -> None:
        self._connections.discard(conn)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECS)
            now = time.monotonic()
            overloaded = None
            for conn in list(self._connections):
                if conn.paused:
                    if overloaded is None:
                        overloaded = self.pipeline.overloaded("logs")
                    if not overloaded and conn.transport is not None:
                        conn.paused = False
                        conn.last_active = now
                        conn.transport.resume_reading()
                elif now - conn.last_active > self._idle_timeout:
                    conn.close("idle")

    # ------------------------------------------------------------------------------------ HTTP

    async def _http_logs(self, request: web.Request) -> web.Response:
        tel = self._http_tel
        tel.inc("requests")
        ok_status = 202 if request.path == "/api/v2/logs" else 200  # what the intake answers on each
        if self.pipeline.overloaded("logs"):
            tel.inc("refused", reason="overloaded")
            return _error(429, "logs queue full, retry later", {"Retry-After": str(RETRY_AFTER_SECS)})
        try:
            body = await self._read_body(request)
        except web.HTTPException as e:
            tel.inc("errors", error_type=e.reason.lower().replace(" ", "_"), stage="receiving")
            return _error(e.status, e.text or e.reason)
        records: list[LogRecord] = []
        if request.content_type.startswith("text/"):
            splitter = LineSplitter(self.max_line_bytes, tel)
            splitter.feed(body, records)
            splitter.finish(records)
        else:
            try:
                records_from_json(orjson.loads(body), records)
            except orjson.JSONDecodeError as e:
                tel.inc("errors", error_type="invalid_json", stage="receiving")
                _limited.warning("invalid_json", "log_request_invalid_json", error=str(e))
                return _error(400, f"invalid JSON: {e}")
        _apply_query(request.query, records)
        tel.inc("received", len(records))
        for i in range(0, len(records), SUBMIT_SLICE):
            if i:
                await asyncio.sleep(0)  # let other clients in between slices
            self.pipeline.submit_logs(records[i:i + SUBMIT_SLICE])
        if self._handed_over is not None:
            await self._handed_over()
        return web.Response(status=ok_status, body=b"{}", content_type="application/json")

    async def _read_body(self, request: web.Request) -> bytes:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate", "zstd"):
            raise web.HTTPUnsupportedMediaType(text=f"unsupported Content-Encoding {encoding!r}")
        try:
            async with asyncio.timeout(self._idle_timeout):
                raw = await request.read()  # bounded by client_max_size
        except TimeoutError:
            raise web.HTTPRequestTimeout(text="request body not received in time") from None
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(MAX_HTTP_BODY_BYTES, request.content_length or 0,
                                                text=f"body over {MAX_HTTP_BODY_BYTES} bytes") from None
        self._http_tel.inc("received_bytes", len(raw))
        try:
            return decompress(raw, encoding, MAX_HTTP_BODY_BYTES)
        except DecompressionLimit:
            raise web.HTTPRequestEntityTooLarge(MAX_HTTP_BODY_BYTES, len(raw),
                                                text=f"body inflates past {MAX_HTTP_BODY_BYTES} bytes") from None
        except Exception as e:  # zlib.error, zstd errors: a corrupt stream
            raise web.HTTPBadRequest(text=f"cannot decompress {encoding} body: {e}") from None


def _apply_query(query, records: list[LogRecord]) -> None:
    """The intake's query parameters apply to every log of the request that lacks them."""
    extra = {k: query[k] for k in _QUERY_ATTRIBUTES if query.get(k)}
    ddtags = query.get("ddtags", "")
    if not extra and not ddtags:
        return
    for record in records:
        for key, value in extra.items():
            record.setdefault(key, value)
        if ddtags:
            own = record.get("ddtags")
            record["ddtags"] = f"{own},{ddtags}" if isinstance(own, str) and own else ddtags


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"errors": [reason]}), content_type="application/json",
                        headers=headers)
