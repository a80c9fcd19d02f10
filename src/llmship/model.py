"""The typed events that travel through the agent, from the source that decodes them to the sink that
encodes them.

- ``Span``: an APM span as a tracer sent it (v0.4 map, v0.5 array, or converted from OTLP). A msgspec
  Struct, so a v0.4 body decodes straight into it (``sources/traces.py``); spans that carry no LLM call go
  from decode to the span encoder without becoming anything else. ``meta_struct`` keeps the tracer's
  msgpack blobs, ``_llmobs`` included (the encoder leaves that one out).
- ``LLMCall``: the one model of an LLM call, extracted once from whatever carried it (a v0.4 span with its
  ``_llmobs`` event, an EVP event, an OTLP GenAI span). The LLM policies (``llm/``) read and complete it.
- ``LogRecord``: a dict in the shape of Datadog's HTTP logs intake (message, ddsource, ddtags, hostname,
  service, status, plus any attributes).
- ``LLMObsEvent``: an LLM Observability span event in the JSON shape ddtrace posts to
  /evp_proxy/v2/api/v2/llmobs (trace_id, span_id, parent_id as decimal strings, name, start_ns, duration,
  status, meta, metrics, tags as "k:v" strings, _dd).
- ``MetricSample``: (name, type, value, tags) with tags a "k:v,k2:v2" string: what a policy derives and
  the aggregator takes. Plain tuples, so they cross a process boundary as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

LogRecord = dict[str, Any]
LLMObsEvent = dict[str, Any]
MetricSample = tuple[str, str, float, str]

# ddtrace's key for the LLM Observability event it carries in a span's meta_struct (v0.4 only).
LLMOBS_STRUCT_KEY = "_llmobs"
# The metric a tracer's sampling decision travels in, on a chunk's local root (ddtrace constants).
SAMPLING_PRIORITY_KEY = "_sampling_priority_v1"

# The protobuf types of the trace intake's Span fields (uint64 ids, int64 times): a typed decode refuses
# what does not fit, and the tolerant decoder then masks ids and refuses times as the Agent's decoder does.
# (msgpack cannot carry more than 64 bits, so uint64 needs only its lower bound.)
UInt64 = Annotated[int, msgspec.Meta(ge=0)]
Int64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]


class Span(msgspec.Struct, gc=False):
    """One APM span; field names are the v0.4 wire keys (datadog-agent pkg/proto/datadog/trace/span.proto).

    gc=False: spans hold only strings, numbers and containers of them, never a reference back, and tens of
    thousands exist at once under load; the cyclic collector need not track them (msgspec docs, "gc")."""

    service: str = ""
    name: str = ""
    resource: str = ""
    trace_id: UInt64 = 0  # low 64 bits; the high 64 bits are in meta["_dd.p.tid"]
    span_id: UInt64 = 0
    parent_id: UInt64 = 0  # 0 for a root span
    start: Int64 = 0  # unix time, nanoseconds
    duration: Int64 = 0  # nanoseconds
    error: Int64 = 0
    meta: dict[str, str] = {}
    metrics: dict[str, float] = {}
    type: str = ""
    # msgpack-encoded as the tracer sent them; ``_llmobs`` is read by the LLM extractor, never shipped
    meta_struct: dict[str, bytes] = {}
    span_links: list | None = None  # as sent (v0.4 only), passed through to the trace intake
    span_events: list | None = None  # likewise; written into meta["events"] for the intake


def root_span(chunk: list[Span]) -> Span:
    """A trace chunk's root: a span with no parent (tracers send one per chunk), else the first span whose
    parent is not in the chunk (a partial flush), else the first span."""
    for s in chunk:
        if s.parent_id == 0:
            return s
    ids = {s.span_id for s in chunk}
    for s in chunk:
        if s.parent_id not in ids:
            return s
    return chunk[0]


def sampling_priority(chunk: list[Span]) -> float | None:
    """The chunk's sampling priority as the tracer wrote it: it sets it on the local root, so the first
    span that has one; None when no span does (no decision: the chunk is kept)."""
    for s in chunk:
        value = s.metrics.get(SAMPLING_PRIORITY_KEY)
        if value is not None:
            return value
    return None


@dataclass(slots=True)
class TracerInfo:
    """What the tracer said about itself in request headers; goes into the trace intake's TracerPayload."""

    language: str = ""
    language_version: str = ""
    tracer_version: str = ""
    container_id: str = ""
    runtime_id: str = ""


@dataclass(slots=True)
class Tokens:
    """Token counts as reported (None: not reported). ``total`` is completed from its parts."""

    input: float | None = None  # includes the cached input tokens (OpenAI prompt_tokens, GenAI conventions)
    output: float | None = None  # includes the reasoning tokens
    total: float | None = None
    cache_read: float | None = None  # of the input, read from the provider's prompt cache
    cache_write: float | None = None  # of the input, written to it
    reasoning: float | None = None  # of the output

    def __post_init__(self) -> None:
        if self.total is None and (self.input is not None or self.output is not None):
            self.total = (self.input or 0) + (self.output or 0)

    @property
    def known(self) -> bool:
        return self.total is not None


@dataclass(slots=True)
class LLMCall:
    """One LLM call (or another LLM Observability span: workflow, agent, tool, ...), whatever carried it.

    Identity values are raw (as the client sent them); the tag policy normalizes them. ``event`` is the LLM
    Observability event to ship, in the EVP shape, or None when the carrier had none (an ``llm`` span
    without ``_llmobs``): policies complete it in place."""

    source: str  # "span" (v0.4 meta_struct) | "evp" | "otlp"
    kind: str  # llm, embedding, workflow, agent, tool, task, retrieval, ...
    trace_id: int | None  # low 64 bits of the APM trace id: the sampling key both paths share
    span_id: int | None  # the de-duplication key: one call shipped and counted once across paths
    error: bool
    start_ns: int
    duration_ns: int
    service: str = ""
    env: str = ""
    version: str = ""
    model: str = ""
    provider: str = ""
    endpoint: str = ""
    org: str = ""  # the provider account (OpenAI organization) when the carrier names it
    tokens: Tokens = field(default_factory=Tokens)
    tokens_estimated: bool = False
    proxied: bool = False  # the client side of a call an instrumented proxy reports itself
    event: LLMObsEvent | None = None
    span: Span | None = None  # the APM span that carried it, if any
    # the provider's rate-limit headers as the client recorded them, keyed "requests.limit",
    # "requests.remaining", "tokens.limit", "tokens.remaining"; None when it recorded none
    rate_limits: dict[str, float] | None = None

    @property
    def is_call(self) -> bool:
        """An LLM call proper (metrics, sample logs), not a workflow or tool span around calls."""
        return self.kind in LLM_CALL_KINDS


LLM_CALL_KINDS = frozenset(("llm", "embedding"))
