"""The DogStatsD parser against the datagram grammar, the real client captures and random bytes.

The parser's only collaborators are ``add_metric`` and two submit methods: a recording stand-in for
them is enough here (no network code is replaced; the listeners are tested on real sockets elsewhere).
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmship.sources.dogstatsd import DogStatsDParser
from llmship.telemetry import Telemetry

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "datadog-0.56"
HOST = "agent-host"
CAPTURE_TAGS = ["env:staging", "service:chatbot", "model:gpt-4o-mini", "team:llm", "app:capture"]


class Recorder:
    """Stands in for the pipeline and its aggregator: records every call in a comparable form."""

    def __init__(self) -> None:
        self.samples: list[tuple] = []
        self.events: list[dict] = []
        self.checks: list[dict] = []

    def add_metric(self, name, mtype, value, tags="", rate=1.0, host=None, timestamp=None) -> None:
        self.samples.append((name, mtype, value, tags, rate, host, timestamp))

    def add_metrics(self, samples) -> None:  # the lines of one datagram, as the aggregator's add_many
        for sample in samples:
            self.add_metric(*sample)

    def submit_dsd_event(self, event: dict) -> None:
        self.events.append(event)

    def submit_service_check(self, check: dict) -> None:
        self.checks.append(check)


class Harness:
    def __init__(self) -> None:
        self.rec = Recorder()
        self.telemetry = Telemetry()
        self.comp = self.telemetry.component("dogstatsd")
        self.parser = DogStatsDParser(self.rec, self.comp, HOST)

    def feed(self, payload: bytes | str) -> int:
        return self.parser.feed(payload.encode() if isinstance(payload, str) else payload)

    def dropped(self, reason: str | None = None) -> float:
        return self.comp.get("discarded", reason=reason) if reason else self.comp.get("discarded")


@pytest.fixture
def h() -> Harness:
    return Harness()


def sample(name, mtype, value, tags="", rate=1.0, host=None, timestamp=None) -> tuple:
    return (name, mtype, value, tags, rate, host, timestamp)


# ---------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("mtype", ["c", "g", "ms", "h", "d"])
def test_every_numeric_type_reaches_the_aggregator_with_its_tags(h, mtype):
    assert h.feed(f"llm.tokens.input:42.5|{mtype}|#model:gpt-4o,env:prod") == 1
    assert h.rec.samples == [sample("llm.tokens.input", mtype, 42.5, "model:gpt-4o,env:prod")]
    assert h.dropped() == 0


def test_a_set_passes_its_member_as_a_string(h):
    h.feed("llm.users:user-42|s|#env:prod\nllm.users:7|s")
    assert h.rec.samples == [sample("llm.users", "s", "user-42", "env:prod"), sample("llm.users", "s", "7")]


def test_sets_are_never_unpacked(h):
    h.feed("llm.users:a:b|s")
    assert h.rec.samples == [sample("llm.users", "s", "a:b")]


@pytest.mark.parametrize("text,value", [("1", 1.0), ("-3", -3.0), ("0.25", 0.25), ("1e3", 1000.0),
                                        ("+7", 7.0), ("-0.5e-2", -0.005)])
def test_numbers_in_every_common_spelling(h, text, value):
    h.feed(f"m:{text}|g")
    assert h.rec.samples == [sample("m", "g", value)]


def test_a_line_without_tags_has_empty_tags(h):
    h.feed("llm.requests:1|c")
    assert h.rec.samples == [sample("llm.requests", "c", 1.0, "")]


def test_sample_rate_is_passed_on(h):
    h.feed("llm.requests:1|c|@0.25|#env:prod")
    assert h.rec.samples == [sample("llm.requests", "c", 1.0, "env:prod", rate=0.25)]


def test_fields_may_come_in_any_order_and_the_last_tags_field_wins(h):
    h.feed("m:1|c|#a:1|@0.5|#b:2")
    assert h.rec.samples == [sample("m", "c", 1.0, "b:2", rate=0.5)]


def test_container_and_origin_fields_are_accepted_and_ignored(h):
    h.feed("m:1|c|#env:prod|c:ci-0123456789abcdef|e:it-false,cn-app,pu-1234|card:high")
    assert h.rec.samples == [sample("m", "c", 1.0, "env:prod")]
    assert h.dropped() == 0


def test_unknown_fields_are_ignored_like_the_agent_does(h):
    h.feed("m:1|g|x:whatever|#env:prod")
    assert h.rec.samples == [sample("m", "g", 1.0, "env:prod")]


def test_timestamp_field_is_passed_for_the_aggregator_to_ship_as_is(h):
    h.feed("llm.queue:3|g|#env:prod|T1700000000\nllm.jobs:2|c|T1700000005")
    assert h.rec.samples == [sample("llm.queue", "g", 3.0, "env:prod", timestamp=1700000000.0),
                             sample("llm.jobs", "c", 2.0, timestamp=1700000005.0)]


def test_packed_values_become_one_sample_each(h):
    h.feed("llm.request.duration:1:2.5:3|h|@0.5|#env:prod")
    assert h.rec.samples == [sample("llm.request.duration", "h", v, "env:prod", rate=0.5) for v in (1, 2.5, 3)]


def test_packed_values_skip_empty_items_like_the_agent(h):
    h.feed("m:1::2|d")
    assert h.rec.samples == [sample("m", "d", 1.0), sample("m", "d", 2.0)]


def test_host_tag_sets_the_host_and_leaves_the_tags(h):
    h.feed("m:1|c|#env:prod,host:web-1,team:llm")
    assert h.rec.samples == [sample("m", "c", 1.0, "env:prod,team:llm", host="web-1")]


def test_internal_origin_tags_are_removed(h):
    h.feed("m:1|c|#dd.internal.entity_id:pod-uid,env:prod,dd.internal.card:high")
    assert h.rec.samples == [sample("m", "c", 1.0, "env:prod")]


def test_tags_that_merely_contain_host_are_kept(h):
    h.feed("m:1|c|#ghost:boo,vhost:a")
    assert h.rec.samples == [sample("m", "c", 1.0, "ghost:boo,vhost:a")]


def test_multi_line_datagram_with_trailing_newline_and_blank_lines(h):
    assert h.feed("a:1|c\n\nb:2|g\nc:3|h\n") == 3
    assert [s[0] for s in h.rec.samples] == ["a", "b", "c"]


def test_the_cached_fast_path_gives_the_same_result_as_the_first_parse(h):
    line = "llm.tokens.output:12|d|@0.5|#env:prod,host:web-2,model:gpt-4o"
    h.feed(line)  # general parser: fills the cache
    h.feed(line)  # fast path
    h.feed(line.replace(":12|", ":13|"))  # fast path, another value
    first, second, third = h.rec.samples
    assert first == second == sample("llm.tokens.output", "d", 12.0, "env:prod,model:gpt-4o", 0.5, "web-2")
    assert third[2] == 13.0 and third[:2] == first[:2] and third[3:] == first[3:]


def test_a_datagram_mixing_fast_and_general_lines_keeps_line_order(h):
    """The fast path adds a datagram's lines together, but never after a later line the general parser
    took: a gauge's last value is its last line's."""
    h.feed("q:1|g|#env:prod")  # the suffix is now known: the fast path takes "q:..|g|#env:prod"
    h.rec.samples.clear()
    h.feed("q:2|g|#env:prod\nq:3:4|g|#env:prod\nq:5|g|#env:prod\nq:6:7|g|#env:prod")  # packed: general
    assert [s[2] for s in h.rec.samples] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_fast_path_still_rejects_bad_values_for_a_known_suffix(h):
    h.feed("m:1|c|#env:prod")
    h.feed("m:nan|c|#env:prod\nm:inf|c|#env:prod\nm:x|c|#env:prod\n:5|c|#env:prod")
    assert len(h.rec.samples) == 1
    assert h.dropped("invalid_value") == 3
    assert h.dropped("empty_name") == 1


def test_fast_path_never_mistakes_an_event_for_a_metric(h):
    h.feed("c:1|c")  # caches the suffix "c"
    h.feed("_e{1,1}:5|c")  # an event whose title is "5" and text "c"
    assert [s[0] for s in h.rec.samples] == ["c"]
    assert [(e["title"], e["text"]) for e in h.rec.events] == [("5", "c")]


def test_the_suffix_cache_stays_bounded(h):
    from llmship.sources import dogstatsd

    for i in range(dogstatsd._SUFFIX_CACHE_MAX + 10):
        h.feed(f"m:1|c|#n:{i}")
    assert len(h.parser._suffixes) <= dogstatsd._SUFFIX_CACHE_MAX
    assert len(h.rec.samples) == dogstatsd._SUFFIX_CACHE_MAX + 10


# ---------------------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("line,reason", [
    ("llm.requests|c", "invalid_value"),  # no value at all
    ("llm.requests:|c", "invalid_value"),
    ("llm.requests:abc|c", "invalid_value"),
    ("llm.requests:1:x|h", "invalid_value"),
    ("llm.requests:nan|g", "invalid_value"),
    ("llm.requests:-inf|c", "invalid_value"),
    ("llm.requests::|h", "invalid_value"),
    ("llm.requests:1|x", "unknown_type"),
    ("llm.requests:1|C", "unknown_type"),
    ("llm.requests:1", "missing_type"),
    ("llm.requests:1|", "missing_type"),
    ("llm.requests:1||#a:b", "missing_type"),
    ("llm.requests:1|c|@", "invalid_sample_rate"),
    ("llm.requests:1|c|@x", "invalid_sample_rate"),
    ("llm.requests:1|c|@0", "invalid_sample_rate"),
    ("llm.requests:1|c|@-0.5", "invalid_sample_rate"),
    ("llm.requests:1|c|@1.5", "invalid_sample_rate"),
    ("llm.requests:1|c|@nan", "invalid_sample_rate"),
    ("llm.requests:1|g|T", "invalid_timestamp"),
    ("llm.requests:1|g|T0", "invalid_timestamp"),
    ("llm.requests:1|g|Tsoon", "invalid_timestamp"),
    ("llm.requests:1|g|T99999999999999999999999", "invalid_timestamp"),  # beyond int64: it used to fail the flush
    (":1|c", "empty_name"),
    ("_e{5,4}:title|tex", "bad_event"),  # text shorter than announced
    ("_e{5,4}:tit|text|#a", "bad_event"),  # lengths do not line up with the separators
    ("_e{0,4}:|text", "bad_event"),  # the Agent rejects an empty title
    ("_e{x,4}:title|text", "bad_event"),
    ("_e{5}:title|text", "bad_event"),
    ("_e{5,4}title|text", "bad_event"),
    ("_e{1,1}:\u00e9|x", "bad_event"),  # lengths count bytes: "é" is 2, so 1 cuts it in half
    ("_sc|", "bad_service_check"),
    ("_sc|name", "bad_service_check"),
    ("_sc||0", "bad_service_check"),
    ("_sc|name|4", "bad_service_check"),
    ("_sc|name|ok", "bad_service_check"),
])
def test_each_malformed_line_is_counted_by_reason_and_the_rest_still_counts(h, line, reason):
    assert h.feed(f"before:1|c\n{line}\nafter:2|g\n") == 3
    assert h.dropped(reason) == 1, h.comp.counters
    assert h.dropped() == 1
    assert [s[0] for s in h.rec.samples] == ["before", "after"]
    assert h.rec.events == [] and h.rec.checks == []


def test_invalid_utf8_drops_only_that_line(h):
    assert h.feed(b"a:1|c\nbad\xff\xfe:1|c\nb:2|c") == 3
    assert h.dropped("not_utf8") == 1
    assert [s[0] for s in h.rec.samples] == ["a", "b"]


def test_bad_input_is_logged_at_a_limited_rate(h):
    import structlog

    with structlog.testing.capture_logs() as logs:
        for _ in range(100):
            h.feed("nope")
    assert h.dropped("invalid_value") == 100
    assert 1 <= len([entry for entry in logs if entry["event"] == "dogstatsd_bad_line"]) <= 2


# ---------------------------------------------------------------------------------------------- events


def test_event_with_every_field(h):
    h.feed("_e{5,12}:Title|line1\\nline2|d:1700000000|h:web-1|k:deploy-1|p:low|s:my_apps|t:warning"
           "|#env:prod,team:llm")
    assert h.rec.events == [{
        "title": "Title", "text": "line1\nline2", "date_happened": 1700000000, "host": "web-1",
        "aggregation_key": "deploy-1", "priority": "low", "source_type_name": "my_apps",
        "alert_type": "warning", "tags": ["env:prod", "team:llm"],
    }]
    assert h.rec.samples == []


def test_event_defaults_host_from_tag_then_agent(h):
    before = int(time.time())
    h.feed("_e{1,1}:a|b|#host:web-9,env:prod\n_e{1,1}:c|d")
    tagged, plain = h.rec.events
    assert tagged["host"] == "web-9" and tagged["tags"] == ["env:prod"]
    assert plain["host"] == HOST and plain["tags"] == []
    assert plain["priority"] == "normal" and plain["alert_type"] == "info"
    assert before <= plain["date_happened"] <= int(time.time()) + 1
    assert "aggregation_key" not in plain and "source_type_name" not in plain


def test_event_lengths_count_utf8_bytes(h):
    title, text = "Déploiement ✓", "modèle → gpt-4o"
    h.feed(f"_e{{{len(title.encode())},{len(text.encode())}}}:{title}|{text}|#a:b")
    assert h.rec.events[0]["title"] == title and h.rec.events[0]["text"] == text
    assert h.rec.events[0]["tags"] == ["a:b"]


def test_event_text_may_contain_the_field_separator(h):
    h.feed("_e{3,9}:a|b|text|with|t:error")
    event = h.rec.events[0]
    assert (event["title"], event["text"], event["alert_type"]) == ("a|b", "text|with", "error")


def test_event_bad_optional_fields_keep_their_defaults(h):
    h.feed("_e{1,1}:a|b|p:urgent|t:fatal|d:yesterday")
    event = h.rec.events[0]
    assert event["priority"] == "normal" and event["alert_type"] == "info"
    assert isinstance(event["date_happened"], int)


# ---------------------------------------------------------------------------------------------- service checks


def test_service_check_with_every_field(h):
    h.feed("_sc|llm.upstream|2|d:1700000000|h:web-1|#env:prod,team:llm|m:upstream\\ndown m\\: 503")
    assert h.rec.checks == [{
        "check": "llm.upstream", "host_name": "web-1", "status": 2, "timestamp": 1700000000,
        "message": "upstream\ndown m: 503", "tags": ["env:prod", "team:llm"],
    }]
    assert h.rec.samples == [] and h.rec.events == []


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_service_check_statuses(h, status):
    h.feed(f"_sc|svc|{status}")
    check = h.rec.checks[0]
    assert check["status"] == status and check["host_name"] == HOST and check["message"] == ""
    assert abs(check["timestamp"] - time.time()) < 5


def test_service_check_host_tag(h):
    h.feed("_sc|svc|0|#host:db-1,env:prod")
    assert h.rec.checks[0]["host_name"] == "db-1" and h.rec.checks[0]["tags"] == ["env:prod"]


def test_a_metric_named_like_a_service_check_prefix_is_a_metric(h):
    h.feed("_scale:1|g")
    assert h.rec.samples == [sample("_scale", "g", 1.0)] and h.rec.checks == []


# ---------------------------------------------------------------------------------------------- captures


def capture(name: str) -> list[dict]:
    return [json.loads(line) for line in (CAPTURES / name).read_text().splitlines()]


@pytest.mark.parametrize("name", ["dogstatsd_udp_unbuffered.dogstatsd.jsonl",
                                  "dogstatsd_udp_buffered.dogstatsd.jsonl", "dogstatsd_uds.dogstatsd.jsonl"])
def test_every_captured_datagram_parses_without_a_drop(h, name):
    records = capture(name)
    lines = 0
    for record in records:
        payload = record["datagram"].encode()
        assert len(payload) == record["len"]
        lines += h.feed(payload)
    assert h.dropped() == 0
    assert lines == sum(1 for r in records for line in r["datagram"].split("\n") if line)
    assert len(h.rec.events) == 1 and len(h.rec.checks) == 2
    assert lines == len(h.rec.samples) + 3


def test_the_buffered_capture_parses_to_exactly_what_the_client_sent(h):
    h.feed(capture("dogstatsd_udp_buffered.dogstatsd.jsonl")[0]["datagram"].encode())
    tags = ",".join(CAPTURE_TAGS)
    assert h.rec.samples == [
        sample("demo.requests.count", "c", 1.0, tags),
        sample("demo.requests.count", "c", 3.0, tags),
        sample("demo.inflight", "c", -1.0, tags),
        sample("demo.sampled.count", "c", 1.0, tags, rate=0.999999),
        sample("demo.queue.depth", "g", 42.0, tags),
        sample("demo.queue.depth", "g", 43.5, tags),
        sample("demo.request.latency", "h", 123.4, tags),
        sample("demo.tokens.per_request", "d", 25.0, tags),
        sample("demo.users.unique", "s", "user-42", tags),
        sample("demo.request.duration_ms", "ms", 87.0, tags),
        sample("demo.block.timed", "ms", 10.0, tags),
        sample("demo.no.tags.gauge", "g", 1.0, "team:llm,app:capture"),
    ]
    event = h.rec.events[0]
    assert {k: event[k] for k in ("title", "text", "host", "aggregation_key", "priority", "source_type_name",
                                  "alert_type", "tags")} == {
        "title": "Deploy finished", "text": "chatbot 1.2.3 deployed\nsecond line", "host": "vm-test",
        "aggregation_key": "deploy-123", "priority": "normal", "source_type_name": "my_apps",
        "alert_type": "info", "tags": CAPTURE_TAGS}
    check = h.rec.checks[0]
    assert {k: check[k] for k in ("check", "host_name", "status", "message", "tags")} == {
        "check": "chatbot.can_connect", "host_name": "vm-test", "status": 0, "message": "all good",
        "tags": CAPTURE_TAGS}


def test_the_second_service_check_capture_has_no_host(h):
    h.feed(capture("dogstatsd_udp_buffered.dogstatsd.jsonl")[2]["datagram"].encode())
    assert h.rec.checks[0]["check"] == "chatbot.upstream"
    assert h.rec.checks[0]["status"] == 2 and h.rec.checks[0]["message"] == "upstream down"
    assert h.rec.checks[0]["host_name"] == HOST


# ---------------------------------------------------------------------------------------------- properties

_CAPTURE_DATAGRAMS = [r["datagram"].encode() for name in ("dogstatsd_udp_buffered.dogstatsd.jsonl",
                                                          "dogstatsd_udp_unbuffered.dogstatsd.jsonl")
                      for r in capture(name)]
_FRAGMENTS = ["llm.tokens", ":", "1", "-2.5", "nan", "|", "c", "g", "ms", "h", "s", "d", "@", "0.5", "#",
              "env:prod", ",", "host:", "T", "1700000000", "\n", "_e{", "}", "_sc|", "3", "é", "\\n", "m:",
              "c:", "card:", "e:", "dd.internal.entity_id:", "{", "99999999999999999999", "::"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise(payload):
    h = Harness()
    lines = h.parser.feed(payload)
    assert lines >= 0
    assert h.dropped() <= lines


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_CAPTURE_DATAGRAMS), st.data())
def test_truncated_captures_never_raise(datagram, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(datagram)))
    h = Harness()
    h.parser.feed(datagram[:cut])
    h.parser.feed(datagram[cut:])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40))
def test_grammar_shaped_noise_never_raises_and_counts_every_line(fragments):
    text = "".join(fragments)
    h = Harness()
    lines = h.parser.feed(text.encode())
    assert lines == sum(1 for line in text.split("\n") if line)
    parsed = len(h.rec.events) + len(h.rec.checks) + h.dropped()
    assert parsed <= lines <= parsed + len(h.rec.samples)


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True),
    mtype=st.sampled_from(["c", "g", "ms", "h", "d"]),
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    rate=st.sampled_from([None, 0.1, 0.5, 1.0]),
    tags=st.lists(st.from_regex(r"[a-z]{1,5}:[a-z0-9]{1,5}", fullmatch=True), max_size=4),
)
def test_cache_hits_and_misses_agree(name, mtype, value, rate, tags):
    line = f"{name}:{value!r}|{mtype}" + (f"|@{rate}" if rate else "") + (f"|#{','.join(tags)}" if tags else "")
    h = Harness()
    h.parser.feed(line.encode())
    h.parser.feed(line.encode())
    assert len(h.rec.samples) == 2
    assert h.rec.samples[0] == h.rec.samples[1] == sample(name, mtype, float(value), ",".join(tags), rate or 1.0)
