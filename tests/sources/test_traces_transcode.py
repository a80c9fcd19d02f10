"""The v0.4 transcoder (sinks/_spanenc.pyx ``transcode_v04``, through ``processing.Emitter.transcode_v04``)
against its twin, the whole path: decode_v04, then the LLM stage, the scrub and the span encoder. For every
body, the same trace intake items, the same LLM calls (events, samples, logs), the same counters and the
same answers to the tracer (rates, runtime id), or None from the transcoder where the compiled decoder
declines the body. Bodies are web traces of ten spans (the chunk sizes the transcoder writes straight),
built from the captured OpenAI call, with every kind of span it must hand to the whole path among them,
and random spans (test_traces_decode_compiled's generator)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import subprocess
import sys

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmship.agent import build_processing
from llmship.config import load_config_text
from llmship.model import TracerInfo
from llmship.sinks import spanenc
from llmship.sources.traces import _runtime_id, decode_v04
from llmship.telemetry import Telemetry

from harness import CAPTURES
from test_traces_decode_compiled import Pairs, pack, span_maps

pytestmark = pytest.mark.skipif(spanenc.transcode_v04 is None,
                                reason="the compiled transcoder is not built (or LLMSHIP_NO_EXTENSIONS)")

CAPTURED = msgpack.unpackb((CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes())
CALL, CALL_HTTP = CAPTURED[0]  # the OpenAI call (meta_struct _llmobs) and its HTTP request to 127.0.0.1
CONFIG = """
[agent]
hostname = "h"
env = "prod"
version = "1.2"
tags = ["team:llm", "region:eu"]
[sinks.datadog]
api_key = "x"
url = "http://127.0.0.1:9"
"""


class Recorder:
    """The shipping plane as the emitter sees it: what reaches it, recorded."""

    handed_over = None

    def __init__(self) -> None:
        self.items: list = []
        self.outputs: list = []

    def trace_items(self, items, language) -> None:
        self.items += [(item, spans, language) for item, spans in items]

    def calls(self, outputs) -> None:
        self.outputs += [dataclasses.astuple(o) for o in outputs]

    def __getattr__(self, name):  # metrics, logs, OTLP: not what these bodies make
        return lambda *args, **kwargs: None


class Plane:
    def __init__(self, config: str = CONFIG) -> None:
        self.telemetry = Telemetry()
        self.router = Recorder()
        self.processing = build_processing(load_config_text(config), self.telemetry, self.router)
        self.emitter = self.processing.emitter
        self.source = self.processing.sources[0]

    def counters(self) -> dict:
        """Every counter but where the scrub databases came from (the first plane built compiles them) and
        the fast path's own count."""
        return {name: [c for c in comp["counters"] if c["name"] not in ("databases_built", "spans_written_straight")]
                for name, comp in self.telemetry.snapshot()["components"].items()}


def run(plane: Plane, body: bytes, transcode: bool, language: str = "python"):
    """What the plane makes of ``body``, the way the trace source hands it over."""
    chunks = plane.emitter.transcode_v04(body, language) if transcode else decode_v04(body)
    if chunks is None:
        return None
    answers = plane.source._rates(chunks), _runtime_id(chunks)
    kinds = [type(c).__name__ for c in chunks]
    plane.emitter.submit_spans(chunks, TracerInfo(language=language))
    return plane.router.items, plane.router.outputs, answers, kinds


def same_both_ways(body: bytes, config: str = CONFIG) -> list[str] | None:
    """Both paths on fresh planes; their results equal; the kinds of chunk the transcoder gave (None: it
    declined the body, as the compiled decoder does)."""
    fast, whole = Plane(config), Plane(config)
    got = run(fast, body, True)
    if got is None:
        assert spanenc.decode_v04_spans(body) is None, "declined a body the compiled decoder takes"
        return None
    assert got[:3] == run(whole, body, False)[:3]
    assert fast.counters() == whole.counters()
    return got[3]


# ------------------------------------------------------------------------------------------ web traces

_ids = iter(range(1_000, 1 << 62, 7_919))


def span(name: str, parent: int, trace: int, meta: dict | None = None, metrics: dict | None = None, **fields) -> dict:
    s = {"trace_id": trace, "span_id": next(_ids), "parent_id": parent, "service": "web", "name": name,
         "resource": f"GET /{name}", "start": 1_700_000_000_000_000_000, "duration": 1_500_000, "error": 0,
         "type": "web", "meta": {"component": name, "http.method": "GET", **(meta or {})},
         "metrics": {"_dd.measured": 1, **(metrics or {})}}
    s.update(fields)
    return s


