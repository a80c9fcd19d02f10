"""Scrubbing of secrets and personal data from prompt/completion text, before truncation and shipping.

It runs on every prompt and completion (sample logs and span text), so it must be cheap on text that holds
nothing to scrub, which is nearly all text, and every rule must run in time linear in the text (a
backtracking pattern such as ``(a+)+$`` takes seconds on a 29-byte line and would stall every listener).

Every regex here is lookaround-free, so RE2 and Hyperscan can run it (tests compile each one in RE2).
What used to be a lookaround is now context that the regex consumes around a group named ``secret``:
only that group is replaced, the characters around it stay, and the next match may use them as context
again (see ``_sub``). A default rule runs in Python ``re`` only where a match can start; every default is
written without nested ambiguous repetition, so backtracking stays linear.

Finding where a default rule's match can start: each default has a *head*, a short literal-like pattern
every match of the rule contains, and a function from a head's end to the few positions where a match
holding that head can start (``_HEADS``). Two engines find the heads and give the same results:

- ``hyperscan``: one Hyperscan database holds every head and every user rule (in prefilter mode) and
  finds them all in one native pass over the text;
- ``python``, the twin: substring searches in C, gated on characters that are rare in prose
  (``_candidates``); some rules there run their regex over the whole text once a trigger is seen.

Hyperscan is used when it imports and ``LLMSHIP_NO_EXTENSIONS=1`` is not set; ``Scrubber(engine=...)``
chooses explicitly (the tests run both).

User rules, and defaults whose regex the user replaced, run in RE2 (google-re2), linear in the text by
construction; ``llmship validate`` rejects a regex RE2 cannot compile (backreferences, lookarounds).
Their ``replacement`` keeps Python ``re`` template syntax (``\\1``, ``\\g<name>``, ``\\n``). A group named
``secret`` works there too: only it is replaced.

Rules apply in order, each to the output of the one before. A user rule ``[[scrub.rules]]`` whose name
is a default rule's name replaces it in place (an empty regex keeps the default's regex, so only the
replacement or ``enabled`` changes); ``enabled = false`` disables it; other user rules run after the
defaults.

Actions (``ScrubRule.action``): "redact" replaces each match as above; "hash" replaces the rule's marker
with ``[HASHED:<name>:<12 hex>]``, the first 12 hex digits of HMAC-SHA256(hash key, secret), where the
secret is the replaced text less the groups the replacement keeps (the "Bearer" word, the "api_key="
prefix) and surrounding spaces: the same value gives the same marker under one key, and nothing without
it; "drop_field" makes ``scrub_value`` answer None when the rule matches, and the caller removes the whole
field. Every match is counted as ``scrub_matches{rule, action, kind}``, kind being llmobs, logs or spans.

Many short strings (an APM span's meta values and resource) are looked at in one Hyperscan scan of their
concatenation (``scrub_many``), and only those where a rule may match are scrubbed one by one; so are a log
record's text fields, each up to where it is cut (``scrub_truncate_many``).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Iterable

from llmship import no_extensions
from llmship.config import ScrubRule
from llmship.telemetry import Component
from llmship.transforms.truncate import truncate_text

try:
    import hyperscan

    from llmship.transforms import hs_compile
    from llmship.transforms.hs_compile import compile_databases
except ImportError:  # no wheel for this platform: the Python twin runs
    hyperscan = None

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"

DEFAULT_RULES: tuple[ScrubRule, ...] = (
    # Anthropic: "sk-ant-api03-..." / "sk-ant-admin01-..." then 90+ URL-safe characters.
    ScrubRule("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_-]{32,}", "[REDACTED:anthropic_api_key]"),
    # OpenAI: "sk-", "sk-proj-", "sk-svcacct-", "sk-admin-" then 48+ URL-safe characters. A digit among the
    # first 301 (bounded: linear) and 32+ characters (``_VALIDATORS``) keep hyphenated words out
    # ("sk-learn-compatible").
    ScrubRule("openai_api_key", r"\bsk-[A-Za-z_-]{0,300}[0-9][A-Za-z0-9_-]*", "[REDACTED:openai_api_key]"),
    # AWS access key ids: "AKIA" (long-term) or "ASIA" (temporary) then 16 base32 upper-case characters.
    ScrubRule("aws_access_key_id", r"\b(?:AKIA|ASIA)[A-Z2-7]{16}\b", "[REDACTED:aws_access_key_id]"),
    # A Datadog API key is 32 hex digits (an application key 40): alone it looks like an MD5 sum or a W3C
    # trace id, so it is only scrubbed after "api key"/"app key" words: DD_API_KEY=, "DD-API-KEY: ",
    # "apiKey": ", "dd_app_key=". Group 1, kept, is everything before the key.
    ScrubRule("datadog_api_key",
              r"((?:(?:api|Api|API|app|App|APP)[-_. ]?|(?:ication|ICATION)[-_. ])(?:key|Key|KEY)"
              r"[\"']?\s{0,3}[:=]?\s{0,3}[\"']?)[0-9a-f]{32}(?:[0-9a-f]{8})?\b",
              r"\1[REDACTED:datadog_api_key]"),
    # "Authorization: Bearer <token>" in any of its usual spellings; the word is kept.
    ScrubRule("bearer_token", r"\b([Bb]earer)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*",
              r"\1 [REDACTED:bearer_token]"),
    # The whole run of local-part characters before the "@", at most 64 (RFC 5321 4.5.3.1.1): the
    # character before it is context (not a local-part character).
    ScrubRule("email", r"(?:^|[^A-Za-z0-9._%+-])(?P<secret>[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+"
                       r"(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}\b)", "[REDACTED:email]"),
    # 13-19 digits starting with an issuer digit 2-6 (Mastercard 2-series, Amex/Diners/JCB, Visa,
    # Mastercard, Discover/UnionPay), the first four together (as every card is printed), then single
    # spaces or dashes between digits, not inside a longer number or a decimal; Luhn-checked. Digits are ASCII
    # digits, here and in every rule (RE2, Hyperscan and the Luhn check know no others).
    ScrubRule("credit_card", r"(?:^|[^0-9.-])(?P<secret>[2-6][0-9]{3}(?:[ -]?[0-9]){9,15})"
                             r"(?:$|[^0-9.-]|[.-](?:$|[^0-9]))", "[REDACTED:credit_card]"),
    # Word characters or colons on either side mean code ("Class::method"), a MAC or a time, not an address;
    # so does a word just before a "[" (a slice, a[::2]; but [::1]:443 is an address).
    ScrubRule("ipv6", (
        r"(?:^|[^\w:.\[]|(?:^|\W)\[)(?P<secret>(?:"
        rf"(?:{_H}:){{6}}{_IPV4}|(?:{_H}:){{1,5}}:{_IPV4}|::(?:ffff(?::0{{1,4}})?:)?{_IPV4}"  # embedded IPv4
        rf"|(?:{_H}:){{7}}{_H}"  # the full form
        rf"|(?:{_H}:){{1,6}}:{_H}(?::{_H}){{0,5}}"  # "::" in the middle
        rf"|(?:{_H}:){{1,7}}:"  # "::" at the end (2001:db8::)
        rf"|::{_H}(?::{_H}){{0,6}}"  # "::" at the start (::1)
        r")(?:%[0-9A-Za-z]+)?)(?:$|[^\w:])"  # optional zone index (fe80::1%eth0)
    ), "[REDACTED:ipv6]"),
    # Not part of a longer dotted number ("1.2.3.4.5" is a version, not an address).
    ScrubRule("ipv4", rf"(?:^|[^\w.])(?P<secret>{_IPV4})(?:$|[^\w.]|\.(?:$|[^0-9]))", "[REDACTED:ipv4]"),
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Matches of these rules must also pass a check before they are replaced (and counted); a match that fails
# is passed over whole, as ``re.sub`` with a function would.
_VALIDATORS: dict[str, Callable[[re.Match], bool]] = {
    "credit_card": lambda m: luhn_valid(m.group("secret").replace(" ", "").replace("-", "")),
    "openai_api_key": lambda m: m.end() - m.start() >= 35,  # "sk-" and 32+
}


# ------------------------------------------------------------------------------------------- heads
# From a head's end to where a match holding it may start. A start is where the regex starts, context
# included: one character before the secret (or 0, where "^" stands for that character), two for ipv6's
# "x[" context.

_LOCAL_PART_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
_HEX_COLON_CHARS = "0123456789ABCDEFabcdef:"


def _run_start(text: str, end: int, chars: str, longest: int) -> int:
    """Where the run of ``chars`` ending at ``end`` starts, looking back at most ``longest`` characters
    (``rstrip`` runs in C)."""
    window = text[max(0, end - longest):end]
    return end - (len(window) - len(window.rstrip(chars)))


def _before(secret_start: int) -> int:
    return secret_start - 1 if secret_start else 0


def _email_starts(text: str, end: int) -> tuple[int, ...]:
    """The "@" ends at ``end``: the run of local-part characters before it is the only candidate. A run
    longer than 64 characters holds no local part and is cut at 65, where the context then fails."""
    at = end - 1
    start = _run_start(text, at, _LOCAL_PART_CHARS, 65)
    return (_before(start),) if start < at else ()


def _ipv6_starts(text: str, end: int) -> tuple[int, ...]:
    """An address starts where the run of hex digits and colons holding its head starts (its context
    forbids either before it). A head lies inside the address, which is at most 45 characters (8 groups,
    or 6 and an IPv4): the run starts at most 60 characters before the head's end (heads are at most 16
    long, and the twin's first one in a run starts within the address); a longer run is cut there, where
    the context then fails. The context is one character, or two ("x[")."""
    start = _run_start(text, end, _HEX_COLON_CHARS, 60)
    return (start - 2, start - 1) if start > 1 else (0,)


def _ipv4_starts(text: str, end: int) -> tuple[int, ...]:
    """Likewise: an IPv4 address is at most 15 characters and its head ends by the 13th."""
    return (_before(_run_start(text, end, "0123456789.", 16)),)


def _datadog_starts(key: int) -> tuple[int, ...]:
    """The prefix ("ication_", "api_", "api") starts 8, 4 or 3 characters before "key"."""
    return tuple(s for s in (key - 8, key - 4, key - 3) if s >= 0)


def _card_starts(text: str, end: int) -> list[int]:
    """The head is a card's first 13 digits (13 to 22 characters): its first digit is a 2-6 in that span."""
    return [_before(p) for p in range(max(0, end - 22), end - 12) if text[p] in "23456"]


