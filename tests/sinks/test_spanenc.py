"""The span encoder: compiled and pure-Python twin byte for byte, against today's encoder and the intake's
decoder, on the ddtrace captures and on generated spans (odd values included)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llmship import protobuf as pb
from llmship.intake.decode import _span as decode_span
from llmship.model import Span
from llmship.sinks import spanenc

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"
DEFAULTS = (("env", "prod"), ("version", "1.2.3"), ("team", "llm"))
NOT_BUILT = "the compiled span encoder is not built (pip install -e . or python setup.py build_ext --inplace)"
needs_native = pytest.mark.skipif(spanenc.encode_span_native is None, reason=NOT_BUILT)

IMPLEMENTATIONS = [
    pytest.param(spanenc.encode_span_py, id="twin"),
    pytest.param(spanenc.encode_span_native, id="native", marks=needs_native),
]


def v04_spans() -> list[Span]:
    body = (CAPTURES / "v04_traces_llmobs_default.msgpack").read_bytes()
    return [s for chunk in msgspec.msgpack.decode(body, type=list[list[Span]]) for s in chunk]


def v05_spans() -> list[Span]:
    """The v0.5 capture: [string table, traces], each span a 12-element array of string indexes."""
    strings, traces = json.loads((CAPTURES / "v05_traces_apm_only.decoded.json").read_text())["body"]
    out = []
    for trace in traces:
        for s in trace:
            out.append(Span(
                service=strings[s[0]], name=strings[s[1]], resource=strings[s[2]], trace_id=s[3], span_id=s[4],
                parent_id=s[5], start=s[6], duration=s[7], error=s[8],
                meta={strings[int(k)]: strings[v] for k, v in s[9].items()},
                metrics={strings[int(k)]: float(v) for k, v in s[10].items()}, type=strings[s[11]]))
    return out


CAPTURE_SPANS = v04_spans() + v05_spans()


def outcome(encode, span, fallback="python", defaults=()):
    """The bytes, or which of ENCODE_ERRORS was raised: what both implementations must agree on (a span
    with several faults may be refused for a different one first: a lone surrogate is a UnicodeEncodeError,
    a ValueError like a wrong type)."""
    try:
        return encode(span, fallback, defaults)
    except spanenc.ENCODE_ERRORS as e:
        return next(kind for kind in spanenc.ENCODE_ERRORS if isinstance(e, kind))


def meta_entries(body: bytes) -> list[tuple[str, str]]:
    """The meta map's entries in the order written (a dict would hide order and repeats)."""
    out = []
    for raw in pb.decode(body).get(10, []):
        entry = pb.decode(raw)
        out.append((entry.get(1, [b""])[-1].decode(), entry.get(2, [b""])[-1].decode()))
    return out


# ------------------------------------------------------------------------------------------ captures


def test_captures_are_there():
    assert len(CAPTURE_SPANS) >= 12 + 12
    assert any("_llmobs" in s.meta_struct for s in CAPTURE_SPANS)


@pytest.mark.parametrize("defaults", [(), DEFAULTS], ids=["no-defaults", "defaults"])
@needs_native
def test_native_and_twin_agree_on_the_captures(defaults):
    for s in CAPTURE_SPANS:
        assert spanenc.encode_span_native(s, "python", defaults) == spanenc.encode_span_py(s, "python", defaults)


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_capture_spans_read_back_by_the_intake_decoder(encode):
    for s in CAPTURE_SPANS:
        before = msgspec.structs.asdict(s)
        got = decode_span(pb.decode(encode(s, "python", DEFAULTS)))
        assert msgspec.structs.asdict(s) == before  # the span is not mutated
        for key in ("service", "name", "resource", "trace_id", "span_id", "parent_id", "start", "duration",
                    "error", "metrics", "type"):
            assert got[key] == getattr(s, key), key
        assert got["meta"] == {**dict(DEFAULTS), **s.meta}
        assert "_llmobs" not in got["meta_struct"]