def web_trace(**root_extra) -> list[dict]:
    """A request span, database, cache and HTTP client spans, and the captured OpenAI call with its HTTP
    request (a scan candidate: 127.0.0.1, redacted), ten in all."""
    trace = next(_ids)
    root = span("django.request", 0, trace, {"env": "staging", "version": "3", "_dd.origin": "synthetics",
                                              "_dd.hostname": "app-1", "runtime-id": "r-1", "http.url":
                                              "https://chat.example.com/api/"},
                {"_sampling_priority_v1": 1.0, "_dd.top_level": 1}, **root_extra)
    rid = root["span_id"]
    call = copy.deepcopy(CALL) | {"trace_id": trace, "span_id": next(_ids), "parent_id": rid}
    call_http = copy.deepcopy(CALL_HTTP) | {"trace_id": trace, "span_id": next(_ids), "parent_id": call["span_id"]}
    return [root,
            span("postgres.query", rid, trace, {"db.system": "postgresql", "out.host": "db.internal"},
                 resource="SELECT * FROM users WHERE id = %s", type="sql"),
            span("redis.command", rid, trace, {"out.host": "cache.internal", "redis.raw_command": "GET user:1"},
                 {"redis.args_length": 2}, type="redis"),
            span("requests.request", rid, trace, {"http.url": "https://users.internal/v1/users/52750"}, type="http"),
            call, call_http,
            span("postgres.query", rid, trace, {"db.system": "postgresql"}, resource="UPDATE quota", type="sql"),
            span("redis.command", rid, trace, {"cache.hit": "false"}, type="redis"),
            span("requests.request", rid, trace, {"http.url": "https://events.internal/v2/track"}, type="http"),
            span("template.render", rid, trace, {"template": "summary.html"}, type="template")]


def body_of(traces) -> bytes:
    return msgpack.packb(traces)


def test_web_traces_are_written_straight_and_match_the_whole_path():
    kinds = same_both_ways(body_of([web_trace() for _ in range(5)]))
    assert kinds == ["EncodedChunk"] * 5


def test_the_fast_path_is_taken_for_plain_spans_and_hands_calls_and_candidates_to_the_whole_path():
    plane = Plane()
    [chunk] = plane.emitter.transcode_v04(body_of([web_trace()]), "python")
    assert type(chunk).__name__ == "EncodedChunk" and len(chunk) == 10
    # the OpenAI call (for the LLM stage) and its HTTP request (127.0.0.1: for the scrub) are objects
    assert [s.name for s in chunk.objects] == ["openai.request", "http.request"]
    assert len(chunk.sizes) == 9  # the eight plain spans and the HTTP request, written before its match was seen
    assert (chunk.root_service, chunk.root_env, chunk.root_hostname, chunk.root_version, chunk.root_origin,
            chunk.priority, chunk.runtime_id) == ("web", "staging", "app-1", "3", "synthetics", 1.0, "r-1")


def test_decode_gives_every_span_as_the_decoder_does():
    body = body_of([web_trace()])
    [chunk] = Plane().emitter.transcode_v04(body, "python")
    [spans] = decode_v04(body)
    assert chunk.decode() == spans
    assert chunk.decode()[4] is chunk.objects[0]  # the LLM stage's object itself, with what it added


def test_secrets_in_plain_spans_send_their_span_to_the_scrub():
    trace = web_trace()
    trace[2]["meta"]["note"] = "mail bob@example.com"
    trace[7]["resource"] = "card 4111 1111 1111 1111"
    kinds = same_both_ways(body_of([trace, web_trace()]))
    assert kinds == ["EncodedChunk", "EncodedChunk"]
    plane = Plane()
    [chunk, _] = plane.emitter.transcode_v04(body_of([trace, web_trace()]), "python")
    # the call, and the three spans with a match: in the chunk's order
    assert [s.span_id for s in chunk.objects] == [trace[i]["span_id"] for i in (2, 4, 5, 7)]
    items, _, _, _ = run(plane, body_of([trace]), False)
    data = b"".join(item for item, _, _ in items)
    assert b"bob@example.com" not in data and b"4111 1111" not in data and b"[REDACTED:email]" in data


