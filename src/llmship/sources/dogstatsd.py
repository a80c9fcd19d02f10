"""DogStatsD source: UDP, unix datagram and unix stream listeners, and the datagram parser.

Wire format (DogStatsD protocol v1.3, as the Datadog Agent's comp/dogstatsd/server parses it):

    name:value[:value...]|type[|@rate][|#tag,tag:v][|c:<container>][|e:<external>][|card:<c>][|T<unix>]
    _e{<title bytes>,<text bytes>}:title|text[|d:<ts>][|h:<host>][|k:<key>][|p:<prio>][|s:<src>][|t:<alert>][|#tags]
    _sc|name|status[|d:<ts>][|h:<host>][|#tags][|m:<message>]

A datagram (or a unix stream frame) holds one or more lines separated by "\\n", often with a trailing one.
Metric lines go straight to ``Aggregator.add`` with the tags as the raw wire string (the aggregator caches
its contexts on that string); events and service checks become dicts in the shape of Datadog's
POST /api/v1/events and /api/v1/check_run bodies. A bad line is counted under
``discarded{reason=...}`` and skipped; the rest of the datagram still counts.

Speed is the constraint here (the goal: 250,000 lines per second on one core, parse and aggregate), so
the hot path creates no object per line beyond the strings ``str.partition`` returns: the part of a line
after its value ("type|#tags...") repeats across lines of the same context, and what it parses to is
cached, so the common line costs two partitions, one dict lookup, one float() and the call to the
aggregator. Everything else (events, service checks, sets, packed values, timestamps, errors) takes
the general parser.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import sys
import time
from pathlib import Path

from llmship import unixsock
from llmship.config import Config, parse_host_port
from llmship.log import RateLimited, get_logger
from llmship.telemetry import Component

log = get_logger("dogstatsd")

_SLOW_LINE = re.compile("\n[_:]")  # a line (not the first) that the fast path must not take
METRIC_TYPES = frozenset(("c", "g", "ms", "h", "s", "d"))  # counter gauge timing histogram set distribution

# Fields the Agent removes from a line's tags: `host:` sets the sample's host (comp/dogstatsd/server
# enrich.go extractTagsMetadata); the dd.internal.* ones carry origin detection data, not user tags.
_HOST_TAG = "host:"
_INTERNAL_TAG_PREFIXES = ("dd.internal.entity_id:", "dd.internal.card:")

# The fast path's cache of parsed line suffixes. Bounded: a workload with more distinct tag sets than
# this just refills it (each miss costs one general parse: a few microseconds).
_SUFFIX_CACHE_MAX = 8192

_EVENT_PRIORITIES = ("normal", "low")  # the Agent's parse_events.go
_EVENT_ALERT_TYPES = ("error", "warning", "info", "success")
_SERVICE_CHECK_STATUSES = {"0": 0, "1": 1, "2": 2, "3": 3}  # OK, WARNING, CRITICAL, UNKNOWN

# Most datagrams read per wake-up of the event loop before giving other work a turn (libuv reads 32).
_READS_PER_WAKEUP = 64
_STREAM_LENGTH_PREFIX_BYTES = 4  # little-endian uint32 before each payload (datadogpy, datadog-go)
# A unix datagram socket queues at most net.unix.max_dgram_qlen datagrams (often 10 or 512), whatever its
# receive buffer: below this many, a burst from a non-blocking client (datadogpy, datadog-go) is dropped.
_UNIX_QUEUE_LENGTH_ADVISED = 512
# Linux's SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module does not export it.
_SO_RCVBUFFORCE = 33
# 0722 like the Datadog Agent's dsd socket: sending needs write permission on the socket file, and any
# local app must be able to send; nobody but the owner may read it or replace it.
_SOCKET_FILE_MODE = 0o722


class DogStatsDParser:
    """Parses DogStatsD payloads and hands the results to the pipeline. One instance per agent."""

    def __init__(self, pipeline, comp: Component, hostname: str) -> None:
        self._add = pipeline.add_metric
        self._add_many = pipeline.add_metrics  # the fast path's lines of one datagram
        self._submit_event = pipeline.submit_dsd_event
        self._submit_service_check = pipeline.submit_service_check
        self._comp = comp
        self._hostname = hostname
        # suffix after the value ("h|@0.5|#env:prod") -> (mtype, tags, rate, host), for float types only
        self._suffixes: dict[str, tuple[str, str, float, str | None]] = {}
        self._bad_input_log = RateLimited(log)

    def reload(self, hostname: str) -> None:
        """The host events and service checks get when they name none. Metric hosts are the
        aggregator's (its own reload); the suffix cache holds no host of the agent's, only `host:` tags."""
        self._hostname = hostname

    # ------------------------------------------------------------------------------------------ hot path

    def feed(self, payload: bytes | bytearray) -> int:
        """Parse one datagram (or one unix stream frame) of newline-separated lines; return how many
        lines it held (blank ones aside). The caller counts them: one telemetry update per batch of
        datagrams, not per datagram, keeps that off the hot path."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return self._feed_general(*self._decode_lines_one_by_one(payload))
        lines = text.split("\n")
        # A line starting with "_" (an event `_e{`, a service check `_sc|`) or ":" (an empty metric
        # name) must not take the fast path; checking the whole datagram once is cheaper than each line,
        # and one regex search cheaper than two `in` (0.06 instead of 0.24 us a line: str's two-character
        # search stops at every newline).
        if text[:1] in ("_", ":") or _SLOW_LINE.search(text) is not None:
            return self._feed_general(lines, 0)
        suffixes = self._suffixes
        samples = []  # the datagram's lines, added together (one clock read, one bucket check)
        append = samples.append
        for line in lines:
            head, _, suffix = line.partition("|")
            name, _, value_text = head.partition(":")
            meta = suffixes.get(suffix)
            if meta is not None:
                try:
                    value = float(value_text)  # fails for packed values: the general path takes them
                except ValueError:
                    pass
                else:
                    if not value - value:  # nan and +-inf give nan here, which is truthy
                        mtype, tags, rate, host = meta
                        append((name, mtype, value, tags, rate, host))
                        continue
            if line:
                if samples:  # in line order: a gauge's last value is the last line's
                    self._add_many(samples)
                    samples.clear()
                self._parse_line(line)
        if samples:
            self._add_many(samples)
        return len(lines) - lines.count("")  # blank lines (the usual trailing "\n") are not lines

    # ------------------------------------------------------------------------------------------ general path

    def _feed_general(self, lines: list[str], received: int) -> int:
        for line in lines:
            if line:
                received += 1
                self._parse_line(line)
        return received

    def _decode_lines_one_by_one(self, payload: bytes | bytearray) -> tuple[list[str], int]:
        """The lines that are valid UTF-8, and how many were not (dropped here, and counted as seen)."""
        lines = []
        bad = 0
        for raw in payload.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad += 1
                self._drop("not_utf8", repr(bytes(raw[:200])))
        return lines, bad

    def _parse_line(self, line: str) -> None:
        if line.startswith("_e{"):
            self._parse_event(line)
        elif line.startswith("_sc|"):
            self._parse_service_check(line)
        else:
            self._parse_metric(line)

    def _drop(self, reason: str, line: str) -> None:
        self._comp.discard(reason)
        self._bad_input_log.warning(reason, "dogstatsd_bad_line", reason=reason, line=line[:200])

    def _parse_metric(self, line: str) -> None:
        head, sep, suffix = line.partition("|")
        name, colon, value_text = head.partition(":")
        if not name:
            return self._drop("empty_name", line)
        if not colon or not value_text:
            return self._drop("invalid_value", line)
        if not sep:
            return self._drop("missing_type", line)
        fields = suffix.split("|")
        mtype = fields[0]
        if not mtype:
            return self._drop("missing_type", line)
        if mtype not in METRIC_TYPES:
            return self._drop("unknown_type", line)
        raw_tags = ""
        rate = 1.0
        timestamp: float | None = None
        for field in fields[1:]:
            kind = field[:1]
            if kind == "#":
                raw_tags = field[1:]
            elif kind == "@":
                try:
                    rate = float(field[1:])
                except ValueError:
                    rate = -1.0
                if not 0.0 < rate <= 1.0:  # also false for nan; a rate of 0 would divide by zero
                    return self._drop("invalid_sample_rate", line)
            elif kind == "T":
                # The Agent parses it as an int64 (strconv.ParseInt(..., 10, 64)) and wants it > 0: a larger
                # one is refused where it enters, never carried to a flush it would fail (series JSON is int64).
                seconds = _unix_seconds(field[1:])
                if seconds is None or seconds < 1:  # the Agent: "dogstatsd timestamp should be > 0"
                    return self._drop("invalid_timestamp", line)
                timestamp = float(seconds)
            # c: (container), e: (external data) and card: (cardinality) serve the Agent's origin
            # detection, which needs a container runtime; they and unknown fields are ignored, as there.
        tags, host = split_host_tag(raw_tags)

        if mtype == "s":  # a set's value is a member, never packed (the Agent takes the whole value)
            self._add(name, mtype, value_text, tags, rate, host, timestamp)
            return None
        values = parse_values(value_text)
        if values is None:
            return self._drop("invalid_value", line)
        if timestamp is None:
            if len(self._suffixes) >= _SUFFIX_CACHE_MAX:
                self._suffixes.clear()
            self._suffixes[suffix] = (mtype, tags, rate, host)
        for value in values:
            self._add(name, mtype, value, tags, rate, host, timestamp)
        return None

    def _parse_event(self, line: str) -> None:
        event = parse_event(line, self._hostname)
        if event is None:
            return self._drop("bad_event", line)
        self._submit_event(event)
        return None

    def _parse_service_check(self, line: str) -> None:
        check = parse_service_check(line, self._hostname)
        if check is None:
            return self._drop("bad_service_check", line)
        self._submit_service_check(check)
        return None


