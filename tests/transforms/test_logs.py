"""LogProcessor: sampling by rule, determinism per trace, rates, text scrubbing and truncation, tags."""

from __future__ import annotations

import math
import random

import pytest

from llmship.config import load_config_text
from llmship.telemetry import Telemetry
from llmship.transforms.logs import TRUNCATED_TAG, LogProcessor, record_trace_id
from llmship.transforms.sampling import Sampler, sampled
from llmship.transforms.scrub import Scrubber
from llmship.transforms.truncate import truncate_text

BASE = """
[agent]
hostname = "agent-host"
env = "prod"
service = "agent-svc"
version = "1.2"
tags = ["team:ml", "region:eu"]
"""


def make(extra: str = "") -> tuple[LogProcessor, Telemetry]:
    cfg = load_config_text(BASE + extra)
    telemetry = Telemetry()
    scrubber = Scrubber(cfg.scrub.rules, telemetry.component("scrub"))
    return LogProcessor(cfg, Sampler(cfg.llm.sampling), scrubber, telemetry), telemetry


def tags_of(record) -> list[str]:
    return record["ddtags"].split(",")


# ----------------------------------------------------------------------------------- sampling

RULES = """
[llm.sampling]
prompt_log_rate = 0.0   # the global rate is for generated logs: received ones ignore it
[[llm.sampling.rules]]
service = "chat-*"
model = "gpt-4o*"
prompt_log_rate = 0.0
[[llm.sampling.rules]]
service = "search"
prompt_log_rate = 0.25
[[llm.sampling.rules]]
service = "texts-only"
span_text_rate = 0.5    # sets no prompt_log_rate: does not decide for logs
"""


def test_a_rule_decides_for_logs_whose_attributes_match():
    processor, telemetry = make(RULES)
    assert processor.process({"message": "m", "service": "chat-api", "model": "gpt-4o-mini"}) is None
    assert processor.process({"message": "m", "service": "chat-api", "model": "claude-3"}) is not None
    assert telemetry.component("logs_processor").get("discarded", reason="sampled_out", intentional="true") == 1


def test_a_log_no_rule_decides_is_kept_whatever_the_global_rate():
    processor, _ = make(RULES)
    kept = [processor.process({"message": str(i), "service": "other"}) for i in range(200)]
    assert all(r is not None for r in kept)
    assert processor.process({"message": "m", "service": "texts-only"}) is not None


def test_errors_are_always_kept():
    processor, _ = make(RULES)
    for status in ("error", "ERROR", "critical"):
        assert processor.process({"message": "boom", "service": "chat-x", "model": "gpt-4o", "status": status})
    assert processor.process({"message": "boom", "service": "chat-x", "model": "gpt-4o", "levelname": "ERROR"})


def test_the_agent_service_is_matched_when_the_log_has_none():
    cfg = load_config_text(BASE.replace('"agent-svc"', '"chat-agent"') + RULES)
    processor = LogProcessor(cfg, Sampler(cfg.llm.sampling), Scrubber(), Telemetry())
    assert processor.process({"message": "m", "model": "gpt-4o"}) is None


def test_decisions_are_deterministic_per_trace_and_agree_with_the_span_path():
    processor, _ = make(RULES)
    rng = random.Random(1)
    for _ in range(300):
        trace_id = rng.getrandbits(64)
        first = processor.process({"message": "m", "service": "search", "trace_id": str(trace_id)}) is not None
        again = processor.process({"message": "m", "service": "search", "trace_id": str(trace_id)}) is not None
        assert first == again == sampled(trace_id, 0.25)


@pytest.mark.parametrize("with_trace_ids", [True, False])
def test_the_kept_fraction_is_the_rule_rate(with_trace_ids):
    processor, _ = make(RULES)
    rng = random.Random(2)
    n, rate = 20_000, 0.25
    kept = 0
    for _ in range(n):
        record = {"message": "m", "service": "search"}
        if with_trace_ids:
            record["trace_id"] = str(rng.getrandbits(64))
        kept += processor.process(record) is not None
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(kept / n - rate) < 5 * sigma  # fails by chance about once in 3 million runs


@pytest.mark.parametrize(("record", "expected"), [
    ({"trace_id": "123"}, 123),
    ({"trace_id": 123}, 123),
    ({"dd.trace_id": "18446744073709551615"}, 2**64 - 1),
    ({"dd": {"trace_id": "456"}}, 456),
    ({"trace_id": "6756f2c100000000a3ce929d0e0e4736"}, 0xA3CE929D0E0E4736),  # 128-bit, as ddtrace logs it
    ({"trace_id": "a3ce929d0e0e4736"}, 0xA3CE929D0E0E4736),
    ({"trace_id": "not-an-id"}, None),
    ({"trace_id": ""}, None),
    ({}, None),
    ({"trace_id": True}, None),
])
def test_trace_ids_as_apps_write_them(record, expected):
    assert record_trace_id(record) == expected


