"""Log records to Datadog's HTTP logs intake (`http-intake.logs.<site>/api/v2/logs`).

The body is a JSON array of log objects carrying the reserved attributes at the top level (``message``,
``ddsource``, ``ddtags`` as a "k:v,k2:v2" string, ``hostname``, ``service``, ``status``) plus any others.
Limits, from the intake's documentation (docs.datadoghq.com/api/latest/logs/#send-logs): at most 1000
entries and 5 MB uncompressed per request, 1 MB per log. The intake accepts a larger log and truncates it;
we cut it ourselves first (its longest strings, marked with ``…[truncated]`` and the tag
``llmship.truncated:true``) so that one huge record can neither be refused as part of a batch nor dropped.
Each record is one item of the packer (llmship.shipping.packer), framed ``[`` ``,`` ``]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from llmship.compression import FAST_LEVELS
from llmship.config import Config
from llmship.delivery.payload import Framing, Payload
from llmship.model import LogRecord
from llmship.log import RateLimited, get_logger
from llmship.shipping.packer import Encoding, PackedSink, Packer, accepted
from llmship.sinks.intakes import ROUTES
from llmship.tap import IDLE
from llmship.telemetry import Telemetry
from llmship.transforms.logs import TRUNCATED_TAG
from llmship.transforms.truncate import TRUNCATION_MARKER, truncate_text

# Datadog logs intake limits (docs.datadoghq.com/api/latest/logs/#send-logs), as decimal MB like Vector's
# datadog_logs sink (MAX_PAYLOAD_BYTES = 5_000_000): the safe reading of "5MB" and "1MB".
MAX_ENTRIES_PER_PAYLOAD = 1000
MAX_PAYLOAD_BYTES = 5_000_000
MAX_ENTRY_BYTES = 1_000_000
# 5 s: the Datadog Agent's logs_config.batch_wait default; shorter when the agent flushes more often
BATCH_WAIT_SECS = 5.0
_MARKER_BYTES = len(TRUNCATION_MARKER.encode())
_RESERVED = ("message", "ddsource", "ddtags", "hostname", "service", "status", "timestamp")
# The logs intake takes zstd (the Agent's logs_config.compression_kind, "zstd" by default in current Agents:
# datadog-agent pkg/config/setup/config.go DefaultLogCompressionKind) and gzip; the API docs (Send logs,
# Content-Encoding) list gzip and deflate. Every [sinks.datadog] compression is accepted.
_ACCEPTS = ("gzip", "deflate", "zstd", "identity")

# The limit as sent is the uncompressed one: a body can only compress below it.
LOGS = Encoding("logs", ROUTES["logs"], "application/json", MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES,
                Framing(b"[", b",", b"]"), max_items=MAX_ENTRIES_PER_PAYLOAD, max_age_secs=BATCH_WAIT_SECS)

_log = RateLimited(get_logger("logs_sink"))


class LogsSink(PackedSink):
    def __init__(self, cfg: Config, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._tel = telemetry.component("logs_sink")
        self._packer = Packer(LOGS, submit, on_too_large=self._too_large)
        self.tap = IDLE  # the agent's Tap, given by agent.build
        self._tel.gauge("batch_items", lambda: len(self._packer))
        # Pack encoded records (shipping plane): the packer's own add and add_many, one call less
        self.add_item = self._packer.add
        self.add_items = self._packer.add_many
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        self._hostname = cfg.agent.hostname
        compression = accepted(cfg.sinks.datadog.compression, _ACCEPTS)
        self._packer.reconfigure(replace(LOGS, compression=compression, level=FAST_LEVELS.get(compression),
                                         max_age_secs=min(BATCH_WAIT_SECS, cfg.agent.flush_interval_secs)))

    def _too_large(self, events: int) -> None:
        self._tel.discard("item_too_large", events)

    def add(self, record: LogRecord) -> None:
        """``add_item(encode(record))``, for callers in one process."""
        self.add_items(self.encode_many([record]))

    def encode(self, record: LogRecord) -> bytes | None:
        """One record as the intake's JSON, within the per-entry limit (processing plane); None: dropped."""
        items = self.encode_many([record])
        return items[0] if items else None

    def encode_many(self, records: list[LogRecord]) -> list[bytes]:
        """Each record as the intake's JSON, within the per-entry limit (processing plane), in order; a record
        JSON cannot hold is dropped (counted)."""
        self._tel.inc("received", len(records))
        hostname, dumps, tap, out = self._hostname, orjson.dumps, self.tap, []
        for record in records:
            if not record.get("hostname"):
                record["hostname"] = hostname
            ddtags = record.get("ddtags")
            if isinstance(ddtags, list):  # the intake wants one "k:v,k2:v2" string
                record["ddtags"] = ",".join(str(t) for t in ddtags)
            try:
                data = dumps(record)
            except TypeError as e:  # a value JSON cannot hold (a record built by code, not decoded from JSON)
                self._tel.discard("not_serializable")
                _log.error("not_serializable", "log_record_not_serializable", error=str(e))
                continue
            if len(data) > MAX_ENTRY_BYTES:
                data = self._reduce(record, data)
            if tap.active:
                tap.offer("logs", record)
            out.append(data)
        return out

    def _reduce(self, record: LogRecord, data: bytes) -> bytes:
        size = len(data)
        data = shrink_to_fit(record, data, MAX_ENTRY_BYTES)
        self._tel.inc("reduced", reason="entry_too_large")
        _log.warning("entry_too_large", "log_entry_truncated", size_bytes=size, reduced_bytes=len(data),
                     limit_bytes=MAX_ENTRY_BYTES)
        return data


