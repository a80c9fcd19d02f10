"""truncate_text: a character budget that never breaks a user-perceived character."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmship.transforms.truncate import TRUNCATION_MARKER, truncate_text

M = len(TRUNCATION_MARKER)


def test_short_text_is_unchanged():
    assert truncate_text("hello", 16) == ("hello", False)


def test_exactly_at_the_limit_is_unchanged():
    text = "é" * 15 + "😀"  # multi-byte and astral characters count as one character each
    assert truncate_text(text, 16) == (text, False)


def test_one_over_the_limit_is_cut_to_the_limit_with_the_marker():
    text = "a" * 17
    out, cut = truncate_text(text, 16)
    assert cut is True
    assert out == "a" * (16 - M) + TRUNCATION_MARKER
    assert len(out) == 16


def test_emoji_is_never_split():
    text = "ab" + "😀" * 40
    out, cut = truncate_text(text, 20)
    assert cut and out == "ab" + "😀" * (20 - M - 2) + TRUNCATION_MARKER
    out.encode("utf-8")  # valid UTF-8: no half of anything


def test_zwj_family_emoji_is_kept_whole_or_dropped_whole():
    family = "👨\u200d👩\u200d👧\u200d👦"  # 7 code points, one user-perceived character
    for prefix in range(0, 8):
        text = "x" * prefix + family + "y" * 30
        out, cut = truncate_text(text, M + prefix + 4)  # the budget ends inside the family
        body = out[:-M]
        assert cut and out.endswith(TRUNCATION_MARKER)
        assert body == "x" * prefix, body  # the family did not fit: none of it is kept


def test_skin_tone_modifier_and_variation_selector_stay_with_their_base():
    for cluster in ("👍🏽", "❤️"):
        text = "abc" + cluster + "z" * 30
        out, _ = truncate_text(text, M + 4)  # budget ends between the base and its modifier
        assert out == "abc" + TRUNCATION_MARKER


def test_combining_accent_stays_with_its_letter():
    text = "caf" + "e\u0301" + "z" * 30  # e + combining acute
    out, _ = truncate_text(text, M + 4)
    assert out == "caf" + TRUNCATION_MARKER


def test_flags_are_cut_between_pairs_only():
    text = "🇫🇷🇩🇪🇮🇹" + "z" * 30
    out, _ = truncate_text(text, M + 3)  # would end after FR + the first half of DE
    assert out == "🇫🇷" + TRUNCATION_MARKER


def test_crlf_is_not_split():
    text = "abc\r\n" + "z" * 30
    out, _ = truncate_text(text, M + 4)
    assert out == "abc" + TRUNCATION_MARKER


def test_surrogate_pair_from_surrogatepass_decoding_is_not_split():
    text = "ab" + "\ud83d\ude00" + "z" * 30  # an emoji as two surrogates (e.g. decoded with surrogatepass)
    out, _ = truncate_text(text, M + 3)
    assert out == "ab" + TRUNCATION_MARKER


def test_budget_smaller_than_the_marker_cuts_without_marker():
    assert truncate_text("abcdefghijklmnopqrstuvwxyz", 5) == ("abcde", True)
    assert truncate_text("abc", 0) == ("", True)


def test_pathological_combining_run_is_cut_inside_rather_than_emptied():
    text = "a" + "\u0301" * 1000
    out, cut = truncate_text(text, 100)
    assert cut and len(out) == 100 and out.startswith("a\u0301")


@given(st.text(), st.integers(min_value=0, max_value=80))
def test_properties(text, max_chars):
    out, cut = truncate_text(text, max_chars)
    assert len(out) <= max(max_chars, 0) or not cut
    if not cut:
        assert out == text and len(text) <= max_chars
    else:
        body = out[:-M] if out.endswith(TRUNCATION_MARKER) and max_chars > M else out
        assert text.startswith(body)
        out.encode("utf-8")  # hypothesis text has no lone surrogates; neither may the cut create one


@pytest.mark.parametrize("max_chars", [16, 512])
def test_text_at_limit_plus_marker_length_is_not_touched(max_chars):
    text = "z" * max_chars
    assert truncate_text(text, max_chars) == (text, False)