# ----------------------------------------------------------------------------------- text

def test_text_fields_are_scrubbed_then_truncated():
    processor, telemetry = make("[llm]\nmax_text_chars = 40\n")
    prompt = "mail me at jane@example.com " + "words " * 20
    record = processor.process({"message": "short", "prompt": prompt, "completion": "ok 10.1.2.3"})
    assert record["message"] == "short"
    assert record["prompt"] == truncate_text(prompt.replace("jane@example.com", "[REDACTED:email]"), 40)[0]
    assert len(record["prompt"]) == 40
    assert record["completion"] == "ok [REDACTED:ipv4]"
    assert TRUNCATED_TAG in tags_of(record)
    assert telemetry.component("scrub").get("scrub_matches", rule="email", action="redact", kind="logs") == 1
    assert telemetry.component("logs_processor").get("text_truncated") == 1


def test_a_secret_cut_by_truncation_is_still_scrubbed():
    processor, _ = make("[llm]\nmax_text_chars = 60\n")
    record = processor.process({"message": "a" * 30 + " Bearer abcdefghijklmnopqrstuvwxyz"})
    assert record["message"] == "a" * 30 + " Bearer [REDACTED:…[truncated]"


def test_configured_text_fields_including_dotted_paths_and_nested_values():
    processor, _ = make('[llm]\nmax_text_chars = 24\ntext_fields = ["question", "llm.output", "history"]\n')
    record = processor.process({
        "question": "from a@b.io",
        "llm": {"output": "x" * 50, "model": "m" * 50},
        "history": [{"role": "user", "content": "call 4111 1111 1111 1111"}, "ip 10.0.0.1"],
        "other": "c@d.io " * 10,
    })
    assert record["question"] == "from [REDACTED:email]"
    assert len(record["llm"]["output"]) == 24 and record["llm"]["model"] == "m" * 50
    assert record["history"][0] == {"role": "user", "content": truncate_text("call [REDACTED:credit_card]", 24)[0]}
    assert record["history"][1] == "ip [REDACTED:ipv4]"
    assert record["other"] == "[REDACTED:email] " * 10  # not a text field: scrubbed, not cut
    assert TRUNCATED_TAG in tags_of(record)


def test_non_string_text_fields_are_left_alone():
    processor, _ = make()
    record = processor.process({"message": 42, "prompt": None})
    assert record["message"] == 42 and record["prompt"] is None


# ----------------------------------------------------------------------------------- tags

def test_agent_tags_fill_ddtags_and_hostname_and_service():
    processor, _ = make()
    record = processor.process({"message": "m"})
    assert tags_of(record) == ["env:prod", "service:agent-svc", "version:1.2", "team:ml", "region:eu"]
    assert record["hostname"] == "agent-host"
    assert record["service"] == "agent-svc"


def test_the_logs_own_tags_and_attributes_win():
    processor, _ = make()
    record = processor.process({"message": "m", "ddtags": "env:staging,team:search,custom", "hostname": "app-1",
                                "service": "Chat API"})
    assert tags_of(record) == ["env:staging", "team:search", "custom", "service:chat_api", "version:1.2",
                               "region:eu"]  # the service tag follows the log's service attribute
    assert record["hostname"] == "app-1"
    assert record["service"] == "Chat API"


def test_a_list_of_tags_becomes_the_intake_string():
    processor, _ = make()
    record = processor.process({"message": "m", "ddtags": ["env:dev", "a:b"]})
    assert tags_of(record)[:2] == ["env:dev", "a:b"]
    assert "env:prod" not in tags_of(record)


def test_no_agent_tags_and_no_own_tags_leave_ddtags_out():
    cfg = load_config_text('[agent]\nhostname = "h"\n')
    processor = LogProcessor(cfg, Sampler(cfg.llm.sampling), Scrubber(), Telemetry())
    record = processor.process({"message": "m"})
    assert "ddtags" not in record and "service" not in record and record["hostname"] == "h"


# ----------------------------------------------------------------------------------- reload

def test_reload_swaps_rules_text_limits_and_tags():
    processor, _ = make()
    assert processor.process({"message": "m", "service": "search"}) is not None
    processor.reload(load_config_text(BASE.replace('"prod"', '"canary"') + RULES + """
[llm]
max_text_chars = 20
[[scrub.rules]]
name = "email"
enabled = false
"""))
    assert processor.process({"message": "m", "service": "chat-1", "model": "gpt-4o"}) is None
    record = processor.process({"message": "a@b.io and a long tail of text", "service": "other"})
    assert record["message"] == "a@b.io a…[truncated]"
    assert "env:canary" in tags_of(record)
