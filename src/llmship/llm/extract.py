"""Carriers -> ``LLMCall``: the one place that knows how each client carries an LLM call.

Two carriers here (the third, OTLP GenAI spans, is read by ``llm/otlp.py``):
- a v0.4 APM span with its LLM Observability event in ``meta_struct["_llmobs"]`` (ddtrace with APM on), or
  an ``llm`` span without one (the call is still counted from the span's own tags and metrics);
- an event posted to the EVP proxy (``DD_APM_TRACING_ENABLED=false``, or spans the tracer expects dropped).

Either way the result is the same ``LLMCall`` with the event in the shape ddtrace posts on the EVP path, so
the policies that follow never ask where a call came from.
"""

from __future__ import annotations

import msgpack
import msgspec

from llmship import NO_EXTENSIONS
from llmship.model import LLM_CALL_KINDS, LLMOBS_STRUCT_KEY, LLMCall, LLMObsEvent, Span, Tokens
from llmship.sinks.spanenc import llm_carriers as _compiled_carriers

# ddtrace ROOT_PARENT_ID: the parent_id of a root LLM Observability span
ROOT_PARENT_ID = "undefined"
_MASK64 = (1 << 64) - 1

# OpenAI operation ids (the APM span's resource; the LLM Obs span is named "<provider>.<operation>") and
# their endpoints: ddtrace/contrib/internal/openai/_endpoint_hooks.py (OPERATION_ID, ENDPOINT_NAME). Events
# posted to the EVP proxy carry no endpoint, so this is how both paths agree on it.
OPENAI_ENDPOINTS = {
    "createCompletion": "/v1/completions",
    "createChatCompletion": "/v1/chat/completions",
    "parseChatCompletion": "/v1/chat/completions",
    "createEmbedding": "/v1/embeddings",
    "createResponse": "/v1/responses",
    "parseResponse": "/v1/responses",
}
# ddtrace's shadows of the event's token metrics on the APM span, then the GenAI convention's names.
_APM_TOKEN_METRICS = (
    ("_dd.llmobs.input_tokens", "gen_ai.usage.input_tokens"),
    ("_dd.llmobs.output_tokens", "gen_ai.usage.output_tokens"),
    ("_dd.llmobs.total_tokens", "gen_ai.usage.total_tokens"),
)
# The account a call was billed to, as the APM span names it: the openai-organization response header
# (ddtrace 4.16 contrib/internal/openai/patch.py traced_convert), else the organization id (ddtrace <= 2.21
# llmobs/_integrations/openai.py _set_base_span_tags; dd-trace-js and dd-trace-php). EVP events carry neither.
_ORG_META = ("openai.organization.name", "openai.organization.id")
# The x-ratelimit-* response headers, which ddtrace records as span metrics (the same traced_convert, in
# 2.21 patched_convert): our key -> the span metric.
_RATE_LIMIT_METRICS = {
    "requests.limit": "openai.organization.ratelimit.requests.limit",
    "requests.remaining": "openai.organization.ratelimit.requests.remaining",
    "tokens.limit": "openai.organization.ratelimit.tokens.limit",
    "tokens.remaining": "openai.organization.ratelimit.tokens.remaining",
}
_RATE_LIMIT_ITEMS = tuple(_RATE_LIMIT_METRICS.items())
# What a malformed event raises while it is read (RecursionError: absurdly nested input/output).
BAD_EVENT = (AttributeError, KeyError, TypeError, ValueError, RecursionError, OverflowError,
             msgpack.UnpackException, msgspec.DecodeError)


class BadEvent(ValueError):
    """An LLM Observability event that cannot be read; its APM span, if any, is still good."""


def carriers_py(spans: list[Span]) -> list[Span]:
    """The spans that carry an LLM Observability span (an event, or an ``llm`` span without one): every span
    of every chunk is looked at, so in one comprehension rather than a call each (compiled:
    ``sinks/_spanenc.pyx llm_carriers``, the same spans)."""
    return [s for s in spans if s.type == "llm" or LLMOBS_STRUCT_KEY in s.meta_struct]


carriers = _compiled_carriers or carriers_py


def from_span(span: Span, default_service: str, default_env: str, default_version: str) -> LLMCall:
    """The call a v0.4 span carries. Raises BadEvent when its ``_llmobs`` struct cannot be read (the caller
    may then read the call from the span alone: ``from_span`` on the span without the struct)."""
    try:
        event = None
        raw = span.meta_struct.get(LLMOBS_STRUCT_KEY)
        if raw is not None:
            data = _unpack_struct(raw)
            if not isinstance(data, dict):
                raise BadEvent("_llmobs is not a map")
            event = llmobs_event(data, span)
        meta = span.meta
        if event is not None:
            ev_meta = event["meta"]
            kind = _str((ev_meta.get("span") or {}).get("kind")) or "llm"
        else:
            ev_meta = {}
            kind = meta.get("_dd.llmobs.span_kind") or "llm"
        is_call = kind in LLM_CALL_KINDS
        if not is_call:
            tokens = Tokens()
        elif event is not None:
            tokens = event_tokens(event)
        else:
            metrics = span.metrics
            tokens = Tokens(*(_number(metrics.get(ours, metrics.get(semconv)))
                              for ours, semconv in _APM_TOKEN_METRICS))
        call = LLMCall("span", kind, span.trace_id & _MASK64, span.span_id, bool(span.error), span.start,
                       span.duration, span.service or default_service, meta.get("env") or default_env,
                       meta.get("version") or default_version, tokens=tokens, event=event, span=span)
        if is_call:
            identify(call, ev_meta, _str(event.get("name")) if event else "", meta, span.resource)
            call.rate_limits = span_rate_limits(span)
    except BAD_EVENT as e:
        raise BadEvent(f"{type(e).__name__}: {e}") from None
    return call