def parse_values(value_text: str) -> list[float] | None:
    """"1.5" or packed "1:2::3" (empty items skipped, as the Agent does) -> finite floats; None if bad."""
    values = []
    for item in value_text.split(":"):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            return None
        if value - value:  # nan or infinity: would poison every aggregate it joins
            return None
        values.append(value)
    return values or None


def split_host_tag(raw_tags: str) -> tuple[str, str | None]:
    """Remove `host:` and dd.internal.* tags as the Agent does; the last `host:` names the sample's host."""
    if _HOST_TAG not in raw_tags and "dd.internal." not in raw_tags:
        return raw_tags, None
    host = None
    kept = []
    for tag in raw_tags.split(","):
        if tag.startswith(_HOST_TAG):
            host = tag[len(_HOST_TAG):]
        elif not tag.startswith(_INTERNAL_TAG_PREFIXES):
            kept.append(tag)
    return ",".join(kept), host


def _tag_list(raw_tags: str) -> list[str]:
    return [t for t in raw_tags.split(",") if t]


_INT64_MAX = (1 << 63) - 1


def _unix_seconds(text: str) -> int | None:
    """A timestamp field as the Agent parses it (a 64-bit signed integer), None when it is not one."""
    try:
        seconds = int(text)
    except ValueError:
        return None
    return seconds if -_INT64_MAX <= seconds <= _INT64_MAX else None


