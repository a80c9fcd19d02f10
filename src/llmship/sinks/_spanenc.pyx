# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, infer_types=False
"""The compiled span encoder: ``encode_span(span, fallback_service, meta_defaults) -> bytes``, and
``encode_spans`` for a chunk's spans at once (one call and one buffer a chunk, not a Python loop).

Same contract, same bytes and same exceptions as ``llmship.sinks.spanenc.encode_span_py`` (its docstring
is the specification; tests/sinks/test_spanenc.py compares the two). Varints, tags and UTF-8 are written
straight into one growing buffer (on the stack up to 4 KiB): no Python object per entry on the common path.
Span links and span events, rare, go through Python objects as in the twin.

Also ``span_candidates``: the strings transforms/privacy.py's ``scrub_chunks`` scans, gathered into one
buffer, and where the scan's matches fall among them (its Python path is privacy's ``_candidates_py``);
and ``decode_v04_spans``, a v0.4 msgpack body read straight into ``Span`` objects (its twin is msgspec's
typed decode in sources/traces.py, which it hands every body it does not take exactly as msgspec would).
"""

from libc.stdint cimport uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcmp, memcpy, memmove

from types import MemberDescriptorType

import orjson

from llmship.model import Span

cdef extern from "Python.h":
    # Declared here, not cimported, so that errors are checked by hand (no implicit propagation).
    bint PyUnicode_Check(object o) noexcept
    bint PyLong_Check(object o) noexcept
    bint PyLong_CheckExact(object o) noexcept
    bint PyFloat_CheckExact(object o) noexcept
    bint PyDict_Check(object o) noexcept
    bint PyBytes_Check(object o) noexcept
    bint PyByteArray_Check(object o) noexcept
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    bint PyUnicode_IS_COMPACT_ASCII(object o) noexcept
    Py_ssize_t PyUnicode_GET_LENGTH(object o) noexcept
    void* PyUnicode_DATA(object o) noexcept
    unsigned long long PyLong_AsUnsignedLongLong(object o) noexcept
    long long PyLong_AsLongLong(object o) noexcept
    double PyFloat_AS_DOUBLE(object o) noexcept
    double PyFloat_AsDouble(object o) noexcept
    int PyFloat_Pack8(double x, char* p, int le) noexcept
    char* PyBytes_AS_STRING(object o) noexcept
    Py_ssize_t PyBytes_GET_SIZE(object o) noexcept
    char* PyByteArray_AS_STRING(object o) noexcept
    Py_ssize_t PyByteArray_GET_SIZE(object o) noexcept
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept
    int PyDict_Contains(object d, object key) except -1
    PyObject* PyErr_Occurred() noexcept
    void PyErr_Clear() noexcept
    ctypedef struct PyObject

cdef enum:
    STACK_BYTES = 4096  # the buffer on the C stack; larger spans move to the heap

# Tags: (field << 3) | wire type (0 varint, 1 64-bit, 2 length-delimited)
cdef enum:
    TAG_META = 0x52          # Span.meta = 10
    TAG_METRICS = 0x5A       # Span.metrics = 11
    TAG_TYPE = 0x62          # Span.type = 12
    TAG_META_STRUCT = 0x6A   # Span.meta_struct = 13
    TAG_LINK = 0x72          # Span.spanLinks = 14
    TAG_LINK_ATTRIBUTES = 0x22  # SpanLink.attributes = 4
    TAG_LINK_TRACESTATE = 0x2A  # SpanLink.tracestate = 5
    TAG_KEY = 0x0A
    TAG_STRING_VALUE = 0x12
    TAG_DOUBLE_VALUE = 0x11
    TAG_CHUNK_SPAN = 0x1A    # TraceChunk.spans = 3

# Raised with every change of what this module offers or takes (spanenc.NATIVE_API_VERSION): a build from an
# older source is then left unused rather than called wrongly.
API_VERSION = 5
DEFAULT_SERVICE_NAME = "service"
DEFAULT_SPAN_NAME = "service.trace"
LLMOBS_STRUCT_KEY = "_llmobs"
MAX_ATTRIBUTE_DEPTH = 64
cdef dict _EMPTY = {}
cdef object _MIN_INT64 = -(1 << 63)
cdef object _UINT64_END = 1 << 64
cdef int _NON_STR_KEYS = orjson.OPT_NON_STR_KEYS
cdef object _Span = Span
_FIELDS = ("service", "name", "resource", "trace_id", "span_id", "parent_id", "start", "duration", "error", "meta",
           "metrics", "type", "meta_struct", "span_links", "span_events")
if Span.__struct_fields__ != _FIELDS:  # the order _encode_into reads them in: not this encoder's model
    raise ImportError("llmship.model.Span's fields changed: rebuild the span encoder")

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    enum:
        T_OBJECT
        T_OBJECT_EX

# Where a Span keeps each field: msgspec stores them as object slots, read here by offset (15 attribute
# reads, or a tuple from astuple, cost more than the rest of a small span).
cdef Py_ssize_t _slots[15]
for _i, _name in enumerate(_FIELDS):
    _descr = Span.__dict__.get(_name)
    if type(_descr) is not MemberDescriptorType or \
            (<PyMemberDescrObject*>_descr).d_member.type not in (T_OBJECT, T_OBJECT_EX):
        raise ImportError(f"llmship.model.Span.{_name} is not an object slot: rebuild the span encoder")
    _slots[_i] = (<PyMemberDescrObject*>_descr).d_member.offset


cdef struct Buf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap
    bint heap