def from_event(event: LLMObsEvent, identity: tuple[str, str, str], defaults: tuple[str, str, str]) -> LLMCall:
    """The call an EVP event is. ``identity``: the service, env and version its own tags name ("" where
    none); ``defaults``: the agent's. Raises BadEvent for an event that is not an object."""
    if not isinstance(event, dict):
        raise BadEvent(f"an LLM Observability event must be an object, got {type(event).__name__}")
    try:
        ev_meta = event.get("meta")
        if not isinstance(ev_meta, dict):
            ev_meta = event["meta"] = {}
        kind = _str((ev_meta.get("span") or {}).get("kind")) or "llm"
        call = LLMCall("evp", kind, event_trace_id(event), _parse_span_id(event.get("span_id")),
                       event.get("status") == "error", int(event.get("start_ns") or 0),
                       int(event.get("duration") or 0), identity[0] or defaults[0], identity[1] or defaults[1],
                       identity[2] or defaults[2], event=event)
        if call.is_call:
            identify(call, ev_meta, _str(event.get("name")), {}, "")
            call.tokens = event_tokens(event)
    except BAD_EVENT as e:
        raise BadEvent(f"{type(e).__name__}: {e}") from None
    return call


_decode_struct = msgspec.msgpack.Decoder().decode


def _unpack_struct(raw: bytes):
    """msgspec's untyped decode (about twice msgpack's speed on these structs); a struct it refuses (invalid
    UTF-8) is read by msgpack, which replaces bad bytes as the Agent's decoder does."""
    if not NO_EXTENSIONS:
        try:
            return _decode_struct(raw)
        except msgspec.DecodeError:
            pass
    return msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="replace")


def identify(call: LLMCall, ev_meta: dict, name: str, apm_meta: dict, resource: str) -> None:
    """Model, provider and endpoint from the event and the APM span, preferring what both paths have (the
    event) so that a call is tagged the same whichever way it arrived."""
    call.model = (_str(ev_meta.get("model_name")) or apm_meta.get("_dd.llmobs.model_name")
                  or apm_meta.get("openai.response.model") or apm_meta.get("openai.request.model")
                  or apm_meta.get("gen_ai.request.model") or "")
    prefix, dot, operation = name.rpartition(".")
    call.provider = (_known(ev_meta.get("model_provider")) or apm_meta.get("openai.request.provider")
                     or (prefix if dot else "") or _known(apm_meta.get("_dd.llmobs.model_provider"))
                     or _known(apm_meta.get("gen_ai.provider.name")) or "")
    call.endpoint = (apm_meta.get("openai.request.endpoint") or OPENAI_ENDPOINTS.get(operation)
                     or OPENAI_ENDPOINTS.get(resource) or "")
    call.org = apm_meta.get(_ORG_META[0]) or apm_meta.get(_ORG_META[1]) or ""


def span_rate_limits(span: Span) -> dict[str, float] | None:
    """The rate-limit headers the client recorded on the span (only on answers it read: a 429 raises
    before ddtrace sees the headers), or None."""
    get = span.metrics.get
    found = None
    for key, name in _RATE_LIMIT_ITEMS:
        value = get(name)
        if value is not None and ((cls := value.__class__) is float or cls is int or _number(value) is not None):
            if found is None:
                found = {}
            found[key] = value
    return found


def event_tokens(event: LLMObsEvent) -> Tokens:
    metrics = event.get("metrics")
    if not isinstance(metrics, dict):
        return Tokens()
    get = metrics.get
    values = (get("input_tokens"), get("output_tokens"), get("total_tokens"), get("cache_read_input_tokens"),
              get("cache_write_input_tokens"), get("reasoning_output_tokens"))
    if not _PLAIN_NUMBERS.issuperset(map(type, values)):  # one look for the common case: numbers or none
        values = map(_number, values)
    return Tokens(*values)