@pytest.mark.parametrize("change", [
    "empty service", "empty name", "empty resource", "negative duration", "negative error", "negative start",
    "float32 and int metrics", "non-ASCII", "no root", "priority 0", "priority -1", "priority 2", "no priority",
    "nan priority", "repeated meta key", "repeated metric", "many tags", "type llm", "other meta_struct",
    "span links nil", "long strings", "no env", "empty env", "empty values", "ids at the edges",
])
def test_odd_spans_match_the_whole_path(change):
    trace = web_trace()
    s = trace[3]
    if change == "empty service":
        s["service"] = ""
    elif change == "empty name":
        s["name"] = ""
    elif change == "empty resource":
        s["resource"] = ""
    elif change == "negative duration":
        s["duration"] = -5
    elif change == "negative error":
        s["error"] = -1
    elif change == "negative start":
        s["start"] = -(1 << 62)
    elif change == "float32 and int metrics":
        s["metrics"] = {"big": (1 << 64) - 1, "neg": -(1 << 63), "f": 0.1, "i": 3}
        assert same_both_ways(msgpack.packb([trace], use_single_float=True)) == ["EncodedChunk"]
    elif change == "non-ASCII":
        s["meta"]["greeting"] = "héllo 日本 🙂"
        s["resource"] = "résumé"
    elif change == "no root":
        for t in trace:
            t["parent_id"] = t["parent_id"] or 424242
    elif change.startswith("priority"):
        trace[0]["metrics"]["_sampling_priority_v1"] = float(change.split()[1])
    elif change == "no priority":
        del trace[0]["metrics"]["_sampling_priority_v1"]
    elif change == "nan priority":
        trace[0]["metrics"]["_sampling_priority_v1"] = math.nan
    elif change == "repeated meta key":
        assert same_both_ways(_with_repeat(trace, "meta", "http.method", "POST")) == ["list"]
        return
    elif change == "repeated metric":
        assert same_both_ways(_with_repeat(trace, "metrics", "_dd.measured", 0.0)) == ["list"]
        return
    elif change == "many tags":
        s["meta"].update({f"tag.{i}": str(i) for i in range(70)})
    elif change == "type llm":
        s["type"] = "llm"
    elif change == "other meta_struct":
        s["meta_struct"] = {"appsec": b"\x81\xa1a\x01"}
    elif change == "span links nil":
        s["span_links"] = None
        s["span_events"] = None
    elif change == "long strings":
        s["meta"]["sql"] = "SELECT " + "x, " * 5000
        s["resource"] = "r" * 70_000
    elif change == "no env":
        del trace[0]["meta"]["env"]
    elif change == "empty env":
        trace[0]["meta"]["env"] = ""
    elif change == "empty values":
        s["meta"] = {"": "", "a": ""}
        s["metrics"] = {}
    elif change == "ids at the edges":
        s["trace_id"], s["span_id"], s["error"] = (1 << 64) - 1, 0, (1 << 63) - 1
    whole = change in ("many tags", "nan priority")  # left to the whole path, as a decoded chunk
    assert same_both_ways(body_of([trace, web_trace()])) == ["list" if whole else "EncodedChunk", "EncodedChunk"]


def _with_repeat(trace, field: str, key: str, value) -> bytes:
    """The trace's msgpack with ``key`` written twice in its fourth span's ``field`` map."""
    rnd = random.Random(1)
    spans = []
    for i, s in enumerate(trace):
        pairs = []
        for k, v in s.items():
            if k in ("meta", "metrics", "meta_struct"):
                items = list(v.items()) + ([(key, value)] if i == 3 and k == field else [])
                v = Pairs(items)
            pairs.append((k, v))
        spans.append(Pairs(pairs))
    return pack([spans], rnd)


def test_short_chunks_and_declined_bodies_are_left_to_the_decoder():
    assert same_both_ways(body_of(CAPTURED)) == ["list"] * len(CAPTURED)  # chunks of two spans
    assert same_both_ways(body_of([web_trace()[:3], [], web_trace()])) == ["list", "EncodedChunk"]
    for declined in (body_of([web_trace()])[:-1], body_of([web_trace()]) + b"\x00",
                     body_of([[span("x", 0, 1, unknown_key=1)] * 4]), body_of([[span("x", 0, 1, error=1.5)] * 4])):
        assert same_both_ways(declined) is None


def test_invalid_utf8_is_declined_as_the_decoder_declines_it():
    good = body_of([web_trace()])
    body = good.replace(b"users.internal", b"users.intern\xff\xfe")
    assert body != good and same_both_ways(body) is None


