"""Issue 14: every string that leaves the host is scrubbed (events, log records, APM spans), with the redact,
hash and drop_field actions, field policies, and counters per rule, action and kind."""

from __future__ import annotations

import random
import re

import orjson
import pytest

from llmship.config import ConfigError, ScrubRule, load_config_text
from llmship.llm.stage import LLMStage
from llmship.model import Span
from llmship.tags import normalize_tag
from llmship.telemetry import Telemetry
from llmship.transforms import privacy
from llmship.transforms.logs import LogProcessor
from llmship.transforms.sampling import Sampler
from llmship.transforms.scrub import Scrubber, hyperscan
from llmship.transforms.truncate import truncate_text

from harness import NEEDLES, SECRETS  # one of each default rule's secrets, and what must never leave

ENGINES = ["python"] + (["hyperscan"] if hyperscan is not None else [])



def sentence(name: str) -> str:
    return f"see {SECRETS[name][0]} here"


def leaks(data) -> list[str]:
    text = orjson.dumps(data).decode() if not isinstance(data, str) else data
    return [n for n in NEEDLES if n in text]


def scrubber(engine: str, extra: str = "", env: dict | None = None) -> tuple[Scrubber, object]:
    cfg = load_config_text(extra, env=env or {})
    s = Scrubber(cfg.scrub.rules, Telemetry().component("scrub"), engine=engine, hash_key=cfg.scrub.hash_key,
                 fields=cfg.scrub.fields)
    return s, cfg


# ------------------------------------------------------------------------------------------ events


def event_with_secrets() -> dict:
    names = list(SECRETS)
    return {
        "span_id": "1196639696535375171", "trace_id": "6b03dfbb000000004ab7709310bb202a", "parent_id": "undefined",
        "name": "OpenAI.createChatCompletion", "status": "ok", "start_ns": 1, "duration": 2,
        "meta": {
            "span": {"kind": "llm"}, "model_name": "gpt-4o-mini", "model_provider": "openai",
            "input": {"messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": " ".join(sentence(n) for n in names)},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"name": "lookup", "tool_id": "call_1", "type": "function",
                     "arguments": {n: sentence(n) for n in names}}]},
                {"role": "tool", "content": "", "tool_results": [
                    {"name": "lookup", "tool_id": "call_1", "result": " ".join(sentence(n) for n in names)}]},
            ]},
            "output": {"messages": [{"role": "assistant", "content": "ok"}]},
            "metadata": {"temperature": 0.2, "user": SECRETS["email"][0],
                         "nested": {n: [sentence(n), {"deep": sentence(n)}] for n in names}},
            "tool_definitions": [{"name": "lookup", "description": " ".join(sentence(n) for n in names),
                                  "schema": {"type": "object", "properties": {
                                      n: {"type": "string", "description": sentence(n)} for n in names}}}],
        },
        "metrics": {"input_tokens": 18, "output_tokens": 7, "total_tokens": 25},
        "tags": ["ml_app:demo-app", "service:chatbot", "env:staging", "span_id:1196639696535375171",
                 *(f"{n}:{SECRETS[n][0]}" for n in names)],
    }


def retrieval_event() -> dict:
    names = list(SECRETS)
    return {"span_id": "7", "trace_id": "8", "parent_id": "undefined", "name": "search", "status": "ok",
            "start_ns": 1, "duration": 2, "tags": ["ml_app:demo-app"],
            "meta": {"span": {"kind": "retrieval"}, "input": {"value": sentence("email")},
                     "output": {"documents": [{"name": "doc", "id": "d1", "score": 0.5, "text": sentence(n)}
                                              for n in names]}}}


@pytest.mark.parametrize("engine", ENGINES)
def test_no_default_secret_leaves_in_any_place_of_an_event(engine):
    s, cfg = scrubber(engine, "[llm]\nmax_text_chars = 100000\n")
    stage = LLMStage(cfg, s, Telemetry())
    out = stage.process_events([event_with_secrets(), retrieval_event()])
    events = [o.event for o in out]
    assert len(events) == 2 and leaks(events) == []
    chat = events[0]
    # structure and labels survive: roles, kinds, ids, names, tag keys, numbers
    assert [m["role"] for m in chat["meta"]["input"]["messages"]] == ["system", "user", "assistant", "tool"]
    assert chat["meta"]["span"] == {"kind": "llm"} and chat["meta"]["model_name"] == "gpt-4o-mini"
    assert chat["meta"]["input"]["messages"][2]["tool_calls"][0]["tool_id"] == "call_1"
    assert chat["meta"]["metadata"]["temperature"] == 0.2
    assert chat["meta"]["metadata"]["user"] == "[REDACTED:email]"
    assert chat["meta"]["tool_definitions"][0]["schema"]["properties"]["email"]["type"] == "string"
    assert {"ml_app:demo-app", "service:chatbot", "span_id:1196639696535375171", "email:[REDACTED:email]",
            "credit_card:[REDACTED:credit_card]"} <= set(chat["tags"])
    assert events[1]["meta"]["output"]["documents"][0]["id"] == "d1"
    counts = s.telemetry
    for name in SECRETS:
        assert counts.get("scrub_matches", rule=name, action="redact", kind="llmobs") > 0, name


