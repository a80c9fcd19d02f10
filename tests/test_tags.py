from __future__ import annotations

import pytest

from llmship.config import load_config_text
from llmship.tags import add_missing, agent_default_tags, format_tags, normalize_tag, split_tags

# The cases of TestNormalizeTag in datadog-agent pkg/trace/traceutil/normalize_test.go. Invalid UTF-8
# bytes reach us as surrogate escapes (bytes decoded with errors="surrogateescape").
AGENT_CASES = [
    ("#test_starting_hash", "test_starting_hash"),
    ("TestCAPSandSuch", "testcapsandsuch"),
    ("Test Conversion Of Weird !@#$%^&**() Characters", "test_conversion_of_weird_characters"),
    ("$#weird_starting", "weird_starting"),
    ("allowed:c0l0ns", "allowed:c0l0ns"),
    ("1love", "love"),
    ("ünicöde", "ünicöde"),
    ("ünicöde:metäl", "ünicöde:metäl"),
    ("Data🐨dog🐶 繋がっ⛰てて", "data_dog_繋がっ_てて"),
    (" spaces   ", "spaces"),
    (" #hashtag!@#spaces #__<>#  ", "hashtag_spaces"),
    (":testing", ":testing"),
    ("_foo", "foo"),
    (":::test", ":::test"),
    ("contiguous_____underscores", "contiguous_underscores"),
    ("foo_", "foo"),
    ("\u017fodd_\u017fcase\u017f", "\u017fodd_\u017fcase\u017f"),
    ("", ""),
    (" ", ""),
    ("ok", "ok"),
    ("™Ö™Ö™™Ö™", "ö_ö_ö"),
    ("AlsO:ök", "also:ök"),
    (":still_ok", ":still_ok"),
    ("___trim", "trim"),
    ("12.:trim@", ":trim"),
    ("12.:trim@@", ":trim"),
    ("fun:ky__tag/1", "fun:ky_tag/1"),
    ("fun:ky@tag/2", "fun:ky_tag/2"),
    ("fun:ky@@@tag/3", "fun:ky_tag/3"),
    ("tag:1/2.3", "tag:1/2.3"),
    ("---fun:k####y_ta@#g/1_@@#", "fun:k_y_ta_g/1"),
    ("AlsO:œ#@ö))œk", "also:œ_ö_œk"),
    (b"test\x99\x8faaa".decode("utf-8", "surrogateescape"), "test_aaa"),
    (b"test\x99\x8f".decode("utf-8", "surrogateescape"), "test"),
    ("a" * 888, "a" * 200),
    ("a" + "🐶" * 799 + "b", "a"),  # scanning stops after 400 bytes, so 'b' is never reached
    ("a\ufffd", "a"),
    ("a\ufffd\ufffd", "a"),
    ("a\ufffd\ufffdb", "a_b"),
    ("A" + "0" * 197 + " " + "0" * 12, "a" + "0" * 197 + "_0"),  # the 200-character cut
]


@pytest.mark.parametrize(("raw", "expected"), AGENT_CASES)
def test_normalize_tag_matches_the_agent(raw: str, expected: str) -> None:
    assert normalize_tag(raw) == expected
    assert normalize_tag(raw) == expected  # second call is served from the cache


def test_normalized_tags_are_fixed_points() -> None:
    for raw, expected in AGENT_CASES:
        assert normalize_tag(expected) == expected, raw


def test_split_tags_normalizes_and_deduplicates_in_order() -> None:
    assert split_tags("Env:Prod,,model:GPT-4o,env:prod,#bad,,") == ["env:prod", "model:gpt-4o", "bad"]
    assert split_tags("") == []


def test_format_tags_from_mapping_and_iterable() -> None:
    assert format_tags({"service": "Chat Bot", "env": "prod", "model": None, "x": ""}) == "service:chat_bot,env:prod"
    assert format_tags(["model:gpt-4o", "Model:GPT-4o", "a,b"]) == "model:gpt-4o,a_b"  # "," can't leak


def test_agent_default_tags_and_add_missing() -> None:
    cfg = load_config_text('[agent]\nenv="Prod"\nservice="svc"\nversion="1.2"\ntags=["team:llm", "env:other", "solo"]\n')
    defaults = agent_default_tags(cfg.agent)
    # env/service/version win over a configured tag with the same key
    assert defaults == {"env": "env:prod", "service": "service:svc", "version": "version:1.2", "team": "team:llm",
                        "solo": "solo"}
    assert add_missing(["env:staging", "model:x"], defaults) == [
        "env:staging", "model:x", "service:svc", "version:1.2", "team:llm", "solo"]