def test_agent_defaults_and_the_fallback_service_are_written_as_the_encoder_writes_them():
    trace = web_trace()
    for s in trace[1:4]:
        s["service"] = ""
        s["meta"].pop("env", None)
    trace[4]["meta"]["team"] = "own"  # a default the span already has
    for language in ("python", ""):
        fast, whole = Plane(), Plane()
        assert run(fast, body_of([trace]), True, language)[:3] == run(whole, body_of([trace]), False, language)[:3]
    bare = CONFIG.replace('tags = ["team:llm", "region:eu"]', "").replace('version = "1.2"', "")
    assert same_both_ways(body_of([trace]), bare) == ["EncodedChunk"]


def test_without_scrub_rules_and_with_scrub_off_the_results_match():
    trace = web_trace()
    trace[2]["meta"]["note"] = "mail bob@example.com"
    assert same_both_ways(body_of([trace]), CONFIG + "[scrub]\nrules = []\n") == ["EncodedChunk"]


def test_field_policies_and_the_otlp_sink_turn_the_fast_path_off():
    body = body_of([web_trace()])
    policy = CONFIG + '[[scrub.fields]]\nkind = "spans"\npath = "meta.http.url"\naction = "redact_all"\n'
    otlp = CONFIG + '[sinks.otlp]\nendpoint = "http://127.0.0.1:9"\n'
    for config in (policy, otlp):
        assert Plane(config).emitter.transcode_v04(body, "python") is None


def test_a_chunk_made_before_a_reload_goes_the_whole_path_after_it():
    trace = web_trace()
    trace[2]["meta"]["ticket"] = "TCK-1234"
    body = body_of([trace])
    fast = Plane()
    chunks = fast.emitter.transcode_v04(body, "python")  # made with the default rules
    rule = CONFIG + '[[scrub.rules]]\nname = "ticket"\nregex = "TCK-[0-9]+"\nreplacement = "[TICKET]"\n'
    new = load_config_text(rule)
    fast.processing.scrubber.reload(new.scrub.rules, fields=new.scrub.fields, hash_key=new.scrub.hash_key)
    fast.emitter.submit_spans(chunks, TracerInfo(language="python"))
    whole = Plane(rule)
    run(whole, body, False)
    assert fast.router.items == whole.router.items
    assert b"[TICKET]" in b"".join(item for item, _, _ in fast.router.items)


def test_a_tap_sees_every_span_of_an_encoded_chunk():
    plane = Plane()
    seen = []

    class Tap:
        active = True

        def offer(self, kind, data):
            seen.append((kind, [s.name for s in data[0]]))

    plane.emitter._encode_chunks.__self__.tap = Tap()
    trace = web_trace()
    run(plane, body_of([trace]), True)
    assert seen == [("spans", [s["name"] for s in trace])]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(span_maps(clean=True), min_size=4, max_size=6), max_size=3), st.randoms(use_true_random=False))
def test_random_clean_spans_match_the_whole_path(traces, rnd):
    same_both_ways(pack(traces, rnd))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(span_maps(clean=False), min_size=4, max_size=6), max_size=3), st.randoms(use_true_random=False))
def test_random_odd_spans_match_the_whole_path_or_are_declined(traces, rnd):
    same_both_ways(pack(traces, rnd))


def test_no_extensions_means_no_transcoder():
    code = ("from llmship.sinks import spanenc; from llmship import processing; "
            "assert spanenc.transcode_v04 is None and processing._transcode_v04 is None")
    env = {"LLMSHIP_NO_EXTENSIONS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_more_agent_tags_than_the_transcoder_holds_turn_it_off():
    tags = ", ".join(f'"t{i}:v{i}"' for i in range(70))
    config = CONFIG.replace('tags = ["team:llm", "region:eu"]', f"tags = [{tags}]")
    body = body_of([web_trace()])
    assert Plane(config).emitter.transcode_v04(body, "python") is None
    assert Plane().emitter.transcode_v04(body, "python") is not None  # and back once they fit


def test_a_failing_transcoder_leaves_the_body_to_the_decoder_and_is_counted(monkeypatch):
    from llmship import processing

    def broken(*args):
        raise RuntimeError("a bug")

    plane = Plane()
    monkeypatch.setattr(processing, "_transcode_v04", broken)
    assert plane.emitter.transcode_v04(body_of([web_trace()]), "python") is None
    errors = [c for c in plane.counters()["processing"] if c["name"] == "errors"]
    assert errors and errors[0]["labels"]["error_type"] == "transcode_error"