@pytest.mark.parametrize("engine", ENGINES)
def test_an_unsampled_event_still_has_its_metadata_tags_and_error_scrubbed(engine):
    s, cfg = scrubber(engine, "[llm.sampling]\nspan_text_rate = 0.0\nprompt_log_rate = 0.0\n")
    event = event_with_secrets()
    event["meta"]["error"] = {"message": sentence("email"), "stack": sentence("openai_api_key"), "type": "E"}
    event["status"] = "error"
    out = LLMStage(cfg, s, Telemetry()).process_events([event])
    assert leaks(out[0].event) == []


# ------------------------------------------------------------------------------------------ logs


def log_processor(engine: str, extra: str = "", env: dict | None = None):
    s, cfg = scrubber(engine, extra, env)
    telemetry = Telemetry()
    return LogProcessor(cfg, Sampler(cfg.llm.sampling), s, telemetry), s, telemetry


def record_with_secrets() -> dict:
    names = list(SECRETS)
    return {"message": "llm call", "service": "py-app", "hostname": "web-1", "status": "info", "ddsource": "python",
            "ddtags": "env:prod," + ",".join(f"{n}:{SECRETS[n][0]}" for n in names if n != "datadog_api_key"),
            "trace_id": "2256081974650575786", "logger": {"name": "llm.samples"},
            "usr": {n: sentence(n) for n in names},
            "request": {"headers": [sentence(n) for n in names], "body": {"items": [{"note": sentence(n)}
                                                                                   for n in names]}},
            "tokens": {"input": 12}, "duration_ms": 3.5}


@pytest.mark.parametrize("engine", ENGINES)
def test_no_default_secret_leaves_in_any_attribute_of_a_log(engine):
    processor, s, _ = log_processor(engine)
    out = processor.process(record_with_secrets())
    assert leaks(out) == []
    assert out["trace_id"] == "2256081974650575786"  # an id, even one that passes as a card number
    assert out["hostname"] == "web-1" and out["tokens"] == {"input": 12} and out["duration_ms"] == 3.5
    assert "env:prod" in out["ddtags"].split(",") and "email:[REDACTED:email]" in out["ddtags"].split(",")
    assert out["usr"]["email"] == "see [REDACTED:email] here"
    assert s.telemetry.get("scrub_matches", rule="email", action="redact", kind="logs") >= 4


def test_a_log_whose_scrubbing_fails_is_dropped_and_counted():
    processor, s, telemetry = log_processor("python")
    s.scrub_cached = lambda *a, **k: 1 / 0
    assert processor.process({"message": "x", "other": "y"}) is None
    assert telemetry.component("logs_processor").get("discarded", reason="scrub_failed", intentional="false") == 1
    assert s.telemetry.get("scrub_failed", kind="logs") == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_of_logs_is_processed_as_each_log_alone(engine):
    """process_many scans every record's text fields in one call: what it ships and counts is what
    processing each record alone gives (secrets in the text, past the cut, in nested and dotted text
    fields; a drop_field match; a field policy on a text field; a log sampled out)."""
    extra = """
[llm]
max_text_chars = 60
text_fields = ["input.messages", "output"]
[[llm.sampling.rules]]
service = "quiet"
prompt_log_rate = 0.0
[[scrub.rules]]
name = "ticket"
regex = "TICKET-[0-9]+"
action = "drop_field"
[[scrub.fields]]
path = "attributes.completion"
action = "redact_all"
"""
    def records() -> list[dict]:
        long = "word " * 100
        return [record_with_secrets(),
                {"message": long + sentence("email"), "prompt": sentence("openai_api_key") + long},
                {"message": "quiet one", "service": "quiet"},
                {"message": "see TICKET-42", "completion": sentence("email"), "prompt": "fine"},
                {"message": "m", "input": {"messages": [sentence("ipv4"), {"content": long + "a@b.io"}]},
                 "output": [sentence("bearer_token")], "prompt": long},
                {"message": 12, "prompt": ["a list", sentence("credit_card")]},
                {"message": sentence("credit_card") + long}]

    alone, s1, tel1 = log_processor(engine, extra)
    batch, s2, tel2 = log_processor(engine, extra)
    expected = [out for r in records() if (out := alone.process(r)) is not None]
    got = batch.process_many(records())
    assert got == expected
    assert len(got) == 6 and leaks(got) == [] and b"TICKET" not in orjson.dumps(got)
    scrubbed, cut = scrubber(engine)[0].scrub, lambda text: truncate_text(text, 60)[0]
    assert got[1]["message"] == cut("word " * 100) and got[1]["prompt"] == cut(scrubbed(sentence("openai_api_key") + "word " * 100))
    assert "message" not in got[2] and got[2]["completion"] == "[REDACTED:completion]" and got[2]["prompt"] == "fine"
    assert got[3]["input"]["messages"] == [scrubbed(sentence("ipv4")), {"content": cut("word " * 100)}]
    assert got[3]["output"] == [scrubbed(sentence("bearer_token"))] and got[3]["prompt"] == cut("word " * 100)
    assert got[4]["message"] == 12 and got[4]["prompt"] == ["a list", scrubbed(sentence("credit_card"))]
    assert tel2.component("logs_processor").counters == tel1.component("logs_processor").counters
    assert s2.telemetry.counters == s1.telemetry.counters