def parse_event(line: str, default_host: str) -> dict | None:
    """`_e{3,4}:title|text|...` -> a POST /api/v1/events body, or None when malformed.

    The lengths count UTF-8 bytes of the escaped title and text (datadogpy, datadog-go), so the slicing
    happens on bytes. Bad optional fields are ignored, keeping their defaults, as the Agent does.
    """
    raw = line.encode("utf-8")
    header_end = raw.find(b"}:")
    if header_end < 0:
        return None
    title_len_text, comma, text_len_text = raw[3:header_end].partition(b",")
    try:
        title_len, text_len = int(title_len_text), int(text_len_text)
    except ValueError:
        return None
    if not comma or title_len <= 0 or text_len < 0:  # the Agent rejects empty titles
        return None
    body = raw[header_end + 2:]
    text_end = title_len + 1 + text_len
    # The title and text must be followed by a field separator (or the end): a mismatch means the
    # lengths are wrong and whatever follows would be misread.
    if len(body) < text_end or body[title_len:title_len + 1] != b"|" or body[text_end:text_end + 1] not in (b"", b"|"):
        return None
    try:
        title = body[:title_len].decode("utf-8").replace("\\n", "\n")
        text = body[title_len + 1:text_end].decode("utf-8").replace("\\n", "\n")
    except UnicodeDecodeError:  # a length that cuts a character in two
        return None
    event: dict = {"title": title, "text": text, "date_happened": None, "host": None, "priority": "normal",
                   "alert_type": "info", "tags": []}
    raw_tags = ""
    for field in body[text_end + 1:].decode("utf-8").split("|"):
        prefix, value = field[:2], field[2:]
        if prefix == "d:":
            event["date_happened"] = _unix_seconds(value)
        elif prefix == "h:":
            event["host"] = value
        elif prefix == "k:":
            event["aggregation_key"] = value
        elif prefix == "p:" and value in _EVENT_PRIORITIES:
            event["priority"] = value
        elif prefix == "s:":
            event["source_type_name"] = value
        elif prefix == "t:" and value in _EVENT_ALERT_TYPES:
            event["alert_type"] = value
        elif field[:1] == "#":
            raw_tags = field[1:]
    tags, tag_host = split_host_tag(raw_tags)
    event["tags"] = _tag_list(tags)
    event["host"] = event["host"] or tag_host or default_host
    if event["date_happened"] is None:
        event["date_happened"] = int(time.time())
    return event