# ------------------------------------------------------------------------------------------ semantics


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_defaults_after_the_spans_own_meta_in_order_and_only_when_missing(encode):
    s = Span(service="svc", name="op", meta={"version": "9", "a": "1"})
    defaults = (("env", "prod"), ("version", "1.2.3"), ("team", "llm"))
    assert meta_entries(encode(s, "python", defaults)) == [
        ("version", "9"), ("a", "1"), ("env", "prod"), ("team", "llm")]
    assert s.meta == {"version": "9", "a": "1"}


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_span_events_become_the_events_entry_before_the_defaults(encode):
    s = Span(name="op", span_events=[{"name": "ev", "time_unix_nano": 5, "attributes": {
        "s": {"type": 0, "string_value": "x"}, "arr": {"type": 4, "array_value": {"values": [
            {"type": 2, "int_value": 3}, {"type": 1, "bool_value": True}]}}}}])
    entries = meta_entries(encode(s, "python", (("events", "nope"), ("env", "prod"))))
    assert [k for k, _ in entries] == ["events", "env"]
    assert json.loads(entries[0][1]) == [{"name": "ev", "time_unix_nano": 5,
                                          "attributes": {"s": "x", "arr": [3, True]}}]
    # meta's own "events" wins
    s2 = Span(name="op", meta={"events": "[1]"}, span_events=s.span_events)
    assert meta_entries(encode(s2, "python", ())) == [("events", "[1]")]


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_llmobs_struct_is_never_written_other_structs_are(encode):
    s = Span(name="op", meta_struct={"_llmobs": b"\x81\xa1k\xa1v", "appsec": b"\x01", "empty": b""})
    got = decode_span(pb.decode(encode(s, "python", ())))
    assert set(got["meta_struct"]) == {"appsec", "empty"}


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_normalizer_fallbacks(encode):
    got = decode_span(pb.decode(encode(Span(duration=-5), "python", ())))
    assert (got["service"], got["name"], got["resource"], got["duration"]) == (
        "python", "service.trace", "service.trace", 0)
    got = decode_span(pb.decode(encode(Span(service=None, name="op"), "go", ())))  # type: ignore[arg-type]
    assert (got["service"], got["resource"]) == ("go", "op")


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_integers_in_the_64_bit_range_and_out_of_it(encode):
    top = 2**64 - 1
    got = decode_span(pb.decode(encode(Span(trace_id=top, span_id=-1, start=-(2**63), error=-1), "p", ())))
    assert (got["trace_id"], got["span_id"], got["start"], got["error"]) == (top, top, -(2**63), -1)
    # either side of each 30-bit digit the compiled encoder reads an int by
    for value in (1, 2**30 - 1, 2**30, 2**60 - 1, 2**60, 2**63, 2**64 - 2**60, top):
        assert decode_span(pb.decode(encode(Span(trace_id=value, span_id=True), "p", ())))["trace_id"] == value
    for field, value in [("trace_id", 2**64), ("span_id", -(2**63) - 1), ("start", 10**30), ("error", 2**64)]:
        with pytest.raises(OverflowError):
            encode(Span(**{field: value}), "p", ())
    encode(Span(duration=-(10**30)), "p", ())  # a negative duration is 0, however negative


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
@pytest.mark.parametrize(("fields", "error"), [
    ({"meta": {"k": 5}}, ValueError),
    ({"meta": {5: "v"}}, ValueError),
    ({"meta": {"k": ["unhashable"]}}, ValueError),
    ({"meta": ["k", "v"]}, ValueError),
    ({"metrics": {"k": "1.0"}}, ValueError),
    ({"metrics": {"k": None}}, ValueError),
    ({"metrics": {"k": 2**2000}}, OverflowError),
    ({"meta_struct": {"k": "text"}}, ValueError),
    ({"service": b"bytes"}, ValueError),
    ({"trace_id": 1.5}, ValueError),
    ({"trace_id": "12"}, ValueError),
    ({"resource": "\ud800"}, UnicodeEncodeError),
    ({"meta": {"k": "\udfff"}}, UnicodeEncodeError),
    ({"span_events": [{"name": "e", "time_unix_nano": 2**70}]}, ValueError),
])
def test_odd_values_raise_what_the_caller_catches(encode, fields, error):
    with pytest.raises(error):
        encode(Span(name="op", **fields), "python", ())
    assert issubclass(error, spanenc.ENCODE_ERRORS)


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_values_that_always_encoded_still_do(encode):
    s = Span(name="op", error=True, metrics={"i": 3, "b": False, "nan": math.nan, "inf": -math.inf, "z": -0.0},
             meta_struct={"ba": bytearray(b"\x01\x02")}, span_links=[
                 "not a dict", {"trace_id": 2**70 + 5, "span_id": -1, "attributes": {1: 2.5}, "flags": 2**40 + 1,
                                "tracestate": "dd=s:1"}, {"attributes": ["not", "a", "dict"]}])
    got = decode_span(pb.decode(encode(s, "python", ())))
    assert got["error"] == 1
    assert got["metrics"]["i"] == 3.0 and math.isnan(got["metrics"]["nan"])
    assert got["meta_struct"] == {"ba": {"base64": "AQI="}}
    assert got["span_links"][1] == {"trace_id": 5, "trace_id_high": 0, "span_id": 2**64 - 1,
                                    "attributes": {"1": "2.5"}, "tracestate": "dd=s:1", "flags": 1}