def test_when_a_batch_scan_fails_none_of_its_logs_is_shipped():
    processor, s, telemetry = log_processor("python")
    s.scrub_truncate_many = lambda *a, **k: 1 / 0
    assert processor.process_many([{"message": "a"}, {"message": "b"}, {"prompt": "c"}]) == []
    assert telemetry.component("logs_processor").get("discarded", reason="scrub_failed", intentional="false") == 3
    assert s.telemetry.get("scrub_failed", kind="logs") == 3


# ------------------------------------------------------------------------------------------ spans


def spans_with_secrets() -> list[Span]:
    names = list(SECRETS)
    return [
        Span(service="web", name="django.request", resource=f"GET /users/{SECRETS['email'][0]}", span_id=1,
             meta={"env": "prod", "http.url": f"https://x/?key={SECRETS['openai_api_key'][0]}",
                   "http.useragent": "Mozilla/5.0 Chrome/124.0.0.0 Safari/537.36", "_dd.p.tid": "6b03dfbb00000000",
                   "llmobs_parent_id": "2256081974650575786", "runtime-id": "4111111111111111",
                   **{f"custom.{n}": sentence(n) for n in names}}),
        Span(service="db", name="postgres.query", resource=f"SELECT 1 WHERE email = '{SECRETS['email'][0]}'",
             span_id=2, meta={"error.message": sentence("credit_card"), "error.stack": "line 1\n" + sentence("ipv6")}),
        Span(service="web", name="clean", resource="GET /", span_id=3, meta={"env": "prod", "http.url": "https://x/"}),
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_default_secret_leaves_in_span_meta_or_resource(engine):
    s, _ = scrubber(engine)
    spans = spans_with_secrets()
    clean_meta = spans[2].meta
    privacy.scrub_chunks(s, [spans[:2], spans[2:]])
    assert leaks([[sp.resource, sp.meta] for sp in spans]) == []
    assert spans[0].resource == "GET /users/[REDACTED:email]"
    assert spans[0].meta["http.useragent"].endswith("Chrome/124.0.0.0 Safari/537.36")
    assert spans[0].meta["llmobs_parent_id"] == "2256081974650575786" and spans[0].meta["runtime-id"] == "4111111111111111"
    assert list(spans[0].meta) == list(spans_with_secrets()[0].meta)  # keys and their order unchanged
    assert spans[2].meta is clean_meta  # a clean span is not copied
    for name in SECRETS:
        assert s.telemetry.get("scrub_matches", rule=name, action="redact", kind="spans") > 0, name


_PIECES = [*(v for v, _ in SECRETS.values()), "plain words", "2256081974650575786", "127.0.0.1", "x@y", "::",
           "sk-", "é ü 中文", "\n", "\x00", " ", "4111-1111-1111-1111", "1.2.3.4.5", "AKIA", "Bearer", "DD_API_KEY=",
           # next to scan_many's own shapes (IPv6, e-mail): a grammar, code, decorators, addresses cut short
           "::=", "std::", "a[::2]", "fe80::", "::1", "a:", "@f1", "a@", "@b.io", ".co", "é@b.io", "1:2:3:"]


@pytest.mark.parametrize("engine", ENGINES)
def test_scrub_many_gives_what_scrubbing_each_string_gives(engine):
    """The one-scan path (Hyperscan) and the twin agree with scrubbing each string on its own, whatever
    strings sit next to each other (a head split across two strings must not hide or invent a match)."""
    rng = random.Random(14)
    s, _ = scrubber(engine)
    reference, _ = scrubber("python")
    for _ in range(300):
        strings = ["".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 4))) for _ in range(rng.randrange(1, 12))]
        changed = s.scrub_many(strings, "spans")
        expected = {i: reference.scrub_value(t, "spans") for i, t in enumerate(strings)}
        assert {i: changed.get(i, t) for i, t in enumerate(strings)} == expected, strings