# Any IPv6 address has a "::" or three full groups between colons ("12:30:45" has not).
_IPV6_HEAD = r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)"
_KEY_HEAD = r"(?:api|Api|API|app|App|APP)[-_. ]?(?:key|Key|KEY)|(?:ication|ICATION)[-_. ](?:key|Key|KEY)"

# name: (head, starts(text, head_end)). Heads are ASCII, so a byte offset in UTF-8 after one is a character
# boundary, and every match of the rule holds one.
_HEADS: dict[str, tuple[str, Callable[[str, int], Iterable[int]]]] = {
    "anthropic_api_key": ("sk-ant-", lambda text, end: (end - 7,)),
    "openai_api_key": ("sk-", lambda text, end: (end - 3,)),
    "aws_access_key_id": ("AKIA|ASIA", lambda text, end: (end - 4,)),
    "datadog_api_key": (_KEY_HEAD, lambda text, end: _datadog_starts(end - 3)),
    "bearer_token": ("[Bb]earer", lambda text, end: (end - 6,)),
    "email": ("@", _email_starts),
    "credit_card": ("[2-6][0-9]{3}(?:[ -]?[0-9]){9}", _card_starts),
    "ipv6": (_IPV6_HEAD, _ipv6_starts),
    "ipv4": (r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]", _ipv4_starts),
}


# ------------------------------------------------------------------------------------------- the twin
# A scan of a 500-character text costs about 0.4 us, whatever finds the needle (``in``, ``find``, a regex
# that starts with a literal), except a single-character ``in`` (memchr, ten times faster). So one
# function looks for every default rule's trigger, sharing scans ("k" finds both "key" and "sk-") and
# gating each scan on a character it needs that is rare in prose ("K", "S", ":", "@", a digit).

