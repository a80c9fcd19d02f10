"""One APM span -> the body of a protobuf ``Span`` message for the trace intake, compiled or pure Python.

``encode_span(span, fallback_service, meta_defaults)`` is the compiled encoder (``_spanenc.pyx``) when it
was built at install and ``LLMSHIP_NO_EXTENSIONS`` is not set (read once, at import), else the pure-Python
twin below; both give the same bytes and raise in the same cases (tests/sinks/test_spanenc.py compares
them). ``encode_spans`` does a chunk's spans in one call (the trace sink's path), compiled or twin alike.
``NATIVE`` says which ones they are; ``encode_span_py``/``encode_spans_py`` and ``encode_span_native``/
``encode_spans_native`` (None when not built) are all importable for tests and benchmarks.

Field numbers (datadog-agent pkg/proto/datadog/trace/span.proto):
  Span{service=1, name=2, resource=3, traceID=4, spanID=5, parentID=6, start=7, duration=8, error=9,
       meta=10, metrics=11, type=12, meta_struct=13, spanLinks=14}
  SpanLink{traceID=1, traceID_high=2, spanID=3, attributes=4, tracestate=5, flags=6}
Maps are repeated entry messages {key=1, value=2}, in the span's dict order.

What is written, beyond the span as sent:
- The minimum of the Agent's normalizer the intake relies on: an empty service becomes ``fallback_service``
  (the tracer's language), an empty name ``service.trace``, an empty resource the name; a negative
  duration 0.
- ``meta_defaults``: (key, value) pairs the agent adds (env, version, its tags), each written as a meta
  entry after the span's own when the span's meta lacks the key, in the given order. The span is never
  mutated. The keys should be distinct (a repeated key is written twice; the intake keeps the last).
- ``span_events`` (native v0.4 events) become the ``events`` meta entry the tracers write when the Agent
  lacks native support, unless meta has ``events`` already; ``span_links`` become SpanLink messages.
- ``meta_struct`` entries except ``_llmobs``: the LLM Observability event (prompt text included) never goes
  to the trace intake; it leaves only through LLM Observability, after scrubbing.

Errors: a span decoded by msgspec always encodes. A span built by code may hold what the wire format cannot
carry; then both implementations raise, never crash, and the caller drops the span on ``ENCODE_ERRORS``:
- OverflowError: an integer field (trace_id, span_id, parent_id, start, duration, error) outside
  [-2**63, 2**64) (negatives are written as 64-bit two's complement, as the intake reads int64 fields;
  a negative duration is 0), or an int metric too large for a double;
- ValueError: a value of the wrong type (a non-str meta key or value, a non-number metric, non-bytes
  meta_struct value, meta that is not a dict...), a string with a lone surrogate (UnicodeEncodeError),
  span events that do not serialize to JSON or nest arrays deeper than 64.
Falsy values stand for "absent" as they always have (None service -> the fallback, None trace_id -> 0); a
span_links or span_events value that is not a list or tuple is ignored, and so are links, events and
attribute maps that are not dicts.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from llmship import NO_EXTENSIONS
from llmship import protobuf as pb
from llmship.model import LLMOBS_STRUCT_KEY  # never shipped to the trace intake (see the module docstring)

# Fallbacks of the Agent's span normalizer (pkg/trace/api/normalizer.go).
DEFAULT_SERVICE_NAME = "service"
DEFAULT_SPAN_NAME = "service.trace"
# What encode_span raises for a span it cannot encode (see the module docstring).
ENCODE_ERRORS = (ValueError, OverflowError)
# Deepest nesting of array attributes in span events.
MAX_ATTRIBUTE_DEPTH = 64

MetaDefaults = tuple[tuple[str, str], ...]

# ------------------------------------------------------------------------------------ the Python twin

# Encoded meta and metrics entries remembered by (key, value): most repeat from span to span (env,
# component, model, process tags, flags). Emptied when full, so unique values (ids) cannot grow it.
_MAX_CACHED_ENTRIES = 16_384
_entries: dict[tuple, bytes] = {}  # (key, value) -> meta entry; (key, packed double, None) -> metrics entry

_LEN = pb.LEN
_META, _METRICS, _META_STRUCT, _LINK_ATTRIBUTES = (pb.tag(n, _LEN) for n in (10, 11, 13, 4))
_SPAN_LINK = pb.tag(14, _LEN)
_KEY, _STRING_VALUE, _DOUBLE_VALUE = b"\x0a", b"\x12", b"\x11"  # entry key=1 (LEN), value=2 (LEN / 64-bit)
_VARINT_TAGS = [pb.tag(n, pb.VARINT) for n in range(16)]
_LEN_TAGS = [pb.tag(n, _LEN) for n in range(16)]
_pack_double = struct.Struct("<d").pack
_encode = str.encode  # not s.encode(): only a str may pass
_MIN_INT64, _UINT64_END = -(1 << 63), 1 << 64
_EMPTY: dict = {}


def encode_span_py(span: Any, fallback_service: str, meta_defaults: MetaDefaults = ()) -> bytes:
    """The pure-Python twin of the compiled encoder: the protobuf Span message body (without tag/length)."""
    service, name, resource = span.service, span.name, span.resource
    trace_id, span_id, parent_id, start, duration, error = (
        span.trace_id, span.span_id, span.parent_id, span.start, span.duration, span.error)
    meta, metrics, type_, meta_struct = span.meta, span.metrics, span.type, span.meta_struct
    links, events = span.span_links, span.span_events
    try:
        meta, metrics, meta_struct = _dict(meta, "meta"), _dict(metrics, "metrics"), _dict(meta_struct, "meta_struct")
        events_json = None
        if events and "events" not in meta and isinstance(events, (list, tuple)):
            events_json = span_events_json(events)
        name = name or DEFAULT_SPAN_NAME
        if duration and isinstance(duration, int) and duration < 0:
            duration = 0
        parts = [
            _str_field(1, service or fallback_service), _str_field(2, name), _str_field(3, resource or name),
            _varint_field(4, trace_id), _varint_field(5, span_id), _varint_field(6, parent_id),
            _varint_field(7, start), _varint_field(8, duration), _varint_field(9, error),
        ]
        parts.extend([_meta_entry(item) for item in meta.items()])
        if events_json is not None:
            parts.append(_meta_entry(("events", events_json)))
        for key, value in meta_defaults:
            if key not in meta and (events_json is None or key != "events"):
                parts.append(_meta_entry((key, value)))
        parts.extend([_metric_entry(k, v) for k, v in metrics.items()])
        parts.append(_str_field(12, type_))
        for key, value in meta_struct.items():
            if key != LLMOBS_STRUCT_KEY:
                parts.append(_bytes_entry(_META_STRUCT, key, value))
        if links and isinstance(links, (list, tuple)):
            for link in links:
                body = span_link(link)
                parts.append(_SPAN_LINK + pb.varint(len(body)) + body)
        return b"".join(parts)
    except (TypeError, AttributeError) as e:  # a value of the wrong type somewhere (orjson's errors too)
        raise ValueError(f"span cannot be encoded: {e}") from e


_CHUNK_SPAN = pb.tag(3, _LEN)  # TraceChunk.spans


def encode_spans_py(spans: Any, fallback_service: str, meta_defaults: MetaDefaults = (),
                    wrap: tuple[bytes, bytes] | None = None) -> tuple[bytes, list[int], list[str]]:
    """A chunk's spans at once: the ``TraceChunk.spans`` fields (tag, length, Span body) of those that encode,
    concatenated in order (with ``wrap``, a (field tag, head) pair: inside that length-delimited field, after
    ``head``: the TraceChunk message the trace sink sends, built without copying the spans again); the size
    of each span's field (to cut a chunk too large for one payload without encoding again); and, for each
    span that cannot be encoded, ``"<error type>: <message>"``."""
    fields: list[bytes] = []
    sizes: list[int] = []
    errors: list[str] = []
    for span in spans:
        try:
            body = encode_span_py(span, fallback_service, meta_defaults)
        except ENCODE_ERRORS as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        field = _CHUNK_SPAN + pb.varint(len(body)) + body
        fields.append(field)
        sizes.append(len(field))
    if wrap is not None:
        tag, head = wrap
        fields[:0] = (tag, pb.varint(len(head) + sum(sizes)), head)
    return b"".join(fields), sizes, errors


def _dict(value: Any, what: str) -> dict:
    if value.__class__ is dict or isinstance(value, dict):
        return value
    if value:
        raise ValueError(f"{what} must be a dict, not {type(value).__name__}")
    return _EMPTY


def _str_field(field: int, s: Any) -> bytes:
    if not s:
        return b""
    b = _encode(s)
    return _LEN_TAGS[field] + pb.varint(len(b)) + b


def _varint_field(field: int, n: Any) -> bytes:
    if not n:
        return b""
    if n.__class__ is not int or n < 0 or n >= _UINT64_END:
        n = _uint64_checked(n, field)
    return _VARINT_TAGS[field] + pb.varint(n)


def _uint64_checked(n: Any, field: int) -> int:
    if not isinstance(n, int):
        raise ValueError(f"span field {field} must be an int, not {type(n).__name__}")
    if _MIN_INT64 <= n < 0:
        return n + _UINT64_END
    if 0 <= n < _UINT64_END:
        return n
    raise OverflowError(f"span field {field} out of the 64-bit range: {n}")


def _meta_entry(item: tuple[str, str]) -> bytes:
    key, value = item
    try:
        entry = _entries.get(item)
    except TypeError:  # an unhashable value: the key is encoded first, for the error the native encoder raises
        return _entry(_META, _encode(key), _encode(value))
    if entry is None:
        entry = _entry(_META, _encode(key), _encode(value))
        if len(_entries) >= _MAX_CACHED_ENTRIES:
            _entries.clear()
        _entries[item] = entry
    return entry


def _metric_entry(key: str, value: float) -> bytes:
    try:
        packed = _pack_double(value)  # by its bits: 0.0 == -0.0, and NaN equals nothing
    except struct.error:
        raise (OverflowError if isinstance(value, int) else ValueError)(
            f"metric {key!r} is not a float: {type(value).__name__}") from None
    item = (key, packed, None)
    entry = _entries.get(item)
    if entry is None:
        k = _encode(key)
        lk = pb.varint(len(k))
        entry = b"".join((_METRICS, pb.varint(10 + len(lk) + len(k)), _KEY, lk, k, _DOUBLE_VALUE, packed))
        if len(_entries) >= _MAX_CACHED_ENTRIES:
            _entries.clear()
        _entries[item] = entry
    return entry


def _entry(field_tag: bytes, k: bytes, v: bytes) -> bytes:
    """A map<string,string|bytes> entry; the value is written even when empty, so readers see the key."""
    lk, lv = pb.varint(len(k)), pb.varint(len(v))
    return b"".join((field_tag, pb.varint(2 + len(lk) + len(k) + len(lv) + len(v)), _KEY, lk, k,
                     _STRING_VALUE, lv, v))


def _bytes_entry(field_tag: bytes, key: str, value: bytes) -> bytes:
    k = _encode(key)
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"meta_struct[{key!r}] must be bytes, not {type(value).__name__}")
    return _entry(field_tag, k, bytes(value))


def span_link(link: Any) -> bytes:
    """A SpanLink message body; anything but a dict is an empty link, as it always was."""
    if not isinstance(link, dict):
        return b""
    parts = [pb.f_varint(1, _link_uint(link.get("trace_id"))), pb.f_varint(2, _link_uint(link.get("trace_id_high"))),
             pb.f_varint(3, _link_uint(link.get("span_id")))]
    attributes = link.get("attributes")
    if isinstance(attributes, dict):
        for k, v in attributes.items():
            key, value = str(k), str(v)
            parts.append(_entry(_LINK_ATTRIBUTES, _encode(key), _encode(value)))
    parts.append(_str_field(5, str(link.get("tracestate") or "")))
    parts.append(pb.f_varint(6, _link_uint(link.get("flags")) & 0xFFFFFFFF))
    return b"".join(parts)


def _link_uint(value: Any) -> int:
    return value & 0xFFFFFFFFFFFFFFFF if isinstance(value, int) else 0


_ATTRIBUTE_VALUE_KEYS = {0: "string_value", 1: "bool_value", 2: "int_value", 3: "double_value"}


def span_events_json(events: Any) -> str:
    """Native v0.4 span events -> the ``events`` meta tag tracers write when the Agent lacks native support.

    Native attributes are typed (AttributeAnyValue: type 0 string, 1 bool, 2 int, 3 double, 4 array, per
    pkg/proto/datadog/trace/span.proto); the meta form holds plain JSON values.
    """
    out = []
    for event in events:
        if isinstance(event, dict):
            attributes = event.get("attributes")
            plain = ({str(k): _plain_attribute(v, 0) for k, v in attributes.items()}
                     if isinstance(attributes, dict) else {})
            out.append({"name": event.get("name", ""), "time_unix_nano": event.get("time_unix_nano", 0),
                        "attributes": plain})
    return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _plain_attribute(value: Any, depth: int) -> Any:
    if not isinstance(value, dict) or "type" not in value:
        return value
    kind = value.get("type")
    if not isinstance(kind, (int, float)):
        return None
    if kind == 4:
        if depth >= MAX_ATTRIBUTE_DEPTH:
            raise ValueError("span event attribute arrays nested too deeply")
        array = value.get("array_value")
        items = array.get("values") if isinstance(array, dict) else None
        return [_plain_attribute(v, depth + 1) for v in items] if isinstance(items, (list, tuple)) else []
    key = _ATTRIBUTE_VALUE_KEYS.get(kind)
    return value.get(key) if key else None


# ------------------------------------------------------------------------------------- the choice


NATIVE_API_VERSION = 6  # _spanenc.pyx's API_VERSION this module calls


def _load_native() -> Any:
    """The compiled encoder module, or None when it was not built (no compiler at install) or cannot load."""
    try:
        from llmship.sinks import _spanenc
    except ImportError:
        return None
    # a module built from an older source (an in-place build not redone) lacks what this one calls, or
    # takes other arguments: API_VERSION is raised with every such change
    return _spanenc if getattr(_spanenc, "API_VERSION", None) == NATIVE_API_VERSION else None


_native = _load_native()
encode_span_native = _native.encode_span if _native is not None else None
encode_spans_native = _native.encode_spans if _native is not None else None
# Read at import: set it before the agent starts to run the twin (a machine whose build misbehaves, a bisect).
NATIVE = _native is not None and not NO_EXTENSIONS
encode_span = encode_span_native if NATIVE else encode_span_py
encode_spans = encode_spans_native if NATIVE else encode_spans_py
# The scrub's gathering of span strings (transforms.privacy.scrub_chunks); None: its Python path.
span_candidates = getattr(_native, "span_candidates", None) if NATIVE else None
# The v0.4 decoder (sources.traces.decode_v04); None: msgspec's typed decode.
decode_v04_spans = getattr(_native, "decode_v04_spans", None) if NATIVE else None
# The LLM stage's scan for spans that carry a call (llm.extract.carriers); None: its Python twin.
llm_carriers = getattr(_native, "llm_carriers", None) if NATIVE else None
# The trace source's count of spans with an LLM Observability event (sources.traces); None: its Python twin.
llmobs_spans = getattr(_native, "llmobs_spans", None) if NATIVE else None
# The trace source's check that drop_poison has nothing to do (sources.traces); None: drop_poison looks.
poison_free = getattr(_native, "poison_free", None) if NATIVE else None
# The v0.4 transcoder (processing.Emitter.transcode_v04): chunks with no LLM call and no scrub candidate
# written straight from the body; None: every chunk decoded into Span objects (its twin, that whole path).
transcode_v04 = getattr(_native, "transcode_v04", None) if NATIVE else None
