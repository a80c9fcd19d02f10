# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, infer_types=False
"""The compiled log scrub-and-cut step: ``scrub_batch(records, kept, spec, scan, hooks)``, ``gather`` and
``tag_many``.

Same contract, same answers, same buffer and same hook calls as the pure-Python twin in
``llmship.transforms.logpath`` (its docstring is the specification; tests/transforms/test_logpath.py
compares the two). The walk reads dicts and lists in place (``PyDict_Next``), the scanned buffer is written
once from the strings' own code points (no UTF-8 encoding, no joined copy), the cut points, the matches'
owners and the cuts of text no match touched are found without a Python call, and a cut text is built in
one str; the hooks (the rare paths) are the twin's. Beyond the twin, a text field's UTF-8 is cached in the
str for the encoder that comes next (``llmship_fill_utf8``).
"""

from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint16_t, uint32_t
from cpython.ref cimport PyObject

from llmship.transforms import truncate as _truncate_mod

cdef extern from "Python.h":
    bint PyUnicode_CheckExact(object o) noexcept
    bint PyDict_CheckExact(object o) noexcept
    bint PyList_CheckExact(object o) noexcept
    bint PyDict_Check(object o) noexcept
    bint PyList_Check(object o) noexcept
    Py_ssize_t PyUnicode_GET_LENGTH(object o) noexcept
    int PyUnicode_KIND(object o) noexcept
    void* PyUnicode_DATA(object o) noexcept
    bint PyUnicode_IS_ASCII(object o) noexcept
    uint32_t PyUnicode_READ(int kind, void* data, Py_ssize_t index) noexcept
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    Py_ssize_t PyList_GET_SIZE(object o) noexcept
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i) noexcept
    int PySet_Contains(object s, object key) except -1
    int PyDict_Contains(object d, object key) except -1
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    char* PyBytes_AS_STRING(object o) noexcept
    object PyUnicode_Substring(object s, Py_ssize_t start, Py_ssize_t end)
    object PyUnicode_Concat(object a, object b)
    int PyUnicode_Compare(object a, object b) except? -1

