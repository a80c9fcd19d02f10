"""The v0.4 decoders: the typed fast path (msgspec) and its twin, the tolerant decoder, give the same spans
for every body both accept; a body the fast path refuses is decoded by the twin; values the encoders cannot
carry are dropped and counted, never the payload around them."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmship.model import Span
from llmship.sinks.spanenc import llmobs_spans, poison_free
from llmship.sources import traces as traces_module
from llmship.sources.traces import DecodeError, decode_v04, drop_poison, llmobs_spans_py

from harness import CAPTURES

V04 = (CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes()
MSGPACK = "application/msgpack"


def both(body: bytes):
    return decode_v04(body, MSGPACK, fast=True), decode_v04(body, MSGPACK, fast=False)


def test_the_capture_decodes_the_same_both_ways():
    fast, tolerant = both(V04)
    assert fast == tolerant and sum(len(c) for c in fast) == 12


texts = st.text(max_size=20)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
spans = st.fixed_dictionaries(
    {"service": texts, "name": texts, "resource": texts, "trace_id": u64, "span_id": u64, "parent_id": u64,
     "start": st.integers(min_value=0, max_value=(1 << 63) - 1), "duration": st.integers(0, 10**12),
     "error": st.integers(0, 1), "type": texts},
    optional={"meta": st.dictionaries(texts, texts, max_size=5),
              "metrics": st.dictionaries(texts, st.floats(allow_nan=False) | st.integers(-2**53, 2**53), max_size=5),
              "meta_struct": st.dictionaries(texts, st.binary(max_size=10), max_size=2)})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(spans, max_size=4), max_size=4))
def test_random_bodies_decode_the_same_both_ways(traces):
    fast, tolerant = both(msgpack.packb(traces))
    assert fast == tolerant


@pytest.mark.parametrize("odd, expected", [
    ({"name": b"\xffbad"}, {"name": "\ufffdbad"}),  # invalid UTF-8 is replaced, as the Agent does
    ({"start": 12.0}, {"start": 12}),  # a float where an integer belongs
    ({"service": None}, {"service": ""}),  # nil
    ({"trace_id": -1}, {"trace_id": (1 << 64) - 1}),  # a signed id: masked to 64 bits
    ({"meta": {"k": 7}}, {"meta": {"k": "7"}}),  # a number where a string belongs
    ({"meta_struct": {"m": {"a": 1}}}, {"meta_struct": {"m": msgpack.packb({"a": 1})}}),  # a map, not bin
])
def test_what_the_fast_path_refuses_the_twin_decodes(odd, expected):
    span = {"service": "s", "name": "n", "trace_id": 1, "span_id": 2, **odd}
    body = msgpack.packb([[span]], use_bin_type=False) if "name" in odd and isinstance(odd["name"], bytes) \
        else msgpack.packb([[span]])
    (got,), = decode_v04(body, MSGPACK, fast=True)
    for key, value in expected.items():
        assert getattr(got, key) == value


def test_bodies_neither_decoder_accepts_are_decode_errors():
    with pytest.raises(DecodeError):
        decode_v04(msgpack.packb({"not": "traces"}), MSGPACK)
    with pytest.raises(DecodeError):
        decode_v04(msgpack.packb([["not a span"]]), MSGPACK)


def test_poison_values_are_dropped_and_counted_the_rest_kept():
    spans = [{"trace_id": 1, "span_id": 1, "start": 5, "duration": 3, "metrics": {"_sampling_priority_v1": math.nan, "x": 1.0}},
             {"trace_id": 1, "span_id": 2, "start": (1 << 64) - 1, "duration": 3},  # start beyond int64
             {"trace_id": 1, "span_id": 3, "start": 5, "duration": math.inf},  # no integer
             {"trace_id": 1, "span_id": 4, "start": 5, "duration": 3, "metrics": {"_sampling_priority_v1": 1.0}}]
    for fast in (True, False):
        chunks = decode_v04(msgpack.packb([spans]), MSGPACK, fast=fast)
        assert drop_poison(chunks) == 3
        (a, b, c, d), = chunks
        assert a.metrics == {"x": 1.0} and (a.start, a.duration) == (5, 3)
        assert (b.start, b.duration) == (0, 3) and (c.start, c.duration) == (5, 0)
        assert d.metrics == {"_sampling_priority_v1": 1.0}
        assert drop_poison(chunks) == 0


# ------------------------------------------------------------------------------------- poison_free

needs_poison_free = pytest.mark.skipif(poison_free is None, reason="the compiled span encoder is not built")
priorities = st.none() | st.floats() | st.integers(-2, 2) | st.just("1")
times = st.integers(-(1 << 64), 1 << 64) | st.integers(-(1 << 63), (1 << 63) - 1) | st.just(1.5)


@st.composite
def poison_spans(draw):
    metrics = {"x": 1.0}
    priority = draw(priorities)
    if priority is not None:
        metrics["_sampling_priority_v1"] = priority
    return Span(name="op", metrics=metrics, start=draw(times), duration=draw(times), error=draw(times))


@needs_poison_free
@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(poison_spans(), max_size=3), max_size=3))
def test_poison_free_says_true_only_when_drop_poison_finds_nothing(chunks):
    before = [[(s.start, s.duration, s.error, dict(s.metrics)) for s in c] for c in chunks]
    free = poison_free(chunks)
    saved, traces_module._poison_free = traces_module._poison_free, None  # the Python loop alone
    try:
        removed = drop_poison(chunks)
    except TypeError:  # a priority math.isfinite refuses: drop_poison raises, poison_free said "not sure"
        removed = None
    finally:
        traces_module._poison_free = saved
    if free:
        assert removed == 0
        assert [[(s.start, s.duration, s.error, s.metrics) for s in c] for c in chunks] == before


@needs_poison_free
def test_poison_free_on_the_capture_and_a_poisoned_body():
    assert poison_free(decode_v04(V04, MSGPACK))
    poisoned = decode_v04(msgpack.packb([[{"span_id": 1, "metrics": {"_sampling_priority_v1": math.inf}}]]), MSGPACK)
    assert not poison_free(poisoned) and drop_poison(poisoned) == 1


# ------------------------------------------------------------------------------------- llmobs_spans

needs_llmobs_spans = pytest.mark.skipif(llmobs_spans is None, reason="the compiled span encoder is not built")


class NotASpan:  # duck-typed: the compiled count reads its attribute, as the twin does
    def __init__(self, meta_struct) -> None:
        self.meta_struct = meta_struct


@st.composite
def maybe_llmobs_spans(draw):
    meta_struct = draw(st.dictionaries(st.sampled_from(["_llmobs", "other", "_llmobs2"]), st.just(b"\x80"),
                                       max_size=2))
    return Span(name="op", meta_struct=meta_struct) if draw(st.booleans()) else NotASpan(meta_struct)


@needs_llmobs_spans
@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(maybe_llmobs_spans(), max_size=4), max_size=4))
def test_llmobs_spans_counts_as_its_twin(chunks):
    expected = sum(1 for c in chunks for s in c if "_llmobs" in s.meta_struct)
    assert llmobs_spans(chunks) == llmobs_spans_py(chunks) == expected


@needs_llmobs_spans
def test_llmobs_spans_on_the_capture():
    chunks = decode_v04(V04, MSGPACK)
    assert llmobs_spans(chunks) == llmobs_spans_py(chunks) > 0