_LOWER_K_HINT = re.compile(r"k(?:ey|(?<=sk)-)")  # "key" (datadog) or "sk-" (openai, anthropic)
_UPPER_K_HINT = re.compile(r"K(?:ey|EY|IA(?<=AKIA))")  # "Key", "KEY" (datadog) or "AKIA" (aws)
_IPV4_HINT = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")  # starts with the literal "."; ends as the head does
_IPV6_HINT = re.compile(_IPV6_HEAD)
_CARD_HINT = re.compile(rb"0000(?:[ -]?0){9,15}")
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else b for b in range(256))
# Something every default rule's match contains: "sk-", "AKIA"/"ASIA", "key", "Bearer", "@", ":", a digit
# after a dot, four digits. Written as one character class then assertions, so the engine only stops at
# those few characters; still a scan at every position, so it only pays on short texts, where it replaces
# the triggers' dozen calls with one search.
HINT_CHARS = "-AyYBb@:.0123456789"  # the class _ANY_HINT starts with: a text holding none of them cannot match
_ANY_HINT = re.compile(f"[{re.escape(HINT_CHARS)}]"
                       r"(?:(?<=sk-)|(?<=A)(?=[KS]IA)|(?<=[Kk]ey)|(?<=KEY)|(?<=[Bb])(?=earer)"
                       r"|(?<=[@:])|(?<=\.)(?=[0-9])|(?<=[0-9])(?=[0-9][0-9][0-9]))")
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
        for m in _UPPER_K_HINT.finditer(text):
            if text[m.start() + 1] == "I":  # "AKIA"
                found["aws_access_key_id"] = _EVERYWHERE
            else:
                keys.append(m.start())
    if keys:
        found["datadog_api_key"] = sorted({s for k in keys for s in _datadog_starts(k)})
    if "aws_access_key_id" not in found and "S" in text and "ASIA" in text:
        found["aws_access_key_id"] = _EVERYWHERE
    if "earer" in text:  # [Bb]earer: the match starts one character before
        if bearer := [i - 1 for i in _finds(text, "earer") if i]:
            found["bearer_token"] = bearer
    if "@" in text:
        if email := [s for at in _finds(text, "@") for s in _email_starts(text, at + 1)]:
            found["email"] = email
    if ":" in text:
        if ipv6 := sorted({s for m in _IPV6_HINT.finditer(text) for s in _ipv6_starts(text, m.end())}):
            found["ipv6"] = ipv6
    if ("2" in text or "3" in text or "4" in text or "5" in text or "6" in text) and _has_card_digits(text):
        found["credit_card"] = _EVERYWHERE
    if "." in text and ("0" in text or "1" in text or "2" in text or "3" in text or "4" in text
                        or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text):
        if ipv4 := sorted({s for m in _IPV4_HINT.finditer(text) for s in _ipv4_starts(text, m.end())}):
            found["ipv4"] = ipv4
    return found


# ------------------------------------------------------------------------------------------- hyperscan

def _on_match(rule_id: int, start: int, end: int, flags: int, hits: list) -> None:
    hits.append((end, rule_id))


def _on_match_end(rule_id: int, start: int, end: int, flags: int, ends: list) -> None:
    ends.append(end)


def _no_matches(data: bytes) -> list[int]:
    return []