def test_scrub_many_with_user_rules_anchored_or_not():
    rules = (ScrubRule("ticket", r"^TICKET-\d+$"), ScrubRule("order", r"ORD\d{4}"))
    for engine in ENGINES:
        s = Scrubber(rules, engine=engine)
        strings = ["TICKET-12", "a TICKET-12", "ORD1234 and", "x", "TICKET-9\nTICKET-8"]
        changed = s.scrub_many(strings, "spans")
        assert changed == {0: "[REDACTED]", 2: "[REDACTED] and"}, engine


_KEYS = ["http.url", "db.statement", "error.message", "custom", "env", "_dd.p.tid", "user.id", "http.useragent",
         "llmobs_parent_id", "out.host", "a"]


def _random_chunks(rng: random.Random, odd: bool) -> list[list[Span]]:
    def text() -> str:
        return "".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 4)))

    chunks = []
    for _ in range(rng.randrange(1, 4)):
        chunk = []
        for _ in range(rng.randrange(1, 5)):
            meta = {rng.choice(_KEYS) + rng.choice(["", "2"]): text() for _ in range(rng.randrange(0, 6))}
            if odd and meta and rng.random() < 0.2:
                meta[rng.choice(list(meta))] = rng.choice(["\ud800", "a\udfff b", 5, None])
            chunk.append(Span(resource=text(), meta=meta))
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("config", ["", "USER_RULES_CFG", "DROP_CFG", "HASH_CFG"])
@pytest.mark.parametrize("engine", ENGINES)
def test_span_candidates_compiled_and_python_scrub_spans_alike(engine, config, monkeypatch):
    """scrub_chunks with the compiled gathering of span strings (sinks/_spanenc.pyx span_candidates) and with
    its Python path: the same spans out, the same counters, the same error for what cannot be scrubbed."""
    compiled = privacy._span_candidates
    if compiled is None:
        pytest.skip("the compiled span encoder is not built (or LLMSHIP_NO_EXTENSIONS is set)")
    extra = globals()[config] if config else ""
    rng = random.Random(10)
    for round in range(150):
        odd = round % 3 == 0  # lone surrogates, values that are not strings
        chunks = _random_chunks(rng, odd)
        outs = []
        for native in (compiled, None):
            monkeypatch.setattr(privacy, "_span_candidates", native)
            s, _ = scrubber(engine, extra, env={"KEY": "k"})
            spans = [[Span(resource=sp.resource, meta=dict(sp.meta)) for sp in c] for c in chunks]
            try:
                privacy.scrub_chunks(s, spans)
                error = None
            except Exception as e:
                error = type(e)
            outs.append((error, [[(sp.resource, sp.meta) for sp in c] for c in spans], s.telemetry.counters))
        assert outs[0] == outs[1], chunks


def _scan_everything(scrubber, spans):
    """The gathering before ``_dd.*`` and structural values were left out: every meta value, then the resource."""
    strings, entries = [], []
    for j, span in enumerate(spans):
        for k, value in enumerate(span.meta.values()):
            strings.append(value)
            entries.append((j, k))
        strings.append(span.resource)
        entries.append((j, len(span.meta)))
    return [entries[i] for i in scrubber.candidates_many(strings)]