cdef extern from *:
    """
    /* The UTF-8 form of a compact non-ASCII str, computed and cached in the object, as
       PyUnicode_AsUTF8AndSize does (unicode_fill_utf8: PyObject_Malloc'd, NUL-terminated, freed with the
       str), but several times faster on text that is mostly ASCII (four code units at a time). orjson reads
       that cache when it serializes the str, instead of encoding it again, slowly. Nothing is cached for a
       str that holds a surrogate (no UTF-8: orjson then refuses it, as before), nor where the layout may differ
       (a free-threaded build, a Python this was not checked against): 0 then, and nothing changes. Checked
       against CPython 3.11 and 3.12, whose unicode_fill_utf8 and unicode_dealloc use PyObject_Malloc and
       PyObject_Free for it; later versions moved to PyMem_Malloc, which a debug build tells apart. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000 && !defined(Py_GIL_DISABLED) && !defined(PYPY_VERSION)
    #define LLMSHIP_FILL_UTF8 1
    #else
    #define LLMSHIP_FILL_UTF8 0
    #endif

    #if LLMSHIP_FILL_UTF8 && defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    #if LLMSHIP_FILL_UTF8
    /* Where the UTF-8 is written first (static: used under the GIL, and only the pages written are ever
       resident), then copied into a block of its exact size: cheaper than allocating the most it can take
       and shrinking it (a realloc). A text that could take more than LLMSHIP_SCRATCH_MAX bytes is written in
       a block of its own, shrunk after, as before. */
    #define LLMSHIP_SCRATCH_MAX (64 * 1024)
    static unsigned char llmship_scratch[LLMSHIP_SCRATCH_MAX];
    #endif

    static int llmship_fill_utf8(PyObject *s) {
    #if LLMSHIP_FILL_UTF8
        PyCompactUnicodeObject *c;
        Py_ssize_t n, i = 0, len, most;
        int kind;
        const void *data;
        unsigned char *buf, *o, *shrunk;
        if (!PyUnicode_IS_COMPACT(s) || PyUnicode_IS_ASCII(s))
            return 0;
        c = (PyCompactUnicodeObject *) s;
        if (c->utf8 != NULL)
            return 0;
        n = PyUnicode_GET_LENGTH(s);
        kind = PyUnicode_KIND(s);
        data = PyUnicode_DATA(s);
        if (n > (PY_SSIZE_T_MAX - 1) / 4)
            return 0;
        /* the most it can take (a code point of kind k takes at most k + 1 bytes, and 4), NUL included */
        most = n * (kind == PyUnicode_4BYTE_KIND ? 4 : kind + 1) + 1;
        buf = most <= LLMSHIP_SCRATCH_MAX ? llmship_scratch : (unsigned char *) PyObject_Malloc(most);
        if (buf == NULL)
            return 0;  /* orjson will encode it itself */
        o = buf;
        if (kind == PyUnicode_1BYTE_KIND) {
            const Py_UCS1 *p = (const Py_UCS1 *) data;
            for (; i < n; i++) {
                Py_UCS1 ch = p[i];
                if (ch < 0x80) {
                    *o++ = ch;
                } else {
                    *o++ = 0xC0 | (ch >> 6);
                    *o++ = 0x80 | (ch & 0x3F);
                }
            }
        } else if (kind == PyUnicode_2BYTE_KIND) {
            const Py_UCS2 *p = (const Py_UCS2 *) data;
    #if defined(__SSE2__)
            const __m128i high = _mm_set1_epi16((short) 0xFF80), zero = _mm_setzero_si128();
    #endif
            while (i < n) {
                Py_UCS2 ch;
    #if defined(__SSE2__)
                /* eight ASCII code units at a time */
                while (i + 8 <= n) {
                    __m128i v = _mm_loadu_si128((const __m128i *) (p + i));
                    if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(v, high), zero)) != 0xFFFF)
                        break;
                    _mm_storel_epi64((__m128i *) o, _mm_packus_epi16(v, v));
                    o += 8;
                    i += 8;
                }
                if (i >= n)
                    break;
    #endif
                ch = p[i++];
                if (ch < 0x80) {
                    *o++ = (unsigned char) ch;
                } else if (ch < 0x800) {
                    *o++ = 0xC0 | (ch >> 6);
                    *o++ = 0x80 | (ch & 0x3F);
                } else if ((ch & 0xF800) == 0xD800) {  /* a surrogate: no UTF-8 */
                    if (buf != llmship_scratch)
                        PyObject_Free(buf);
                    return 0;
                } else {
                    *o++ = 0xE0 | (ch >> 12);
                    *o++ = 0x80 | ((ch >> 6) & 0x3F);
                    *o++ = 0x80 | (ch & 0x3F);
                }
            }
        } else {
            const Py_UCS4 *p = (const Py_UCS4 *) data;
            for (; i < n; i++) {
                Py_UCS4 ch = p[i];
                if (ch < 0x80) {
                    *o++ = (unsigned char) ch;
                } else if (ch < 0x800) {
                    *o++ = 0xC0 | (ch >> 6);
                    *o++ = 0x80 | (ch & 0x3F);
                } else if (ch < 0x10000) {
                    if ((ch & 0xFFFFF800) == 0xD800) {
                        if (buf != llmship_scratch)
                            PyObject_Free(buf);
                        return 0;
                    }
                    *o++ = 0xE0 | (ch >> 12);
                    *o++ = 0x80 | ((ch >> 6) & 0x3F);
                    *o++ = 0x80 | (ch & 0x3F);
                } else {
                    *o++ = 0xF0 | (ch >> 18);
                    *o++ = 0x80 | ((ch >> 12) & 0x3F);
                    *o++ = 0x80 | ((ch >> 6) & 0x3F);
                    *o++ = 0x80 | (ch & 0x3F);
                }
            }
        }
        len = o - buf;
        *o = 0;
        if (buf == llmship_scratch) {
            shrunk = (unsigned char *) PyObject_Malloc(len + 1);
            if (shrunk == NULL)
                return 0;
            memcpy(shrunk, buf, len + 1);
        } else {
            shrunk = (unsigned char *) PyObject_Realloc(buf, len + 1);
            if (shrunk == NULL)
                shrunk = buf;
        }
        c->utf8 = (char *) shrunk;
        c->utf8_length = len;
        return 1;
    #else
        (void) s;
        return 0;
    #endif
    }

    /* text[:keep] + marker in one new str (one allocation, one copy of the head), for a marker of kind 2
       (TRUNCATION_MARKER's "…"): the result is then of kind 2, or 4 when the head holds a code point past
       the BMP, as the concatenation would be. NULL with an exception set on failure. */
    static PyObject *llmship_head_and_marker(PyObject *text, Py_ssize_t keep, PyObject *marker) {
        Py_UCS4 maxchar = 0xFFFF;
        Py_ssize_t m = PyUnicode_GET_LENGTH(marker), i;
        PyObject *out;
        if (PyUnicode_KIND(text) == PyUnicode_4BYTE_KIND) {
            const Py_UCS4 *p = PyUnicode_4BYTE_DATA(text);
            for (i = 0; i < keep; i++) {
                if (p[i] > 0xFFFF) {
                    maxchar = 0x10FFFF;
                    break;
                }
            }
        }
        out = PyUnicode_New(keep + m, maxchar);
        if (out == NULL)
            return NULL;
        if (PyUnicode_CopyCharacters(out, 0, text, 0, keep) < 0
                || PyUnicode_CopyCharacters(out, keep, marker, 0, m) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        return out;
    }
    """
    int llmship_fill_utf8(object s) noexcept
    object llmship_head_and_marker(object text, Py_ssize_t keep, object marker)
    int LLMSHIP_FILL_UTF8


