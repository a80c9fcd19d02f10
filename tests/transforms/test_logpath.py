"""The log path's scrub-and-cut step (transforms/logpath.py): the compiled module and its pure-Python twin
give the same buffer, answers, records and counters, and both what the general path
(``LogProcessor._scrub_batch_general``) gives, on generated records: secrets in and past the cut, non-ASCII
text, identifiers, user agents, nested values, tags, odd shapes the walk leaves to Python, field policies
and default rules with other actions."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmship.config import load_config_text
from llmship.telemetry import Telemetry
from llmship.transforms import logpath, privacy
from llmship.transforms.logs import LogProcessor
from llmship.transforms.sampling import Sampler
from llmship.transforms.scrub import Scrubber, hyperscan
from llmship.transforms.truncate import truncate_text

from harness import SECRETS

pytestmark = pytest.mark.skipif(hyperscan is None, reason="the log path scans with Hyperscan")
NOT_BUILT = "the compiled log path is not built (pip install -e . or python setup.py build_ext --inplace)"
needs_native = pytest.mark.skipif(logpath.scrub_batch_native is None, reason=NOT_BUILT)

SCRUB_BATCHES = [
    pytest.param(logpath.scrub_batch_py, id="twin"),
    pytest.param(logpath.scrub_batch_native, id="native", marks=needs_native),
]

PIECES = ([" ", "\n", "\r\n", "\r", ":", "::", ".", "-", "@", "key", "Key=", "api_", "DD_API_", "Bearer ", "sk-",
           "AKIA", "4111", "1111 ", "10", "255", "0", "a", "f", "x", "example.com", "_", "'", '"', "=", "é",
           "日本", "٣", "’", "“", "…", "👍", "👍🏽", "e\u0301", "\u200d", "🇫🇷", "\0", "\ud800", "ſ", "a ", "n ",
           "z ", "word ", "text, ", "application ", "1.2.3.4.5", "fe80::1", "a@b.io", "john.doe", "%eth0"]
          + [needle for pair in SECRETS.values() for needle in pair] + ["word " * 60, "é " * 70])
KEYS = ["message", "prompt", "completion", "ddtags", "ddsource", "hostname", "service", "status", "host",
        "trace_id", "span_id", "id", "ID", "xId", "aid", "request-id", "user.id", "d", "", "user_agent",
        "http.useragent", "model", "note", "usr", "email", "items", "tags", "question", "timestamp"]


def texts(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(PIECES), max_size=max_size).map("".join)


class DictSub(dict):
    pass


class ListSub(list):
    pass


def values(depth: int) -> st.SearchStrategy:
    scalars = st.one_of(texts(12), st.sampled_from(["", "0123456789", "6b03dfbb-0000-4ab7", "Mozilla/5.0 10.1.2.3",
                                                     "abc", "ff-FF"]),
                        st.none(), st.integers(-5, 5), st.floats(allow_nan=False), st.booleans())
    if depth >= 2:
        return scalars
    inner = values(depth + 1)
    return st.one_of(
        scalars, scalars,
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=2).map(DictSub),
        st.lists(inner, max_size=2).map(ListSub),
        st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),  # a key that is no str
    )


TAGS = st.one_of(
    st.none(), st.just(""), st.just("env:prod,team:ml"),
    st.lists(st.sampled_from(["env:prod", "user:jane.doe@example.com", "ip:10.0.0.1", "plain", "k:", "trace_id:12",
                              "x:4111 1111 1111 1111"]), max_size=4).map(",".join),
    st.lists(st.sampled_from(["env:prod", "user:jane.doe@example.com", "id:7", 3]), max_size=3),
    st.integers(0, 3))


@st.composite
def records(draw) -> dict:
    record: dict = {}
    for field in ("message", "prompt", "completion"):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            record[field] = draw(texts(80))
        elif kind == 7:
            record[field] = None
        elif kind == 8:
            record[field] = draw(st.lists(texts(20), max_size=3))
    for key, value in draw(st.dictionaries(st.sampled_from(KEYS[3:]), values(0), max_size=6)).items():
        record[key] = value
    tags = draw(TAGS)
    if tags is not None:
        record["ddtags"] = tags
    return record


CONFIGS = {
    "defaults": "",
    "actions": """