@pytest.mark.parametrize("encode", IMPLEMENTATIONS)
def test_large_spans_move_past_the_stack_buffer(encode):
    s = Span(name="op", meta={f"k{i}": "v" * i for i in range(300)}, span_links=[
        {"trace_id": 1, "attributes": {f"a{i}": "x" * 50 for i in range(50)}}])
    assert encode(s, "python", DEFAULTS) == spanenc.encode_span_py(s, "python", DEFAULTS)
    assert len(encode(s, "python", ())) > 40_000


def test_deeply_nested_event_arrays_are_refused_not_a_crash():
    value: dict = {"type": 2, "int_value": 1}
    for _ in range(spanenc.MAX_ATTRIBUTE_DEPTH + 1):
        value = {"type": 4, "array_value": {"values": [value]}}
    s = Span(name="op", span_events=[{"name": "e", "attributes": {"deep": value}}])
    for encode in filter(None, (spanenc.encode_span_py, spanenc.encode_span_native)):
        with pytest.raises(ValueError):
            encode(s, "python", ())


# ------------------------------------------------------------------------------------------ generated


texts = st.text(max_size=12)
surrogates = st.text(st.characters(codec=None, categories=["Cs"]), min_size=1, max_size=2)
odd_texts = st.one_of(texts, texts, texts, texts, texts, texts, texts, surrogates)  # mostly valid
uint64s = st.integers(0, 2**64 - 1)
in_range_ints = st.one_of(st.just(0), uint64s, st.integers(-(2**63), -1))
any_ints = st.one_of(in_range_ints, in_range_ints, in_range_ints, in_range_ints,
                     st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1))
metric_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70))
typed_attribute = st.recursive(
    st.one_of(st.builds(lambda s: {"type": 0, "string_value": s}, texts),
              st.builds(lambda b: {"type": 1, "bool_value": b}, st.booleans()),
              st.builds(lambda i: {"type": 2, "int_value": i}, st.integers(-(2**63), 2**63 - 1)),
              st.builds(lambda f: {"type": 3, "double_value": f}, st.floats()),
              texts, st.integers(-5, 5)),
    lambda inner: st.builds(lambda vs: {"type": 4, "array_value": {"values": vs}}, st.lists(inner, max_size=3)),
    max_leaves=6)
span_events = st.lists(st.fixed_dictionaries(
    {"name": texts, "time_unix_nano": st.integers(0, 2**63 - 1)},
    optional={"attributes": st.dictionaries(texts, typed_attribute, max_size=3)}), max_size=3)
span_links = st.lists(st.fixed_dictionaries({}, optional={
    "trace_id": uint64s, "trace_id_high": uint64s, "span_id": uint64s, "flags": st.integers(0, 2**32 - 1),
    "tracestate": texts, "attributes": st.dictionaries(texts, texts, max_size=3)}), max_size=3)