cdef enum:
    MAX_DEPTH = 64  # logpath.MAX_DEPTH
    NON_ASCII = 0x80  # logpath.NON_ASCII
    CUT_MIN_SAVING = 256  # scrub._CUT_MIN_SAVING
    CUT_SEARCH_CHARS = 64  # scrub._CUT_SEARCH_CHARS

from llmship.transforms.privacy import _USER_AGENT_KEYS as _UA_KEYS
from llmship.transforms.scrub import _CUT_MIN_SAVING, _CUT_SEARCH_CHARS, _SHORT_TEXT, HINT_CHARS
from llmship.transforms.truncate import TRUNCATION_MARKER

# Compiled-in constants, which logpath checks against its own (a stale build is not used).
CONSTANTS = (MAX_DEPTH, NON_ASCII, CUT_MIN_SAVING, CUT_SEARCH_CHARS)

cdef object _safe_cut_py = _truncate_mod._safe_cut
cdef str _MARKER = TRUNCATION_MARKER
cdef Py_ssize_t _MARKER_LEN = len(TRUNCATION_MARKER)
cdef bint _MARKER_KIND2 = PyUnicode_KIND(TRUNCATION_MARKER) == 2  # llmship_head_and_marker can build the cut text
cdef object _NESTED = _UA_KEYS  # the keys skipped below the top level (privacy._Walker.walk)
cdef object _USER_AGENT_KEYS = _UA_KEYS

# logpath.tags_unchanged: a bit per ASCII character of scrub.HINT_CHARS, and the scrubber's short text
cdef unsigned long long _HINTS[2]
_HINTS[0] = _HINTS[1] = 0
for _c in HINT_CHARS:
    _HINTS[ord(_c) >> 6] |= 1ull << (ord(_c) & 63)
cdef Py_ssize_t _SHORT = _SHORT_TEXT

# "[abcdefghjklmoqstuvwxz] " (scrub._CUT): a bit per lower-case letter that may stand before a cut
cdef unsigned int _CUT_LETTERS = 0
for _c in "abcdefghjklmoqstuvwxz":
    _CUT_LETTERS |= 1u << (ord(_c) - 97)