@pytest.mark.parametrize("engine", ENGINES)
def test_values_the_scrub_leaves_alone_are_left_out_of_the_scan_and_nothing_else_changes(engine, monkeypatch):
    """``_dd.*`` and structural values are not gathered for the scan (compiled and Python paths alike), and
    the spans and counters come out as when every value was scanned and those skipped afterwards."""
    rng = random.Random(12)
    compiled = privacy._span_candidates
    left_out = ("_dd.p.tid", "_dd.p.tid2", "env", "http.useragent", "out.host")
    for _ in range(100):
        chunks = _random_chunks(rng, odd=False)
        spans = [sp for c in chunks for sp in c]
        s, _ = scrubber(engine, USER_RULES_CFG)
        found = privacy._candidates_py(s, spans)
        assert not any(k < len(spans[j].meta) and list(spans[j].meta)[k] in left_out for j, k in found)
        if compiled is not None and (joined := s.joined_scan()) is not None:
            assert compiled(spans, *joined, privacy.SPAN_SCAN_SKIP_PREFIX, privacy.SPAN_SCAN_SKIP_KEYS) == found
        outs = []
        for before in (False, True):
            if before:
                monkeypatch.setattr(privacy, "_span_candidates", None)
                monkeypatch.setattr(privacy, "_candidates_py", _scan_everything)
            s, _ = scrubber(engine, USER_RULES_CFG)
            copies = [[Span(resource=sp.resource, meta=dict(sp.meta)) for sp in c] for c in chunks]
            privacy.scrub_chunks(s, copies)
            outs.append(([[(sp.resource, sp.meta) for sp in c] for c in copies], s.telemetry.counters))
        monkeypatch.undo()
        assert outs[0] == outs[1]


USER_RULES_CFG = """
[[scrub.rules]]
name = "ticket"
regex = "^TICKET-[0-9]+$"
[[scrub.rules]]
name = "order"
regex = "ORD[0-9]{4}"
"""


def test_spans_whose_scrubbing_fails_are_dropped_and_counted():
    from test_llm import Rig  # tests/transforms/test_llm.py

    rig = Rig()
    s = Scrubber()
    rig.emitter._scrubber = s
    s.candidates_many = s.joined_scan = lambda *a, **k: 1 / 0
    spans, _, _ = rig.process_chunk(spans_with_secrets())
    assert spans == []
    assert rig.telemetry.component("processing").get("discarded", reason="scrub_failed", intentional="false") == 3
    assert s.telemetry.get("scrub_failed", kind="spans") == 3


# ------------------------------------------------------------------------------------------ actions

HASH_CFG = """
[scrub]
hash_key = "${KEY}"
[[scrub.rules]]
name = "email"
action = "hash"
[[scrub.rules]]
name = "datadog_api_key"
action = "hash"
"""
MARKER = re.compile(r"\[HASHED:email:[0-9a-f]{12}\]")


@pytest.mark.parametrize("engine", ENGINES)
def test_hash_is_deterministic_for_one_key_and_differs_across_keys(engine):
    one, _ = scrubber(engine, HASH_CFG, {"KEY": "k1"})
    again, _ = scrubber(engine, HASH_CFG, {"KEY": "k1"})
    other, _ = scrubber(engine, HASH_CFG, {"KEY": "k2"})
    text = "write to jane.doe@example.com or bob@example.com"
    a, b, c = one.scrub(text), again.scrub(text), other.scrub(text)
    assert a == b and a != c
    assert len(MARKER.findall(a)) == 2 and "example.com" not in a
    assert MARKER.findall(a)[0] != MARKER.findall(a)[1]  # two values, two hashes
    assert one.scrub("jane.doe@example.com") == MARKER.findall(a)[0]  # the same value correlates
    assert one.telemetry.get("scrub_matches", rule="email", action="hash", kind="llmobs") == 3
    # the kept prefix stays; only the key itself is hashed
    dd = one.scrub("DD_API_KEY=0123456789abcdef0123456789abcdef")
    assert re.fullmatch(r"DD_API_KEY=\[HASHED:datadog_api_key:[0-9a-f]{12}\]", dd)
    assert dd == one.scrub("api_key: 0123456789abcdef0123456789abcdef").replace("api_key: ", "DD_API_KEY=")


def test_a_user_rule_can_hash_and_a_bearer_word_is_kept():
    rules = (ScrubRule("ticket", r"TICKET-\d+", action="hash"), ScrubRule("bearer_token", action="hash"))
    for engine in ENGINES:
        s = Scrubber(rules, engine=engine, hash_key="k")
        out = s.scrub("TICKET-42 with Authorization: Bearer abcdefghijklmnop123456")
        assert re.fullmatch(r"\[HASHED:ticket:[0-9a-f]{12}\] with Authorization: Bearer "
                            r"\[HASHED:bearer_token:[0-9a-f]{12}\]", out), out
    with pytest.raises(ValueError, match="hash_key"):
        Scrubber(rules)