cdef int _grow(Buf* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef char* p
    while cap < b.len + need:
        cap *= 2
    if b.heap:
        p = <char*>realloc(b.data, cap)
    else:
        p = <char*>malloc(cap)
        if p != NULL:
            memcpy(p, b.data, b.len)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    b.heap = True
    return 0


cdef inline int _reserve(Buf* b, Py_ssize_t need) except -1:
    if b.len + need > b.cap:
        return _grow(b, need)
    return 0


cdef inline Py_ssize_t _varint_size(uint64_t v) noexcept:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline void _put_byte(Buf* b, unsigned char c) noexcept:  # room reserved by the caller
    b.data[b.len] = <char>c
    b.len += 1


cdef inline void _put_varint(Buf* b, uint64_t v) noexcept:  # room reserved by the caller (10 bytes)
    while v >= 0x80:
        b.data[b.len] = <char>((v & 0x7F) | 0x80)
        b.len += 1
        v >>= 7
    b.data[b.len] = <char>v
    b.len += 1


cdef inline void _put_raw(Buf* b, const char* p, Py_ssize_t n) noexcept:  # room reserved by the caller
    memcpy(b.data + b.len, p, n)
    b.len += n


cdef inline const char* _utf8(object s, Py_ssize_t* n) except NULL:
    if not PyUnicode_Check(s):
        raise ValueError(f"expected a str, not {type(s).__name__}")
    # ASCII strings (nearly all keys and values) are their own UTF-8: a pointer, no copy, read here without
    # a call. Others get their UTF-8 cached in the str object, freed with it. UnicodeEncodeError (a
    # ValueError) for a lone surrogate.
    if PyUnicode_IS_COMPACT_ASCII(s):
        n[0] = PyUnicode_GET_LENGTH(s)
        return <const char*>PyUnicode_DATA(s)
    return PyUnicode_AsUTF8AndSize(s, n)


cdef int _put_str_field(Buf* b, unsigned char tag, object s) except -1:
    """A string field of the span (omitted when empty/falsy, as protobuf does)."""
    cdef Py_ssize_t n = 0
    cdef const char* p
    if not s:
        return 0
    p = _utf8(s, &n)
    _reserve(b, 11 + n)
    _put_byte(b, tag)
    _put_varint(b, <uint64_t>n)
    _put_raw(b, p, n)
    return 0


cdef uint64_t _uint64_slow(object n, int field) except? 0:
    if not PyLong_Check(n):
        raise ValueError(f"span field {field} must be an int, not {type(n).__name__}")
    if _MIN_INT64 <= n < 0:
        return <uint64_t>PyLong_AsLongLong(n)
    raise OverflowError(f"span field {field} out of the 64-bit range: {n}")


cdef extern from *:
    """
    /* An exact int in [0, 2**64) of at most 3 digits (ids and nanosecond times are), read from its digits:
       PyLong_AsUnsignedLongLong takes its generic byte-array path for every value of 2 digits or more.
       The digits are read where CPython 3.11 keeps them (ob_size: the signed digit count, then ob_digit);
       3.12 changed that layout, so there and elsewhere it answers 0 and the caller takes the general path. */
    static int llmship_small_uint64(PyObject *n, unsigned long long *x) {
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION)
        Py_ssize_t size;
        const digit *d;
        if (!PyLong_CheckExact(n))
            return 0;
        size = Py_SIZE(n);
        if (size < 0 || size > 3)
            return 0;
        d = ((PyLongObject *) n)->ob_digit;
        if (size == 0)
            *x = 0;
        else if (size == 1)
            *x = d[0];
        else if (size == 2)
            *x = d[0] | ((unsigned long long) d[1] << PyLong_SHIFT);
        else if (d[2] >> (64 - 2 * PyLong_SHIFT))
            return 0;  /* 2**64 or more: the caller's path raises */
        else
            *x = d[0] | ((unsigned long long) d[1] << PyLong_SHIFT) | ((unsigned long long) d[2] << (2 * PyLong_SHIFT));
        return 1;
    #else
        (void) n;
        (void) x;
        return 0;
    #endif
    }
    """
    bint _small_uint64 "llmship_small_uint64"(object n, unsigned long long* x) noexcept


cdef int _put_varint_field(Buf* b, int field, object n) except -1:
    """An integer field of the span: uint64, negatives as 64-bit two's complement, omitted when zero/falsy."""
    cdef unsigned long long x
    if _small_uint64(n, &x):
        if x == 0:
            return 0
    elif not PyLong_Check(n):
        if not n:
            return 0
        x = _uint64_slow(n, field)  # raises
    else:
        x = PyLong_AsUnsignedLongLong(n)
        if x == <unsigned long long>-1 and PyErr_Occurred() != NULL:
            PyErr_Clear()
            x = _uint64_slow(n, field)
        if x == 0:
            return 0
    _reserve(b, 11)
    _put_byte(b, <unsigned char>(field << 3))
    _put_varint(b, x)
    return 0


cdef int _put_entry(Buf* b, unsigned char tag, object key, object value) except -1:
    """A map<string,string> entry; the value is written even when empty."""
    cdef Py_ssize_t lk = 0, lv = 0, size
    cdef const char* k = _utf8(key, &lk)
    cdef const char* v = _utf8(value, &lv)
    size = 2 + _varint_size(lk) + lk + _varint_size(lv) + lv
    _reserve(b, 11 + size)
    _put_byte(b, tag)
    _put_varint(b, <uint64_t>size)
    _put_byte(b, TAG_KEY)
    _put_varint(b, <uint64_t>lk)
    _put_raw(b, k, lk)
    _put_byte(b, TAG_STRING_VALUE)
    _put_varint(b, <uint64_t>lv)
    _put_raw(b, v, lv)
    return 0


cdef int _put_bytes_entry(Buf* b, unsigned char tag, object key, object value) except -1:
    cdef Py_ssize_t lk = 0, lv = 0, size
    cdef const char* v
    cdef const char* k = _utf8(key, &lk)
    if PyBytes_Check(value):
        v = PyBytes_AS_STRING(value)
        lv = PyBytes_GET_SIZE(value)
    elif PyByteArray_Check(value):
        v = PyByteArray_AS_STRING(value)
        lv = PyByteArray_GET_SIZE(value)
    else:
        raise ValueError(f"meta_struct[{key!r}] must be bytes, not {type(value).__name__}")
    size = 2 + _varint_size(lk) + lk + _varint_size(lv) + lv
    _reserve(b, 11 + size)
    _put_byte(b, tag)
    _put_varint(b, <uint64_t>size)
    _put_byte(b, TAG_KEY)
    _put_varint(b, <uint64_t>lk)
    _put_raw(b, k, lk)
    _put_byte(b, TAG_STRING_VALUE)
    _put_varint(b, <uint64_t>lv)
    _put_raw(b, v, lv)
    return 0


cdef int _put_metric(Buf* b, object key, object value) except -1:
    cdef Py_ssize_t lk = 0, size
    cdef const char* k
    cdef double d
    if PyFloat_CheckExact(value):
        d = PyFloat_AS_DOUBLE(value)
    else:
        d = PyFloat_AsDouble(value)  # what struct.pack("<d") takes: floats, ints, __float__, __index__
        if d == -1.0 and PyErr_Occurred() != NULL:
            PyErr_Clear()
            raise (OverflowError if isinstance(value, int) else ValueError)(
                f"metric {key!r} is not a float: {type(value).__name__}")
    k = _utf8(key, &lk)
    size = 10 + _varint_size(lk) + lk
    _reserve(b, 11 + size)
    _put_byte(b, TAG_METRICS)
    _put_varint(b, <uint64_t>size)
    _put_byte(b, TAG_KEY)
    _put_varint(b, <uint64_t>lk)
    _put_raw(b, k, lk)
    _put_byte(b, TAG_DOUBLE_VALUE)
    PyFloat_Pack8(d, b.data + b.len, 1)
    b.len += 8
    return 0


cdef object _dict(object value, str what):
    if PyDict_Check(value):
        return value
    if value:
        raise ValueError(f"{what} must be a dict, not {type(value).__name__}")
    return _EMPTY


def encode_span(span, fallback_service, meta_defaults=()):
    """The protobuf Span message body (without tag/length); see llmship.sinks.spanenc."""
    cdef char stack[STACK_BYTES]
    cdef Buf b
    _on_stack(&b, stack)
    try:
        _encode_checked(&b, span, fallback_service, meta_defaults)
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        if b.heap:
            free(b.data)


def encode_spans(spans, fallback_service, meta_defaults=(), wrap=None):
    """``TraceChunk.spans`` fields (tag, length, Span body) of the spans that encode, concatenated (with
    ``wrap``, a (field tag, head) pair: inside that length-delimited field, after ``head``), the size of
    each span's field, and the errors of those that do not; see llmship.sinks.spanenc.encode_spans_py.

    One buffer, one copy out: each span is written in place, after its tag and a 2-byte length (what
    spans of 128 bytes to 16 KiB take; the body moves when its length takes another size), and the wrap's
    tag, length and head go in the room left before the first."""
    cdef Buf out
    cdef Py_ssize_t before, body, k, room = 0, start = 0, nspans = len(spans)
    cdef bytes tag = b"", head = b""
    sizes = []
    errors = []
    if wrap is not None:
        tag, head = wrap
        room = len(tag) + 10 + len(head)
    out.cap = room + 512 * nspans + 256  # most spans fit: rarely a copy to grow
    out.data = <char*>malloc(out.cap)
    if out.data == NULL:
        raise MemoryError()
    out.len = room
    out.heap = True
    try:
        for span in spans:
            before = out.len
            try:
                _reserve(&out, 3)
                out.len += 3
                _encode_checked(&out, span, fallback_service, meta_defaults)
                body = out.len - before - 3
                k = _varint_size(<uint64_t>body)
                if k != 2:
                    _reserve(&out, k)
                    memmove(out.data + before + 1 + k, out.data + before + 3, body)
                    out.len = before + 1 + k + body
                out.data[before] = <char>TAG_CHUNK_SPAN
                _varint_at(out.data + before + 1, <uint64_t>body)
                sizes.append(out.len - before)
            except (ValueError, OverflowError) as e:  # what encode_span raises for such a span
                out.len = before  # what it wrote is dropped
                errors.append(f"{type(e).__name__}: {e}")
        if wrap is not None:
            body = out.len - room + len(head)
            start = room - len(head) - _varint_size(<uint64_t>body) - len(tag)
            memcpy(out.data + start, <const char*>tag, len(tag))
            _varint_at(out.data + start + len(tag), <uint64_t>body)
            memcpy(out.data + room - len(head), <const char*>head, len(head))
        return PyBytes_FromStringAndSize(out.data + start, out.len - start), sizes, errors
    finally:
        free(out.data)


cdef inline void _varint_at(char* p, uint64_t v) noexcept:
    """``v`` as a varint at ``p`` (room there checked by the caller)."""
    while v >= 0x80:
        p[0] = <char>((v & 0x7F) | 0x80)
        p += 1
        v >>= 7
    p[0] = <char>v


cdef inline void _on_stack(Buf* b, char* stack) noexcept:
    """An empty buffer over ``stack`` (STACK_BYTES), moving to the heap when it outgrows it."""
    b.data = stack
    b.len = 0
    b.cap = STACK_BYTES
    b.heap = False


cdef int _encode_checked(Buf* b, object span, object fallback_service, object meta_defaults) except -1:
    """``_encode_into``, with a value of the wrong type somewhere (orjson's errors too) a ValueError, as the
    twin raises it."""
    try:
        return _encode_into(b, span, fallback_service, meta_defaults)
    except (TypeError, AttributeError) as e:
        raise ValueError(f"span cannot be encoded: {e}") from e


cdef inline object _slot(object span, int i):
    return <object>(<PyObject**>(<char*><PyObject*>span + _slots[i]))[0]


cdef inline bint _is_set(object span, int i) noexcept:
    return (<PyObject**>(<char*><PyObject*>span + _slots[i]))[0] != NULL


cdef inline bint _all_set(object span) noexcept:
    cdef int i
    for i in range(15):
        if (<PyObject**>(<char*><PyObject*>span + _slots[i]))[0] == NULL:
            return False
    return True


cdef int _encode_into(Buf* b, object span, object fallback_service, object meta_defaults) except -1:
    cdef Py_ssize_t pos = 0
    cdef PyObject* k = NULL
    cdef PyObject* v = NULL
    cdef object key, value, events_json = None
    if type(span) is _Span and _all_set(span):  # its fields read from their slots
        service, name, resource = _slot(span, 0), _slot(span, 1), _slot(span, 2)
        trace_id, span_id, parent_id = _slot(span, 3), _slot(span, 4), _slot(span, 5)
        start, duration, error = _slot(span, 6), _slot(span, 7), _slot(span, 8)
        meta, metrics, type_ = _slot(span, 9), _slot(span, 10), _slot(span, 11)
        meta_struct, links, events = _slot(span, 12), _slot(span, 13), _slot(span, 14)
    else:  # another class, or a field unset (AttributeError below)
        service, name, resource = span.service, span.name, span.resource
        trace_id, span_id, parent_id, start, duration, error = (
            span.trace_id, span.span_id, span.parent_id, span.start, span.duration, span.error)
        meta, metrics, type_, meta_struct = span.meta, span.metrics, span.type, span.meta_struct
        links, events = span.span_links, span.span_events
    meta = _dict(meta, "meta")
    metrics = _dict(metrics, "metrics")
    meta_struct = _dict(meta_struct, "meta_struct")
    if events and not PyDict_Contains(meta, "events") and isinstance(events, (list, tuple)):
        events_json = span_events_json(events)
    name = name or DEFAULT_SPAN_NAME
    if duration and PyLong_Check(duration) and duration < 0:
        duration = 0
    _put_str_field(b, 0x0A, service or fallback_service)
    _put_str_field(b, 0x12, name)
    _put_str_field(b, 0x1A, resource or name)
    _put_varint_field(b, 4, trace_id)
    _put_varint_field(b, 5, span_id)
    _put_varint_field(b, 6, parent_id)
    _put_varint_field(b, 7, start)
    _put_varint_field(b, 8, duration)
    _put_varint_field(b, 9, error)
    # PyDict_Next lends its references; key and value own them while the entry is written, since a
    # metric's __float__ (spans built by code) could change the dict under us. PyDict_Next itself
    # stays within the dict's current table, so such a change cannot crash the loop.
    while PyDict_Next(meta, &pos, &k, &v):
        key = <object>k
        value = <object>v
        _put_entry(b, TAG_META, key, value)
    if events_json is not None:
        _put_entry(b, TAG_META, "events", events_json)
    for key, value in meta_defaults:
        if not PyDict_Contains(meta, key) and (events_json is None or key != "events"):
            _put_entry(b, TAG_META, key, value)
    pos = 0
    while PyDict_Next(metrics, &pos, &k, &v):
        key = <object>k
        value = <object>v
        _put_metric(b, key, value)
    _put_str_field(b, TAG_TYPE, type_)
    pos = 0
    while PyDict_Next(meta_struct, &pos, &k, &v):
        key = <object>k
        value = <object>v
        if key != LLMOBS_STRUCT_KEY:
            _put_bytes_entry(b, TAG_META_STRUCT, key, value)
    if links and isinstance(links, (list, tuple)):
        for link in links:
            _put_link(b, link)
    return 0


cdef int _put_link(Buf* b, object link) except -1:
    cdef Buf sub
    cdef char stack[256]
    if not isinstance(link, dict):
        _reserve(b, 2)
        _put_byte(b, TAG_LINK)
        _put_byte(b, 0)
        return 0
    sub.data = stack
    sub.len = 0
    sub.cap = 256
    sub.heap = False
    try:
        _put_varint_field(&sub, 1, _link_uint(link.get("trace_id")))
        _put_varint_field(&sub, 2, _link_uint(link.get("trace_id_high")))
        _put_varint_field(&sub, 3, _link_uint(link.get("span_id")))
        attributes = link.get("attributes")
        if isinstance(attributes, dict):
            for ak, av in attributes.items():
                key, value = str(ak), str(av)
                _put_entry(&sub, TAG_LINK_ATTRIBUTES, key, value)
        _put_str_field(&sub, TAG_LINK_TRACESTATE, str(link.get("tracestate") or ""))
        _put_varint_field(&sub, 6, _link_uint(link.get("flags")) & 0xFFFFFFFF)
        _reserve(b, 11 + sub.len)
        _put_byte(b, TAG_LINK)
        _put_varint(b, <uint64_t>sub.len)
        _put_raw(b, sub.data, sub.len)
    finally:
        if sub.heap:
            free(sub.data)
    return 0


cdef object _link_uint(object value):
    return value & 0xFFFFFFFFFFFFFFFF if isinstance(value, int) else 0


_ATTRIBUTE_VALUE_KEYS = {0: "string_value", 1: "bool_value", 2: "int_value", 3: "double_value"}


def span_events_json(events):
    """As llmship.sinks.spanenc.span_events_json."""
    out = []
    for event in events:
        if isinstance(event, dict):
            attributes = event.get("attributes")
            plain = ({str(k): _plain_attribute(v, 0) for k, v in attributes.items()}
                     if isinstance(attributes, dict) else {})
            out.append({"name": event.get("name", ""), "time_unix_nano": event.get("time_unix_nano", 0),
                        "attributes": plain})
    return orjson.dumps(out, default=str, option=_NON_STR_KEYS).decode()


cdef object _plain_attribute(object value, int depth):
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


# ------------------------------------------------------------------------------- the LLM stage's carriers


def llm_carriers(spans):
    """The spans that carry an LLM Observability span: ``llm.extract.carriers_py`` compiled (every span of
    every chunk goes through it), with a Span's type and meta_struct read from their slots."""
    out = []
    for span in spans:
        if type(span) is _Span and _is_set(span, 11) and _is_set(span, 12):  # the two slots read
            type_, meta_struct = _slot(span, 11), _slot(span, 12)
        else:
            type_, meta_struct = span.type, span.meta_struct
        if type_ == "llm" or LLMOBS_STRUCT_KEY in meta_struct:
            out.append(span)
    return out


def llmobs_spans(chunks):
    """How many spans of ``chunks`` carry an LLM Observability event (``meta_struct["_llmobs"]``):
    ``sources.traces.llmobs_spans_py`` compiled (the trace source counts them for every request), with a
    Span's meta_struct read from its slot."""
    cdef Py_ssize_t count = 0
    for chunk in chunks:
        for span in chunk:
            meta_struct = _slot(span, 12) if type(span) is _Span and _is_set(span, 12) else span.meta_struct
            if LLMOBS_STRUCT_KEY in meta_struct:
                count += 1
    return count


# ------------------------------------------------------------------------------- the source's poison check

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    bint PyDict_CheckExact(object o) noexcept

cdef extern from "math.h":
    bint isfinite(double x) noexcept

SAMPLING_PRIORITY_KEY = "_sampling_priority_v1"


def poison_free(chunks):
    """True when ``sources.traces.drop_poison`` would find nothing to remove in ``chunks``: every span a
    Span whose sampling priority, if any, is a finite float and whose start, duration and error are ints
    within int64 (what the typed decoders give). False means only "not sure": drop_poison then looks."""
    cdef int overflow
    cdef int i
    cdef PyObject* priority
    for chunk in chunks:
        for span in chunk:
            # only the slots read below must be set (a Span made by hand may leave one unset)
            if type(span) is not _Span or not (_is_set(span, 6) and _is_set(span, 7) and _is_set(span, 8)
                                               and _is_set(span, 10)):
                return False
            metrics = _slot(span, 10)
            if not PyDict_CheckExact(metrics):
                return False
            priority = PyDict_GetItemWithError(metrics, SAMPLING_PRIORITY_KEY)
            if priority != NULL and not (PyFloat_CheckExact(<object>priority)
                                         and isfinite(PyFloat_AS_DOUBLE(<object>priority))):
                return False
            for i in range(6, 9):  # start, duration, error
                value = _slot(span, i)
                if not PyLong_CheckExact(value):
                    return False
                overflow = 0
                PyLong_AsLongLongAndOverflow(value, &overflow)
                if overflow:
                    return False
    return True


# ------------------------------------------------------------------------------- the scrub's gathering


def span_candidates(spans, sep, scan, skip_prefix, skip_keys):
    """Where ``transforms.privacy.scrub_chunks`` looks: (span index, entry index) of each meta value and
    resource of ``spans`` (entry index ``len(meta)``: the resource) in which ``scan`` finds a match,
    ascending. Left out, unscanned: the values of keys that start with ``skip_prefix`` (ASCII) or are in
    the frozenset ``skip_keys``, which the scrub never changes. ``scan`` takes the UTF-8 of every span's
    other meta values then its resource, all joined by the one-character ``sep``, and gives the end offsets
    of its matches, ascending; a match belongs to the string whose separator (or the end) is at or after its
    last byte (``Scrubber.joined_scan``). The strings go straight into one buffer and the matches are placed
    along their ends: no list of strings, join, encode and count of separators as on the Python path
    (privacy's ``_candidates_py``, which finds the same). None when it cannot tell (a meta that is not a
    dict, a value that is not a str, a lone surrogate): the caller then takes the Python path, which fails
    or judges as it always did."""
    cdef Buf b
    cdef Strings ends
    cdef Py_ssize_t nspans = len(spans), j, i, last, target, pos, entry
    cdef Py_ssize_t* firsts = <Py_ssize_t*>malloc((nspans + 1) * sizeof(Py_ssize_t))  # each span's first string
    cdef PyObject* k = NULL
    cdef PyObject* v = NULL
    cdef unsigned char c = (<str>sep).encode()[0]
    cdef bytes prefix = (<str>skip_prefix).encode("ascii")
    b.data = <char*>malloc(STACK_BYTES)
    b.len = 0
    b.cap = STACK_BYTES
    b.heap = True
    ends.n = 0
    ends.cap = 1024
    ends.at = <Py_ssize_t*>malloc(ends.cap * sizeof(Py_ssize_t))
    ends.entry = <Py_ssize_t*>malloc(ends.cap * sizeof(Py_ssize_t))
    try:
        if b.data == NULL or ends.at == NULL or ends.entry == NULL or firsts == NULL:
            raise MemoryError()
        for j in range(nspans):
            span = spans[j]
            meta, resource = span.meta, span.resource
            if not PyDict_Check(meta):
                return None
            firsts[j] = ends.n
            pos = 0
            entry = 0
            while PyDict_Next(meta, &pos, &k, &v):
                if not PyUnicode_Check(<object>v):
                    return None
                if not _skipped_key(<object>k, prefix, skip_keys) and not _add_string(&b, &ends, <object>v, c, entry):
                    return None
                entry += 1
            if not _add_string(&b, &ends, resource, c, entry):
                return None
        firsts[nspans] = ends.n
        hits = scan(PyBytes_FromStringAndSize(b.data, b.len))
        found = []
        i = j = 0
        last = -1
        for end in hits:
            target = <Py_ssize_t>end - 1
            while ends.at[i] < target:  # the last string's end is the data's: never passed
                i += 1
            if i != last:
                while firsts[j + 1] <= i:
                    j += 1
                found.append((j, ends.entry[i]))
                last = i
        return found
    except UnicodeEncodeError:
        return None
    finally:
        free(b.data)
        free(ends.at)
        free(ends.entry)
        free(firsts)


cdef struct Strings:
    Py_ssize_t* at  # where each string's separator is written (the last one's: the end of the data)
    Py_ssize_t* entry  # each string's entry index in its span
    Py_ssize_t n
    Py_ssize_t cap


cdef bint _skipped_key(object key, bytes prefix, object skip_keys) except -1:
    cdef Py_ssize_t n = len(prefix)
    if not PyUnicode_Check(key):
        return False
    if PyUnicode_IS_COMPACT_ASCII(key):
        if PyUnicode_GET_LENGTH(key) >= n and memcmp(PyUnicode_DATA(key), <const char*>prefix, n) == 0:
            return True
    elif (<str>key).startswith(prefix.decode("ascii")):
        return True
    return key in skip_keys


cdef int _add_string(Buf* b, Strings* ends, object value, unsigned char sep, Py_ssize_t entry) except -1:
    """Append ``value``'s UTF-8 (after a separator but for the first); 0 for a value that is not a str."""
    cdef Py_ssize_t n = 0
    cdef const char* p
    cdef Py_ssize_t* grown
    if not PyUnicode_Check(value):
        return 0
    p = _utf8(value, &n)  # UnicodeEncodeError for a lone surrogate
    if ends.n == ends.cap:
        grown = <Py_ssize_t*>realloc(ends.at, 2 * ends.cap * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        ends.at = grown
        grown = <Py_ssize_t*>realloc(ends.entry, 2 * ends.cap * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        ends.entry = grown
        ends.cap *= 2
    _reserve(b, n + 1)
    if ends.n:
        _put_byte(b, sep)
    _put_raw(b, p, n)
    ends.at[ends.n] = b.len
    ends.entry[ends.n] = entry
    ends.n += 1
    return 1


# ------------------------------------------------------------------------------- the v0.4 decoder

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    object PyLong_FromUnsignedLongLong(unsigned long long v)
    object PyLong_FromLongLong(long long v)
    object _PyDict_NewPresized(Py_ssize_t minused)
    void Py_INCREF(PyObject* o)
    void Py_XDECREF(PyObject* o)
    object PyFloat_FromDouble(double v)

# Strings of at most CACHED_STR_BYTES ASCII bytes (meta keys, services, names, most tag values) are shared
# from a cache of CACHED_STRS slots keyed by their bytes: a repeat costs a hash and a compare instead of a
# new object, and its hash, computed once, stays in the object for every dict it goes into.
cdef enum:
    CACHED_STR_BITS = 12
    CACHED_STRS = 1 << CACHED_STR_BITS
    CACHED_STR_BYTES = 32
cdef PyObject* _strs[CACHED_STRS]  # owned references; NULL: empty slot

# Span fields, in Span's order (checked at import, _FIELDS)
cdef enum:
    F_SERVICE = 0
    F_NAME = 1
    F_RESOURCE = 2
    F_TRACE_ID = 3
    F_SPAN_ID = 4
    F_PARENT_ID = 5
    F_START = 6
    F_DURATION = 7
    F_ERROR = 8
    F_META = 9
    F_METRICS = 10
    F_TYPE = 11
    F_META_STRUCT = 12
    F_SPAN_LINKS = 13
    F_SPAN_EVENTS = 14


class _Reject(Exception):
    """Input the compiled decoder does not take exactly as msgspec's typed decode does."""


cdef struct Reader:
    const unsigned char* data
    Py_ssize_t pos
    Py_ssize_t end


cdef inline int _need(Reader* r, Py_ssize_t n) except -1:
    if n > r.end - r.pos:
        raise _Reject()
    return 0


cdef inline int _byte(Reader* r) except -1:
    _need(r, 1)
    r.pos += 1
    return r.data[r.pos - 1]


cdef inline uint64_t _big_endian(Reader* r, int n) except? 0xFFFFFFFFFFFFFFFF:
    """The next ``n`` bytes (1, 2, 4 or 8) as an unsigned big-endian number."""
    cdef uint64_t v = 0
    cdef int i
    _need(r, n)
    for i in range(n):
        v = (v << 8) | r.data[r.pos + i]
    r.pos += n
    return v


cdef inline Py_ssize_t _length(Reader* r, int c, int fix_base, int fix_mask, int first16) except -1:
    """The count of a fix (``fix_base`` | count), 16-bit (``first16``) or 32-bit (``first16 + 1``) header,
    whose first byte is ``c``; anything else is rejected."""
    if c & ~fix_mask == fix_base:
        return c & fix_mask
    if c == first16:
        return <Py_ssize_t>_big_endian(r, 2)
    if c == first16 + 1:
        return <Py_ssize_t>_big_endian(r, 4)
    raise _Reject()


cdef inline Py_ssize_t _array_len(Reader* r) except -1:
    cdef Py_ssize_t n = _length(r, _byte(r), 0x90, 0x0F, 0xDC)
    _need(r, n)  # each element takes a byte at least: a header cannot make us allocate for nothing
    return n


cdef inline Py_ssize_t _map_len(Reader* r) except -1:
    cdef Py_ssize_t n = _length(r, _byte(r), 0x80, 0x0F, 0xDE)
    _need(r, 2 * n)
    return n


cdef inline Py_ssize_t _str_len(Reader* r) except -1:
    """A str header; its bytes, checked to be there, start at ``r.pos``."""
    cdef int c = _byte(r)
    cdef Py_ssize_t n
    if c & 0xE0 == 0xA0:
        n = c & 0x1F
    elif 0xD9 <= c <= 0xDB:
        n = <Py_ssize_t>_big_endian(r, 1 << (c - 0xD9))
    else:
        raise _Reject()
    _need(r, n)
    return n


cdef extern from *:
    """
    /* The hash of the n <= 32 bytes at p, 8 at a time, into *hash; 0 when one is not ASCII. The slot is
       taken from the high bits, which every byte reaches through the multiplications. */
    static int llmship_ascii_hash(const unsigned char *p, Py_ssize_t n, unsigned long long *hash) {
        unsigned long long h = 0xcbf29ce484222325ULL ^ (unsigned long long) n, w, high = 0;
        while (n >= 8) {
            memcpy(&w, p, 8);
            high |= w;
            h = (h ^ w) * 0x100000001b3ULL;
            p += 8;
            n -= 8;
        }
        if (n) {
            w = 0;
            for (Py_ssize_t i = 0; i < n; i++)  /* not memcpy: a call for a length not known here */
                w |= (unsigned long long) p[i] << (8 * i);
            high |= w;
            h = (h ^ w) * 0x100000001b3ULL;
        }
        *hash = h * 0x9E3779B97F4A7C15ULL;
        return (high & 0x8080808080808080ULL) == 0;
    }
    """
    bint _ascii_hash "llmship_ascii_hash"(const unsigned char* p, Py_ssize_t n, unsigned long long* hash) noexcept


cdef object _str(Reader* r):
    cdef Py_ssize_t n = _str_len(r)
    cdef const unsigned char* p = r.data + r.pos
    cdef unsigned long long h
    cdef Py_ssize_t slot
    cdef PyObject* cached
    r.pos += n
    if n > CACHED_STR_BYTES or not _ascii_hash(p, n, &h):
        return _utf8_str(p, n)
    slot = <Py_ssize_t>(h >> (64 - CACHED_STR_BITS))
    cached = _strs[slot]
    if cached != NULL and PyUnicode_GET_LENGTH(<object>cached) == n and \
            memcmp(PyUnicode_DATA(<object>cached), p, n) == 0:
        return <object>cached
    s = PyUnicode_New(n, 127)  # compact ASCII: its data is its bytes
    memcpy(PyUnicode_DATA(s), p, n)
    Py_INCREF(<PyObject*>s)
    Py_XDECREF(cached)  # a str: frees nothing but itself, runs no code
    _strs[slot] = <PyObject*>s
    return s


cdef object _utf8_str(const unsigned char* p, Py_ssize_t n):
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)  # strict, as msgspec's (no lone surrogates)
    except UnicodeDecodeError:
        raise _Reject() from None


cdef inline int _integer(Reader* r, int c, uint64_t* bits) except -1:
    """An integer whose header byte is ``c``: 1 with a value in [0, 2**64) in ``bits``, 2 with a negative
    one (its 64-bit two's complement); anything but an integer (float, nil, bool) is rejected."""
    cdef int n
    cdef int64_t v
    if c <= 0x7F:
        bits[0] = c
        return 1
    if c >= 0xE0:
        bits[0] = <uint64_t><int64_t>(c - 0x100)
        return 2
    if 0xCC <= c <= 0xCF:
        bits[0] = _big_endian(r, 1 << (c - 0xCC))
        return 1
    if 0xD0 <= c <= 0xD3:
        n = 1 << (c - 0xD0)
        v = <int64_t>_big_endian(r, n)
        if n < 8:  # sign-extend
            v = (v ^ (<int64_t>1 << (8 * n - 1))) - (<int64_t>1 << (8 * n - 1))
        bits[0] = <uint64_t>v
        return 1 if v >= 0 else 2
    raise _Reject()


cdef object _uint64(Reader* r):
    cdef uint64_t bits
    if _integer(r, _byte(r), &bits) != 1:
        raise _Reject()  # msgspec: "Expected `int` >= 0"; the tolerant decoder masks it
    return PyLong_FromUnsignedLongLong(bits)


cdef object _int64(Reader* r):
    cdef uint64_t bits
    if _integer(r, _byte(r), &bits) == 1 and bits > <uint64_t>0x7FFFFFFFFFFFFFFF:
        raise _Reject()
    return PyLong_FromLongLong(<int64_t>bits)


cdef object _float(Reader* r):
    """A float, or an integer as a float (msgspec takes ints for float fields)."""
    cdef int c = _byte(r)
    cdef uint64_t bits
    cdef unsigned int bits32
    cdef double d
    cdef float f
    if c == 0xCB:
        bits = _big_endian(r, 8)
        memcpy(&d, &bits, 8)
    elif c == 0xCA:
        bits32 = <unsigned int>_big_endian(r, 4)
        memcpy(&f, &bits32, 4)
        d = f
    elif _integer(r, c, &bits) == 1:
        d = <double>bits
    else:
        d = <double><int64_t>bits
    return PyFloat_FromDouble(d)


cdef object _bin(Reader* r):
    cdef int c = _byte(r)
    cdef Py_ssize_t n
    if not 0xC4 <= c <= 0xC6:
        raise _Reject()
    n = <Py_ssize_t>_big_endian(r, 1 << (c - 0xC4))
    _need(r, n)
    r.pos += n
    return PyBytes_FromStringAndSize(<const char*>(r.data + r.pos - n), n)


cdef dict _str_map(Reader* r):
    cdef Py_ssize_t n = _map_len(r), i
    cdef dict d = _PyDict_NewPresized(n)
    for i in range(n):
        key = _str(r)
        d[key] = _str(r)  # a repeated key: the last value, where the first was, as msgspec's dict
    return d


cdef dict _float_map(Reader* r):
    cdef Py_ssize_t n = _map_len(r), i
    cdef dict d = _PyDict_NewPresized(n)
    for i in range(n):
        key = _str(r)
        d[key] = _float(r)
    return d


cdef dict _bin_map(Reader* r):
    cdef Py_ssize_t n = _map_len(r), i
    cdef dict d = {}
    for i in range(n):
        key = _str(r)
        d[key] = _bin(r)
    return d


cdef inline bint _is(const unsigned char* key, const char* name, Py_ssize_t n) noexcept:
    return memcmp(key, name, n) == 0


cdef int _field(const unsigned char* k, Py_ssize_t n) noexcept:
    """The Span field a map key names, or -1."""
    if n == 4:
        return F_NAME if _is(k, "name", 4) else F_META if _is(k, "meta", 4) else F_TYPE if _is(k, "type", 4) else -1
    if n == 5:
        return F_START if _is(k, "start", 5) else F_ERROR if _is(k, "error", 5) else -1
    if n == 7:
        return (F_SERVICE if _is(k, "service", 7) else F_SPAN_ID if _is(k, "span_id", 7)
                else F_METRICS if _is(k, "metrics", 7) else -1)
    if n == 8:
        return (F_RESOURCE if _is(k, "resource", 8) else F_TRACE_ID if _is(k, "trace_id", 8)
                else F_DURATION if _is(k, "duration", 8) else -1)
    if n == 9:
        return F_PARENT_ID if _is(k, "parent_id", 9) else -1
    if n == 10:
        return F_SPAN_LINKS if _is(k, "span_links", 10) else -1
    if n == 11:
        return F_META_STRUCT if _is(k, "meta_struct", 11) else F_SPAN_EVENTS if _is(k, "span_events", 11) else -1
    return -1


cdef object _span(Reader* r):
    cdef Py_ssize_t n = _map_len(r), i, klen
    cdef int f
    cdef unsigned int seen = 0
    service = name = resource = type_ = ""
    trace_id = span_id = parent_id = start = duration = error = 0
    meta = metrics = meta_struct = None
    for i in range(n):
        klen = _str_len(r)
        f = _field(r.data + r.pos, klen)
        r.pos += klen
        # Rejected, for msgspec to decode: a key it skips (unknown) or takes twice, and span links and
        # events other than nil (rare; any msgpack value may sit in them).
        if f < 0 or seen & (1u << f):
            raise _Reject()
        if f == F_SPAN_LINKS or f == F_SPAN_EVENTS:
            if _byte(r) != 0xC0:
                raise _Reject()
            seen |= 1u << f
            continue
        seen |= 1u << f
        if f == F_SERVICE:
            service = _str(r)
        elif f == F_NAME:
            name = _str(r)
        elif f == F_RESOURCE:
            resource = _str(r)
        elif f == F_TRACE_ID:
            trace_id = _uint64(r)
        elif f == F_SPAN_ID:
            span_id = _uint64(r)
        elif f == F_PARENT_ID:
            parent_id = _uint64(r)
        elif f == F_START:
            start = _int64(r)
        elif f == F_DURATION:
            duration = _int64(r)
        elif f == F_ERROR:
            error = _int64(r)
        elif f == F_META:
            meta = _str_map(r)
        elif f == F_METRICS:
            metrics = _float_map(r)
        elif f == F_TYPE:
            type_ = _str(r)
        else:
            meta_struct = _bin_map(r)
    return _Span(service, name, resource, trace_id, span_id, parent_id, start, duration, error,
                 {} if meta is None else meta, {} if metrics is None else metrics, type_,
                 {} if meta_struct is None else meta_struct, None, None)


def decode_v04_spans(body):
    """A v0.4 msgpack body (an array of traces, each an array of span maps) -> its non-empty chunks of
    ``Span``, the same objects with the same values and types as msgspec's typed decode
    (``sources.traces._fast_v04``) gives; or None for a body it does not take exactly as that decode does
    (anything but bytes, a value of another type, invalid UTF-8, an unknown or repeated span key, span
    links or events, truncated or trailing data): the caller then decodes it with msgspec, and failing
    that with the tolerant decoder, so every odd payload is answered as before. Every read is checked
    against the body's end."""
    cdef Reader r
    cdef Py_ssize_t ntraces, nspans, i, j
    if not PyBytes_Check(body):
        return None
    r.data = <const unsigned char*>PyBytes_AS_STRING(body)
    r.pos = 0
    r.end = PyBytes_GET_SIZE(body)
    try:
        chunks = []
        ntraces = _array_len(&r)
        for i in range(ntraces):
            nspans = _array_len(&r)
            if nspans:
                chunk = []
                for j in range(nspans):
                    chunk.append(_span(&r))
                chunks.append(chunk)
        if r.pos != r.end:
            return None
        return chunks
    except _Reject:
        return None
