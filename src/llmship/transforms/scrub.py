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
from llmship.transforms.truncate import truncate_text

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
# A scan of a 500-character text costs about 0.4 us, whatever finds the needle (``in``, ``find``, a regex
# that starts with a literal), except a single-character ``in`` (memchr, ten times faster). So one
# function looks for every default rule's trigger, sharing scans ("k" finds both "key" and "sk-") and
# gating each scan on a character it needs that is rare in prose ("K", "S", ":", "@", a digit).

_LOWER_K_HINT = re.compile(r"k(?:ey|(?<=sk)-)")  # "key" (datadog) or "sk-" (openai, anthropic)
_UPPER_K_HINT = re.compile(r"K(?:ey|EY|IA(?<=AKIA))")  # "Key", "KEY" (datadog) or "AKIA" (aws)
_IPV4_HINT = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")  # starts with the literal "."
# Any IPv6 address has a "::" or three full groups between colons ("12:30:45" has not).
_IPV6_HINT = re.compile(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")
_CARD_HINT = re.compile(rb"0000(?:[ -]?0){9,15}")
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else b for b in range(256))
_LOCAL_PART_RUN = re.compile(r"[A-Za-z0-9._%+-]{1,65}\Z")
_HEX_COLON_RUN = re.compile(r"[0-9A-Fa-f:]{1,46}\Z")
# Something every default rule's match contains: "sk-", "AKIA"/"ASIA", "key", "Bearer", "@", ":", a digit
# after a dot, four digits. Written as one character class then assertions, so the engine only stops at
# those few characters; still a scan at every position, so it only pays on short texts, where it replaces
# the triggers' dozen calls with one search.
_ANY_HINT = re.compile(r"[-AyYBb@:.0-9](?:(?<=sk-)|(?<=A)(?=[KS]IA)|(?<=[Kk]ey)|(?<=KEY)|(?<=[Bb])(?=earer)"
                       r"|(?<=[@:])|(?<=\.)(?=\d)|(?<=\d)(?=\d\d\d))")
_SHORT_TEXT = 128
_EVERYWHERE = None  # a rule whose regex must run over the whole text (no start positions known)


def _finds(text: str, needle: str) -> list[int]:
    """Every position of ``needle`` in ``text`` (C-speed substring search)."""
    out = []
    i = text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def _has_card_digits(text: str) -> bool:
    """13+ digits, the first four together: searched in a copy of the text whose digits are all "0",
    where a run of digits is a literal the regex engine skips to in C."""
    return _CARD_HINT.search(text.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_ZERO)) is not None


def _email_starts(text: str) -> list[int]:
    """Each "@" gives one candidate: the start of the run of local-part characters just before it."""
    starts = []
    for at in _finds(text, "@"):
        run = _LOCAL_PART_RUN.search(text, max(0, at - 65), at)
        if run is not None:
            starts.append(run.start())
    return starts


def _ipv6_starts(text: str) -> list[int]:
    """An address can only start where its run of hex digits and colons starts: one candidate a run."""
    starts: list[int] = []
    for hint in _IPV6_HINT.finditer(text):
        run = _HEX_COLON_RUN.search(text, max(0, hint.start() - 45), hint.start() + 1)
        if run is not None and (not starts or run.start() > starts[-1]):
            starts.append(run.start())
    return starts


def _candidates(text: str) -> dict[str, list[int] | None]:
    """The default rules that may match ``text``, each with the positions where a match may start
    (``_EVERYWHERE``: its regex runs over the whole text). Exact: a rule left out cannot match, and a
    match can start nowhere but at the positions given."""
    found: dict[str, list[int] | None] = {}
    keys: list[int] = []
    for m in _LOWER_K_HINT.finditer(text):
        if m.end() - m.start() == 2:  # "sk-"
            found["openai_api_key"] = _EVERYWHERE
        else:
            keys.append(m.start())
    if found and "sk-ant-" in text:
        found["anthropic_api_key"] = _EVERYWHERE
    if "K" in text:  # rare in prose: the second scan is mostly skipped
        upper = []
        for m in _UPPER_K_HINT.finditer(text):
            if text[m.start() + 1] == "I":  # "AKIA"
                found["aws_access_key_id"] = _EVERYWHERE
            else:
                upper.append(m.start())
        if upper:
            keys = sorted(keys + upper)
    if keys:
        found["datadog_api_key"] = keys
    if "aws_access_key_id" not in found and "S" in text and "ASIA" in text:
        found["aws_access_key_id"] = _EVERYWHERE
    if "earer" in text:  # [Bb]earer: the match starts one character before
        if bearer := [i - 1 for i in _finds(text, "earer") if i]:
            found["bearer_token"] = bearer
    if "@" in text:
        if email := _email_starts(text):
            found["email"] = email
    if ":" in text:
        if ipv6 := _ipv6_starts(text):
            found["ipv6"] = ipv6
    # A card starts with an ASCII digit 2-6; an IPv4 address may be written in any script's digits (\d).
    if ("2" in text or "3" in text or "4" in text or "5" in text or "6" in text) and _has_card_digits(text):
        found["credit_card"] = _EVERYWHERE
    if (not text.isascii() or "0" in text or "1" in text or "2" in text or "3" in text or "4" in text
            or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text) and _IPV4_HINT.search(text):
        found["ipv4"] = _EVERYWHERE
    return found


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