cdef class _Strings:
    """The strings to scan, in order: each one's object, how many code points of it, its owner."""
    cdef list objects
    cdef Py_ssize_t* lengths
    cdef Py_ssize_t* owners
    cdef Py_ssize_t count, capacity, total

    def __cinit__(self):
        self.objects = []
        self.capacity = 64
        self.lengths = <Py_ssize_t*> malloc(self.capacity * sizeof(Py_ssize_t))
        self.owners = <Py_ssize_t*> malloc(self.capacity * sizeof(Py_ssize_t))
        if self.lengths is NULL or self.owners is NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.lengths)
        free(self.owners)

    cdef int add(self, object text, Py_ssize_t length, Py_ssize_t owner) except -1:
        cdef Py_ssize_t* grown
        if self.count == self.capacity:
            self.capacity *= 2
            grown = <Py_ssize_t*> realloc(self.lengths, self.capacity * sizeof(Py_ssize_t))
            if grown is NULL:
                raise MemoryError()
            self.lengths = grown
            grown = <Py_ssize_t*> realloc(self.owners, self.capacity * sizeof(Py_ssize_t))
            if grown is NULL:
                raise MemoryError()
            self.owners = grown
        self.objects.append(text)
        self.lengths[self.count] = length
        self.owners[self.count] = owner
        self.count += 1
        self.total += length + 1
        return 0

    cdef int drop_from(self, Py_ssize_t mark) except -1:
        """Forget the strings from index ``mark`` on."""
        cdef Py_ssize_t i
        for i in range(mark, self.count):
            self.total -= self.lengths[i] + 1
        del self.objects[mark:]
        self.count = mark
        return 0

    cdef bytes buffer(self):
        """Every string mapped one byte per code point, each followed by a NUL."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self.total)
        cdef unsigned char* p = <unsigned char*> PyBytes_AS_STRING(out)
        cdef Py_ssize_t i, j, n
        cdef int kind
        cdef void* data
        cdef const unsigned char* d1
        cdef const uint16_t* d2
        cdef const uint32_t* d4
        cdef object text
        for i in range(self.count):
            text = self.objects[i]
            n = self.lengths[i]
            kind = PyUnicode_KIND(text)
            data = PyUnicode_DATA(text)
            if PyUnicode_IS_ASCII(text):
                memcpy(p, data, n)
            elif kind == 1:
                d1 = <const unsigned char*> data
                for j in range(n):
                    p[j] = d1[j] if d1[j] < 0x80 else NON_ASCII
            elif kind == 2:
                d2 = <const uint16_t*> data
                for j in range(n):
                    p[j] = <unsigned char> d2[j] if d2[j] < 0x80 else NON_ASCII
            else:
                d4 = <const uint32_t*> data
                for j in range(n):
                    p[j] = <unsigned char> d4[j] if d4[j] < 0x80 else NON_ASCII
            p[n] = 0
            p += n + 1
        return out


cdef Py_ssize_t _scrubbed_first(object text, Py_ssize_t max_chars, bint cuttable) noexcept:
    """``logpath.scrubbed_first``."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef Py_ssize_t start, pos, end, i
    cdef uint32_t c
    cdef int kind
    cdef void* data
    if not cuttable or n <= max_chars + CUT_MIN_SAVING:
        return n
    start = max_chars + 1
    pos = start - 1
    end = start + CUT_SEARCH_CHARS
    if pos < 0:
        pos = 0
    if end > n:
        end = n
    kind = PyUnicode_KIND(text)
    data = PyUnicode_DATA(text)
    i = pos
    while i + 1 < end:
        if PyUnicode_READ(kind, data, i + 1) == 32:
            c = PyUnicode_READ(kind, data, i)
            if 97 <= c <= 122 and (_CUT_LETTERS >> (c - 97)) & 1:
                return i + 1
        i += 1
    return n


