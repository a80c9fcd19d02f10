"""Scrubbing of secrets and personal data from prompt/completion text, before truncation and shipping.

It runs on every prompt and completion (sample logs and span text), so it must be cheap on text that
holds nothing to scrub, which is nearly all text. Python's regex engine scans fast only for a pattern
that starts with a literal (it then skips to that literal in C, about 1 ns a character); a pattern that
starts with a character class is tried at every position, some 10 times slower. So a default rule never
runs its regex over clean text: each carries a *trigger*, a necessary condition that C code checks with
substring searches, and either

- ``prefilter(text) -> bool``: the rule's regex runs over the whole text only when it says yes (for
  rules whose triggers are rare in ordinary text: "sk-", "AKIA", 13 digits in a row), or
- ``starts(text) -> positions``: where a match could start, found from a literal (an "@", "key",
  "bearer"), so the regex is only tried there (``pattern.match``), for triggers common in prose.

Both are exact: they never rule out a position where the rule's regex would match, so results equal
``pattern.sub`` over the whole text. Every regex is linear in its input (lookbehinds pin a match to
the start of a run), so a 256 kB line of one long word cannot make a rule quadratic.

Rules apply in order, each to the output of the one before. A user rule ``[[scrub.rules]]`` whose name
is a default rule's name replaces it in place (an empty regex keeps the default's regex, so only the
replacement or ``enabled`` changes); ``enabled = false`` disables it; other user rules run after the
defaults, with no trigger (their regex runs over every text).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from llmship.config import ScrubRule
from llmship.telemetry import Component

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"

DEFAULT_RULES: tuple[ScrubRule, ...] = (
    # Anthropic: "sk-ant-api03-..." / "sk-ant-admin01-..." then 90+ URL-safe characters.
    ScrubRule("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_-]{32,}", "[REDACTED:anthropic_api_key]"),
    # OpenAI: "sk-", "sk-proj-", "sk-svcacct-", "sk-admin-" then 48+ URL-safe characters. Requiring a digit
    # and 32+ characters keeps hyphenated words ("sk-learn-compatible") out.
    ScrubRule("openai_api_key", r"\bsk-(?=[A-Za-z0-9_-]{0,300}\d)[A-Za-z0-9_-]{32,}", "[REDACTED:openai_api_key]"),
    # AWS access key ids: "AKIA" (long-term) or "ASIA" (temporary) then 16 base32 upper-case characters.
    ScrubRule("aws_access_key_id", r"\b(?:AKIA|ASIA)[A-Z2-7]{16}\b", "[REDACTED:aws_access_key_id]"),
    # A Datadog API key is 32 hex digits (an application key 40): alone it looks like an MD5 sum or a W3C
    # trace id, so it is only scrubbed after "api key"/"app key" words: DD_API_KEY=, "DD-API-KEY: ",
    # "apiKey": ", "dd_app_key=". The match starts at "key" so that literal can find its candidates.
    ScrubRule("datadog_api_key",
              r"(?:(?<=api|Api|API|app|App|APP)|(?<=(?:api|Api|API|app|App|APP)[-_. ])"
              r"|(?<=ication[-_. ])|(?<=ICATION[-_. ]))"
              r"((?:key|Key|KEY)[\"']?\s{0,3}[:=]?\s{0,3}[\"']?)[0-9a-f]{32}(?:[0-9a-f]{8})?\b",
              r"\1[REDACTED:datadog_api_key]"),
    # "Authorization: Bearer <token>" in any of its usual spellings; the word is kept.
    ScrubRule("bearer_token", r"\b([Bb]earer)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*",
              r"\1 [REDACTED:bearer_token]"),
    # The lookbehind pins the match to the start of the run of local-part characters: linear, and
    # exactly the run before the "@" (at most 64 characters: RFC 5321).
    ScrubRule("email", r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                       r"\.[A-Za-z]{2,63}\b", "[REDACTED:email]"),
    # 13-19 digits starting with an issuer digit 2-6 (Mastercard 2-series, Amex/Diners/JCB, Visa,
    # Mastercard, Discover/UnionPay), the first four together (as every card is printed), then single
    # spaces or dashes between digits; Luhn-checked before it counts as a match.
    ScrubRule("credit_card", r"(?<![\d.-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d]|[.-]\d)", "[REDACTED:credit_card]"),
    # Word characters or colons on either side mean code ("Class::method"), a MAC or a time, not an address;
    # so does a word just before a "[" (a slice, a[::2]; but [::1]:443 is an address).
    ScrubRule("ipv6", (
        r"(?<![\w:.])(?<!\w\[)(?:"
        rf"(?:{_H}:){{6}}{_IPV4}|(?:{_H}:){{1,5}}:{_IPV4}|::(?:ffff(?::0{{1,4}})?:)?{_IPV4}"  # embedded IPv4
        rf"|(?:{_H}:){{7}}{_H}"  # the full form
        rf"|(?:{_H}:){{1,6}}:{_H}(?::{_H}){{0,5}}"  # "::" in the middle
        rf"|(?:{_H}:){{1,7}}:"  # "::" at the end (2001:db8::)
        rf"|::{_H}(?::{_H}){{0,6}}"  # "::" at the start (::1)
        r")(?:%[0-9A-Za-z]+)?(?![\w:])"  # optional zone index (fe80::1%eth0)
    ), "[REDACTED:ipv6]"),
    # Not part of a longer dotted number ("1.2.3.4.5" is a version, not an address).
    ScrubRule("ipv4", rf"(?<![\w.]){_IPV4}(?!\w|\.\d)", "[REDACTED:ipv4]"),
)


# ------------------------------------------------------------------------------------------- triggers
# Each scan of a 2 kB text costs about 1 us, whatever finds the needle, except a single-character
# ``in`` (memchr, 20 times faster): so triggers share scans through ``memo`` (reset when a rule changes
# the text) and gate on a single character where one is necessary.


def _finds(text: str, needle: str) -> list[int]:
    """Every position of ``needle`` in ``text`` (C-speed substring search)."""
    out = []
    i = text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else b for b in range(256))


def _has_sk(text: str, memo: dict) -> bool:
    found = memo.get("sk-")
    if found is None:
        found = memo["sk-"] = "sk-" in text
    return found


def _has_card_digits(text: str, memo: dict) -> bool:
    """13+ digits, the first four together: searched in a copy of the text whose digits are all "0",
    where a run of digits is a literal the regex engine skips to in C."""
    view = text.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_ZERO)
    return _CARD_HINT.search(view) is not None


_AWS_HINT = re.compile(r"A[KS]IA")
# Something every default rule's match contains: "sk-", "AKIA"/"ASIA", "key", "Bearer", "@", ":", a digit
# after a dot, four digits. Written as one character class then assertions, so the engine only stops at
# those few characters; still a scan at every position, so it only pays on short texts, where it replaces
# the nine triggers' call overhead with one search.
_ANY_HINT = re.compile(r"[-AyYBb@:.0-9](?:(?<=sk-)|(?<=A)(?=[KS]IA)|(?<=[Kk]ey)|(?<=KEY)|(?<=[Bb])(?=earer)"
                       r"|(?<=[@:])|(?<=\.)(?=\d)|(?<=\d)(?=\d\d\d))")
_SHORT_TEXT = 128
_CARD_HINT = re.compile(rb"0000(?:[ -]?0){9,15}")
_IPV4_HINT = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")  # starts with the literal "."
# Any IPv6 address has a "::" or three full groups between colons ("12:30:45" has not).
_IPV6_HINT = re.compile(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")
_KEY_HINTS = (re.compile(r"y(?<=[Kk]ey)"), re.compile(r"Y(?<=KEY)"))  # single-character literal starts
_LOCAL_PART_RUN = re.compile(r"[A-Za-z0-9._%+-]{1,65}\Z")
_HEX_COLON_RUN = re.compile(r"[0-9A-Fa-f:]{1,46}\Z")


def _key_starts(text: str, memo: dict) -> list[int]:
    lower, upper = _KEY_HINTS
    with_upper = "Y" in text  # memchr: an upper-case Y is rare in prose, so its scan is mostly skipped
    if lower.search(text) is None and (not with_upper or upper.search(text) is None):
        return []  # the common case, without allocations
    hints = _KEY_HINTS if with_upper else (lower,)
    return sorted(m.start() - 2 for hint in hints for m in hint.finditer(text))


def _bearer_starts(text: str, memo: dict) -> list[int]:
    if "earer" not in text:
        return []
    return [i - 1 for i in _finds(text, "earer") if i]


def _email_starts(text: str, memo: dict) -> list[int]:
    """Each "@" gives one candidate: the start of the run of local-part characters just before it."""
    if "@" not in text:
        return []
    starts = []
    for at in _finds(text, "@"):
        run = _LOCAL_PART_RUN.search(text, max(0, at - 65), at)
        if run is not None:
            starts.append(run.start())
    return starts


def _ipv6_starts(text: str, memo: dict) -> list[int]:
    """An address can only start where its run of hex digits and colons starts: one candidate a run."""
    if ":" not in text:
        return []
    starts: list[int] = []
    for hint in _IPV6_HINT.finditer(text):
        run = _HEX_COLON_RUN.search(text, max(0, hint.start() - 45), hint.start() + 1)
        if run is not None and (not starts or run.start() > starts[-1]):
            starts.append(run.start())
    return starts


_PREFILTERS: dict[str, Callable[[str, dict], bool]] = {
    "anthropic_api_key": lambda t, memo: _has_sk(t, memo) and "sk-ant-" in t,
    "openai_api_key": _has_sk,
    "aws_access_key_id": lambda t, memo: _AWS_HINT.search(t) is not None,
    "credit_card": _has_card_digits,
    "ipv4": lambda t, memo: _IPV4_HINT.search(t) is not None,
}

_STARTS: dict[str, Callable[[str, dict], list[int]]] = {
    "datadog_api_key": _key_starts,
    "bearer_token": _bearer_starts,
    "email": _email_starts,
    "ipv6": _ipv6_starts,
}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Matches of these rules must also pass a check before they are replaced (and counted).
_VALIDATORS: dict[str, Callable[[re.Match], bool]] = {
    "credit_card": lambda m: luhn_valid(m.group(0).replace(" ", "").replace("-", "")),
}


# ------------------------------------------------------------------------------------------- scrubber


# (name, pattern, replacement, prefilter, starts, validate): a plain tuple, unpacked in the hot loop
_Rule = tuple[str, re.Pattern, str, Callable[[str, dict], bool] | None, Callable[[str, dict], list[int]] | None,
              Callable[[re.Match], bool] | None]


def effective_rules(user_rules: tuple[ScrubRule, ...],
                    defaults: tuple[ScrubRule, ...] = DEFAULT_RULES) -> list[ScrubRule]:
    """The defaults with user overrides applied in place, then the user's own rules; enabled ones only.

    Raises ValueError for a user rule with no regex that names no default rule (nothing to apply)."""
    overrides = {r.name: r for r in user_rules}
    merged: list[ScrubRule] = []
    for default in defaults:
        rule = overrides.pop(default.name, default)
        if not rule.regex:  # an override of the replacement or of enabled only
            rule = ScrubRule(default.name, default.regex, rule.replacement, rule.enabled)
        merged.append(rule)
    for rule in user_rules:
        if rule.name not in overrides:
            continue  # a default's override, already placed
        if not rule.regex:
            raise ValueError(f"scrub rule {rule.name!r} has no regex and names no default rule")
        merged.append(rule)
    return [r for r in merged if r.enabled]


class Scrubber:
    """``scrub(text)`` replaces every match of every enabled rule and counts ``scrub_matches{rule=...}``."""

    def __init__(self, rules: tuple[ScrubRule, ...] = (), telemetry_component: Component | None = None, *,
                 defaults: tuple[ScrubRule, ...] = DEFAULT_RULES) -> None:
        self.telemetry = telemetry_component if telemetry_component is not None else Component("scrub")
        self._defaults = defaults
        self.reload(rules)

    def reload(self, rules: tuple[ScrubRule, ...]) -> None:
        """Swap in new user rules; everyone holding this scrubber (or its ``scrub``) sees them."""
        default_regex = {r.name: r.regex for r in self._defaults}
        compiled: list[_Rule] = []
        for rule in effective_rules(rules, self._defaults):
            # A default's triggers are written for its regex: a replaced regex runs everywhere.
            own = default_regex.get(rule.name) == rule.regex
            compiled.append((rule.name, re.compile(rule.regex), rule.replacement,
                             _PREFILTERS.get(rule.name) if own else None,
                             _STARTS.get(rule.name) if own else None,
                             _VALIDATORS.get(rule.name) if own else None))
        self._rules = compiled
        self.rule_names = tuple(r[0] for r in compiled)
        # _ANY_HINT covers the default rules only: with any other regex, every text goes through the rules.
        self._short_cut = all(r[3] is not None or r[4] is not None for r in compiled)

    def scrub(self, text: str) -> str:
        if self._short_cut and len(text) <= _SHORT_TEXT and _ANY_HINT.search(text) is None:
            return text
        memo: dict = {}  # scans shared between triggers, valid while the text is unchanged
        for name, pattern, replacement, prefilter, starts, validate in self._rules:
            if starts is not None:
                positions = starts(text, memo)
                if not positions:
                    continue
                text, n = _sub_at(pattern, replacement, validate, text, positions)
            elif prefilter is not None and not prefilter(text, memo):
                continue
            elif validate is not None:
                text, n = _sub_at(pattern, replacement, validate, text, None)
            else:
                text, n = pattern.subn(replacement, text)
            if n:
                self.telemetry.inc("scrub_matches", n, rule=name)
                memo = {}
        return text


def _sub_at(pattern: re.Pattern, replacement: str, validate: Callable[[re.Match], bool] | None, text: str,
            starts: list[int] | None) -> tuple[str, int]:
    """Like ``pattern.subn`` (leftmost, non-overlapping), trying only ``starts`` (None: everywhere), and
    keeping matches that fail ``validate``."""
    matches = pattern.finditer(text) if starts is None else (pattern.match(text, s) for s in starts)
    pieces: list[str] = []
    end = 0
    for m in matches:
        if m is None or m.start() < end:
            continue
        if validate is not None and not validate(m):
            continue
        pieces.append(text[end:m.start()])
        pieces.append(m.expand(replacement))
        end = m.end()
    if not pieces:
        return text, 0
    pieces.append(text[end:])
    return "".join(pieces), len(pieces) // 2
