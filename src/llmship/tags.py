"""Datadog tag normalization and tag-string helpers shared by the aggregator and the LLM processor.

``normalize_tag`` follows the Datadog Agent's ``NormalizeTag`` (pkg/trace/traceutil/normalize.go), which
applies the backend's rules client-side: lowercase; keep letters, digits, ``: . / -``; every other run of
characters (underscores included) becomes a single ``_``; a tag starts with a letter or ``:`` (anything before
is trimmed); a trailing ``_`` is dropped; at most 200 characters.
Tag strings on the wire are comma-separated ("k:v,k2:v2"), which is why a ``,`` can never survive
normalization inside a tag.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

MAX_TAG_CHARS = 200  # maxTagLength in the Agent's normalize.go; the backend's documented tag limit
# The Agent stops scanning after 2*maxTagLength bytes of mostly-illegal input (normalize.go).
_MAX_SCAN_BYTES = 2 * MAX_TAG_CHARS

# The Agent's isNormalizedASCIITag fast path: already valid tags come back unchanged.
_NORMALIZED_ASCII = re.compile(r"[a-z:](?:[a-z0-9:./-]|_[a-z0-9:./-])*")

# Tags repeat endlessly (the same env/service/model on every metric), so results are cached. The cache is
# bounded: cleared when full, which is cheap next to the work it saves.
_CACHE_MAX = 16384
_cache: dict[str, str] = {}


def normalize_tag(tag: str) -> str:
    """Datadog's tag normalization (the Agent's NormalizeTag); may return "" (drop such a tag)."""
    out = _cache.get(tag)
    if out is None:
        if len(tag) <= MAX_TAG_CHARS and _NORMALIZED_ASCII.fullmatch(tag):
            out = tag
        else:
            out = _normalize_slow(tag)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[tag] = out
    return out


def _utf8_len(ch: str) -> int:
    cp = ord(ch)
    if cp < 0x80 or 0xDC80 <= cp <= 0xDCFF:  # a surrogate-escaped byte stands for one invalid byte
        return 1
    return 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def _normalize_slow(tag: str) -> str:
    out: list[str] = []
    chars = 0  # characters kept or replaced, as counted by the Agent (trimmed leading ones do not count)
    scanned = 0  # bytes scanned, as the Agent counts them
    in_cut = False  # the last output character is the "_" standing for a run of illegal characters
    for ch in tag:
        scanned += _utf8_len(ch)
        if "a" <= ch <= "z" or ch == ":":
            out.append(ch)
            chars += 1
            in_cut = False
        elif "A" <= ch <= "Z":
            out.append(chr(ord(ch) + 32))
            chars += 1
            in_cut = False
        else:
            if unicodedata.category(ch) == "Lu":
                low = ch.lower()
                # like Go's unicode.ToLower, only when it stays one character of the same UTF-8 width
                if len(low) == 1 and _utf8_len(low) == _utf8_len(ch):
                    ch = low
            if ch.isalpha():
                out.append(ch)
                chars += 1
                in_cut = False
            elif chars == 0:
                pass  # cannot start a tag: trimmed
            elif ch.isdecimal() or ch in "./-":
                out.append(ch)
                chars += 1
                in_cut = False
            else:
                chars += 1
                if not in_cut:
                    out.append("_")
                    in_cut = True
        if scanned >= _MAX_SCAN_BYTES or chars >= MAX_TAG_CHARS:
            break
    if in_cut:
        out.pop()  # a run of illegal characters at the end is dropped, not replaced
    return "".join(out)


def tag_key(tag: str) -> str:
    """The key of "key:value" (the whole tag when it has no value)."""
    return tag.partition(":")[0]


def split_tags(raw: str) -> list[str]:
    """Normalized, de-duplicated tags of a raw comma-separated tag string, in first-seen order."""
    seen: dict[str, None] = {}
    for part in raw.split(","):
        if part:
            tag = normalize_tag(part)
            if tag:
                seen[tag] = None
    return list(seen)


def format_tags(tags: Mapping[str, object] | Iterable[str]) -> str:
    """A wire tag string "k:v,k2:v2" from a mapping (None/"" values skipped) or an iterable of tags.

    Every tag is normalized, so the result is safe to pass as ``Aggregator.add(tags=...)``.
    """
    if isinstance(tags, Mapping):
        parts = (f"{k}:{v}" for k, v in tags.items() if v is not None and v != "")
    else:
        parts = iter(tags)
    seen: dict[str, None] = {}
    for part in parts:
        tag = normalize_tag(part)
        if tag:
            seen[tag] = None
    return ",".join(seen)


def agent_default_tags(agent) -> dict[str, str]:
    """The agent's ``env``, ``service``, ``version`` and configured ``tags`` (cfg.agent), normalized and
    keyed by tag key: added to every metric, event and service check that lacks that key."""
    defaults: dict[str, str] = {}
    for key in ("env", "service", "version"):
        value = getattr(agent, key)
        tag = normalize_tag(f"{key}:{value}") if value else ""
        if tag:
            defaults[tag_key(tag)] = tag
    for raw in agent.tags:
        tag = normalize_tag(raw)
        if tag:
            defaults.setdefault(tag_key(tag), tag)
    return defaults


def add_missing(tags: list[str], defaults: Mapping[str, str]) -> list[str]:
    """``tags`` plus each default whose key none of them has (in place, and returned)."""
    if defaults:
        present = {tag_key(t) for t in tags}
        tags.extend(t for k, t in defaults.items() if k not in present)
    return tags
