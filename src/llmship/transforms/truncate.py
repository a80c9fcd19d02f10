"""Cut prompt and completion text to a character budget without breaking what a reader sees.

Python strings are sequences of code points, so a plain slice never splits a UTF-8 byte sequence; what it
can still split is a user-perceived character: a base letter and its combining accents, an emoji built
from several code points (ZWJ sequences, skin-tone modifiers, variation selectors, flag pairs), a CRLF,
or a surrogate pair in a string decoded with ``surrogatepass``. The cut backs off to the start of such a
cluster. This is a cheap approximation of Unicode grapheme segmentation (UAX #29), enough for the
clusters real prompts contain, without a dependency.
"""

from __future__ import annotations

import unicodedata

# Appended where text was cut, so a reader of the span or log sees that something is missing.
TRUNCATION_MARKER = "…[truncated]"

# How far back a cut may move to keep a cluster whole. Real clusters are short (the longest common emoji
# ZWJ sequences are about 10 code points); a pathological run of combining marks ("Zalgo" text) is cut
# inside rather than letting one cluster swallow the whole budget.
_MAX_BACKOFF = 32

_ZWJ = "\u200d"
_EXTENDING_CATEGORIES = frozenset(("Mn", "Me", "Mc"))  # combining marks attach to the previous character


def _extends_previous(ch: str) -> bool:
    """True for a code point that belongs to the cluster of the character before it."""
    cp = ord(ch)
    return (
        ch == _ZWJ
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors (text/emoji presentation)
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags such as England's)
        or 0xE0100 <= cp <= 0xE01EF  # variation selectors supplement
        or 0xDC00 <= cp <= 0xDFFF  # low surrogate: second half of a pair
        or unicodedata.category(ch) in _EXTENDING_CATEGORIES
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF  # two of them make one flag


def _splits_cluster(text: str, cut: int) -> bool:
    """Would ``text[:cut]`` end in the middle of a user-perceived character?"""
    before, after = text[cut - 1], text[cut]
    if _extends_previous(after) or before == _ZWJ or (before == "\r" and after == "\n"):
        return True
    if _is_regional_indicator(before) and _is_regional_indicator(after):
        run = 0  # flags pair up from the start of a run of regional indicators
        i = cut - 1
        while i >= 0 and _is_regional_indicator(text[i]):
            run += 1
            i -= 1
        return run % 2 == 1
    return False


def _safe_cut(text: str, cut: int) -> int:
    """The largest index <= ``cut`` that does not split a cluster (``cut`` < len(text))."""
    pair = text[cut - 1:cut + 1]
    if cut > 0 and pair.isascii() and pair != "\r\n":  # the common case: of ASCII, only CR LF is a cluster
        return cut
    position = cut
    while position > 0 and _splits_cluster(text, position):
        if cut - position >= _MAX_BACKOFF:  # a huge cluster: cut inside it, but never inside a surrogate pair
            return cut - 1 if 0xD800 <= ord(text[cut - 1]) <= 0xDBFF else cut
        position -= 1
    return position


def truncate_text(text: str, max_chars: int) -> tuple[str, bool]:
    """Return ``(text, False)`` when it fits in ``max_chars`` code points, else a shortened copy that ends
    with TRUNCATION_MARKER and ``True``. The result, marker included, is never longer than ``max_chars``;
    when the budget cannot even hold the marker the text is cut without one."""
    if len(text) <= max_chars:
        return text, False
    if max_chars <= len(TRUNCATION_MARKER):
        return text[:_safe_cut(text, max(max_chars, 0))], True
    keep = _safe_cut(text, max_chars - len(TRUNCATION_MARKER))
    return text[:keep] + TRUNCATION_MARKER, True