class _Hyperscan:
    """Two block-mode databases (``_specs``): every default rule's head (exact) and every user rule in
    prefilter mode (a superset of its matches; only whether it may match is used; UTF-8 mode, where
    Hyperscan's classes and case folding are RE2's or wider; the tests compare both on non-ASCII text). A
    scratch per thread: Hyperscan's scratch space must not be shared by concurrent scans. Built through
    ``_hyperscan`` (cached: compiling the defaults' takes a quarter of a second in a child process,
    hs_compile, most of it the card's head)."""

    def __init__(self, heads: tuple[tuple[str, str], ...], user: tuple[tuple[str, str], ...]) -> None:
        # Both databases, and each user rule alone (can Hyperscan prefilter it?), in one child process
        # (hs_compile: this process never holds the compiler); again without the rules it cannot take.
        prefilter = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_UTF8
        probes = [([regex.encode()], [prefilter | hyperscan.HS_FLAG_SINGLEMATCH]) for _, regex in user]
        self._unscanned: set[str] = set()  # user rules Hyperscan cannot prefilter: they run on every text
        compiled = compile_databases(probes + self._specs(heads, user, prefilter))
        databases = compiled[len(probes):]
        failed = {name for (name, _), db in zip(user, compiled) if db is None}
        if failed:
            self._unscanned = failed
            databases = compile_databases(self._specs(heads, user, prefilter))
        self._db, self._many_db = databases  # None: nothing to scan for (Hyperscan refuses an empty database)
        self._user = {name for name, _ in user}
        self._local = threading.local()

    def _specs(self, heads, user, prefilter: int) -> list[tuple[list[bytes], list[int]]]:
        """The two databases, for the user rules Hyperscan can prefilter (not in ``_unscanned``), and what
        reading their matches needs (``_names``, ``_starts``, ``_many_all``, ``_many_anchored``).

        The first is scanned text by text: every default rule's head (exact) and every user rule in
        prefilter mode, single-match. The second (``scan_many``) runs over strings joined by newlines: every
        head (or its rule's ``_MANY_SHAPES``) and every user rule in prefilter mode; multi-line, so that ``^``
        and ``$`` hold at each string's edges, and without single-match, so that each string's own matches
        are reported. A head crossing a newline can only add a candidate, never hide one."""
        scannable = [(name, regex) for name, regex in user if name not in self._unscanned]
        self._names = [name for name, _ in heads] + [name for name, _ in scannable]
        self._starts: list[Callable[[str, int], Iterable[int]] | None] = (
            [_HEADS[name][1] for name, _ in heads] + [None] * len(scannable))
        single = ([head.encode() for _, head in heads] + [regex.encode() for _, regex in scannable],
                  [0] * len(heads) + [prefilter | hyperscan.HS_FLAG_SINGLEMATCH] * len(scannable))
        # A user rule the joined scan cannot judge (one Hyperscan cannot take, or with text anchors, which
        # do not hold per string): every string is a candidate.
        joined = [(name, regex) for name, regex in scannable if not re.search(r"\\[AzZ]", regex)]
        self._many_all = len(joined) < len(user)
        self._many_anchored = any("^" in regex or "$" in regex for _, regex in joined)
        many = ([_MANY_SHAPES.get(name, head).encode() for name, head in heads] + [r.encode() for _, r in joined],
                [hyperscan.HS_FLAG_MULTILINE] * len(heads)
                + [prefilter | hyperscan.HS_FLAG_MULTILINE] * len(joined))
        return [single, many]

    def joined_scan(self) -> tuple[str, Callable[[bytes], list[int]]] | None:
        """``scan_many`` for a caller that joins the strings itself (the compiled span encoder's
        ``span_candidates``): the separator, and a function from the UTF-8 of the strings joined by it to the
        end offsets of the matches, ascending (a match belongs to the string whose own separator, or the end,
        is at or after its last byte). None when the joined scan cannot judge: every string is a candidate."""
        if self._many_all:
            return None
        scan = _no_matches if self._many_db is None else self._scan_joined
        return ("\n" if self._many_anchored else "\0"), scan

    def _scan_joined(self, data: bytes) -> list[int]:
        hits: list[tuple[int, int]] = []
        self._scan_many_db(data, _on_match, hits)
        return sorted([end for end, _ in hits])

    def _scan_many_db(self, data: bytes, on_match: Callable, context: list) -> None:
        """One scan of ``data`` with the many-strings database (there is one), with this thread's scratch."""
        db = self._many_db
        try:
            scratch = self._local.many_scratch
        except AttributeError:
            scratch = self._local.many_scratch = hyperscan.Scratch(db)
        db.scan(data, match_event_handler=on_match, context=context, scratch=scratch)

    def scan_many(self, strings: list[str]) -> list[int] | None:
        """The indexes of ``strings`` where some rule may match, from one scan of their concatenation;
        None when it cannot tell (a lone surrogate): the caller scrubs each string."""
        if self._many_all:
            return list(range(len(strings)))
        if self._many_db is None:
            return []
        # The separator: a NUL (the heads need only a separator that is not a digit, "." or "-"), or a
        # newline when a user rule may be anchored ("^" and "$" hold there in multi-line mode)
        sep = "\n" if self._many_anchored else "\0"
        joined = sep.join(strings)
        try:
            data = joined.encode()
        except UnicodeEncodeError:
            return None
        hits: list[tuple[int, int]] = []
        self._scan_many_db(data, _on_match, hits)
        if not hits:
            return []
        hits.sort()
        found: list[int] = []
        if joined.count(sep) == len(strings) - 1:
            # A match whose last byte is a string's own separator (a trailing context) belongs to that
            # string: the string's index is the number of separators before the match's last byte.
            bsep = sep.encode()
            index = pos = 0
            for end, _ in hits:
                index += data.count(bsep, pos, end - 1)
                pos = end - 1
                if not found or found[-1] != index:
                    found.append(index)
            return found
        # some strings hold both separators: where each string's separator is, in bytes
        lengths = map(len, strings) if len(data) == len(joined) else (len(x.encode()) for x in strings)
        seps = list(itertools.accumulate(map(_PLUS_ONE, lengths), initial=-1))[1:]
        return sorted({bisect.bisect_left(seps, e - 1) for e, _ in hits})

    def mapped_scan(self) -> Callable[[bytes], list[int]] | None:
        """``scan_many``'s database for strings the caller wrote one byte per code point (ASCII as is, any
        other code point one byte >= 0x80, each string followed by a NUL): a function from such a buffer to
        the end of every match in it. Every pattern there is then a default head or shape, an ASCII byte
        pattern whose classes hold no byte >= 0x80 or are negated, so it finds in each string what a scan
        of its UTF-8 finds. None when a user rule is scanned too (it needs the real UTF-8)."""
        if self._user:
            return None
        return _no_matches if self._many_db is None else self._scan_mapped

    def _scan_mapped(self, data: bytes) -> list[int]:
        ends: list[int] = []
        self._scan_many_db(data, _on_match_end, ends)
        return ends

    def candidates(self, text: str) -> dict[str, list[int] | None] | None:
        """Like ``_candidates``, and the user rules that may match (value None); None for a text that is no
        valid UTF-8 (a lone surrogate): the twin takes it."""
        found = self._scan(text, 0, len(text), {})
        if found is not None:
            found.update(dict.fromkeys(self._unscanned))
        return found

    def rescan(self, found: dict[str, list[int] | None], text: str, lo: int, hi: int,
               delta: int) -> dict[str, list[int] | None] | None:
        """``candidates(text)`` once a rule replaced secrets between ``lo`` and ``hi`` of the text before,
        making it ``delta`` characters longer. A start is at most 68 characters before its head's end, and
        depends on the text between (``_HEADS``); a head is at most 25 characters: starts more than
        ``_REACH`` from the change stay (shifted by ``delta`` after it), the others come from a scan of the
        changed part and ``2 * _REACH`` around it. User rules run again on the new text."""
        kept: dict[str, list[int] | None] = {}
        for name, starts in found.items():
            if starts is not None:
                kept[name] = [s for s in starts if s < lo - _REACH] + [s + delta for s in starts if s > hi + _REACH]
        kept = self._scan(text, max(0, lo - 2 * _REACH), hi + delta + 2 * _REACH, kept)
        if kept is not None:
            kept.update(dict.fromkeys(self._user))
        return kept

    def _scan(self, text: str, lo: int, hi: int, found: dict[str, list[int] | None]) -> dict | None:
        """Adds to ``found`` the starts from every head in ``text[lo:hi]`` and the user rules that may match
        there. None if that part is no valid UTF-8."""
        if self._db is None:
            return found
        part = text[lo:hi]
        try:
            data = part.encode()
        except UnicodeEncodeError:
            return None
        try:
            scratch = self._local.scratch
        except AttributeError:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        hits: list[tuple[int, int]] = []
        self._db.scan(data, match_event_handler=_on_match, context=hits, scratch=scratch)
        if not part.isascii():
            hits.sort()
            # Heads are ASCII: each end is a character boundary; count characters in one pass.
            chars, done = 0, 0
            for i, (end, rule_id) in enumerate(hits):
                chars += len(data[done:end].decode())
                done = end
                hits[i] = (chars, rule_id)
        changed = set()
        for end, rule_id in hits:
            starts = self._starts[rule_id]
            name = self._names[rule_id]
            if starts is None:
                found[name] = None
            else:
                found.setdefault(name, []).extend([s for s in starts(text, lo + end) if s >= 0])
                changed.add(name)
        for name in changed:
            found[name] = sorted(set(found[name]))
        return found