def parse_service_check(line: str, default_host: str) -> dict | None:
    """`_sc|name|status|...` -> a POST /api/v1/check_run body, or None when malformed."""
    fields = line.split("|")
    if len(fields) < 3 or not fields[1] or fields[2] not in _SERVICE_CHECK_STATUSES:
        return None
    check: dict = {"check": fields[1], "host_name": None, "status": _SERVICE_CHECK_STATUSES[fields[2]],
                   "timestamp": None, "message": "", "tags": []}
    raw_tags = ""
    for field in fields[3:]:
        prefix, value = field[:2], field[2:]
        if prefix == "d:":
            check["timestamp"] = _unix_seconds(value)
        elif prefix == "h:":
            check["host_name"] = value
        elif prefix == "m:":
            # datadogpy escapes newlines and "m:" in messages; undo it so the message reads as sent
            check["message"] = value.replace("\\n", "\n").replace("m\\:", "m:")
        elif field[:1] == "#":
            raw_tags = field[1:]
    tags, tag_host = split_host_tag(raw_tags)
    check["tags"] = _tag_list(tags)
    check["host_name"] = check["host_name"] or tag_host or default_host
    if check["timestamp"] is None:
        check["timestamp"] = int(time.time())
    return check


# ---------------------------------------------------------------------------------------------- listeners