DROP_CFG = """
[[scrub.rules]]
name = "credit_card"
action = "drop_field"
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_drop_field_removes_the_field_that_held_a_match(engine):
    s, cfg = scrubber(engine, DROP_CFG)
    event = event_with_secrets()
    out = LLMStage(cfg, s, Telemetry()).process_events([event])[0].event
    # the string element is gone, and the "deep" key of the object after it
    assert out["meta"]["metadata"]["nested"]["credit_card"] == [{}]
    assert out["meta"]["metadata"]["nested"]["email"] == ["see [REDACTED:email] here", {"deep": "see [REDACTED:email] here"}]
    assert not any(t.startswith("credit_card:") for t in out["tags"])
    assert "credit_card" not in out["meta"]["input"]["messages"][2]["tool_calls"][0]["arguments"]
    assert "content" not in out["meta"]["input"]["messages"][1]  # the user's text held a card
    processor, s2, _ = log_processor(engine, DROP_CFG)
    record = processor.process({"message": "fine", "usr": {"card": sentence("credit_card"), "name": "Ann"}})
    assert record["usr"] == {"name": "Ann"} and record["message"] == "fine"
    gone = processor.process({"message": sentence("credit_card")})
    assert "message" not in gone
    spans = spans_with_secrets()
    privacy.scrub_chunks(s, [spans])
    assert "custom.credit_card" not in spans[0].meta and "error.message" not in spans[1].meta
    assert s.telemetry.get("scrub_matches", rule="credit_card", action="drop_field", kind="spans") == 2


# ------------------------------------------------------------------------------------------ field policies

FIELDS_CFG = """
[scrub]
hash_key = "secret-key"
[[scrub.fields]]
path = "meta.input.messages.role=system"
action = "drop"
[[scrub.fields]]
path = "meta.metadata.user"
action = "hash"
[[scrub.fields]]
path = "tags.user_id"
action = "hash"
[[scrub.fields]]
path = "meta.metadata.nested.*"
action = "redact_all"
name = "nested"
[[scrub.fields]]
path = "meta.tool_definitions.*.description"
action = "keep"
[[scrub.fields]]
path = "attributes.usr.email"
action = "hash"
[[scrub.fields]]
path = "attributes.request"
action = "drop"
[[scrub.fields]]
path = "attributes.note"
action = "keep"
[[scrub.fields]]
kind = "spans"
path = "meta.http.url"
action = "hash"
[[scrub.fields]]
kind = "spans"
path = "resource"
action = "keep"
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_field_policies(engine):
    s, cfg = scrubber(engine, FIELDS_CFG)
    event = event_with_secrets()
    event["tags"].append("user_id:u-42")
    out = LLMStage(cfg, s, Telemetry()).process_events([event])[0]
    meta = out.event["meta"]
    assert [m["role"] for m in meta["input"]["messages"]] == ["user", "assistant", "tool"]  # system prompt gone
    assert "You are a helpful" not in out.log["prompt"] if out.log else True
    assert re.fullmatch(r"\[HASHED:user:[0-9a-f]{12}\]", meta["metadata"]["user"])
    assert set(meta["metadata"]["nested"].values()) == {"[REDACTED:nested]"}
    user_tags = [t for t in out.event["tags"] if t.startswith("user_id:")]
    assert len(user_tags) == 1 and re.fullmatch(r"user_id:\[HASHED:user_id:[0-9a-f]{12}\]", user_tags[0])
    assert SECRETS["email"][0] in meta["tool_definitions"][0]["description"]  # kept: not scanned
    assert s.telemetry.get("scrub_fields", field="meta.input.messages.role=system", action="drop",
                           kind="llmobs") == 1

    processor = LogProcessor(cfg, Sampler(cfg.llm.sampling), s, Telemetry())
    record = processor.process({"message": "m", "usr": {"email": "ann@corp.example", "id": "u1"},
                                "request": {"body": "anything"}, "note": sentence("email")})
    assert re.fullmatch(r"\[HASHED:email:[0-9a-f]{12}\]", record["usr"]["email"]) and record["usr"]["id"] == "u1"
    assert "request" not in record and record["note"] == sentence("email")
    # the same value hashes the same in every kind and place (one key)
    assert record["usr"]["email"] == privacy.hash_marker(b"secret-key", "email", "ann@corp.example")

    spans = spans_with_secrets()
    url = spans[0].meta["http.url"]
    privacy.scrub_chunks(s, [spans])
    assert spans[0].meta["http.url"] == privacy.hash_marker(b"secret-key", "url", url)
    assert spans[0].resource == f"GET /users/{SECRETS['email'][0]}"  # kept


# ------------------------------------------------------------------------------------------ config