cdef bint _structural(object key, object value) except -1:
    """``privacy.is_structural`` of a str key whose last character is "d" or "D", and a non-empty value."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(key)
    cdef Py_ssize_t m, i
    cdef int kind
    cdef void* data
    cdef uint32_t a, b, c
    if PySet_Contains(_USER_AGENT_KEYS, key):
        return True
    if n < 2:
        return False
    kind = PyUnicode_KIND(key)
    data = PyUnicode_DATA(key)
    a = PyUnicode_READ(kind, data, n - 2)
    b = PyUnicode_READ(kind, data, n - 1)
    if not ((a == 105 and b == 100) or (a == 73 and (b == 100 or b == 68))):  # "id", "Id", "ID"
        return False
    if n != 2 and a != 73:
        c = PyUnicode_READ(kind, data, n - 3)
        if c != 95 and c != 46 and c != 45:  # "_", ".", "-"
            return False
    # an identifier: hex digits and dashes only
    m = PyUnicode_GET_LENGTH(value)
    kind = PyUnicode_KIND(value)
    data = PyUnicode_DATA(value)
    for i in range(m):
        c = PyUnicode_READ(kind, data, i)
        if not (48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102 or c == 45):
            return False
    return True



cdef bint _walk(object node, object skip, int depth, _Strings out, Py_ssize_t owner) except -1:
    """``logpath._walk``: False for what the walk leaves to the Python walker."""
    cdef Py_ssize_t pos = 0, i, n, length
    cdef PyObject* k
    cdef PyObject* v
    cdef object key, value
    cdef uint32_t last
    if depth > MAX_DEPTH:
        return False
    if PyDict_CheckExact(node):
        while PyDict_Next(node, &pos, &k, &v):
            key = <object> k
            value = <object> v
            if not PyUnicode_CheckExact(key):
                return False
            if PyUnicode_CheckExact(value):
                length = PyUnicode_GET_LENGTH(value)
                if length == 0 or PySet_Contains(skip, key):
                    continue
                n = PyUnicode_GET_LENGTH(key)
                if n == 0:
                    pass  # key[-1:] is "", which is "in" "dD"; is_structural("", ...) is False
                else:
                    last = PyUnicode_READ(PyUnicode_KIND(key), PyUnicode_DATA(key), n - 1)
                    if (last == 100 or last == 68) and _structural(key, value):
                        continue
                out.add(value, length, owner)
            elif PyDict_CheckExact(value) or PyList_CheckExact(value):
                if not _walk(value, _NESTED, depth + 1, out, owner):
                    return False
            elif PyDict_Check(value) or PyList_Check(value):
                return False
        return True
    if not PyList_CheckExact(node):
        return False
    n = PyList_GET_SIZE(node)
    for i in range(n):
        value = <object> PyList_GET_ITEM(node, i)
        if PyUnicode_CheckExact(value):
            length = PyUnicode_GET_LENGTH(value)
            if length:
                out.add(value, length, owner)
        elif PyDict_CheckExact(value) or PyList_CheckExact(value):
            if not _walk(value, _NESTED, depth + 1, out, owner):
                return False
        elif PyDict_Check(value) or PyList_Check(value):
            return False
    return True


cdef class _Gathered:
    cdef _Strings strings
    cdef list text_records  # per text field that is a string: its record's index
    cdef list text_fields
    cdef list text_values
    cdef bytearray walked


cdef _Gathered _gather(list records, tuple spec):
    cdef tuple text_fields = spec[0]
    cdef object skip = spec[1]
    cdef Py_ssize_t max_chars = spec[2]
    cdef bint cuttable = spec[3]
    cdef _Gathered g = _Gathered()
    cdef _Strings strings = _Strings()
    cdef Py_ssize_t i, f, nfields = len(text_fields), mark
    cdef object record, field, value
    cdef PyObject* found
    cdef bint simple, exact
    g.strings = strings
    g.text_records = []
    g.text_fields = []
    g.text_values = []
    g.walked = bytearray(len(records))
    for i in range(len(records)):
        record = records[i]
        simple = True
        exact = PyDict_CheckExact(record)
        for f in range(nfields):
            field = text_fields[f]
            if exact:
                found = PyDict_GetItemWithError(record, field)
                value = <object> found if found is not NULL else None
            else:
                value = record.get(field)
            if PyUnicode_CheckExact(value):
                strings.add(value, _scrubbed_first(value, max_chars, cuttable), len(g.text_values))
                g.text_records.append(i)
                g.text_fields.append(field)
                g.text_values.append(value)
            elif value is not None:
                simple = False
        if simple and exact:
            mark = strings.count
            if _walk(record, skip, 0, strings, ~i):
                g.walked[i] = 1
            else:  # what was collected of it goes: the Python walker takes the record
                strings.drop_from(mark)
    return g


def gather(list records, tuple spec):
    """``logpath.gather``."""
    cdef _Gathered g = _gather(records, spec)
    cdef _Strings s = g.strings
    cdef list seps = [], owners = []
    cdef Py_ssize_t i, pos = 0
    for i in range(s.count):
        pos += s.lengths[i]
        seps.append(pos)
        pos += 1
        owners.append(s.owners[i])
    texts = list(zip(g.text_records, g.text_fields, g.text_values))
    return s.buffer(), seps, owners, texts, [bool(w) for w in g.walked]


cdef Py_ssize_t _safe_cut(object text, Py_ssize_t cut) except -1:
    """``truncate._safe_cut``: the common case here, the others in Python."""
    cdef int kind
    cdef void* data
    cdef uint32_t a, b
    if cut > 0:
        kind = PyUnicode_KIND(text)
        data = PyUnicode_DATA(text)
        a = PyUnicode_READ(kind, data, cut - 1)
        b = PyUnicode_READ(kind, data, cut)
        if a < 0x80 and b < 0x80 and not (a == 13 and b == 10):
            return cut
    return _safe_cut_py(text, cut)


cdef object _truncate(object text, Py_ssize_t max_chars, bint* cut):
    """``truncate.truncate_text``."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    if n <= max_chars:
        cut[0] = False
        return text
    cut[0] = True
    if max_chars <= _MARKER_LEN:
        return PyUnicode_Substring(text, 0, _safe_cut(text, max_chars if max_chars > 0 else 0))
    if _MARKER_KIND2:
        return llmship_head_and_marker(text, _safe_cut(text, max_chars - _MARKER_LEN), _MARKER)
    return PyUnicode_Concat(PyUnicode_Substring(text, 0, _safe_cut(text, max_chars - _MARKER_LEN)), _MARKER)