class DogStatsDSource:
    """The UDP, unix datagram and unix stream listeners feeding one ``DogStatsDParser``.

    Datagram sockets are read with ``loop.add_reader`` and a loop of ``recv`` calls, up to
    ``_READS_PER_WAKEUP`` datagrams per wake-up, with no address tuple per datagram. uvloop's datagram
    transport costs about the same per datagram (it reads into a preallocated buffer but builds the
    sender's address each time); asyncio's default one reads into a fresh 256 KiB buffer, 5-10x slower.
    This reader is fast on both loops and works the same for UDP and unix datagram sockets.

    Bound addresses, once started: ``udp_address`` (host, port), ``socket_path``, ``stream_socket_path``.
    """

    def __init__(self, cfg: Config, pipeline) -> None:
        self._cfg = cfg.sources.dogstatsd
        self._comp = pipeline.telemetry.component("dogstatsd")
        self.parser = DogStatsDParser(pipeline, self._comp, cfg.agent.hostname)
        self.udp_address: tuple[str, int] | None = None
        self.socket_path: str | None = None
        self.stream_socket_path: str | None = None
        self._datagram_socks: list[socket.socket] = []
        self._stream_server: asyncio.AbstractServer | None = None
        self._stream_transports: set[asyncio.Transport] = set()
        self._socket_files: list[tuple[str, unixsock.FileId]] = []  # files we created, removed on shutdown
        self._bad_input_log = RateLimited(log)
        self._started = False

    def reload(self, cfg: Config) -> None:
        """SIGHUP: apply what is read per datagram or per connection; listener addresses and the receive
        buffer need a restart (rebinding would lose what the kernel holds for us)."""
        self.parser.reload(cfg.agent.hostname)
        new, old = cfg.sources.dogstatsd, self._cfg
        kept = ("udp", "socket", "stream_socket", "receive_buffer_bytes")
        changed = [key for key in kept if getattr(new, key) != getattr(old, key)]
        if changed:
            log.warning("reload_needs_restart", keys=[f"sources.dogstatsd.{key}" for key in changed])
        # max_packet_bytes: read by every batch of datagrams, and by each new stream connection
        self._cfg = dataclasses.replace(new, **{key: getattr(old, key) for key in kept})

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        cfg = self._cfg
        try:
            if cfg.udp:
                self._start_udp(cfg.udp)
            if cfg.socket:
                self._start_unix_datagram(cfg.socket)
            if cfg.stream_socket:
                await self._start_unix_stream(cfg.stream_socket)
        except BaseException:  # release what did bind (and its socket files) before reporting the failure
            await self.shutdown(time.monotonic())
            raise

    async def shutdown(self, deadline: float) -> None:
        """Remove our socket files; stop listening; parse what the kernel already holds (until ``deadline``)."""
        # First, while the sockets are open (see unixsock.remove_if_ours): no new client finds us after this.
        for path, file_id in self._socket_files:
            unixsock.remove_if_ours(path, file_id)
        self._socket_files.clear()
        loop = asyncio.get_running_loop()
        if self._stream_server is not None:
            self._stream_server.close()
            for transport in list(self._stream_transports):
                transport.close()
            try:
                await asyncio.wait_for(self._stream_server.wait_closed(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            self._stream_server = None
        for sock in self._datagram_socks:
            loop.remove_reader(sock.fileno())
            self._read_datagrams(sock, deadline=deadline)
            sock.close()
        self._datagram_socks.clear()

    def read_waiting(self, deadline: float) -> None:
        """Parse the datagrams the kernel holds now (until ``deadline``): an on-demand flush must include
        what a client sent before asking, even if the loop has not read it yet."""
        for sock in self._datagram_socks:
            self._read_datagrams(sock, deadline=deadline)

    # ------------------------------------------------------------------------------------------ datagrams

    def _start_udp(self, address: str) -> None:
        host, port = parse_host_port(address)
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(sockaddr)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"dogstatsd: cannot listen on udp {address}: {e.strerror}") from None
        effective = _grow_receive_buffer(sock, self._cfg.receive_buffer_bytes)
        self._comp.set_info("udp_receive_buffer_bytes", effective)
        self.udp_address = sock.getsockname()[:2]
        if sys.platform == "linux":
            inode = os.fstat(sock.fileno()).st_ino
            self._comp.gauge("kernel_drops", lambda: linux_udp_drops(inode))
        self._listen_datagrams(sock)
        log.info("listener_bound", transport="udp", address=f"{self.udp_address[0]}:{self.udp_address[1]}",
                 receive_buffer_bytes=effective)

    def _start_unix_datagram(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._bind_unix(sock, path)
        except OSError:
            sock.close()
            raise
        effective = _grow_receive_buffer(sock, self._cfg.receive_buffer_bytes)
        self._comp.set_info("socket_receive_buffer_bytes", effective)
        self.socket_path = path
        self._listen_datagrams(sock)
        log.info("listener_bound", transport="unix_datagram", address=path, receive_buffer_bytes=effective)
        queue_length = linux_unix_datagram_queue_length()
        if queue_length is not None:
            self._comp.set_info("unix_max_dgram_qlen", queue_length)
            if queue_length < _UNIX_QUEUE_LENGTH_ADVISED:
                log.warning("unix_datagram_queue_short", max_dgram_qlen=queue_length,
                            advice=f"sysctl -w net.unix.max_dgram_qlen={_UNIX_QUEUE_LENGTH_ADVISED}",
                            why="clients drop datagrams (EAGAIN) once this many wait, whatever the buffer size")

    def _listen_datagrams(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._datagram_socks.append(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_datagrams, sock)

    def _read_datagrams(self, sock: socket.socket, deadline: float | None = None) -> None:
        """Read what is waiting: a bounded batch per wake-up, or everything until ``deadline``."""
        recv = sock.recv
        # One byte over the limit tells a datagram that was cut (the kernel truncates silently).
        # recv() into a fresh bytes object beats recv_into() a reused buffer here: bytes.decode() is
        # 4x faster than decoding a memoryview, and a <= 64 KiB allocation is cheap (256 KiB is not:
        # glibc serves it with mmap, about 13 us per datagram measured; asyncio's transport does that).
        limit = self._cfg.max_packet_bytes
        feed = self.parser.feed
        datagrams = lines = nbytes = 0
        try:
            while deadline is not None or datagrams < _READS_PER_WAKEUP:
                try:
                    data = recv(limit + 1)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:  # e.g. ECONNREFUSED left over from an ICMP error: try again later
                    self._comp.error("recv_failed", str(e), stage="receiving")
                    break
                datagrams += 1
                nbytes += len(data)
                if len(data) > limit:
                    self._too_large(len(data))
                    continue
                try:
                    lines += feed(data)
                except Exception as e:  # a parser bug must not stop the listener: count, log, carry on
                    self._parser_failed(e)
                if deadline is not None and time.monotonic() > deadline:
                    break
        finally:
            self._count_received(datagrams, lines, nbytes)

    def _count_received(self, datagrams: int, lines: int, nbytes: int) -> None:
        if datagrams:
            comp = self._comp
            comp.inc("datagrams_received", datagrams)
            comp.inc("received", lines)
            comp.inc("received_bytes", nbytes)
            # when a batch was last handled (unix time): "is anyone sending?", and when a burst was done
            comp.set_info("last_received_at", time.time())

    def _too_large(self, n: int) -> None:
        self._comp.discard("packet_too_large")
        self._bad_input_log.warning("packet_too_large", "dogstatsd_packet_too_large", bytes=n,
                                    max_packet_bytes=self._cfg.max_packet_bytes,
                                    hint="raise sources.dogstatsd.max_packet_bytes")

    def _parser_failed(self, e: Exception) -> None:
        self._comp.discard("parser_error")
        self._comp.error("parser_error", f"{type(e).__name__}: {e}", stage="receiving")
        self._bad_input_log.error("parser_error", "dogstatsd_parser_error", error=f"{type(e).__name__}: {e}",
                                  exc_info=True)

    # ------------------------------------------------------------------------------------------ unix stream

    async def _start_unix_stream(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind_unix(sock, path)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._stream_server = await asyncio.get_running_loop().create_unix_server(
            lambda: _StreamProtocol(self), sock=sock)
        self.stream_socket_path = path
        log.info("listener_bound", transport="unix_stream", address=path)

    def _bind_unix(self, sock: socket.socket, path: str) -> None:
        self._socket_files.append((path, unixsock.bind_unix(sock, path, _SOCKET_FILE_MODE, "dogstatsd")))


class _StreamProtocol(asyncio.Protocol):
    """One unix stream connection: payloads framed by a 4-byte little-endian length."""

    def __init__(self, source: DogStatsDSource) -> None:
        self._source = source
        self._max = source._cfg.max_packet_bytes
        self._pending = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._source._stream_transports.add(transport)

    def connection_lost(self, exc) -> None:
        self._source._stream_transports.discard(self._transport)
        if self._pending:  # the client went away mid-frame
            self._source._comp.discard("truncated_frame")

    def data_received(self, data: bytes) -> None:
        pending = self._pending
        pending += data
        source = self._source
        feed = source.parser.feed
        offset = frames = lines = 0
        available = len(pending)
        while available - offset >= _STREAM_LENGTH_PREFIX_BYTES:
            start = offset + _STREAM_LENGTH_PREFIX_BYTES
            length = int.from_bytes(pending[offset:start], "little")
            if length > self._max:
                # Clients send at most 8 KiB per frame by default: a longer one means the stream is out
                # of step, or not DogStatsD at all. Its end cannot be found, so the connection goes.
                source._too_large(length)
                pending.clear()  # framing is lost: nothing after this can be trusted
                self._transport.close()
                return
            if available - start < length:
                break
            frames += 1
            try:
                lines += feed(pending[start:start + length])
            except Exception as e:
                source._parser_failed(e)
            offset = start + length
        del pending[:offset]
        source._count_received(frames, lines, offset - frames * _STREAM_LENGTH_PREFIX_BYTES)


# ---------------------------------------------------------------------------------------------- helpers


def _grow_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """Ask for ``wanted`` bytes of kernel receive buffer; return what the kernel reports it gave.

    Bursts beyond the buffer are lost before we can read them. SO_RCVBUFFORCE (root / CAP_NET_ADMIN)
    exceeds net.core.rmem_max; SO_RCVBUF is capped by it. Linux reports double the size it was asked
    for (its bookkeeping overhead): the figure is the kernel's own.
    """
    if sys.platform == "linux":
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, wanted)
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:  # EPERM without CAP_NET_ADMIN
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    except OSError as e:
        log.warning("receive_buffer_not_set", wanted=wanted, error=str(e))
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class GaugeUnavailable(LookupError):
    """A gauge's source has no value to give; the message says why (shown as the gauge's error)."""


def linux_udp_drops(inode: int) -> int:
    """The `drops` column of /proc/net/udp[6] for the socket with ``inode``: datagrams the kernel
    discarded because the receive buffer was full.

    Raises GaugeUnavailable when the socket's row cannot be found or read: 0 would claim "no drops"
    when nothing is known (the telemetry snapshot then shows the gauge as None with this reason)."""
    wanted = str(inode)
    problems = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f, None)  # header
                for row in f:
                    cols = row.split()
                    if len(cols) >= 13 and cols[9] == wanted:
                        return int(cols[12])
        except OSError as e:
            problems.append(f"{table}: {e.strerror or e}")
    raise GaugeUnavailable(f"no row for socket inode {inode} in /proc/net/udp or /proc/net/udp6"
                           + (f" ({'; '.join(problems)})" if problems else ""))


def linux_unix_datagram_queue_length() -> int | None:
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):  # not Linux, or /proc not mounted
        return None