def spans(ints=in_range_ints, strings=texts, metrics=metric_values, loose=False):
    """Spans: valid ones by default; ``loose`` adds values of the wrong type."""
    wrong = st.one_of(st.integers(), st.none(), st.floats(), st.binary(max_size=3), st.lists(texts, max_size=1))
    any_value = st.one_of(*[strings] * 12, wrong) if loose else strings
    return st.builds(
        Span, service=strings, name=strings, resource=strings, trace_id=ints, span_id=ints, parent_id=ints,
        start=ints, duration=ints, error=st.one_of(st.integers(0, 1), ints), type=strings,
        meta=st.dictionaries(strings, any_value, max_size=6),
        metrics=st.dictionaries(strings, st.one_of(metrics, any_value) if loose else metrics, max_size=6),
        meta_struct=st.dictionaries(st.one_of(st.just("_llmobs"), strings),
                                    st.one_of(st.binary(max_size=8), any_value) if loose else st.binary(max_size=8),
                                    max_size=3),
        span_links=st.one_of(st.none(), span_links), span_events=st.one_of(st.none(), span_events))


defaults_strategy = st.lists(st.tuples(st.sampled_from(["env", "version", "team", "events", "k"]), texts),
                             max_size=4, unique_by=lambda kv: kv[0]).map(tuple)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_native
@FAST
@given(spans(), defaults_strategy, texts)
def test_native_equals_twin_on_generated_spans(span, defaults, fallback):
    assert spanenc.encode_span_native(span, fallback, defaults) == spanenc.encode_span_py(span, fallback, defaults)


ODD_SPANS = {
    "wrong-types": spans(loose=True),
    "out-of-range-ints": spans(ints=any_ints),
    "surrogates": spans(strings=odd_texts),
    "all-of-it": spans(ints=any_ints, strings=odd_texts, loose=True),
}


@needs_native
@pytest.mark.parametrize("kind", list(ODD_SPANS))
def test_native_and_twin_raise_alike_on_odd_spans(kind):
    @FAST
    @given(ODD_SPANS[kind], defaults_strategy)
    def check(span, defaults):
        assert outcome(spanenc.encode_span_native, span, "python", defaults) == \
            outcome(spanenc.encode_span_py, span, "python", defaults)

    check()


def chunk_fields(fields: bytes) -> list[bytes]:
    """The Span bodies of concatenated TraceChunk.spans fields (field 3)."""
    decoded = pb.decode(fields)
    assert set(decoded) <= {3}
    return decoded.get(3, [])


@pytest.mark.parametrize("encode_spans", [
    pytest.param(spanenc.encode_spans_py, id="twin"),
    pytest.param(spanenc.encode_spans_native, id="native", marks=needs_native)])
def test_a_chunk_at_once_is_each_span_in_turn_with_the_bad_ones_left_out(encode_spans):
    good = CAPTURE_SPANS[:5]
    bad = [Span(trace_id=1 << 64), Span(meta={"k": 1})]  # beyond 64 bits; a meta value not a str
    fields, sizes, errors = encode_spans([good[0], bad[0], *good[1:3], bad[1], *good[3:]], "python", DEFAULTS)
    assert chunk_fields(fields) == [spanenc.encode_span_py(s, "python", DEFAULTS) for s in good]
    assert len(sizes) == len(good) and sum(sizes) == len(fields)
    assert [e.split(":")[0] for e in errors] == ["OverflowError", "ValueError"]


@pytest.mark.parametrize("encode_spans", [
    pytest.param(spanenc.encode_spans_py, id="twin"),
    pytest.param(spanenc.encode_spans_native, id="native", marks=needs_native)])