_REACH = 100
_PLUS_ONE = (1).__add__
_CACHED_CHARS = 256  # scrub_cached remembers texts up to this long ...
_MAX_CACHED_RESULTS = 20_000  # ... this many (about 5 MB at most), emptied when full
_hyperscan = functools.lru_cache(maxsize=8)(_Hyperscan)
# What scan_many looks for instead of a head that common text holds at every turn; each is still in every
# match of its rule (over bytes, each class as wide as the rule's or wider), and only tells which strings
# may hold one. The card: its rule's regex without the group, exact, one hit per run of digits (not one at
# every digit of an id of 20 or 39 digits). IPv6: each form holds "::" after or before a hex digit, or
# three full groups between colons (not a grammar's "::=", a reST "example::"). E-mail: a local-part
# character, "@", a domain and two letters of its last label (not a decorator, "@f").
_MANY_SHAPES = {
    "credit_card": r"(?:^|[^0-9.-])[2-6][0-9]{3}(?:[ -]?[0-9]){9,15}(?:$|[^0-9.-]|[.-](?:$|[^0-9]))",
    "ipv6": r"[0-9A-Fa-f]::|::[0-9A-Fa-f]|:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:",
    "email": r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2}",
}


def default_engine() -> str:
    """"hyperscan" when it imports and ``LLMSHIP_NO_EXTENSIONS`` is not set (read now: tests set it), else
    "python"."""
    if hyperscan is None or no_extensions():
        return "python"
    return "hyperscan"


# ------------------------------------------------------------------------------------------- cutting
# Text past ``max_chars`` is cut once scrubbed, so only the head that can be kept needs scrubbing; but the
# head must end where scrubbing it alone gives what scrubbing the whole text gives there: where no match
# of any rule can cross, and where every context a regex reads sees what it sees at the end (or start) of
# a text ("^" and "$" stand for a context character).
# A space just after a lower-case letter other than "i n p r y" is such a place:
# - a default rule's match holds a space only after "r" (bearer: "Bearer abc"), a digit (card: "4111 1111")
#   or, in the datadog rule, after "y"/"Y", a quote, ":", "=" or whitespace ('api_key = "..."') and after
#   "api", "app", "application" (its prefix "api key");
# - a space is no word character, nor any of ". - : [ %" that the other contexts look for.
# A replacement lands just before the space when a match ends there, so each must end with a character
# as harmless (the defaults end with "]"; a group reference could bring back anything).
_CUT = re.compile("[abcdefghjklmoqstuvwxz] ")  # one search in C, not a find and a look per space
_SAFE_REPLACEMENT_END = frozenset("])}*#!?,;|")
_CUT_SEARCH_CHARS = 64  # how far past the budget a cut is looked for (prose has a space every few characters)
_CUT_MIN_SAVING = 256  # below this, finding a cut costs more than scrubbing the rest (measured: 600 chars, budget 512)


def _cut_point(text: str, start: int) -> int:
    """The first position >= ``start`` where the text can be cut (see above), or -1."""
    m = _CUT.search(text, start - 1, start + _CUT_SEARCH_CHARS)
    return -1 if m is None else m.end() - 1


# ------------------------------------------------------------------------------------------- scrubber

@functools.cache
def _re2():
    """google-re2 and the options its patterns compile with, imported with the first user rule: the default
    rules never need it, and it costs an agent about 1 MiB (bench/contexts.py)."""
    import re2

    options = re2.Options()
    options.log_errors = False  # a bad user regex is reported by validation, not printed on stderr
    return re2, options


def effective_rules(user_rules: tuple[ScrubRule, ...],
                    defaults: tuple[ScrubRule, ...] = DEFAULT_RULES) -> list[ScrubRule]:
    """The defaults with user overrides applied in place, then the user's own rules; enabled ones only.

    Raises ValueError for a user rule with no regex that names no default rule (nothing to apply)."""
    overrides = {r.name: r for r in user_rules}
    merged: list[ScrubRule] = []
    for default in defaults:
        rule = overrides.pop(default.name, default)
        if not rule.regex:  # an override of the replacement, action or enabled only
            replacement = rule.replacement
            if replacement == "[REDACTED]" and rule.action != "redact":  # only the action changed
                replacement = default.replacement
            rule = ScrubRule(default.name, default.regex, replacement, rule.enabled, rule.action)
        merged.append(rule)
    for rule in user_rules:
        if rule.name not in overrides:
            continue  # a default's override, already placed
        if not rule.regex:
            raise ValueError(f"scrub rule {rule.name!r} has no regex and names no default rule")
        merged.append(rule)
    return [r for r in merged if r.enabled]


def rule_problems(rule: ScrubRule) -> list[tuple[str, str]]:
    """Why ``rule`` cannot run, as (field, reason) pairs, for ``llmship validate``."""
    default = next((r for r in DEFAULT_RULES if r.name == rule.name), None)
    regex = rule.regex or (default.regex if default is not None else "")
    if not regex:
        return []
    re2, options = _re2()
    try:
        if default is not None and regex == default.regex:
            pattern = re.compile(regex)
        else:
            pattern = re2.compile(regex, options)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if isinstance(e.args[0], bytes) else str(e.args[0])
        try:
            re.compile(regex)
        except re.error:
            return [("regex", f"not a valid regular expression: {reason}")]
        return [("regex", f"only a backtracking engine can run it, in time that can grow exponentially with the "
                          f"text; scrub rules run in RE2, in linear time, which has no backreferences nor "
                          f"lookarounds ({reason}). Match the context too and name the part to replace "
                          f"(?P<secret>...)")]
    try:
        _parse_template(rule.replacement, pattern.groups, pattern.groupindex)
    except (re.error, IndexError) as e:
        return [("replacement", f"bad replacement for its regex: {e}")]
    return []