# ----------------------------------------------------------------------------------------- oversize


def shrink_to_fit(record: LogRecord, data: bytes, limit: int) -> bytes:
    """Cut the record's longest strings (in place) until it serializes to at most ``limit`` bytes.

    Removing n characters removes at least n bytes of JSON, so each cut takes the excess (plus the
    marker's bytes) from the longest string; a record whose bulk is not in strings is replaced by its
    reserved attributes and its JSON text, cut, as the message."""
    for _ in range(64):  # each round empties or fixes one string: bounded, and ends far sooner in practice
        excess = len(data) - limit
        if excess <= 0:
            break
        leaf = _longest_string(record)
        if leaf is None or len(leaf[2]) <= _MARKER_BYTES:
            break
        parent, key, value = leaf
        parent[key], _ = truncate_text(value, max(0, len(value) - excess - _MARKER_BYTES))
        _mark_truncated(record)
        data = orjson.dumps(record)
    if len(data) <= limit:
        return data
    text = data.decode("utf-8", "replace")
    fallback: dict[str, Any] = {k: record[k] for k in _RESERVED if k in record and k != "message"}
    fallback["message"] = truncate_text(text, limit // 8)[0]  # every character is at most 6 bytes of JSON
    _mark_truncated(fallback)
    return orjson.dumps(fallback)


def _longest_string(node: Any) -> tuple[Any, Any, str] | None:
    """(container, key, value) of the longest string anywhere in ``node``."""
    best: tuple[Any, Any, str] | None = None
    stack = [node]
    while stack:
        current = stack.pop()
        items = current.items() if isinstance(current, dict) else enumerate(current)
        for key, value in items:
            if isinstance(value, str):
                if best is None or len(value) > len(best[2]):
                    best = (current, key, value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return best


def _mark_truncated(record: LogRecord) -> None:
    ddtags = record.get("ddtags")
    if not isinstance(ddtags, str) or not ddtags:
        record["ddtags"] = TRUNCATED_TAG
    elif TRUNCATED_TAG not in ddtags:
        record["ddtags"] = f"{ddtags},{TRUNCATED_TAG}"