def llmobs_event(data: dict, span: Span) -> LLMObsEvent:
    """A ``meta_struct["_llmobs"]`` struct joined with its APM span, in the shape ddtrace posts on the EVP
    path: ddtrace/llmobs/_llmobs.py ``_llmobs_span_event`` and ``_llmobs_tags``, reading the same keys.
    ``data`` is the freshly decoded struct: the event takes its containers over rather than copying them."""
    apm_trace_id = format_trace_id(span)
    get = data.get
    meta = get("meta")
    if not isinstance(meta, dict):
        meta = {}
    if get("pagent_name") is not None or get("pagent_span_id") is not None:
        meta["agent_attribution"] = {"pagent_name": get("pagent_name"), "pagent_span_id": get("pagent_span_id")}
    dd = get("_dd")
    if not isinstance(dd, dict):
        dd = {}
    span_id = str(span.span_id)
    dd["span_id"] = span_id
    dd["trace_id"] = dd["apm_trace_id"] = apm_trace_id
    metrics = get("metrics")
    event: LLMObsEvent = {
        # ddtrace refuses to build an event without its LLM Observability trace id; the APM one is the
        # closest stand-in rather than losing the event.
        "trace_id": get("trace_id") or apm_trace_id,
        "span_id": span_id,
        "parent_id": get("parent_id") or ROOT_PARENT_ID,
        "name": get("name") or span.name,
        "start_ns": span.start,
        "duration": span.duration,
        "status": "error" if span.error else "ok",
        "meta": meta,
        "metrics": metrics if isinstance(metrics, dict) else {},
        "tags": _event_tags(get("tags"), str(span.error), span.meta.get("error.type")),
        "_dd": dd,
    }
    for key in ("config", "session_id", "span_links"):
        if get(key):
            event[key] = data[key]
    return event


# The struct's tags (the same few sets again and again) -> the event's sorted "key:value" list. Only sets
# whose keys and values are all strings are remembered: a str is equal to nothing but a str, so a hit is
# always the same strings (1, 1.0 and True are equal keys but different tags).
_EVENT_TAGS: dict[tuple, tuple[str, ...]] = {}
_MAX_REMEMBERED = 4096  # entries of each cache here: emptied when full, as junk input could fill it


def _event_tags(tags, error: str, error_type) -> list[str]:
    """ddtrace's ``_llmobs_tags``: the struct's tags, ``error`` and ``error_type`` (when the span has one),
    as sorted "key:value" strings."""
    tags = tags if isinstance(tags, dict) else {}
    try:  # keys and values apart: two tuples, not one a tag (the decoder reuses its key strings, hashed once)
        key = (tuple(tags), tuple(tags.values()), error, error_type or None)
        found = _EVENT_TAGS.get(key)
    except TypeError:  # an unhashable value
        key = found = None
    if found is None:
        tags = dict(tags)
        tags["error"] = error
        if error_type:
            tags["error_type"] = error_type
        found = tuple(sorted(f"{k}:{v}" for k, v in tags.items()))
        if key is not None and all(x.__class__ is str for x in key[0] + key[1]) \
                and error_type.__class__ in (str, type(None)):
            if len(_EVENT_TAGS) >= _MAX_REMEMBERED:
                _EVENT_TAGS.clear()
            _EVENT_TAGS[key] = found
    return list(found)


def format_trace_id(span: Span) -> str:
    """ddtrace format_trace_id: 32 hex digits for a 128-bit id (high half in meta _dd.p.tid), else decimal."""
    tid = span.meta.get("_dd.p.tid", "0")
    high = _HIGH_HEX.get(tid)
    if high is None:
        try:
            value = int(tid, 16)
        except ValueError:
            value = 0
        high = f"{value:016x}" if value else ""
        if len(_HIGH_HEX) >= _MAX_REMEMBERED:
            _HIGH_HEX.clear()
        _HIGH_HEX[tid] = high
    return f"{high}{span.trace_id:016x}" if high else str(span.trace_id)


# _dd.p.tid as sent -> the high half as format_trace_id writes it ("": none). The traces of one second
# share it (ddtrace puts the start's unix seconds there), so it is parsed and formatted once.
_HIGH_HEX: dict[str, str] = {}


def event_trace_id(event: LLMObsEvent) -> int | None:
    """The APM trace id's low 64 bits (the sampling key both paths share) from an EVP event:
    ``_dd.apm_trace_id`` (128-bit hex, as ddtrace writes it) or else ``trace_id`` (hex or decimal)."""
    dd = event.get("_dd")
    raw = dd.get("apm_trace_id") if isinstance(dd, dict) else None
    raw = raw or event.get("trace_id")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw & _MASK64
    if isinstance(raw, str):
        try:
            if len(raw) == 32:
                return int(raw[16:], 16)
            if raw.isdigit():
                return int(raw) & _MASK64
        except ValueError:
            return None
    return None


def _parse_span_id(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _known(value) -> str:
    """A provider name unless the tracer said it does not know (ddtrace reports "unknown" for base URLs
    it does not recognise)."""
    return value if isinstance(value, str) and value.lower() != "unknown" else ""


_PLAIN_NUMBERS = frozenset((int, float, type(None)))  # values _number returns as they are


def _number(value) -> float | None:
    cls = value.__class__
    if cls is float or cls is int:  # the common case, without isinstance's slower path for a type that differs
        return value
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