class _Rule:
    """A compiled rule. ``headed``: a default's own regex, run in Python ``re`` where ``_HEADS`` says a
    match may start; otherwise the regex runs in RE2 over the whole text. ``expand(m)``: a match's
    replacement (bytes for RE2), which for the hash action holds the HMAC of the secret."""

    __slots__ = ("name", "pattern", "replacement", "template", "headed", "validate", "group", "context",
                 "action", "expand")

    def __init__(self, rule: ScrubRule, headed: bool, hash_key: bytes = b"") -> None:
        self.name = rule.name
        self.action = rule.action or "redact"
        self.headed = headed
        self.validate = _VALIDATORS.get(rule.name) if headed else None
        if headed:
            self.pattern = re.compile(rule.regex)
        else:
            re2, options = _re2()
            self.pattern = re2.compile(rule.regex, options)
        self.replacement = rule.replacement
        template = _parse_template(rule.replacement, self.pattern.groups, self.pattern.groupindex)
        self.group = self.pattern.groupindex.get("secret", 0)  # the part replaced
        self.context = 2 if self.group else 0  # how far before a secret its context may start
        if self.action == "hash":
            if not hash_key:
                raise ValueError(f"scrub rule {rule.name!r} hashes: scrub.hash_key (or LLMSHIP_SCRUB_HASH_KEY) "
                                 f"must be set")
            template = _hash_template(template)
        # literal text and group numbers; for RE2, which runs on UTF-8, the literal text encoded
        self.template = template if headed else [p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
                                                 for p in template]
        self.expand = self._hasher(hash_key) if self.action == "hash" else self._expand

    def _expand(self, m) -> str | bytes:
        empty = "" if self.headed else b""
        return empty.join([p if p.__class__ is not int else m.group(p) or empty for p in self.template])

    def _hasher(self, key: bytes) -> Callable:
        name, template, group, headed = self.name, self.template, self.group, self.headed
        kept = [p for p in template if p.__class__ is int and p not in (0, group)]

        def expand(m):
            a, b = m.span(group)
            cuts = sorted(span for g in kept if (span := m.span(g))[0] >= a and span[1] <= b)
            string, pieces, pos = m.string, [], a
            for ga, gb in cuts:
                pieces.append(string[pos:max(pos, ga)])
                pos = max(pos, gb)
            pieces.append(string[pos:b])
            secret = (string[:0].join(pieces)).strip()
            if headed:
                secret = secret.encode("utf-8", "surrogatepass")
            marker = f"[HASHED:{name}:{hmac.new(key, secret, hashlib.sha256).hexdigest()[:12]}]"
            marker = marker if headed else marker.encode()
            empty = "" if headed else b""
            return empty.join([marker if p is None else p if p.__class__ is not int else m.group(p) or empty
                               for p in template])

        return expand


def _hash_template(template: list[str | int]) -> list[str | int | None]:
    """The template with its first literal text (its surrounding spaces kept) replaced by None, where the
    hash marker goes; a template without literal text gets the marker at the end."""
    out: list[str | int | None] = []
    placed = False
    for p in template:
        if not placed and isinstance(p, str) and p.strip():
            head, tail = p[:len(p) - len(p.lstrip())], p[len(p.rstrip()):]
            out += [x for x in (head, None, tail) if x != ""]
            placed = True
        else:
            out.append(p)
    if not placed:
        out.append(None)
    return out


def _parse_template(replacement: str, groups: int, groupindex: dict[str, int]) -> list[str | int]:
    """Python ``re`` replacement syntax (``\\1``, ``\\g<name>``, ``\\n``), parsed by Python itself: expanding
    it for two matches of a pattern with the same groups, each group holding a character that differs
    between the two, tells group references (those characters) from literal text. Returns literal strings
    and group numbers, parsed once: ``Match.expand`` parses its template at every call (4 us)."""
    names = {i: n for n, i in groupindex.items()}
    dummy = re.compile("." + "".join(f"(?P<{names[i]}>.)" if i in names else "(.)" for i in range(1, groups + 1)),
                       re.DOTALL)
    first, second = (dummy.fullmatch("".join(chr(base + i) for i in range(groups + 1))).expand(replacement)
                     for base in (0x100000, 0x100400))
    out: list[str | int] = []
    skip = 0
    for a, b in zip(first, second):
        if skip:
            skip -= 1
        elif a != b:
            group = ord(a) - 0x100000
            out.append(group)
            skip = groups if group == 0 else 0  # \g<0> expanded to the whole dummy match
        elif out and isinstance(out[-1], str):
            out[-1] += a
        else:
            out.append(a)
    return out