[scrub]
hash_key = "k"
[[scrub.rules]]
name = "email"
action = "drop_field"
[[scrub.rules]]
name = "ipv4"
action = "hash"
[[scrub.fields]]
path = "attributes.usr.email"
action = "hash"
[[scrub.fields]]
path = "attributes.note"
action = "keep"
[[scrub.fields]]
path = "attributes.items.*"
action = "drop"
[[scrub.fields]]
path = "attributes.prompt"
action = "keep"
""",
    "fields": '[llm]\ntext_fields = ["question", "items"]\n',
}


def processor(config: str, max_chars: int) -> tuple[LogProcessor, Telemetry]:
    cfg = load_config_text(f"[llm]\nmax_text_chars = {max_chars}\n" + config if "[llm]" not in config else
                           config.replace("[llm]\n", f"[llm]\nmax_text_chars = {max_chars}\n"))
    telemetry = Telemetry()
    scrubber = Scrubber(cfg.scrub.rules, telemetry.component("scrub"), engine="hyperscan",
                        hash_key=cfg.scrub.hash_key, fields=cfg.scrub.fields)
    return LogProcessor(cfg, Sampler(cfg.llm.sampling), scrubber, telemetry), telemetry


def counters(telemetry: Telemetry) -> dict:
    return {name: dict(c.counters) for name, c in telemetry.components.items()}


def plain(node):
    """``node`` with the values a keep policy hid (left hidden in a record that was dropped) made comparable."""
    if isinstance(node, privacy._Kept):
        return ("kept", plain(node.value))
    if isinstance(node, dict):
        return (type(node).__name__, [(k, plain(v)) for k, v in node.items()])
    if isinstance(node, list):
        return (type(node).__name__, [plain(v) for v in node])
    return node


def run(config: str, max_chars: int, batch: list[dict], scrub_batch) -> tuple:
    proc, telemetry = processor(config, max_chars)
    batch = copy.deepcopy(batch)
    if scrub_batch is None:
        answers = proc._scrub_batch_general(batch)
    else:
        original = logpath.scrub_batch
        logpath.scrub_batch = scrub_batch
        try:
            answers = proc._scrub_batch(batch)
        finally:
            logpath.scrub_batch = original
    return answers, plain(batch), counters(telemetry)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(records(), max_size=6), st.integers(min_value=16, max_value=120), st.sampled_from(sorted(CONFIGS)))
@pytest.mark.parametrize("scrub_batch", SCRUB_BATCHES)
def test_the_log_path_gives_what_the_general_path_gives(scrub_batch, batch, max_chars, config):
    expected = run(CONFIGS[config], max_chars, batch, None)
    assert run(CONFIGS[config], max_chars, batch, scrub_batch) == expected


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(records(), max_size=6), st.integers(min_value=0, max_value=600), st.booleans())
def test_gather_compiled_and_twin_agree(batch, max_chars, cuttable):
    proc, _ = processor("", 512)
    spec = (proc._text_fields, proc._skip, max_chars, cuttable)
    native = logpath.gather_native(batch, spec)
    twin = logpath.gather(batch, spec)
    assert native == twin
    data, seps, owners, found, walked = native
    assert len(seps) == len(owners) and (not seps or seps[-1] == len(data) - 1)


@needs_native
@settings(max_examples=500, deadline=None)
@given(texts(120), st.integers(min_value=-3, max_value=700), st.booleans())
def test_cut_and_truncation_compiled_and_twin_agree(text, max_chars, cuttable):
    from llmship.transforms import _logpath

    assert _logpath.scrubbed_first(text, max_chars, cuttable) == logpath.scrubbed_first(text, max_chars, cuttable)
    if max_chars >= 0:
        assert _logpath.truncate_text(text, max_chars) == truncate_text(text, max_chars)


@settings(max_examples=300, deadline=None)
@given(st.lists(texts(30), max_size=8))
def test_the_mapped_scan_finds_the_strings_a_utf8_scan_finds(strings):
    """One byte per code point finds in each string what Hyperscan finds in its UTF-8 (scan_many)."""
    scrubber = Scrubber(engine="hyperscan")
    scan, _ = scrubber.mapped_scanner()
    data = b"".join(logpath.mapped(s) + b"\0" for s in strings)
    seps, pos = [], 0
    for s in strings:
        pos += len(s)
        seps.append(pos)
        pos += 1
    utf8 = scrubber._state[1].scan_many(strings)
    if utf8 is not None:  # None: a lone surrogate, which UTF-8 cannot hold
        assert logpath.candidates(scan(data), seps) == utf8


def test_a_user_rule_or_the_twin_engine_takes_the_general_path():
    cfg = load_config_text('[[scrub.rules]]\nname = "ticket"\nregex = "TICKET-[0-9]+"\n')
    assert Scrubber(cfg.scrub.rules, engine="hyperscan").mapped_scanner() is None
    assert Scrubber(engine="python").mapped_scanner() is None
    assert Scrubber(engine="hyperscan").mapped_scanner() is not None


def test_the_bench_records_come_out_as_from_the_general_path():
    """Realistic records (bench/logs.py's shape): 2 kB of prose with smart quotes, a secret in some."""
    prose = ("The “quick” brown fox’s jumps … over the lazy dog; it’s 10 o’clock. " * 40)
    batch = []
    for i, secret in enumerate(["", "reach me at jane.doe@example.com", "card 4111 1111 1111 1111", "",
                                "server 10.20.30.40", "Authorization: Bearer abcdefghijklmnop123"]):
        prompt = prose[:1000] + " " + secret + " " + prose[1000:2048]
        batch.append({"message": "chat completion gpt-4o", "ddsource": "python", "service": "chatbot",
                      "status": "info", "ddtags": "team:assistants", "prompt": prompt, "completion": prose[:600],
                      "model": "gpt-4o", "provider": "openai", "endpoint": "chat.completions",
                      "trace_id": str(1234567890123 + i), "span_id": "42", "tokens": {"input": 512, "output": 150},
                      "duration_ms": 12.5, "timestamp": 1767225600000 + i})
    for scrub_batch in (logpath.scrub_batch_py, logpath.scrub_batch_native):
        if scrub_batch is None:
            continue
        assert run("", 512, batch, scrub_batch) == run("", 512, batch, None)
    answers, out, _ = run("", 512, batch, logpath.scrub_batch)
    assert answers == [True] * len(batch)
    assert "jane.doe" not in str(out) and "4111 1111" not in str(out) and "10.20.30.40" not in str(out)


TAG_VALUES = st.one_of(st.none(), st.just(""), st.just("svc"), st.just("other svc!"), st.integers(0, 2),
                       st.just("env:prod,team:ml"), st.just("service:x,a:b"), st.just("llmship.truncated:true"),
                       st.lists(st.sampled_from(["env:prod", "service:y", 7, "k:v"]), max_size=3))


@st.composite
def tag_records(draw) -> dict:
    record = DictSub() if draw(st.integers(0, 9)) == 0 else {}
    for key in ("hostname", "service", "ddtags"):
        if draw(st.booleans()):
            record[key] = draw(TAG_VALUES)
    return record


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(tag_records(), st.sampled_from([None, True, False])), max_size=12),
       st.sampled_from(["", '[agent]\nservice = "agent-svc"\ntags = ["team:ml", "region:eu"]\nenv = "prod"\n']))