def test_hash_key_is_required_when_hashing_and_never_shown():
    with pytest.raises(ConfigError) as e:
        load_config_text(HASH_CFG.replace('hash_key = "${KEY}"\n', ""), env={})
    assert any(p.startswith("scrub.hash_key: required") for p in e.value.problems)
    with pytest.raises(ConfigError):
        load_config_text('[[scrub.fields]]\npath = "meta.metadata.user"\naction = "hash"\n', env={})
    cfg = load_config_text('[[scrub.fields]]\npath = "meta.metadata.user"\naction = "hash"\n',
                           env={"LLMSHIP_SCRUB_HASH_KEY": "from-env-123"})
    assert cfg.scrub.hash_key == "from-env-123"
    cfg = load_config_text(HASH_CFG, env={"KEY": "interpolated-456"})
    assert cfg.scrub.hash_key == "interpolated-456"
    assert "interpolated-456" not in repr(cfg) and "interpolated-456" not in repr(cfg.scrub)
    s = Scrubber(cfg.scrub.rules, hash_key=cfg.scrub.hash_key)
    assert "interpolated-456" not in repr(s)
    from llmship.status import describe_config

    assert "interpolated-456" not in orjson.dumps(describe_config(cfg)).decode()


def test_bad_actions_and_paths_are_reported():
    with pytest.raises(ConfigError) as e:
        load_config_text('[[scrub.rules]]\nname = "email"\naction = "nuke"\n'
                         '[[scrub.fields]]\npath = "meta..x"\naction = "drop"\n'
                         '[[scrub.fields]]\npath = "meta.x"\naction = "shred"\n'
                         '[[scrub.fields]]\nkind = "spans"\npath = "name"\naction = "drop"\n', env={})
    problems = "\n".join(e.value.problems)
    assert "scrub.rules[0].action" in problems and "scrub.fields[0].path" in problems
    assert "scrub.fields[1].action" in problems and "scrub.fields[2].path" in problems


def test_reload_swaps_rules_fields_and_key():
    s, cfg = scrubber("python", HASH_CFG, {"KEY": "k1"})
    first = s.scrub("jane.doe@example.com")
    cfg2 = load_config_text(HASH_CFG, env={"KEY": "k2"})
    s.reload(cfg2.scrub.rules, hash_key=cfg2.scrub.hash_key, fields=cfg2.scrub.fields)
    assert s.scrub("jane.doe@example.com") != first
    s.reload((), hash_key="", fields=())
    assert s.scrub("jane.doe@example.com") == "[REDACTED:email]"


def test_a_clean_value_comes_back_as_the_callers_own_object_even_from_the_cache():
    """Callers tell "unchanged" by identity (a clean span keeps its meta dict, a clean tag list is
    remembered): a cache hit must hand back the object passed in, not the first equal one it saw. It used
    to, which made every repeated value look changed and rewrote every span and tag list."""
    from llmship.transforms.scrub import Scrubber

    scrubber = Scrubber()
    first, second = "".join(["staging", "-eu"]), "".join(["staging", "-eu"])
    assert first == second and first is not second
    assert scrubber.scrub_cached(first, "spans") is first
    assert scrubber.scrub_cached(second, "spans") is second  # a hit
    secret = "".join(["mail ", "bob@example.com"])
    assert scrubber.scrub_cached(secret, "spans") == "mail [REDACTED:email]"
    assert scrubber.scrub_cached("".join(["mail ", "bob@example.com"]), "spans") == "mail [REDACTED:email]"


# ------------------------------------------------------------------------------------------ metrics


def aggregator_with(s: Scrubber, cfg):
    from llmship.aggregation import Aggregator

    telemetry = Telemetry()
    agg = Aggregator(cfg, telemetry, clock=lambda: 1000.0)
    agg.scrub_tags = privacy.MetricScrubber(s).tags
    return agg, telemetry


