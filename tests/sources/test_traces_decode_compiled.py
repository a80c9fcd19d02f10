"""The compiled v0.4 decoder (sinks/_spanenc.pyx ``decode_v04_spans``) against its twin, msgspec's typed
decode: for every body, either the same spans (same values, same types, same dict order) or None, after
which decode_v04 asks msgspec. Bodies are written here with every msgpack width a value may take (a
tracer need not use the shortest), with odd values among them, and cut short or mutated at random."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmship.model import Span
from llmship.sinks import spanenc
from llmship.sources import traces
from llmship.sources.traces import decode_v04

from harness import CAPTURES

native = spanenc.decode_v04_spans
pytestmark = pytest.mark.skipif(native is None, reason="the compiled decoder is not built (or LLMSHIP_NO_EXTENSIONS)")

V04 = (CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes()
MSGPACK = "application/msgpack"


def typed(body: bytes):
    """msgspec's answer (decode_v04's second path), None where it refuses."""
    try:
        return [chunk for chunk in traces._fast_v04.decode(body) if chunk]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def norm(x):
    """A comparable form that tells types apart (1 from 1.0 from True) and floats by their bits."""
    if isinstance(x, float):
        return "float", struct.pack("<d", x)
    if isinstance(x, dict):
        return "dict", [(norm(k), norm(v)) for k, v in x.items()]
    if isinstance(x, list):
        return "list", [norm(v) for v in x]
    if isinstance(x, Span):
        return "Span", [(f, norm(getattr(x, f))) for f in Span.__struct_fields__]
    return type(x).__name__, x


def check(body: bytes, must_take: bool = False):
    got, want = native(body), typed(body)
    if got is None:
        assert not must_take, "declined a body msgspec decodes"
    else:
        assert want is not None, "took a body msgspec refuses"
        assert norm(got) == norm(want)
    return got


# ------------------------------------------------------------------------------------- a msgpack writer


def pack(value, rnd: random.Random) -> bytes:
    """``value`` as msgpack, each header in a width chosen at random among those that hold it. A ``Pairs``
    is a map written in its order, repeats included; ``F32`` a float written as float32."""
    if value is None:
        return b"\xc0"
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return _int(value, rnd)
    if isinstance(value, F32):
        return b"\xca" + struct.pack(">f", value.value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, RawStr):
        return _header(len(value.data), rnd, 0xA0, 31, b"\xd9", b"\xda", b"\xdb") + value.data
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return _header(len(data), rnd, 0xA0, 31, b"\xd9", b"\xda", b"\xdb") + data
    if isinstance(value, bytes):
        return _header(len(value), rnd, None, 0, b"\xc4", b"\xc5", b"\xc6") + value
    if isinstance(value, list):
        return _header(len(value), rnd, 0x90, 15, None, b"\xdc", b"\xdd") + b"".join(pack(v, rnd) for v in value)
    if isinstance(value, (dict, Pairs)):
        items = value.items() if isinstance(value, dict) else value.pairs
        return _header(len(items), rnd, 0x80, 15, None, b"\xde", b"\xdf") + b"".join(
            pack(k, rnd) + pack(v, rnd) for k, v in items)
    if isinstance(value, msgpack.ExtType):
        return msgpack.packb(value)
    raise TypeError(value)


class Pairs:
    def __init__(self, pairs):
        self.pairs = list(pairs)


class F32:
    def __init__(self, value: float):
        self.value = value


class RawStr:
    """A str header over bytes that may not be UTF-8."""

    def __init__(self, data: bytes):
        self.data = data


def _header(n: int, rnd, fix_base, fix_max, w8, w16, w32) -> bytes:
    options = []
    if fix_base is not None and n <= fix_max:
        options.append(bytes([fix_base | n]))
    if w8 is not None and n < 1 << 8:
        options.append(w8 + struct.pack(">B", n))
    if n < 1 << 16:
        options.append(w16 + struct.pack(">H", n))
    options.append(w32 + struct.pack(">I", n))
    return rnd.choice(options)


def _int(v: int, rnd) -> bytes:
    options = []
    if 0 <= v <= 0x7F:
        options.append(bytes([v]))
    if -32 <= v < 0:
        options.append(struct.pack(">b", v))
    for code, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
                      (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
        try:
            options.append(bytes([code]) + struct.pack(fmt, v))
        except struct.error:
            pass
    return rnd.choice(options)


# ------------------------------------------------------------------------------------- generated spans

FIELDS = [f for f in Span.__struct_fields__ if f not in ("span_links", "span_events")]
STR_FIELDS = ("service", "name", "resource", "type")
UINT_FIELDS = ("trace_id", "span_id", "parent_id")
INT_FIELDS = ("start", "duration", "error")

# Short ASCII texts repeat (the string cache), and the rest covers lengths around its 32-byte limit,
# non-ASCII and astral characters.
short = st.sampled_from(["", "env", "staging", "http.method", "x" * 31, "y" * 32, "z" * 33, "é", "日本", "🙂"])
texts = short | st.text(max_size=40)
u64 = st.integers(0, (1 << 64) - 1)
i64 = st.integers(-(1 << 63), (1 << 63) - 1)
floats = st.floats() | st.floats(width=32).map(F32) | st.integers(-(1 << 63), (1 << 64) - 1)
odd = (st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(1 << 63), (1 << 64) - 1)
       | st.binary(max_size=4) | texts | st.lists(st.integers(-(1 << 63), (1 << 64) - 1), max_size=2)
       | st.builds(RawStr, st.sampled_from([b"\xff", b"ab\xc3", b"\xed\xa0\x80", b"\xc0\xaf"]))
       | st.just(msgpack.ExtType(5, b"x")) | st.dictionaries(texts, texts, max_size=2))


def well_typed(field: str):
    if field in STR_FIELDS:
        return texts
    if field in UINT_FIELDS:
        return u64
    if field in INT_FIELDS:
        return i64
    if field == "meta":
        return st.lists(st.tuples(texts, texts), max_size=6).map(Pairs)  # repeats included
    if field == "metrics":
        return st.lists(st.tuples(texts, floats), max_size=6).map(Pairs)
    return st.lists(st.tuples(texts, st.binary(max_size=8)), max_size=3).map(Pairs)


@st.composite
def span_maps(draw, clean: bool):
    fields = draw(st.lists(st.sampled_from(FIELDS), unique=True))
    pairs = [(f, draw(well_typed(f))) for f in fields]
    if not clean:
        for _ in range(draw(st.integers(0, 2))):
            at = draw(st.integers(0, len(pairs)))
            key = draw(st.sampled_from(FIELDS + ["span_links", "span_events", "unknown", "servicf"]))
            value = draw(odd | well_typed(key) if key in FIELDS else odd)
            pairs.insert(at, (key, value))
        if draw(st.booleans()) and pairs:  # a value of the wrong type inside a map
            k, v = pairs[-1]
            pairs[-1] = (k, Pairs([(draw(texts), draw(odd))]) if k in ("meta", "metrics", "meta_struct") else v)
    elif draw(st.booleans()):
        pairs.append((draw(st.sampled_from(["span_links", "span_events"])), None))  # nil: taken, as absent
    return Pairs(pairs)


def bodies(clean: bool):
    return st.tuples(st.lists(st.lists(span_maps(clean), max_size=4), max_size=4), st.randoms(use_true_random=False))


@settings(max_examples=800, deadline=None)
@given(bodies(clean=True))
def test_well_typed_bodies_decode_as_msgspec_decodes_them(case):
    traces_, rnd = case
    body = pack(traces_, rnd)
    got = check(body, must_take=True)
    assert sum(map(len, got)) == sum(map(len, traces_))


@settings(max_examples=800, deadline=None)
@given(bodies(clean=False))
def test_odd_bodies_decode_as_msgspec_or_are_declined(case):
    traces_, rnd = case
    check(pack(traces_, rnd))


# ------------------------------------------------------------------------------------- fixed cases


def test_the_capture_decodes_as_msgspec_decodes_it():
    got = check(V04, must_take=True)
    assert sum(map(len, got)) == 12


def test_decode_v04_takes_the_compiled_path():
    assert traces._compiled_v04 is native
    assert norm(decode_v04(V04, MSGPACK)) == norm(typed(V04))


@pytest.mark.parametrize("span, taken", [
    ({"trace_id": (1 << 64) - 1, "start": (1 << 63) - 1, "error": -(1 << 63)}, True),
    ({"start": 1 << 63}, False),  # beyond int64
    ({"trace_id": -1}, False),  # msgspec: an id must be >= 0 (the tolerant decoder masks it)
    ({"start": 1.0}, False),
    ({"error": True}, False),
    ({"service": None}, False),
    ({"meta": None}, False),
    ({"meta": {"k": 1}}, False),
    ({"metrics": {"a": 2, "b": -3, "c": (1 << 64) - 1, "d": True}}, False),  # the bool
    ({"metrics": {"a": 2, "b": -3, "c": (1 << 64) - 1}}, True),  # ints become floats
    ({"meta_struct": {"m": "text"}}, False),  # a str where bin belongs
    ({"meta_struct": {"m": b"\x81\xa1a\x01"}}, True),
    ({"span_links": [{"trace_id": 1}]}, False),  # msgspec takes it: declined, for msgspec to decode
    ({"span_events": []}, False),
    ({"span_links": None, "span_events": None}, True),
    ({"unknown": 1}, False),
])
def test_edges(span, taken):
    body = msgpack.packb([[{"name": "n", **span}]])
    assert (check(body) is not None) is taken


@pytest.mark.parametrize("raw", [b"\xff", b"a\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_is_declined(raw):  # then msgspec refuses it and the tolerant decoder replaces it
    for field in ("name", "meta"):
        value = RawStr(raw) if field == "name" else {"k": RawStr(raw)}
        body = pack([[{field: value}]], random.Random(1))
        assert native(body) is None and typed(body) is None
        (span,), = decode_v04(body, MSGPACK)
        assert "\ufffd" in (span.name if field == "name" else span.meta["k"])


def test_a_repeated_span_key_is_declined_a_repeated_meta_key_is_not():
    rnd = random.Random(1)
    assert check(pack([[Pairs([("name", "a"), ("name", "b")])]], rnd)) is None
    (span,), = check(pack([[{"meta": Pairs([("k", "1"), ("j", "2"), ("k", "3")])}]], rnd), must_take=True)
    assert list(span.meta.items()) == [("k", "3"), ("j", "2")]


def test_anything_but_bytes_and_trailing_data_are_declined():
    assert native(bytearray(V04)) is None and native(memoryview(V04)) is None
    assert native(V04 + b"\xc0") is None
    assert native(b"") is None and native(b"\xc0") is None


def test_repeated_short_strings_are_shared_and_distinct_ones_kept_apart():
    body = msgpack.packb([[{"service": "chatbot", "meta": {"env": "staging"}}] * 2])
    (a, b), = native(body)
    assert a.service is b.service and list(a.meta)[0] is list(b.meta)[0]
    # more distinct strings than the cache has slots, twice over: collisions evict, never confuse
    many = [[{"name": f"n{i}", "service": f"s{i % 7}", "meta": {f"k{i}": f"v{i * 31}"}} for i in range(5_000)]]
    body = msgpack.packb(many)
    for _ in range(2):
        check(body, must_take=True)


# ------------------------------------------------------------------------------------- cut and mutated


def _web_like_body() -> bytes:
    rnd = random.Random(3)
    spans = [{"service": "chatbot", "name": "django.request", "resource": "GET /x", "trace_id": rnd.getrandbits(64),
              "span_id": rnd.getrandbits(64), "parent_id": 0, "start": 1_700_000_000_000_000_000 + i,
              "duration": 12_345 * i, "error": i % 2, "type": "web",
              "meta": {"env": "staging", "http.url": "https://example.com/" + "p" * i, "é": "ü" * i},
              "metrics": {"_sampling_priority_v1": 1.0, "n": i}, "meta_struct": {"b": bytes(i)}}
             for i in range(40)]
    return msgpack.packb([spans[:25], [], spans[25:]])


@pytest.mark.parametrize("body", [V04, _web_like_body()], ids=["capture", "web-like"])
def test_every_cut_body_is_declined(body):
    for end in range(len(body)):
        assert native(body[:end]) is None


@pytest.mark.parametrize("body", [V04, _web_like_body()], ids=["capture", "web-like"])
def test_mutated_bodies_decode_as_msgspec_or_are_declined(body):
    rnd = random.Random(11)
    taken = 0
    for _ in range(3000):
        mutated = bytearray(body)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(mutated))
            mutated[at] = rnd.choice([rnd.randrange(256), 0xC0, 0xDD, 0xDF, 0xDB, 0xFF, mutated[at] ^ 0x80])
        taken += check(bytes(mutated)) is not None
    assert taken  # some mutations only change values: those are decoded


# ------------------------------------------------------------------------------------- selection


def test_no_extensions_leaves_the_compiled_decoder_out():
    code = "from llmship.sources import traces; print(traces._compiled_v04)"
    src = str(Path(spanenc.__file__).parents[2])
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src,
                                                             "LLMSHIP_NO_EXTENSIONS": "1"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "None"