def test_tagging_compiled_and_twin_agree(pairs, config):
    outcomes = []
    for tag_many in (logpath.tag_many_py, logpath.tag_many_native):
        proc, telemetry = processor(config, 64)
        records = copy.deepcopy([r for r, _ in pairs])
        answers = [a for _, a in pairs]
        out = tag_many(records, answers, (proc._hostname, proc._service, proc._merged_tags, proc._merge_tags,
                                          proc._tag, 4096, telemetry.component("logs_processor")))
        outcomes.append(([records.index(r) if r in records else None for r in out], plain(records),
                         dict(proc._merged_tags), counters(telemetry)))
    assert outcomes[0] == outcomes[1]


@needs_native
@settings(max_examples=500, deadline=None)
@given(texts(60))
def test_the_cached_utf8_is_the_utf8(text):
    """The compiled path caches a cut text's UTF-8 in it for orjson: the same bytes as encoding it."""
    check_cached_utf8(text)


@needs_native
@pytest.mark.parametrize("text", ["日" * 21845, "日" * 21846, "👍" * 16383, "👍" * 16384, "a" * 70000 + "é",
                                  "é" * 40000 + "\ud800"])
def test_the_cached_utf8_of_long_texts_is_the_utf8(text):
    """Texts whose UTF-8 may take up to 64 KiB are written in a scratch buffer, longer ones in their own block
    (these are either side of that bound): the same bytes either way."""
    check_cached_utf8(text)


