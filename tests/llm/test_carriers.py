"""The LLM stage's scan for the spans that carry a call: compiled (sinks/_spanenc.pyx ``llm_carriers``) and
its Python twin (``llm.extract.carriers_py``) pick the same span objects, in order, and raise alike."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmship.llm import extract
from llmship.model import Span
from llmship.sinks import spanenc

from harness import CAPTURES

compiled = spanenc.llm_carriers
needs_native = pytest.mark.skipif(compiled is None, reason="the compiled span encoder is not built")


class Duck:
    """Not a Span: read through its attributes."""

    def __init__(self, type_, meta_struct):
        self.type, self.meta_struct = type_, meta_struct


def outcome(find, spans):
    try:
        return [id(s) for s in find(spans)]
    except Exception as e:
        return type(e)


types = st.sampled_from(["llm", "web", "", "LLM", "llm "]) | st.none() | st.integers(0, 2)
structs = (st.dictionaries(st.sampled_from(["_llmobs", "appsec", "x"]), st.binary(max_size=2), max_size=2)
           | st.lists(st.sampled_from(["_llmobs", "y"]), max_size=2) | st.none() | st.just("_llmobs!"))


@st.composite
def spans(draw):
    type_, meta_struct = draw(types), draw(structs)
    kind = draw(st.sampled_from(["span", "unset", "duck"]))
    if kind == "duck":
        return Duck(type_, meta_struct)
    span = Span(name="op", type=type_, meta_struct=meta_struct)
    if kind == "unset":
        del span.service  # a field unset: read through attributes too
    return span


@needs_native
@settings(max_examples=500, deadline=None)
@given(st.lists(spans(), max_size=8))
def test_compiled_and_twin_pick_the_same_spans(chunk):
    assert outcome(compiled, chunk) == outcome(extract.carriers_py, chunk)


@needs_native
def test_the_capture_and_the_selection():
    body = (CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes()
    spans_ = [s for c in msgspec.msgpack.decode(body, type=list[list[Span]]) for s in c]
    found = compiled(spans_)
    assert found == extract.carriers_py(spans_) and len(found) == 6
    assert extract.carriers is compiled
