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
from libc.string cimport memcmp, memcpy, memmove, memset

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
API_VERSION = 6
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
    return _put_utf8_field(b, tag, p, n)


cdef inline int _put_utf8_field(Buf* b, unsigned char tag, const char* p, Py_ssize_t n) except -1:
    """A string field given as its UTF-8 (omitted when empty)."""
    if n == 0:
        return 0
    _reserve(b, 11 + n)
    _put_byte(b, tag)
    _put_varint(b, <uint64_t>n)
    _put_raw(b, p, n)
    return 0


cdef inline int _put_uint_field(Buf* b, int field, uint64_t x) except -1:
    """An integer field as its 64 bits (omitted when zero)."""
    if x == 0:
        return 0
    _reserve(b, 11)
    _put_byte(b, <unsigned char>(field << 3))
    _put_varint(b, x)
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
        pass
    elif not PyLong_Check(n):
        if not n:
            return 0
        x = _uint64_slow(n, field)  # raises
    else:
        x = PyLong_AsUnsignedLongLong(n)
        if x == <unsigned long long>-1 and PyErr_Occurred() != NULL:
            PyErr_Clear()
            x = _uint64_slow(n, field)
    return _put_uint_field(b, field, x)


cdef inline void _put_entry_head(Buf* b, unsigned char tag, Py_ssize_t size, const unsigned char* k,
                                 Py_ssize_t lk) noexcept:
    """A map entry's tag and length, and its key (room reserved by the caller)."""
    _put_byte(b, tag)
    _put_varint(b, <uint64_t>size)
    _put_byte(b, TAG_KEY)
    _put_varint(b, <uint64_t>lk)
    _put_raw(b, <const char*>k, lk)


cdef inline int _put_text_entry(Buf* b, unsigned char tag, const unsigned char* k, Py_ssize_t lk,
                                const unsigned char* v, Py_ssize_t lv) except -1:
    """A map<string,string> (or <string,bytes>) entry of UTF-8 (or bytes) given as pointers."""
    cdef Py_ssize_t size = 2 + _varint_size(lk) + lk + _varint_size(lv) + lv
    _reserve(b, 11 + size)
    _put_entry_head(b, tag, size, k, lk)
    _put_byte(b, TAG_STRING_VALUE)
    _put_varint(b, <uint64_t>lv)
    _put_raw(b, <const char*>v, lv)
    return 0


cdef inline int _put_number_entry(Buf* b, const unsigned char* k, Py_ssize_t lk, double d) except -1:
    """A metrics entry (map<string,double>)."""
    cdef Py_ssize_t size = 10 + _varint_size(lk) + lk
    _reserve(b, 11 + size)
    _put_entry_head(b, TAG_METRICS, size, k, lk)
    _put_byte(b, TAG_DOUBLE_VALUE)
    PyFloat_Pack8(d, b.data + b.len, 1)
    b.len += 8
    return 0


cdef int _put_entry(Buf* b, unsigned char tag, object key, object value) except -1:
    """A map<string,string> entry; the value is written even when empty."""
    cdef Py_ssize_t lk = 0, lv = 0
    cdef const char* k = _utf8(key, &lk)
    cdef const char* v = _utf8(value, &lv)
    return _put_text_entry(b, tag, <const unsigned char*>k, lk, <const unsigned char*>v, lv)


cdef int _put_bytes_entry(Buf* b, unsigned char tag, object key, object value) except -1:
    cdef Py_ssize_t lk = 0, lv = 0
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
    return _put_text_entry(b, tag, <const unsigned char*>k, lk, <const unsigned char*>v, lv)


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
    return _put_number_entry(b, <const unsigned char*>k, lk, d)


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
    cdef Py_ssize_t before, body, room = 0, start = 0, nspans = len(spans)
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
            before = _open_span_field(&out)
            try:
                _encode_checked(&out, span, fallback_service, meta_defaults)
                sizes.append(_close_span_field(&out, before))
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


cdef inline Py_ssize_t _open_span_field(Buf* out) except -1:
    """Start a TraceChunk.spans field: room for its tag and a 2-byte length (what spans of 128 bytes to 16 KiB
    take); where it starts."""
    cdef Py_ssize_t before = out.len
    _reserve(out, 3)
    out.len += 3
    return before


cdef inline Py_ssize_t _close_span_field(Buf* out, Py_ssize_t before) except -1:
    """Its tag and length before the span written since ``_open_span_field`` (the body moved when its length
    takes another size); the field's size."""
    cdef Py_ssize_t body = out.len - before - 3
    cdef Py_ssize_t k = _varint_size(<uint64_t>body)
    if k != 2:
        _reserve(out, k)
        memmove(out.data + before + 1 + k, out.data + before + 3, body)
        out.len = before + 1 + k + body
    out.data[before] = <char>TAG_CHUNK_SPAN
    _varint_at(out.data + before + 1, <uint64_t>body)
    return out.len - before


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
        if type(chunk) is not list:  # an EncodedChunk (transcode_v04): its calls are among its objects
            chunk = (<EncodedChunk>chunk).objects
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
        if type(chunk) is not list:  # an EncodedChunk (transcode_v04): it has no poison
            continue
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