def check_cached_utf8(text: str) -> None:
    import sys

    import orjson

    from llmship.transforms import _logpath

    text += "z"
    fresh = "".join([text[:1], text[1:]])  # a new object (not a one-character singleton), nothing cached yet
    before = sys.getsizeof(fresh)
    try:
        expected = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: nothing cached, and orjson refuses it as before
        assert not _logpath.fill_utf8(fresh)
        with pytest.raises(TypeError):
            orjson.dumps(fresh)
        return
    filled = _logpath.fill_utf8(fresh)
    assert filled == (_logpath.FILLS_UTF8 and not text.isascii())
    if filled:
        assert sys.getsizeof(fresh) == before + len(expected) + 1
        assert not _logpath.fill_utf8(fresh)  # once
    assert fresh == text and fresh.encode() == expected and orjson.dumps(fresh) == orjson.dumps(text)


class RecordingHooks:
    """The processor's hooks, each call recorded by name."""

    def __init__(self, hooks) -> None:
        self.calls: list[str] = []
        for name in ("scrub_truncate", "rest", "walk", "tags", "restore", "failed"):
            setattr(self, name, self._recorded(name, getattr(hooks, name)))

    def _recorded(self, name: str, fn):
        def call(*args):
            self.calls.append(name)
            return fn(*args)
        return call


@pytest.mark.parametrize("scrub_batch", SCRUB_BATCHES)
def test_tags_the_memo_found_clean_are_not_scrubbed_again(scrub_batch):
    """A record whose other strings hold no match gets its ``ddtags`` scrubbed only when the scrubber's memo
    does not already hold them as clean (the twin once looked them up in its own list of text results)."""
    proc, _ = processor("", 512)
    scan, cuttable = proc._scrubber.mapped_scanner()
    spec = (proc._text_fields, proc._skip, 512, cuttable, proc._scrubber.results)
    hooks = RecordingHooks(proc._hooks)

    def calls(ddtags: str) -> list[str]:
        hooks.calls.clear()
        record = {"message": "hello", "prompt": "a question", "ddtags": ddtags}
        assert scrub_batch([record], [None], spec, scan, hooks) == [False]
        assert record["ddtags"] == ddtags
        return hooks.calls

    assert calls("version:1.2.3") == ["tags"]  # not known yet: scrubbed, and remembered as clean
    assert ("ddtags", "version:1.2.3") in proc._scrubber.results
    assert calls("version:1.2.3") == []
    assert calls("version:1.2.4") == ["tags"]
    assert calls("team:assistants,env:prod") == []  # no value a rule can match: not even looked up
    assert ("ddtags", "team:assistants,env:prod") not in proc._scrubber.results


TAG_STRINGS = st.lists(st.tuples(texts(4), st.sampled_from(["", ":", "::"]), texts(6)), max_size=5).map(
    lambda tags: ",".join(f"{k}{sep}{v}" for k, sep, v in tags))


@settings(max_examples=500, deadline=None)
@given(st.one_of(TAG_STRINGS, st.sampled_from(["team:assistants", "env:prod,team:ml", "a:b" * 50, "k:v-1",
                                               "team:x,ip:10.1.2.3", "user:jane@example.com", "k:" + "x" * 130])))
def test_tags_found_unchanged_are_what_scrubbing_leaves_unchanged(ddtags):
    """``tags_unchanged`` (compiled and twin agree) is only ever True of tags scrubbing leaves as they are."""
    unchanged = logpath.tags_unchanged(ddtags)
    if logpath.scrub_batch_native is not None:
        from llmship.transforms import _logpath

        assert _logpath.tags_unchanged(ddtags) == unchanged
    if unchanged:
        record = {"ddtags": ddtags}
        privacy.scrub_record_tags(Scrubber(engine="hyperscan"), record)
        assert record == {"ddtags": ddtags}