def test_a_wrapped_chunk_is_the_field_of_its_head_and_span_fields(encode_spans):
    """wrap=(tag, head): tag, length, head, then the span fields, as the trace sink's TraceChunk message;
    spans whose length takes 1, 2 and 3 bytes (the compiled encoder writes 2, and moves the others)."""
    tiny, big = Span(name="a"), Span(name="op", meta={"k": "v" * 20_000})
    spans = [tiny, CAPTURE_SPANS[0], Span(trace_id=1 << 64), big, tiny, CAPTURE_SPANS[1]]
    for chunk in (spans, [], [Span(meta={"k": 1})], [big] * 3):
        for head in (b"", b"\x08\x01\x12\x03abc", b"h" * 200):
            fields, sizes, errors = encode_spans(chunk, "python", DEFAULTS)
            wrapped, wsizes, werrors = encode_spans(chunk, "python", DEFAULTS, (b"\x32", head))
            assert wrapped == b"\x32" + pb.varint(len(head) + len(fields)) + head + fields
            assert (wsizes, werrors) == (sizes, errors) and sum(sizes) == len(fields)
    sizes = encode_spans([tiny, CAPTURE_SPANS[0], big], "python")[1]
    assert [size - len(spanenc.encode_span_py(s, "python")) for s, size in zip([tiny, CAPTURE_SPANS[0], big],
                                                                                sizes)] == [2, 3, 4]


@needs_native
def test_a_span_with_a_field_unset_is_an_encoding_error():
    span = Span(name="op")
    del span.service
    with pytest.raises(ValueError):
        spanenc.encode_span_native(span, "python")
    assert spanenc.encode_spans_native([span, Span(name="ok")], "python")[2][0].startswith("ValueError")


@needs_native
@pytest.mark.parametrize("kind", list(ODD_SPANS))
def test_native_and_twin_agree_on_chunks_of_odd_spans(kind):
    @FAST
    @given(st.lists(ODD_SPANS[kind], max_size=4), defaults_strategy)
    def check(chunk, defaults):
        native = spanenc.encode_spans_native(chunk, "python", defaults)
        twin = spanenc.encode_spans_py(chunk, "python", defaults)
        assert native[:2] == twin[:2]
        wrap = (b"\x32", b"\x08\x01")
        assert spanenc.encode_spans_native(chunk, "python", defaults, wrap)[:2] == \
            spanenc.encode_spans_py(chunk, "python", defaults, wrap)[:2]
        assert [e.split(":")[0] for e in native[2]] == [e.split(":")[0] for e in twin[2]]

    check()


@FAST
@given(spans(), defaults_strategy)
def test_generated_spans_read_back_with_their_defaults(span, defaults):
    assume(all(k != "events" for k, _ in defaults) or not span.span_events)
    got = decode_span(pb.decode(spanenc.encode_span_py(span, "fb", defaults)))
    want = {**span.meta}
    if span.span_events and "events" not in want:
        want["events"] = spanenc.span_events_json(span.span_events)
    want = {**{k: v for k, v in defaults if k not in want}, **want}
    assert got["meta"] == want
    assert set(got["meta_struct"]) == set(span.meta_struct) - {"_llmobs"}


# ------------------------------------------------------------------------------------------ selection


def _selection(env: dict[str, str]) -> str:
    code = "from llmship.sinks import spanenc as m; print(m.NATIVE, m.encode_span is m.encode_span_py)"
    src = str(Path(spanenc.__file__).parents[2])
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_no_extensions_forces_the_twin():
    assert _selection({"LLMSHIP_NO_EXTENSIONS": "1"}) == "False True"


@needs_native
def test_the_compiled_encoder_is_used_when_built():
    assert spanenc.NATIVE is (os.environ.get("LLMSHIP_NO_EXTENSIONS", "") in ("", "0"))
    assert _selection({"LLMSHIP_NO_EXTENSIONS": ""}) == "True False"


@needs_native
def test_native_and_twin_raise_alike_on_a_bad_key_with_an_unhashable_value():
    # found by Hypothesis: the twin's entry cache looked the pair up first and raised on the list
    span = Span(meta={"\ud800": []})
    native = spanenc.encode_spans_native([span], "python", ())[2]
    twin = spanenc.encode_spans_py([span], "python", ())[2]
    assert [e.split(":")[0] for e in native] == [e.split(":")[0] for e in twin] == ["UnicodeEncodeError"]