cdef inline int _put_joined(Buf* b, unsigned char sep, bint first, const char* p, Py_ssize_t n) except -1:
    """A string into a joined scan's data: after the separator, but for the first string."""
    _reserve(b, n + 1)
    if not first:
        _put_byte(b, sep)
    _put_raw(b, p, n)
    return 0


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
    _put_joined(b, sep, ends.n == 0, p, n)
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


cdef extern from *:
    """
    /* 8 bytes read as they lie in memory, as the big-endian number they spell */
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define llmship_from_big_endian64(v) __builtin_bswap64(v)
    #else
    static unsigned long long llmship_from_big_endian64(unsigned long long v) {
        const unsigned char *b = (const unsigned char *) &v;
        unsigned long long x = 0;
        for (int i = 0; i < 8; i++)
            x = (x << 8) | b[i];
        return x;
    }
    #endif
    """
    uint64_t _from_big_endian64 "llmship_from_big_endian64"(uint64_t v) noexcept


cdef inline uint64_t _big_endian(Reader* r, int n) except? 0xFFFFFFFFFFFFFFFF:
    """The next ``n`` bytes (1, 2, 4 or 8) as an unsigned big-endian number."""
    cdef uint64_t v = 0
    cdef int i
    _need(r, n)
    if n == 8:
        memcpy(&v, r.data + r.pos, 8)
        v = _from_big_endian64(v)
    else:
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
    /* The last 1..8 bytes of a string that ends at p + n, as a little-endian word: the 8 bytes that end
       there, those before p shifted out, where they are in the buffer (never before ``start``). */
    static inline unsigned long long llmship_tail(const unsigned char *p, Py_ssize_t n,
                                                  const unsigned char *start) {
        unsigned long long w = 0;
        if ((p - start) + n >= 8) {
            memcpy(&w, p + n - 8, 8);
            return w >> (8 * (8 - n));
        }
        for (Py_ssize_t i = 0; i < n; i++)
            w |= (unsigned long long) p[i] << (8 * i);
        return w;
    }
    /* The hash of the n bytes at p (a cached str, a map key), 8 at a time; 1 when they are ASCII. The slot
       or table index is taken from the high bits, which every byte reaches through the multiplications. */
    static inline int llmship_key_hash(const unsigned char *p, Py_ssize_t n, const unsigned char *start,
                                       unsigned long long *hash) {
        unsigned long long h = 0xcbf29ce484222325ULL ^ (unsigned long long) n, w, high = 0;
        while (n > 8) {
            memcpy(&w, p, 8);
            high |= w;
            h = (h ^ w) * 0x100000001b3ULL;
            p += 8;
            n -= 8;
        }
        if (n) {
            w = llmship_tail(p, n, start);
            high |= w;
            h = (h ^ w) * 0x100000001b3ULL;
        }
        *hash = h * 0x9E3779B97F4A7C15ULL;
        return (high & 0x8080808080808080ULL) == 0;
    }
    /* 1 when the n bytes at p are ASCII. The last (or only) word is the 8 bytes that end at p + n, those
       before p shifted out: never before ``start``, the buffer's first byte (then byte by byte). */
    static inline int llmship_ascii_at(const unsigned char *p, Py_ssize_t n, const unsigned char *start) {
        unsigned long long w, high = 0;
        if (n == 0)
            return 1;
        while (n > 8) {
            memcpy(&w, p, 8);
            high |= w;
            p += 8;
            n -= 8;
        }
        high |= llmship_tail(p, n, start);
        return (high & 0x8080808080808080ULL) == 0;
    }
    """
    bint _key_hash "llmship_key_hash"(const unsigned char* p, Py_ssize_t n, const unsigned char* start,
                                      unsigned long long* hash) noexcept
    bint _ascii_at "llmship_ascii_at"(const unsigned char* p, Py_ssize_t n, const unsigned char* start) noexcept


cdef object _str(Reader* r):
    cdef Py_ssize_t n = _str_len(r)
    r.pos += n
    return _str_at(r.data + r.pos - n, n)


cdef inline object _str_at(const unsigned char* p, Py_ssize_t n):
    """The str of the ``n`` bytes of UTF-8 at ``p`` (a short ASCII one from the cache)."""
    cdef unsigned long long h
    cdef Py_ssize_t slot
    cdef PyObject* cached
    if n > CACHED_STR_BYTES or not _key_hash(p, n, p, &h):
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
    return PyFloat_FromDouble(_double(r))


cdef inline double _double(Reader* r) except? -1.0:
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
    return d


cdef object _bin(Reader* r):
    cdef Py_ssize_t n = _skip_bin(r)
    return PyBytes_FromStringAndSize(<const char*>(r.data + r.pos - n), n)


cdef Py_ssize_t _skip_bin(Reader* r) except -1:
    """Past a bin, checked; its length (its bytes end at ``r.pos``)."""
    cdef int c = _byte(r)
    cdef Py_ssize_t n
    if not 0xC4 <= c <= 0xC6:
        raise _Reject()
    n = <Py_ssize_t>_big_endian(r, 1 << (c - 0xC4))
    _need(r, n)
    r.pos += n
    return n


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


cdef list _spans(Reader* r, Py_ssize_t n):
    """The next ``n`` span maps, decoded."""
    cdef Py_ssize_t i
    cdef list spans = []
    for i in range(n):
        spans.append(_span(r))
    return spans


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


# ------------------------------------------------------------------------------- the v0.4 transcoder
#
# Most spans of a tracer request carry no LLM call and no secret: decoding them into Span objects, scanning
# them and encoding them again is most of their cost (a web span: ~15,500 instructions of decode, ~7,000 of
# scan gathering, ~7,000 of encoding). ``transcode_v04`` writes such spans straight from the msgpack body
# into their TraceChunk.spans fields (~11,000), and gathers their strings for the scrub's one scan of the
# request on the way. A span that carries an LLM call (type "llm", or any meta_struct) or in whose strings
# the scan finds a candidate the scrub would judge is decoded into a Span, for the LLM stage and the scrub,
# and encoded in its place in the chunk after them (``EncodedChunk.objects``, ``pieces``). A chunk with a
# non-finite sampling priority or a shape the fast path does not write exactly as the encoder would (a
# repeated key, more than MAX_FAST_ENTRIES tags) is decoded whole, as ``decode_v04_spans`` would have made
# it. Its twin is the whole path: decode_v04_spans, then the LLM stage, scrub_chunks and encode_spans;
# tests/sources/test_traces_transcode.py compares the two.

cdef enum:
    # A chunk of fewer spans is decoded as before: there the chunk's bookkeeping costs more than writing its
    # spans straight saves, and such a chunk is often an LLM call and its HTTP request, both decoded anyway
    # (callgrind, bench/spans_instructions.py --stage request --mix llm: 229,700 instructions a span without
    # the transcoder, 251,400 with it on those chunks of two spans, 231,500 with this bound).
    MIN_TRANSCODED_SPANS = 4
    MAX_FAST_ENTRIES = 64  # tags (or metrics) a span may have on the fast path: its key table's size / 2
    KEY_SLOTS = 128
    MAX_SKIP_KEYS = 64  # structural keys the scrub scan leaves out (KEY_SLOTS / 2)


cdef struct Text:
    const unsigned char* p
    Py_ssize_t n


cdef struct Tag:
    Text key
    Text value
    double number
    unsigned long long hash


cdef struct Tags:
    Tag* at
    Py_ssize_t n
    Py_ssize_t cap
    int slots[KEY_SLOTS]  # index + 1 of the tag with that key hash's slot; 0: empty
    bint repeated  # a key seen twice, or too many to tell


cdef struct Scanned:  # a string in the scan
    Py_ssize_t end  # where it ends in the scan
    Py_ssize_t chunk  # its span's chunk's result
    Py_ssize_t place  # its span's place in the chunk's sizes
    Text key  # its meta key (p NULL: the resource)
    Text value


cdef struct Facts:  # what the chunk-level code reads of each span
    Text service
    Text env
    Text hostname
    Text version
    Text origin
    Text runtime_id
    uint64_t span_id
    uint64_t parent_id
    bint has_priority
    double priority
    bint has_env




cdef inline bint _same(Text a, const unsigned char* p, Py_ssize_t n) noexcept:
    return a.n == n and memcmp(a.p, p, n) == 0


cdef inline int _text_header(Reader* r, Text* t) except -1:
    """Where the next str is, past it (its bytes not checked)."""
    cdef int c
    if r.pos < r.end and r.data[r.pos] & 0xE0 == 0xA0:  # a fixstr, nearly every key and value
        c = r.data[r.pos] & 0x1F
        r.pos += 1
        if c > r.end - r.pos:
            raise _Reject()
        t.n = c
    else:
        t.n = _str_len(r)
    t.p = r.data + r.pos
    r.pos += t.n
    return 0


cdef inline int _text(Reader* r, Text* t) except -1:
    """A str, checked as decode_v04_spans checks it (strict UTF-8), left where it is in the body."""
    _text_header(r, t)
    if not _ascii_at(t.p, t.n, r.data):
        _utf8_str(t.p, t.n)  # rejects what is not strict UTF-8, as the decoder does
    return 0


cdef int _add_tag(Tags* tags, Reader* r, bint number) except -1:
    """The next entry of a meta (str values) or metrics (float values) map into ``tags``, its key hashed
    into the table (a repeat, which the dict would fold, marks ``repeated``)."""
    cdef Tag* t = &tags.at[tags.n]  # room made by _room
    cdef unsigned long long h
    cdef int slot, i
    _text_header(r, &t.key)
    if not _key_hash(t.key.p, t.key.n, r.data, &t.hash):
        _utf8_str(t.key.p, t.key.n)  # rejects what is not strict UTF-8, as the decoder does
    if number:
        t.number = _double(r)
    else:
        _text(r, &t.value)
    tags.n += 1
    if tags.repeated:
        return 0
    if tags.n > MAX_FAST_ENTRIES:
        tags.repeated = True
        return 0
    h = t.hash
    slot = <int>(h >> 57)  # 7 bits: KEY_SLOTS
    while True:
        i = tags.slots[slot]
        if i == 0:
            tags.slots[slot] = <int>tags.n
            return 0
        if tags.at[i - 1].hash == h and _same(tags.at[i - 1].key, t.key.p, t.key.n):
            tags.repeated = True
            return 0
        slot = (slot + 1) & (KEY_SLOTS - 1)


cdef int _room(Tags* tags, Py_ssize_t more) except -1:
    """Room in ``tags`` for ``more`` entries."""
    cdef Tag* grown
    cdef Py_ssize_t cap = tags.cap
    while cap < tags.n + more:
        cap *= 2
    if cap != tags.cap:
        grown = <Tag*>realloc(tags.at, cap * sizeof(Tag))
        if grown == NULL:
            raise MemoryError()
        tags.at = grown
        tags.cap = cap
    return 0


cdef inline void _clear(Tags* tags) noexcept:
    tags.n = 0
    tags.repeated = False
    memset(tags.slots, 0, sizeof(tags.slots))


cdef bint _has_key(Tags* tags, const unsigned char* p, Py_ssize_t n, unsigned long long h) noexcept:
    cdef int slot = <int>(h >> 57), i
    while True:
        i = tags.slots[slot]
        if i == 0:
            return False
        if tags.at[i - 1].hash == h and _same(tags.at[i - 1].key, p, n):
            return True
        slot = (slot + 1) & (KEY_SLOTS - 1)


cdef inline int _put_text_field(Buf* b, unsigned char tag, Text t) except -1:
    return _put_utf8_field(b, tag, <const char*>t.p, t.n)






cdef struct Defaults:  # the agent's meta defaults and the scrub's skipped keys, as UTF-8 with their hashes
    Py_ssize_t n
    const unsigned char* key[MAX_SKIP_KEYS]
    Py_ssize_t key_n[MAX_SKIP_KEYS]
    const unsigned char* value[MAX_SKIP_KEYS]
    Py_ssize_t value_n[MAX_SKIP_KEYS]
    unsigned long long hash[MAX_SKIP_KEYS]
    int slots[KEY_SLOTS]


cdef bint _defaults(Defaults* d, object pairs) except -1:
    """``pairs`` (key, value) of str into ``d`` (values None for a set of keys); their strs must outlive it.
    False when there are more than the table holds."""
    cdef Py_ssize_t n = 0
    cdef int slot
    memset(d.slots, 0, sizeof(d.slots))
    d.n = 0
    if len(pairs) > MAX_SKIP_KEYS:
        return False
    for key, value in pairs:
        d.key[d.n] = <const unsigned char*>_utf8(key, &n)
        d.key_n[d.n] = n
        if value is not None:
            d.value[d.n] = <const unsigned char*>_utf8(value, &n)
            d.value_n[d.n] = n
        _key_hash(d.key[d.n], d.key_n[d.n], d.key[d.n], &d.hash[d.n])
        slot = <int>(d.hash[d.n] >> 57)
        while d.slots[slot]:
            slot = (slot + 1) & (KEY_SLOTS - 1)
        d.n += 1
        d.slots[slot] = <int>d.n
    return True


cdef bint _in_defaults(Defaults* d, Text key, unsigned long long h) noexcept:
    cdef int slot = <int>(h >> 57), i
    while True:
        i = d.slots[slot]
        if i == 0:
            return False
        if d.hash[i - 1] == h and _same(key, d.key[i - 1], d.key_n[i - 1]):
            return True
        slot = (slot + 1) & (KEY_SLOTS - 1)


# The tables of the agent's meta defaults and of the keys the scan skips, and the objects they were made of
# (held here: the tables point into their strs).
cdef Defaults _meta_defaults, _skipped
cdef object _defaults_for = None, _skipped_for = None


cdef class EncodedChunk:
    """A trace chunk written by ``transcode_v04``: its plain spans' TraceChunk.spans fields (``data``, each
    one's size in ``sizes``), its other spans as Span objects (``objects``, in chunk order: those that carry
    an LLM call, for the LLM stage, and those with a scan candidate, for the scrub; the encoder writes them
    and ``pieces`` puts them in their places), and what the chunk-level code reads of it (the root's service
    and env, hostname, version and origin tags, the sampling priority, the first runtime-id). ``decode()``
    gives all its spans as Span objects, the ``objects`` among them (for a reader that needs them: a tap, a
    sink added by a reload). ``maker`` is what the transcoder was called with (a reload that changes it
    makes the chunk stale)."""
    cdef readonly Py_ssize_t spans
    cdef readonly bytes data
    cdef readonly list sizes  # of each span written in data, in order (an object's too, when it was)
    cdef readonly list objects
    cdef readonly object priority, root_service, root_env, root_hostname, root_version, root_origin, runtime_id
    cdef readonly object maker
    cdef bytes _body
    cdef Py_ssize_t _start, _end
    cdef list _written  # per size: the place in the chunk of the span written in data
    cdef list _starts  # per size: where that span starts in the body
    cdef list _holes  # (place in the chunk, start in the body) of each object, in chunk order

    def __len__(self):
        return self.spans

    def decode(self):
        cdef Reader r
        cdef Py_ssize_t i, n
        r.data = <const unsigned char*>PyBytes_AS_STRING(self._body)
        r.pos = self._start
        r.end = self._end
        n = _array_len(&r)
        spans = _spans(&r, n)
        for hole, span in zip(self._holes, self.objects):
            spans[hole[0]] = span
        return spans

    def pieces(self, fields):
        """(the chunk's TraceChunk.spans fields in order, as pieces to join: runs of ``data`` and the
        ``objects``' fields, given in ``fields``, one each: bytes, or None for one that could not be encoded;
        each field's size)."""
        cdef Py_ssize_t j, k = 0, h = 0, offset = 0, run = 0, hole, nholes = len(self._holes)
        cdef Py_ssize_t nsizes = len(self.sizes)
        view = memoryview(self.data)
        pieces, sizes = [], []
        hole = self._holes[0][0] if nholes else self.spans
        for j in range(self.spans):
            if j != hole:
                size = self.sizes[k]
                sizes.append(size)
                offset += <Py_ssize_t>size
                k += 1
                continue
            if offset > run:
                pieces.append(view[run:offset])
            field = fields[h]
            if field is not None:
                pieces.append(field)
                sizes.append(len(field))
            if k < nsizes and <Py_ssize_t>self._written[k] == j:  # written, then found to be a candidate
                offset += <Py_ssize_t>self.sizes[k]
                k += 1
            run = offset
            h += 1
            hole = self._holes[h][0] if h < nholes else self.spans
        if offset > run:
            pieces.append(view[run:offset])
        return pieces, sizes

cdef bytes _DEFAULT_NAME = DEFAULT_SPAN_NAME.encode()


cdef object _text_str(Text t):
    return _str_at(t.p, t.n) if t.p != NULL else None


def transcode_v04(body, fallback_service, meta_defaults, scan_sep, scan, skip_prefix, skip_keys, key_skip, maker):
    """A v0.4 msgpack body -> its non-empty chunks, each an ``EncodedChunk`` or, for a chunk the fast path
    leaves to the whole path, the list of ``Span`` that ``decode_v04_spans`` gives; None for a body
    ``decode_v04_spans`` does not take (the caller decodes it as before). ``meta_defaults`` and
    ``fallback_service``: the trace sink's encoder arguments. ``scan``, with ``scan_sep``: the scrubber's
    joined scan (``Scrubber.joined_scan``), or None with no scrubber; its candidates send their chunk to the
    whole path, where the scrub judges them. ``skip_prefix`` and ``skip_keys``: the meta keys whose values
    span_candidates leaves out of that scan; ``key_skip``: privacy.span_key_skip, which tells the keys
    under which the scrub lets an identifier go."""
    cdef Reader r
    cdef Buf out, scanned
    cdef Tags meta, metrics
    cdef Defaults* defaults = &_meta_defaults
    cdef Defaults* skipped = &_skipped
    cdef Facts* facts = NULL
    cdef Facts* f
    cdef Py_ssize_t ntraces, nspans, i, j, k, before, kk, chunk_start
    cdef Py_ssize_t klen, prefix_n = 0
    cdef int field, c
    cdef unsigned int seen
    cdef uint64_t bits, start_bits, duration_bits, error_bits
    cdef uint64_t ids[3]
    cdef Text service, name, resource, type_, ignored, no_key
    cdef bint plain, duration_negative, is_object
    cdef Py_ssize_t span_start
    cdef const unsigned char* prefix
    cdef unsigned char sep = 0
    cdef Tag* t
    cdef Scanned* grown_scanned
    cdef const char* fallback_p
    cdef Py_ssize_t fallback_n = 0
    if not PyBytes_Check(body):
        return None
    fallback_p = _utf8(fallback_service, &fallback_n)
    prefix = <const unsigned char*>_utf8(skip_prefix, &prefix_n)
    if scan is not None:
        sep = (<str>scan_sep).encode()[0]
    global _skipped_for, _defaults_for
    if meta_defaults is not _defaults_for:  # the same tuple until a reload: its strs outlive the table
        _defaults_for = None
        if not _defaults(&_meta_defaults, meta_defaults):
            return None  # more agent tags than the table holds: the whole path
        _defaults_for = meta_defaults
    if skip_keys is not _skipped_for:
        _skipped_for = None
        if not _defaults(&_skipped, [(key, None) for key in skip_keys]):
            return None
        _skipped_for = skip_keys
    r.data = <const unsigned char*>PyBytes_AS_STRING(body)
    r.pos = 0
    r.end = PyBytes_GET_SIZE(body)
    out.data = NULL
    scanned.data = NULL
    meta.at = metrics.at = NULL
    results = []  # per chunk: an EncodedChunk, or (start, end) to decode
    cdef Scanned* scanned_strings = NULL  # each string in the scan, in order
    cdef Py_ssize_t nscanned = 0, scanned_cap = 0
    try:
        out.cap = 8192
        out.len = 0
        out.heap = True
        out.data = <char*>malloc(out.cap)
        scanned.cap = 8192
        scanned.len = 0
        scanned.heap = True
        scanned.data = <char*>malloc(scanned.cap)
        meta.cap = metrics.cap = 32
        meta.at = <Tag*>malloc(meta.cap * sizeof(Tag))
        metrics.at = <Tag*>malloc(metrics.cap * sizeof(Tag))
        if out.data == NULL or scanned.data == NULL or meta.at == NULL or metrics.at == NULL:
            raise MemoryError()
        ntraces = _array_len(&r)
        for i in range(ntraces):
            chunk_start = r.pos
            nspans = _array_len(&r)
            if not nspans:
                continue
            if nspans < MIN_TRANSCODED_SPANS:
                results.append(_spans(&r, nspans))
                continue
            free(facts)
            facts = <Facts*>malloc(nspans * sizeof(Facts))
            if facts == NULL:
                raise MemoryError()
            out.len = 0
            sizes = []
            holes = []
            written = []
            starts = []
            plain = True  # nothing in the chunk the fast path leaves to the whole one
            for j in range(nspans):
                span_start = r.pos
                is_object = False
                f = &facts[j]
                memset(f, 0, sizeof(Facts))
                _clear(&meta)
                _clear(&metrics)
                service.n = name.n = resource.n = type_.n = 0
                service.p = name.p = resource.p = type_.p = NULL
                ids[0] = ids[1] = ids[2] = 0
                start_bits = duration_bits = error_bits = 0
                duration_negative = False
                seen = 0
                # the checks of _span, so that a body taken here is one decode_v04_spans takes
                for k in range(_map_len(&r)):
                    klen = _str_len(&r)
                    field = _field(r.data + r.pos, klen)
                    r.pos += klen
                    if field < 0 or seen & (1u << field):
                        raise _Reject()
                    seen |= 1u << field
                    if field == F_SPAN_LINKS or field == F_SPAN_EVENTS:
                        if _byte(&r) != 0xC0:
                            raise _Reject()
                    elif field == F_SERVICE:
                        _text(&r, &service)
                    elif field == F_NAME:
                        _text(&r, &name)
                    elif field == F_RESOURCE:
                        _text(&r, &resource)
                    elif field == F_TYPE:
                        _text(&r, &type_)
                        if _same(type_, <const unsigned char*>"llm", 3):
                            is_object = True  # an LLM call: the LLM stage's
                    elif field <= F_PARENT_ID:  # trace, span and parent ids: uint64
                        if _integer(&r, _byte(&r), &bits) != 1:
                            raise _Reject()
                        ids[field - F_TRACE_ID] = bits
                    elif field <= F_ERROR:  # start, duration, error: int64
                        c = _integer(&r, _byte(&r), &bits)
                        if c == 1 and bits > <uint64_t>0x7FFFFFFFFFFFFFFF:
                            raise _Reject()
                        if field == F_START:
                            start_bits = bits
                        elif field == F_DURATION:
                            duration_bits = bits
                            duration_negative = c == 2
                        else:
                            error_bits = bits
                    elif field == F_META:
                        c = _map_len(&r)
                        _room(&meta, c)
                        for kk in range(c):
                            _add_tag(&meta, &r, False)
                    elif field == F_METRICS:
                        c = _map_len(&r)
                        _room(&metrics, c)
                        for kk in range(c):
                            _add_tag(&metrics, &r, True)
                    else:  # meta_struct: bins, an LLM Observability event among them; the LLM stage's
                        for kk in range(_map_len(&r)):
                            _text(&r, &ignored)
                            _skip_bin(&r)
                            is_object = True
                if meta.repeated or metrics.repeated:
                    plain = False
                f.service = service
                f.span_id = ids[1]
                f.parent_id = ids[2]
                for kk in range(meta.n):
                    t = &meta.at[kk]
                    if t.key.n == 3 and memcmp(t.key.p, "env", 3) == 0:
                        f.env = t.value
                        f.has_env = True
                    elif t.key.n == 12 and memcmp(t.key.p, "_dd.hostname", 12) == 0:
                        f.hostname = t.value
                    elif t.key.n == 7 and memcmp(t.key.p, "version", 7) == 0:
                        f.version = t.value
                    elif t.key.n == 10 and memcmp(t.key.p, "_dd.origin", 10) == 0:
                        f.origin = t.value
                    elif t.key.n == 10 and memcmp(t.key.p, "runtime-id", 10) == 0:
                        f.runtime_id = t.value
                for kk in range(metrics.n):
                    t = &metrics.at[kk]
                    if t.key.n == 21 and memcmp(t.key.p, "_sampling_priority_v1", 21) == 0:
                        f.has_priority = True
                        f.priority = t.number
                        if not isfinite(t.number):
                            plain = False  # poison: drop_poison's
                if not plain:
                    continue  # the rest of the chunk is only checked (to decode it later)
                if is_object:  # decoded once the body is read, and encoded in its place after the LLM stage
                    holes.append((j, span_start))
                    continue
                # the scrub scan's strings: span_candidates' (meta values but for the skipped keys, the resource)
                if scan is not None:
                    for kk in range(meta.n):
                        t = &meta.at[kk]
                        if t.key.n >= prefix_n and memcmp(t.key.p, prefix, prefix_n) == 0:
                            continue
                        if skipped.n and _in_defaults(skipped, t.key, t.hash):
                            continue
                        if nscanned + meta.n + 1 > scanned_cap:
                            scanned_cap = 2 * scanned_cap + meta.n + 256
                            grown_scanned = <Scanned*>realloc(scanned_strings, scanned_cap * sizeof(Scanned))
                            if grown_scanned == NULL:
                                raise MemoryError()
                            scanned_strings = grown_scanned
                        _scanned(&scanned, sep, nscanned == 0, &scanned_strings[nscanned], t.key, t.value,
                                 len(results), len(sizes))
                        nscanned += 1
                    if nscanned + 1 > scanned_cap:
                        scanned_cap = 2 * scanned_cap + 256
                        grown_scanned = <Scanned*>realloc(scanned_strings, scanned_cap * sizeof(Scanned))
                        if grown_scanned == NULL:
                            raise MemoryError()
                        scanned_strings = grown_scanned
                    no_key.p = NULL
                    no_key.n = 0
                    _scanned(&scanned, sep, nscanned == 0, &scanned_strings[nscanned], no_key, resource,
                             len(results), len(sizes))
                    nscanned += 1
                # the span, as encode_spans writes it (_encode_into)
                before = _open_span_field(&out)
                if service.n:
                    _put_text_field(&out, 0x0A, service)
                else:
                    _reserve(&out, 11 + fallback_n)
                    _put_byte(&out, 0x0A)
                    _put_varint(&out, <uint64_t>fallback_n)
                    _put_raw(&out, fallback_p, fallback_n)
                if name.n == 0:
                    name.p = <const unsigned char*>PyBytes_AS_STRING(_DEFAULT_NAME)
                    name.n = PyBytes_GET_SIZE(_DEFAULT_NAME)
                _put_text_field(&out, 0x12, name)
                _put_text_field(&out, 0x1A, resource if resource.n else name)
                _put_uint_field(&out, 4, ids[0])
                _put_uint_field(&out, 5, ids[1])
                _put_uint_field(&out, 6, ids[2])
                _put_uint_field(&out, 7, start_bits)
                _put_uint_field(&out, 8, 0 if duration_negative else duration_bits)
                _put_uint_field(&out, 9, error_bits)
                for kk in range(meta.n):
                    t = &meta.at[kk]
                    _put_text_entry(&out, TAG_META, t.key.p, t.key.n, t.value.p, t.value.n)
                for kk in range(defaults.n):
                    if not _has_key(&meta, defaults.key[kk], defaults.key_n[kk], defaults.hash[kk]):
                        _put_text_entry(&out, TAG_META, defaults.key[kk], defaults.key_n[kk], defaults.value[kk],
                                        defaults.value_n[kk])
                for kk in range(metrics.n):
                    t = &metrics.at[kk]
                    _put_number_entry(&out, t.key.p, t.key.n, t.number)
                _put_text_field(&out, TAG_TYPE, type_)
                sizes.append(_close_span_field(&out, before))
                written.append(j)
                starts.append(span_start)
            if not plain:
                results.append((chunk_start, r.pos))
                continue
            results.append(_encoded(body, chunk_start, r.pos, facts, nspans, &out, sizes, holes, written, starts,
                                    maker))
        if r.pos != r.end:
            return None
        if scan is not None and scanned.len:
            _candidates_to_objects(results, scanned_strings, nscanned, key_skip,
                                   scan(PyBytes_FromStringAndSize(scanned.data, scanned.len)))
        chunks = []
        for chunk in results:
            r.end = PyBytes_GET_SIZE(body)
            if type(chunk) is list:
                pass
            elif type(chunk) is tuple:
                r.pos, r.end = chunk
                nspans = _array_len(&r)
                chunk = _spans(&r, nspans)
            else:
                objects = []
                for hole in (<EncodedChunk>chunk)._holes:
                    r.pos = hole[1]
                    objects.append(_span(&r))
                if len(objects) == (<EncodedChunk>chunk).spans:  # nothing left written: a list, as decoded
                    chunk = objects
                else:
                    (<EncodedChunk>chunk).objects = objects
            chunks.append(chunk)
        return chunks
    except _Reject:
        return None
    finally:
        free(out.data)
        free(scanned.data)
        free(meta.at)
        free(metrics.at)
        free(facts)
        free(scanned_strings)


cdef object _encoded(bytes body, Py_ssize_t start, Py_ssize_t end, Facts* facts, Py_ssize_t n, Buf* out,
                     list sizes, list holes, list written, list starts, object maker):
    """The EncodedChunk of a plain chunk: its root as ``model.root_span`` finds it, its priority as
    ``model.sampling_priority`` reads it, its first runtime-id as the trace source's ``_tracer_info``."""
    cdef Py_ssize_t j, root = -1, i
    cdef EncodedChunk chunk = EncodedChunk.__new__(EncodedChunk)
    cdef Facts* f
    cdef bint found
    for j in range(n):
        if facts[j].parent_id == 0:
            root = j
            break
    if root < 0:
        for j in range(n):
            found = False
            for i in range(n):
                if facts[i].span_id == facts[j].parent_id:
                    found = True
                    break
            if not found:
                root = j
                break
    if root < 0:
        root = 0
    f = &facts[root]
    chunk.spans = n
    chunk.data = PyBytes_FromStringAndSize(out.data, out.len)
    chunk.sizes = sizes
    chunk.root_service = _str_at(f.service.p, f.service.n) if f.service.n else ""
    chunk.root_env = _text_str(f.env) if f.has_env else None
    chunk.root_hostname = _str_at(f.hostname.p, f.hostname.n) if f.hostname.p != NULL else ""
    chunk.root_version = _str_at(f.version.p, f.version.n) if f.version.p != NULL else ""
    chunk.root_origin = _str_at(f.origin.p, f.origin.n) if f.origin.p != NULL else ""
    chunk.priority = None
    chunk.runtime_id = None
    for j in range(n):
        if facts[j].has_priority:
            chunk.priority = PyFloat_FromDouble(facts[j].priority)
            break
    for j in range(n):
        if facts[j].runtime_id.p != NULL:
            chunk.runtime_id = _str_at(facts[j].runtime_id.p, facts[j].runtime_id.n)
            break
    chunk.maker = maker
    chunk._holes = holes
    chunk._written = written
    chunk._starts = starts
    chunk._body = body
    chunk._start = start
    chunk._end = end
    return chunk


cdef int _scanned(Buf* scanned, unsigned char sep, bint first, Scanned* s, Text key, Text value,
                  Py_ssize_t chunk, Py_ssize_t place) except -1:
    """``value`` into the scan (after a separator but for the request's first string, as span_candidates
    writes them), and what it is into ``s``."""
    _put_joined(scanned, sep, first, <const char*>value.p, value.n)
    s.end = scanned.len
    s.chunk = chunk
    s.place = place
    s.key = key
    s.value = value
    return 0


cdef bint _id_value(Text t) noexcept:
    """privacy._is_id_value: hex digits and dashes only."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(t.n):
        c = t.p[i]
        if not (48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102 or c == 45):
            return False
    return True


cdef int _candidates_to_objects(list results, Scanned* strings, Py_ssize_t n, key_skip, hits) except -1:
    """Each span with a scan match that the scrub would look at becomes one of its chunk's objects, for the
    scrub to judge: a match whose last byte is at ``end - 1`` belongs to the string whose separator (or the
    data's end) is at or after it, first (span_candidates). Let go, as scrub_chunks lets them go: an empty
    value, and an identifier under a key that ``key_skip`` (privacy.span_key_skip) says holds them."""
    cdef Py_ssize_t i = 0, target, last = -1
    cdef Scanned* s
    cdef EncodedChunk chunk
    marked = {}  # chunk's result index -> its places in sizes
    for end in hits:
        target = <Py_ssize_t>end - 1
        while i < n and strings[i].end < target:
            i += 1
        if i >= n or i == last:
            continue
        last = i
        s = &strings[i]
        if type(results[s.chunk]) is not EncodedChunk:
            continue
        if s.key.p != NULL:
            if s.value.n == 0:
                continue
            skip = key_skip(_str_at(s.key.p, s.key.n))
            if skip is True or (skip is None and _id_value(s.value)):
                continue
        marked.setdefault(s.chunk, set()).add(s.place)
    for index, places in marked.items():
        chunk = results[index]
        for k in places:
            chunk._holes.append((chunk._written[k], chunk._starts[k]))
        chunk._holes.sort()
    return 0