def fill_utf8(str text):
    """Cache ``text``'s UTF-8 form in it (see ``llmship_fill_utf8``); True when it did."""
    return llmship_fill_utf8(text) == 1


FILLS_UTF8 = bool(LLMSHIP_FILL_UTF8)


def truncate_text(str text, Py_ssize_t max_chars):
    """``truncate.truncate_text``, compiled (for the tests)."""
    cdef bint cut
    new = _truncate(text, max_chars, &cut)
    return new, cut


def scrubbed_first(str text, Py_ssize_t max_chars, bint cuttable):
    return _scrubbed_first(text, max_chars, cuttable)


def tags_unchanged(str ddtags):
    """``logpath.tags_unchanged``, compiled (for the tests)."""
    return _tags_unchanged(ddtags)


cdef bint _tags_unchanged(object ddtags) noexcept:
    """``logpath.tags_unchanged`` of an exact str."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(ddtags), i
    cdef int kind = PyUnicode_KIND(ddtags)
    cdef void* data = PyUnicode_DATA(ddtags)
    cdef uint32_t c
    cdef bint in_value = False
    if n > _SHORT:
        return False
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        if c == 44:  # ",": the next tag
            in_value = False
        elif in_value:
            if c < 128 and (_HINTS[c >> 6] >> (c & 63)) & 1:
                return False
        elif c == 58:  # the tag's first ":": its value follows
            in_value = True
    return True


cdef Py_ssize_t _owner_of(Py_ssize_t last, Py_ssize_t* ends, Py_ssize_t count) noexcept:
    """The string whose text or NUL holds byte ``last``: the first whose NUL is at or after it."""
    cdef Py_ssize_t lo = 0, hi = count, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if ends[mid] < last:
            lo = mid + 1
        else:
            hi = mid
    return lo


def scrub_batch(list records, list kept, tuple spec, scan, hooks):
    """``logpath.scrub_batch_py``."""
    cdef Py_ssize_t max_chars = spec[2]
    cdef object results = spec[4]
    cdef _Gathered g = _gather(records, spec)
    cdef _Strings s = g.strings
    cdef Py_ssize_t n = len(records), ntexts = len(g.text_values), i, j, start, stop, index, owner, pos
    cdef Py_ssize_t* seps = <Py_ssize_t*> malloc((s.count + 1) * sizeof(Py_ssize_t))
    cdef unsigned char* found = <unsigned char*> malloc(ntexts + 1)
    cdef unsigned char* touched = <unsigned char*> malloc(n + 1)
    cdef unsigned char* cuts = <unsigned char*> malloc(ntexts + 1)
    cdef bint cut, truncated
    cdef list news, out
    cdef object record, new, ddtags, end, value
    cdef PyObject* found_tags
    try:
        if seps is NULL or found is NULL or touched is NULL or cuts is NULL:
            raise MemoryError()
        memset(found, 0, ntexts + 1)
        memset(touched, 0, n + 1)
        pos = 0
        for i in range(s.count):
            pos += s.lengths[i]
            seps[i] = pos
            pos += 1
        for end in scan(s.buffer()):
            index = _owner_of(<Py_ssize_t> end - 1, seps, s.count)
            if index >= s.count:
                continue
            owner = s.owners[index]
            if owner >= 0:
                found[owner] = 1
            else:
                touched[~owner] = 1
        news = [None] * ntexts
        scrub_truncate = hooks.scrub_truncate
        for j in range(ntexts):
            value = g.text_values[j]
            if found[j]:
                new, cut = scrub_truncate(value)
            else:
                new = _truncate(value, max_chars, &cut)
            news[j] = new
            cuts[j] = cut
            if new is not None and PyUnicode_CheckExact(new) and not PyUnicode_IS_ASCII(new):
                llmship_fill_utf8(new)  # for the encoder, next
        out = [None] * n
        j = 0
        for i in range(n):
            record = records[i]
            start = j
            while j < ntexts and <Py_ssize_t> g.text_records[j] == i:
                j += 1
            stop = j
            try:
                truncated = False
                for index in range(start, stop):
                    new = news[index]
                    if new is None:
                        del record[g.text_fields[index]]
                    elif new is not g.text_values[index]:  # an unchanged text stays where it is
                        record[g.text_fields[index]] = new
                    if cuts[index]:
                        truncated = True
                if not g.walked[i]:
                    if hooks.rest(record):
                        truncated = True
                elif touched[i]:
                    hooks.walk(record)
                else:
                    found_tags = PyDict_GetItemWithError(record, "ddtags")
                    if found_tags is not NULL:
                        ddtags = <object> found_tags
                        if ddtags is not None and not (PyUnicode_CheckExact(ddtags) and (
                                PyUnicode_GET_LENGTH(ddtags) == 0 or _tags_unchanged(ddtags)
                                or PyDict_Contains(results, ("ddtags", ddtags)))):
                            hooks.tags(record)
                if kept[i]:
                    hooks.restore(kept[i])
                out[i] = truncated
            except Exception as e:
                hooks.failed(e)
                out[i] = None
        return out
    finally:
        free(seps)
        free(found)
        free(touched)
        free(cuts)


def tag_many(list records, list answers, tuple spec):
    """``logpath.tag_many_py``, with ``LogProcessor._tag`` done here for a record that is a dict. Logs of one app
    repeat their tags: a record whose (ddtags, service, cut) are the previous one's takes its merged tags
    without the cache's key tuple and lookup."""
    hostname, default_service, cache, merge, tag, max_cached, telemetry = spec
    cdef list out = []
    cdef Py_ssize_t i, n = min(len(records), len(answers)), cut = 0
    cdef PyObject* found
    cdef object record, truncated, service, ddtags, key, merged, service_key
    cdef object last_tags = None, last_service = None, last_truncated = None, last_merged = None
    try:
        for i in range(n):
            truncated = answers[i]
            if truncated is None:
                continue
            record = records[i]
            if truncated:
                cut += 1
            if not PyDict_CheckExact(record):
                tag(record, truncated)
                out.append(record)
                continue
            found = PyDict_GetItemWithError(record, "hostname")
            if found is NULL or not <object> found:
                record["hostname"] = hostname
            found = PyDict_GetItemWithError(record, "service")
            service = <object> found if found is not NULL else None
            if not service and default_service:
                record["service"] = service = default_service
            found = PyDict_GetItemWithError(record, "ddtags")
            ddtags = <object> found if found is not NULL else None
            if isinstance(ddtags, list):  # some clients send a list; the intake wants "k:v,k2:v2"
                ddtags = ",".join([str(t) for t in ddtags])
            if not isinstance(ddtags, str):
                ddtags = ""
            service_key = service if isinstance(service, str) else ""
            if (truncated is last_truncated and PyUnicode_CheckExact(ddtags) and PyUnicode_CheckExact(service_key)
                    and _same_str(ddtags, last_tags) and _same_str(service_key, last_service)):
                merged = last_merged
            else:
                key = (ddtags, service_key, truncated)
                found = PyDict_GetItemWithError(cache, key)
                if found is NULL:
                    merged = merge(ddtags, service, truncated)
                    if len(cache) >= max_cached:  # bounded: junk input must not grow it
                        cache.clear()
                    cache[key] = merged
                else:
                    merged = <object> found
                if PyUnicode_CheckExact(ddtags) and PyUnicode_CheckExact(service_key):
                    last_tags, last_service, last_truncated, last_merged = ddtags, service_key, truncated, merged
                else:
                    last_tags = None
            if merged:
                record["ddtags"] = merged
            out.append(record)
    finally:
        if cut:
            telemetry.inc("text_truncated", cut)
    return out


cdef inline bint _same_str(object text, object last) noexcept:
    """``text`` (an exact str) equals ``last`` (an exact str, or None)."""
    if text is last:
        return True
    if last is None:
        return False
    return PyUnicode_Compare(text, last) == 0