# ------------------------------------------------------------------------------------------- cutting
# Text past ``max_chars`` is cut once scrubbed, so only the head that can be kept needs scrubbing; but the
# head must end where scrubbing it alone gives what scrubbing the whole text gives there: where no match
# of any rule can cross, and where every lookaround sees what it sees at the end (or start) of a text.
# A space just after a lower-case letter other than "i n p r y" is such a place:
# - a default rule's match holds a space only after "r" (bearer: "Bearer abc"), a digit (card: "4111 1111")
#   or, in the datadog rule, after "y"/"Y", a quote, ":", "=" or whitespace ('api_key = "..."');
# - the datadog rule's lookbehind reads across a space in "api key", "app key", "application key";
# - a space is no word character, nor any of ". - : [ %" that the other lookarounds look for.
# A replacement lands just before the space when a match ends there, so each must end with a character
# as harmless (the defaults end with "]"; a group reference could bring back anything).
_CUT_AFTER = frozenset("abcdefghjklmoqstuvwxz")
_SAFE_REPLACEMENT_END = frozenset("])}*#!?,;|")
_CUT_SEARCH_CHARS = 64  # how far past the budget a cut is looked for (prose has a space every few characters)
_CUT_MIN_SAVING = 256  # below this, finding a cut costs more than scrubbing the rest (measured: 600 chars, budget 512)


def _cut_point(text: str, start: int) -> int:
    """The first position >= ``start`` where the text can be cut (see above), or -1."""
    end = start + _CUT_SEARCH_CHARS
    space = text.find(" ", start, end)
    while space >= 0:
        if text[space - 1] in _CUT_AFTER:
            return space
        space = text.find(" ", space + 1, end)
    return -1


# ------------------------------------------------------------------------------------------- scrubber


# (name, pattern, replacement, triggered, validate): a plain tuple, unpacked in the hot loop. ``triggered``:
# a default rule with its own regex, whose candidates ``_candidates`` finds; any other regex runs everywhere.
_Rule = tuple[str, re.Pattern, str, bool, Callable[[re.Match], bool] | None]


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
            compiled.append((rule.name, re.compile(rule.regex), rule.replacement, own,
                             _VALIDATORS.get(rule.name) if own else None))
        self._rules = compiled
        self.rule_names = tuple(r[0] for r in compiled)
        self._triggered = any(r[3] for r in compiled)
        # _ANY_HINT covers the default rules only: with any other regex, every text goes through the rules.
        self._short_cut = all(r[3] for r in compiled)
        self._cuttable = self._short_cut and all(r[2][-1:] in _SAFE_REPLACEMENT_END for r in compiled)

    def scrub(self, text: str) -> str:
        if self._short_cut and len(text) <= _SHORT_TEXT and _ANY_HINT.search(text) is None:
            return text
        found = _candidates(text) if self._triggered else {}
        for name, pattern, replacement, triggered, validate in self._rules:
            if not triggered:
                text, n = pattern.subn(replacement, text)
            elif name not in found:
                continue
            elif (starts := found[name]) is _EVERYWHERE and validate is None:
                text, n = pattern.subn(replacement, text)
            else:
                text, n = _sub_at(pattern, replacement, validate, text, starts)
            if n:
                self.telemetry.inc("scrub_matches", n, rule=name)
                if self._triggered:
                    found = _candidates(text)  # the text changed: look again, for the rules after this one
        return text

    def scrub_truncate(self, text: str, max_chars: int) -> tuple[str, bool]:
        """``truncate_text(self.scrub(text), max_chars)``, scrubbing only the head that can be kept when the
        rules allow a safe cut (see above); matches in the rest are not looked for, nor counted."""
        if self._cuttable and len(text) > max_chars + _CUT_MIN_SAVING:
            cut = _cut_point(text, max_chars + 1)
            if cut > 0:
                head = self.scrub(text[:cut])
                if len(head) <= max_chars:  # a long secret shrank to its marker: the rest may be shown
                    head += self.scrub(text[cut:])
                return truncate_text(head, max_chars)
        return truncate_text(self.scrub(text), max_chars)


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
