"""The three kinds of event that travel through the agent.

- Metric samples never exist as objects: sources call ``Aggregator.add`` directly (the DogStatsD hot
  path cannot afford an object per line), and the aggregator turns them into series per flush interval.
- A span is an APM span as a tracer sent it, with its LLM Observability event (if any) decoded and joined.
- A log record is a dict in the shape of Datadog's HTTP logs intake (message, ddsource, ddtags, hostname,
  service, status, plus any attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LogRecord = dict[str, Any]

# An LLM Observability span event in the JSON shape ddtrace posts to /evp_proxy/v2/api/v2/llmobs:
# trace_id, span_id, parent_id (decimal strings), name, start_ns, duration, status, meta, metrics,
# tags (list of "k:v"), _dd{...}. Events decoded from meta_struct["_llmobs"] are converted to this shape.
LLMObsEvent = dict[str, Any]


@dataclass(slots=True)
class Span:
    trace_id: int  # low 64 bits; the high 64 bits are in meta["_dd.p.tid"]
    span_id: int
    parent_id: int  # 0 for a root span
    service: str
    name: str
    resource: str
    type: str
    start: int  # unix time, nanoseconds
    duration: int  # nanoseconds
    error: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # meta_struct entries other than "_llmobs", still msgpack-encoded as the tracer sent them
    meta_struct: dict[str, bytes] = field(default_factory=dict)
    # The LLM Observability event carried in meta_struct["_llmobs"], converted to LLMObsEvent shape and
    # joined with this span's ids, start, duration and status; None for spans that carry none.
    llmobs: LLMObsEvent | None = None
    # span_links / span_events as sent (v0.4 only), passed through to the trace intake
    extra: dict[str, Any] = field(default_factory=dict)


def root_span(chunk: list[Span]) -> Span:
    """A trace chunk's root: the span whose parent is not in the chunk (the first span if none is)."""
    ids = {s.span_id for s in chunk}
    for s in chunk:
        if s.parent_id == 0 or s.parent_id not in ids:
            return s
    return chunk[0]


@dataclass(slots=True)
class TracerInfo:
    """What the tracer said about itself in request headers; goes into the trace intake's TracerPayload."""

    language: str = ""
    language_version: str = ""
    tracer_version: str = ""
    container_id: str = ""
    runtime_id: str = ""