@pytest.mark.parametrize("engine", ENGINES)
def test_no_default_secret_leaves_in_metric_tags_events_or_service_checks(engine):
    s, cfg = scrubber(engine)
    agg, _ = aggregator_with(s, cfg)
    raw = ",".join(f"{n}:{sentence(n)}" for n in SECRETS) + ",user_id:2256081974650575786,plain"
    agg.add("app.calls", "c", 1, raw)
    agg.add_point("otlp.calls", 1, 2.0, raw, 1000)  # OTLP points take the same path
    tags = [ctx.tags for ctx in agg._contexts] + [series.tags for series in agg._timestamped]
    assert [leaks(list(t)) for t in tags] == [[], []]
    assert "user_id:2256081974650575786" in tags[0] and "plain" in tags[0]  # ids and key-less tags stay
    assert s.telemetry.get("scrub_matches", rule="email", action="redact", kind="metrics") == 2
    m = privacy.MetricScrubber(s)
    event = {"title": f"deploy by {SECRETS['email'][0]}", "text": " ".join(sentence(n) for n in SECRETS),
             "tags": f"who:{SECRETS['email'][0]},env:prod"}
    check = {"check": "db.up", "status": 2, "message": sentence("ipv4"), "tags": [f"ip:{SECRETS['ipv4'][0]}"]}
    assert leaks(m.event(event)) == [] and leaks(m.service_check(check)) == []
    assert m.event(event)["tags"] == ["who:[REDACTED:email]", "env:prod"] and "title" in event  # a copy
    clean = {"title": "deploy", "text": "v2 is out", "tags": "env:prod"}
    assert m.event(clean) is clean


@pytest.mark.parametrize("engine", ENGINES)
def test_metric_tags_mangled_by_a_client_are_read_with_underscores_as_spaces(engine):
    """datadog's DogStatsd sends "see 4111 1111 1111 1111 here" as "see_4111_1111_1111_1111_here"."""
    s, _ = scrubber(engine, """
[[scrub.rules]]
name = "session"
regex = "sess_[a-z0-9]{8}"
""")
    m = privacy.MetricScrubber(s)
    assert m.tags(["card:see_4111_1111_1111_1111_here", "ip:see_203.0.113.7_here", "id:sess_abcd1234", "ok:a_b"]) == [
        "card:see [REDACTED:credit_card] here", "ip:see [REDACTED:ipv4] here", "id:[REDACTED]", "ok:a_b"]
    assert s.telemetry.get("scrub_matches", kind="metrics") == 3  # each match counted once


@pytest.mark.parametrize("engine", ENGINES)
def test_metric_tag_actions_hash_and_drop_field(engine):
    s, cfg = scrubber(engine, HASH_CFG + DROP_CFG, {"KEY": "k1"})
    m = privacy.MetricScrubber(s)
    tags = m.tags([f"user:{SECRETS['email'][0]}", f"card:{SECRETS['credit_card'][0]}", "env:prod"])
    assert len(tags) == 2 and MARKER.fullmatch(tags[0].partition(":")[2]) and tags[1] == "env:prod"
    assert m.tags([f"user:{SECRETS['email'][0]}"]) == tags[:1]  # the same value, the same marker
    agg, _ = aggregator_with(s, cfg)
    agg.add("app.calls", "c", 1, f"user:{SECRETS['email'][0]}")
    assert list(agg._contexts)[0].tags == (normalize_tag(tags[0]),)


def test_a_metric_whose_tag_scrubbing_fails_is_dropped_and_counted():
    s, cfg = scrubber("python")
    agg, telemetry = aggregator_with(s, cfg)
    s.scrub_many = lambda *a, **k: 1 / 0
    agg.add("app.calls", "c", 1, "user:someone")
    agg.add("app.calls", "c", 1)  # no tags: nothing to scrub, kept
    assert [ctx.tags for ctx in agg._contexts] == [()]
    assert telemetry.component("aggregator").get("discarded", reason="scrub_failed", intentional="false") == 1
    from llmship.sinks.metrics import MetricsSink

    sink = MetricsSink(cfg, lambda payload: None, telemetry)
    sink.privacy = privacy.MetricScrubber(s)
    sink.send_event({"title": "deploy", "text": "x", "tags": "who:someone"})
    assert telemetry.component("metrics_sink").get("discarded", reason="scrub_failed", intentional="false") == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_an_events_rest_follows_the_scrubbers_reload(engine):
    """``EventRest`` keeps its walker from call to call; a reload starts the scrubber's results afresh, and a
    tag list found clean under the old rules must be looked at again under the new ones."""
    s, _ = scrubber(engine)
    rest = privacy.EventRest(s)
    event = {"meta": {"metadata": {"user": "ticket-42"}}, "tags": ["ml_app:ticket-42"]}
    rest(event)
    rest(event)  # the second time from what the walker remembered
    assert event == {"meta": {"metadata": {"user": "ticket-42"}}, "tags": ["ml_app:ticket-42"]}
    cfg = load_config_text('[[scrub.rules]]\nname = "ticket"\nregex = "ticket-[0-9]+"\n', env={})
    s.reload(cfg.scrub.rules)
    rest(event)
    assert event == {"meta": {"metadata": {"user": "[REDACTED]"}}, "tags": ["ml_app:[REDACTED]"]}
