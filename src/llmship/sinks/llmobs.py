"""LLM Observability span events to the intake (`llmobs-intake.<site>/api/v2/llmobs`).

The body is what ddtrace's LLMObsSpanWriter posts (ddtrace/llmobs/_writer.py ``_data``): a JSON list with
one envelope per event, ``{"_dd.stage": "raw", "_dd.tracer_version": ..., "event_type": "span",
"spans": [event]}`` (plus ``"_dd.scope": "experiments"`` for experiment spans). Limits are ddtrace's:
a batch stays under 5 MiB, and an event of 5 MB or more has its input and output replaced by a
placeholder and ``collection_errors: ["dropped_io"]`` (``_truncate_span_event``) rather than being lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from llmship.compression import compress_fast, decompress
from llmship.config import Config
from llmship.delivery.payload import Payload, register_splitter
from llmship.model import LLMObsEvent
from llmship.log import RateLimited, get_logger
from llmship.sinks.batch import BatchedSink, Batcher
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
_SPLIT_MAX_BYTES = 64 << 20  # inflating back a payload we built ourselves

_log = RateLimited(get_logger("llmobs_sink"))


class LLMObsSink(BatchedSink):
    def __init__(self, cfg: Config, submit: Callable[[Payload], object], telemetry: Telemetry) -> None:
        self._tel = telemetry.component("llmobs_sink")
        self._batcher = Batcher(self._encode, submit, max_items=MAX_EVENTS_PER_PAYLOAD,
                                max_bytes=MAX_PAYLOAD_BYTES, max_age_secs=FLUSH_SECS, telemetry=self._tel)
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        # gzip unless told to send plain JSON: the EVP intakes take Content-Encoding gzip (the Agent's EVP
        # proxy forwards it), and nothing documents zstd or deflate for them.
        self._encoding = "identity" if cfg.sinks.datadog.compression == "identity" else "gzip"

    def add(self, event: LLMObsEvent) -> None:
        self._tel.inc("events_received")
        # Measured with its envelope (about 100 bytes more than ddtrace measures): slightly conservative,
        # and each event is serialized once on the common path.
        data = _dumps(envelope(event))
        if len(data) >= MAX_EVENT_BYTES:
            size = len(data)
            data = _dumps(envelope(drop_io(event)))
            self._tel.inc("reduced", reason=DROPPED_IO)
            _log.warning("event_too_large", "llmobs_event_io_dropped", size_bytes=size,
                         reduced_bytes=len(data), limit_bytes=MAX_EVENT_BYTES)
            if len(data) >= MAX_EVENT_BYTES:  # metadata or tags alone are too large: the intake would refuse it
                self._tel.inc("dropped", reason="event_too_large")
                _log.error("event_too_large_after_reduction", "llmobs_event_dropped", size_bytes=len(data),
                           limit_bytes=MAX_EVENT_BYTES)
                return
        self._batcher.add(data)

    def _encode(self, items: list[bytes]) -> Payload:
        return _payload(items, self._encoding)


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
    for tag in tags if isinstance(tags, list) else ():
        if isinstance(tag, str) and tag.startswith(_TRACER_VERSION_TAG):
            return tag[len(_TRACER_VERSION_TAG):]
    return ""


def _json_default(value: Any) -> Any:
    # Events decoded from msgpack may hold bytes or other non-JSON values; keep them readable.
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _dumps(value: Any) -> bytes:
    # OPT_NON_STR_KEYS: msgpack maps may have integer keys, which JSON writes as strings.
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _payload(items: list[bytes], encoding: str) -> Payload:
    body = b"[" + b",".join(items) + b"]"
    return Payload(kind="llmobs", body=compress_fast(body, encoding), content_type="application/json",
                   content_encoding=encoding, items=len(items))


def split_llmobs_payload(payload: Payload) -> list[Payload]:
    """Two payloads with half the envelopes each, for a 413."""
    envelopes = orjson.loads(decompress(payload.body, payload.content_encoding, _SPLIT_MAX_BYTES))
    if not isinstance(envelopes, list) or len(envelopes) < 2:
        return [payload]
    half = len(envelopes) // 2
    return [_payload([_dumps(e) for e in part], payload.content_encoding)
            for part in (envelopes[:half], envelopes[half:])]


register_splitter("llmobs", split_llmobs_payload)
