"""LLM Observability span events to the intake (`llmobs-intake.<site>/api/v2/llmobs`).

The body is what ddtrace's LLMObsSpanWriter posts (ddtrace/llmobs/_writer.py ``_data``): a JSON list with
one envelope per event, ``{"_dd.stage": "raw", "_dd.tracer_version": ..., "event_type": "span",
"spans": [event]}`` (plus ``"_dd.scope": "experiments"`` for experiment spans). Limits are ddtrace's:
a batch stays under 5 MiB, and an event of 5 MB or more has its input and output replaced by a
placeholder and ``collection_errors: ["dropped_io"]`` (``_truncate_span_event``) rather than being lost.

Each envelope is one item of the packer (llmship.shipping.packer): framed ``[`` ``,`` ``]``, submitted at
1000 events, 5 MiB, or after FLUSH_SECS.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from llmship.compression import FAST_LEVELS
from llmship.config import Config
from llmship.delivery.payload import Framing, Payload
from llmship.model import LLMObsEvent
from llmship.log import RateLimited, get_logger
from llmship.shipping.packer import Encoding, PackedSink, Packer, accepted
from llmship.sinks.intakes import ROUTES
from llmship.tap import IDLE
from llmship.telemetry import Telemetry

# 5 MiB: ddtrace DEFAULT_EVP_PAYLOAD_SIZE_LIMIT ("actual server limit is 5.1 MB")
MAX_PAYLOAD_BYTES = 5 << 20
# 5 MB: ddtrace DEFAULT_EVP_EVENT_SIZE_LIMIT, the LLM Observability per-event limit
MAX_EVENT_BYTES = 5_000_000
# 1000 events: ddtrace BaseLLMObsWriter.BUFFER_LIMIT, what one tracer flush can carry
MAX_EVENTS_PER_PAYLOAD = 1000
# 1 s: ddtrace's LLM Observability writer interval (_DD_LLMOBS_WRITER_INTERVAL default)
FLUSH_SECS = 1.0
# ddtrace DROPPED_VALUE_TEXT and DROPPED_IO_COLLECTION_ERROR (ddtrace/llmobs/_constants.py)
DROPPED_VALUE_TEXT = "[This value has been dropped because this span's size exceeds the 5MB size limit.]"
DROPPED_IO = "dropped_io"
_TRACER_VERSION_TAG = "ddtrace.version:"
# The LLM Observability intake is an EVP intake: gzip is the one encoding known to reach it (the Agent's EVP
# proxy forwards Content-Encoding, dd-trace-java sends gzip to EVP intakes: DataDog/dd-trace-java#6569);
# nothing documents zstd or deflate for it, so those fall back to gzip. identity is plain JSON, what ddtrace
# itself posts to the Agent's EVP proxy.
_ACCEPTS = ("gzip", "identity")

LLMOBS = Encoding("llmobs", ROUTES["llmobs"], "application/json", MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES,
                  Framing(b"[", b",", b"]"), max_items=MAX_EVENTS_PER_PAYLOAD, max_age_secs=FLUSH_SECS)

_log = RateLimited(get_logger("llmobs_sink"))


class LLMObsSink(PackedSink):
    def __init__(self, cfg: Config, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._tel = telemetry.component("llmobs_sink")
        self._packer = Packer(LLMOBS, submit, on_too_large=self._too_large)
        self.tap = IDLE  # the agent's Tap, given by agent.build
        self._tel.gauge("batch_items", lambda: len(self._packer))
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        compression = accepted(cfg.sinks.datadog.compression, _ACCEPTS)
        self._packer.reconfigure(replace(LLMOBS, compression=compression, level=FAST_LEVELS.get(compression)))

    def _too_large(self, events: int) -> None:
        self._tel.discard("item_too_large", events)

    def add(self, event: LLMObsEvent) -> None:
        """``add_item(encode(event))``, for callers in one process."""
        data = self.encode(event)
        if data is not None:
            self.add_item(data)

    def add_item(self, data: bytes) -> None:
        """Pack one encoded event (shipping plane)."""
        self._packer.add(data)

    def encode(self, event: LLMObsEvent) -> bytes | None:
        """One event in its envelope, within the per-event limit (processing plane); None: dropped, counted."""
        self._tel.inc("received")
        # Measured with its envelope (about 100 bytes more than ddtrace measures): slightly conservative,
        # and each event is serialized once on the common path.
        data = _dumps(envelope(event))
        if len(data) >= MAX_EVENT_BYTES:
            size = len(data)
            event = drop_io(event)
            data = _dumps(envelope(event))
            self._tel.inc("reduced", reason=DROPPED_IO)
            _log.warning("event_too_large", "llmobs_event_io_dropped", size_bytes=size,
                         reduced_bytes=len(data), limit_bytes=MAX_EVENT_BYTES)
            if len(data) >= MAX_EVENT_BYTES:  # metadata or tags alone are too large: the intake would refuse it
                self._tel.discard("event_too_large")
                _log.error("event_too_large_after_reduction", "llmobs_event_dropped", size_bytes=len(data),
                           limit_bytes=MAX_EVENT_BYTES)
                return None
        if self.tap.active:
            self.tap.offer("llmobs", event)
        return data


def envelope(event: LLMObsEvent) -> dict[str, Any]:
    """The envelope ddtrace's span writer wraps each event in."""
    env: dict[str, Any] = {"_dd.stage": "raw"}
    version = _tracer_version(event)
    if version:
        env["_dd.tracer_version"] = version
    env["event_type"] = "span"
    env["spans"] = [event]
    dd = event.get("_dd")
    if isinstance(dd, dict) and dd.get("scope") == "experiments":
        env["_dd.scope"] = "experiments"
    return env


def drop_io(event: LLMObsEvent) -> LLMObsEvent:
    """ddtrace's ``_truncate_span_event``, on a copy: input and output become a placeholder."""
    meta = event.get("meta")
    reduced = dict(event)
    reduced["meta"] = {**(meta if isinstance(meta, dict) else {}),
                       "input": {"value": DROPPED_VALUE_TEXT}, "output": {"value": DROPPED_VALUE_TEXT}}
    reduced["collection_errors"] = [DROPPED_IO]
    return reduced


def _tracer_version(event: LLMObsEvent) -> str:
    """ddtrace tags every event with its version; the envelope's ``_dd.tracer_version`` repeats it."""
    tags = event.get("tags")
    if not isinstance(tags, list):
        return ""
    try:  # the tags looked at in C, not a Python step each; a tag that is no string takes the loop below
        tag = next(filter(_is_version_tag, tags), "")
    except (AttributeError, TypeError):
        tag = next((t for t in tags if isinstance(t, str) and t.startswith(_TRACER_VERSION_TAG)), "")
    return tag[len(_TRACER_VERSION_TAG):]


_is_version_tag = operator.methodcaller("startswith", _TRACER_VERSION_TAG)


def _json_default(value: Any) -> Any:
    # Events decoded from msgpack may hold bytes or other non-JSON values; keep them readable.
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_json_default)
    except orjson.JSONEncodeError:
        # msgpack maps may have integer keys, which JSON writes as strings: OPT_NON_STR_KEYS, only then
        # (it costs a third more on every event: 4.2 instead of 3.0 us for the bench's)
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