class Scrubber:
    """``scrub(text)`` replaces every match of every enabled rule and counts
    ``scrub_matches{rule, action, kind}``; ``scrub_value`` also says when a drop_field rule matched (None).

    ``engine``: "hyperscan" or "python" (the twin); by default ``default_engine()``. ``hash_key``: the HMAC
    key of rules whose action is "hash" (required by them; never logged). ``count_builds``: count the
    Hyperscan databases each build loaded by where they came from, ``databases_built{source}`` (child, cache or
    in_process: transforms/hs_compile.py); the agent's scrubber does, so status shows that workers compiled
    nothing."""

    def __init__(self, rules: tuple[ScrubRule, ...] = (), telemetry_component: Component | None = None, *,
                 defaults: tuple[ScrubRule, ...] = DEFAULT_RULES, engine: str | None = None,
                 hash_key: str = "", fields: tuple = (), count_builds: bool = False) -> None:
        self.telemetry = telemetry_component if telemetry_component is not None else Component("scrub")
        self._count_builds = count_builds
        self._defaults = defaults
        self.engine = engine or default_engine()
        if self.engine not in ("hyperscan", "python"):
            raise ValueError(f"unknown scrub engine {self.engine!r}")
        if self.engine == "hyperscan" and hyperscan is None:
            raise RuntimeError("the hyperscan scrub engine needs the hyperscan package")
        self.reload(rules, hash_key=hash_key, fields=fields)

    def __repr__(self) -> str:  # never the hash key
        return f"Scrubber(engine={self.engine!r}, rules={self.rule_names!r})"

    def reload(self, rules: tuple[ScrubRule, ...], *, hash_key: str | None = None, fields: tuple | None = None) -> None:
        """Swap in new user rules (and hash key and field policies, when given); everyone holding this
        scrubber (or its ``scrub``) sees them."""
        from llmship.transforms.privacy import FieldPolicies  # privacy builds on this module

        if hash_key is not None:
            self._hash_key = hash_key.encode()
        key = self._hash_key
        default_regex = {r.name: r.regex for r in DEFAULT_RULES}
        # A default's head is written for its regex: a replaced regex is a user rule.
        compiled = [_Rule(r, default_regex.get(r.name) == r.regex, key)
                    for r in effective_rules(rules, self._defaults)]
        self.rule_names = tuple(r.name for r in compiled)
        # _ANY_HINT and the cut points cover the default rules only.
        short_cut = all(r.headed for r in compiled)
        cuttable = short_cut and all(r.replacement[-1:] in _SAFE_REPLACEMENT_END or r.action != "redact"
                                     for r in compiled)
        hs = None
        if self.engine == "hyperscan":
            before = dict(hs_compile.BUILT)
            hs = _hyperscan(tuple((r.name, _HEADS[r.name][0]) for r in compiled if r.headed),
                            tuple((r.name, r.pattern.pattern) for r in compiled if not r.headed))
            for source, count in hs_compile.BUILT.items() if self._count_builds else ():
                if count > before.get(source, 0):  # none when these rules' databases were in memory
                    self.telemetry.inc("databases_built", count - before.get(source, 0), source=source)
        if fields is not None or not hasattr(self, "fields"):
            self.fields = FieldPolicies(fields or (), key)
        elif hash_key is not None:
            self.fields = FieldPolicies(self.fields.entries, key)
        # Short values -> what scrubbing them gives and the matches to count again (new rules, new cache).
        self.results: dict[str, tuple[str | tuple[str], tuple]] = {}
        # One assignment: a scrub running in another thread sees the old state or the new one.
        self._state = (compiled, hs, short_cut, cuttable)

    @property
    def hash_key_bytes(self) -> bytes:
        return self._hash_key

    def scrub(self, text: str, kind: str = "llmobs") -> str:
        """The text with every match replaced; where a drop_field rule matched, the whole text becomes
        ``[REDACTED:<rule>]`` (for callers that cannot remove the field)."""
        out = self._scrub(text, kind)
        return out if out.__class__ is str else f"[REDACTED:{out[0]}]"

    def scrub_value(self, text: str, kind: str = "llmobs") -> str | None:
        """``scrub``, or None when a drop_field rule matched: the caller removes the field."""
        out = self._scrub(text, kind)
        return out if out.__class__ is str else None

    def scrub_cached(self, text: str, kind: str, tally: dict | None = None) -> str | None:
        """``scrub_value``, remembering the result for texts up to ``_CACHED_CHARS`` long: attribute values,
        tags and span meta values repeat (a hit counts the same matches again, into ``tally`` when given:
        (rule, action) -> matches, for the caller to count once). A text scrubbing leaves alone comes back
        as the very object passed in, hit or miss, so callers can tell "unchanged" by identity."""
        hit = self.results.get(text)
        if hit is not None:
            out, counts = hit
            if out is _UNCHANGED:
                return text
            for rule, action, n in counts:
                if tally is not None:
                    tally[rule, action] = tally.get((rule, action), 0) + n
                else:
                    self.telemetry.inc("scrub_matches", n, rule=rule, action=action, kind=kind)
        else:
            if len(text) > _CACHED_CHARS:
                out = self._scrub(text, kind)
            else:
                counts: list = []
                out = self._scrub(text, kind, counts)
                results = self.results
                if len(results) >= _MAX_CACHED_RESULTS:
                    results.clear()
                results[text] = (_UNCHANGED if out is text else out, tuple(counts))
        return out if out.__class__ is str else None

    def _scrub(self, text: str, kind: str, counts: list | None = None) -> str | tuple[str]:
        rules, hs, short_cut, _ = self._state
        if short_cut and len(text) <= _SHORT_TEXT and _ANY_HINT.search(text) is None:
            return text
        found = hs.candidates(text) if hs is not None else None
        if found is None:  # the twin (or a text Hyperscan cannot take)
            hs, found = None, _twin(rules, text)
        for rule in rules:
            if rule.name not in found:
                continue
            if rule.headed:
                new, n, lo, hi, delta = _sub(rule, text, found[rule.name])
            else:
                new, n = _sub_re2(rule, text)
            if n:
                self.telemetry.inc("scrub_matches", n, rule=rule.name, action=rule.action, kind=kind)
                if counts is not None:
                    counts.append((rule.name, rule.action, n))
                if rule.action == "drop_field":
                    return (rule.name,)
                text = new
                # the text changed: look again, for the rules after this one
                if hs is not None and rule.headed:
                    found = hs.rescan(found, text, lo, hi, delta)
                else:
                    found = hs.candidates(text) if hs is not None else None
                if found is None:
                    hs, found = None, _twin(rules, text)
        return text

    def scrub_many(self, strings: list[str], kind: str) -> dict[int, str | None]:
        """The strings that scrubbing changes, by index, scrubbed (None: drop the field). With Hyperscan, one
        scan of all of them finds the few where a rule may match; the twin tries each (``candidates_many``;
        ``privacy.scrub_chunks`` walks the candidates itself, to leave structural values alone)."""
        changed: dict[int, str | None] = {}
        scrub = self.scrub_cached
        tally: dict[tuple[str, str], int] = {}
        for i in self.candidates_many(strings):
            text = strings[i]
            if not text:
                continue
            out = scrub(text, kind, tally)
            if out is not text:
                changed[i] = out
        self.count(tally, kind)
        return changed

    def candidates_many(self, strings: list[str]) -> Iterable[int]:
        """The indexes of ``strings`` where a rule may match, ascending: with Hyperscan from one scan of
        all of them, else (or for a text Hyperscan cannot take) every index."""
        hs = self._state[1]
        candidates = hs.scan_many(strings) if hs is not None else None
        return range(len(strings)) if candidates is None else candidates

    def joined_scan(self) -> tuple[str, Callable[[bytes], list[int]]] | None:
        """What ``candidates_many`` scans with, for a caller that joins the strings itself
        (``_Hyperscan.joined_scan``); None without Hyperscan or when the joined scan cannot judge (every string
        is a candidate)."""
        hs = self._state[1]
        return None if hs is None else hs.joined_scan()

    def count(self, tally: dict[tuple[str, str], int], kind: str) -> None:
        """The matches ``scrub_cached`` tallied, counted as ``scrub_matches{rule, action, kind}``."""
        for (rule, action), n in tally.items():
            self.telemetry.inc("scrub_matches", n, rule=rule, action=action, kind=kind)

    def scrub_truncate(self, text: str, max_chars: int, kind: str = "llmobs") -> tuple[str | None, bool]:
        """``truncate_text(self.scrub_value(text), max_chars)``, scrubbing only the head that can be kept
        when the rules allow a safe cut (see above); matches in the rest are not looked for, nor counted.
        (None, False) when a drop_field rule matched."""
        cut = self._scrubbed_first(text, max_chars)
        if cut < len(text):
            head = self.scrub_value(text[:cut], kind)
            if head is None:
                return None, False
            if len(head) <= max_chars:  # a long secret shrank to its marker: the rest may be shown
                rest = self.scrub_value(text[cut:], kind)
                if rest is None:
                    return None, False
                head += rest
            return truncate_text(head, max_chars)
        scrubbed = self.scrub_value(text, kind)
        return (None, False) if scrubbed is None else truncate_text(scrubbed, max_chars)

    def scrub_truncate_many(self, texts: list[str], max_chars: int, kind: str) -> list[tuple[str | None, bool]]:
        """``scrub_truncate`` of each text. With Hyperscan, one scan of the parts it scrubs first finds the
        few texts where a rule may match there; the others are only cut (a text no rule changes is its own
        scrubbed text, and a head kept whole is longer than ``max_chars``: nothing past it is scrubbed)."""
        hs = self._state[1]
        may = None
        if hs is not None:
            may = hs.scan_many([t[:end] if (end := self._scrubbed_first(t, max_chars)) < len(t) else t
                                for t in texts])
        may = range(len(texts)) if may is None else set(may)  # None: the twin, or a text Hyperscan cannot take
        return [self.scrub_truncate(t, max_chars, kind) if i in may else truncate_text(t, max_chars)
                for i, t in enumerate(texts)]

    def mapped_scanner(self) -> tuple[Callable[[bytes], list[int]], bool] | None:
        """For the log path (``transforms/logpath.py``): ``_Hyperscan.mapped_scan`` and whether the rules allow
        a cut point (``_scrubbed_first``); None with the twin engine or a user rule."""
        _, hs, _, cuttable = self._state
        scan = hs.mapped_scan() if hs is not None else None
        return None if scan is None else (scan, cuttable)

    def _scrubbed_first(self, text: str, max_chars: int) -> int:
        return scrubbed_first(text, max_chars, self._state[3])


def scrubbed_first(text: str, max_chars: int, cuttable: bool) -> int:
    """How much of ``text`` ``Scrubber.scrub_truncate`` scrubs first: up to a cut past ``max_chars`` when the
    rules allow a safe one (``cuttable``, see above) and it saves enough, else all of it."""
    if cuttable and len(text) > max_chars + _CUT_MIN_SAVING:
        cut = _cut_point(text, max_chars + 1)
        if cut > 0:
            return cut
    return len(text)


# What the scrub cache stores for a text no rule changed: a hit then returns the caller's own object.
_UNCHANGED = object()


def _twin(rules: list[_Rule], text: str) -> dict[str, list[int] | None]:
    """``_candidates``, and every user rule (their regexes run on every text)."""
    found = _candidates(text)
    found.update((r.name, None) for r in rules if not r.headed)
    return found


def _sub(rule: _Rule, text: str, starts: list[int] | None) -> tuple[str, int, int, int, int]:
    """What ``re.sub`` gives with the rule's regex written with lookarounds: leftmost matches, each secret
    after the one before, whose context may reach back into the secret before it (by at most
    ``rule.context`` characters). Tries only ``starts`` (None: everywhere); a match failing ``validate`` is
    passed over whole, not replaced. Returns the new text, the number of secrets replaced, where the first
    began and the last ended, and how much longer the text became."""
    pattern, group, validate = rule.pattern, rule.group, rule.validate
    pieces: list[str] = []
    end = copied = pos = 0  # end: where the last secret (replaced or passed over) ended
    matches = (pattern.match(text, s) for s in starts) if starts is not None else None
    while True:
        if matches is None:
            m = pattern.search(text, pos)
            if m is None:
                break
            pos = m.start() + 1
        else:
            m = next(matches, False)
            if m is False:
                break
            if m is None:
                continue
        a, b = m.span(group)
        if a < end:
            continue
        end = b
        pos = max(pos, b - rule.context)
        if validate is not None and not validate(m):
            continue
        pieces.append(text[copied:a])
        pieces.append(rule.expand(m))
        copied = b
    if not pieces:
        return text, 0, 0, 0, 0
    lo = len(pieces[0])
    pieces.append(text[copied:])
    new = "".join(pieces)
    return new, len(pieces) // 2, lo, copied, len(new) - len(text)


def _sub_re2(rule: _Rule, text: str) -> tuple[str, int]:
    """``re.sub`` for a RE2 rule over the whole text (empty matches included, as Python does); with a group
    named ``secret``, only it is replaced and the next match starts after it. RE2 runs on the UTF-8 bytes,
    encoded once: given a ``str``, the google-re2 wrapper encodes the whole text again for every search."""
    data = text.encode("utf-8", "surrogatepass")
    pattern, group, expand = rule.pattern, rule.group, rule.expand
    pieces: list[bytes] = []
    copied = pos = 0
    while pos <= len(data) and (m := pattern.search(data, pos)) is not None:
        a, b = m.span(group)
        pieces.append(data[copied:a])
        pieces.append(expand(m))
        copied = b
        pos = b if b > m.start() else _next_char(data, m.start())
    if not pieces:
        return text, 0
    pieces.append(data[copied:])
    return b"".join(pieces).decode("utf-8", "surrogatepass"), len(pieces) // 2


def _next_char(data: bytes, i: int) -> int:
    """The start of the UTF-8 character after the one at ``i`` (past its continuation bytes 0x80-0xBF)."""
    i += 1
    while i < len(data) and 0x80 <= data[i] < 0xC0:
        i += 1
    return i
