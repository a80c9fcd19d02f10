"""The log processor's scrub-and-cut step for a batch of records, compiled (``_logpath.pyx``) or pure Python.

``scrub_batch(records, kept, spec, scan, hooks)`` does what ``LogProcessor._scrub_batch`` does (the text
fields scrubbed and cut, every other string attribute scrubbed, each ``ddtags`` value scrubbed; see
``transforms/logs.py``) with one Hyperscan scan of every string of every record, text fields and others
alike, and without a Python call per string where nothing can match:

1. ``gather`` walks each record once, collecting its text fields that are strings (each up to where
   ``Scrubber.scrub_truncate`` scrubs first: ``scrubbed_first``) and every other string the privacy walker
   would scrub (``privacy._Walker.walk`` with the record's ``skip``: not empty, not a reserved attribute,
   not an identifier under an id key), and writes them all into one buffer, one byte per code point: ASCII
   as is, any other code point ``NON_ASCII``, each string followed by a NUL. Only the default rules' heads
   are scanned for (``Scrubber.mapped_scanner``: no user rule), and they are ASCII byte patterns whose
   classes either hold no byte >= 0x80 or are negated; so a scan of this buffer finds in each string what a
   scan of its UTF-8 finds, and never fails (a lone surrogate is a code point like any other).
2. One scan; each match belongs to the string whose NUL or text holds its last byte (``candidates``).
3. A text field no match touches is only cut (``truncate_text``); the others go to
   ``hooks.scrub_truncate`` (``Scrubber.scrub_truncate``), as ``scrub_truncate_many`` does. An error there
   is raised to the caller, which drops the whole batch, as before.
4. Per record: the text fields' new values (None: the field is removed); then, for a record whose other
   strings no match touches, only its ``ddtags`` (``hooks.tags``: ``privacy.scrub_record_tags``); for one
   with a match, the privacy walker over the whole record (``hooks.walk``: ``privacy.scrub_record_rest``),
   which finds what scrubbing finds, the untouched strings unchanged; then ``hooks.restore(kept[i])`` for
   the values a keep policy hid. A record ``gather`` does not walk (a text field that is neither a string
   nor None, a key that is not a str, a dict or list subclass, nesting deeper than ``MAX_DEPTH``) goes to
   ``hooks.rest`` (what ``LogProcessor._scrub_rest`` does after the text fields), which also says whether
   text was cut. An error in step 4 drops that record only (``hooks.failed(e)``, answer None).

Answers, per record: True when text was cut, False when not, None when dropped. ``spec`` is
``(text_fields, skip, max_chars, cuttable, results)``: ``cuttable``, the scrubber's rules allow a cut point;
``results``, the scrubber's memo, where a ``ddtags`` string found clean is remembered (such a record's tags
need no call; no ``ddtags``, or an empty string, none either, as in ``scrub_record_rest``; nor short tags
whose values hold no character a default rule's match needs: ``tags_unchanged``).

``tag_many(records, answers, spec)`` is the rest of ``LogProcessor.process_many``: the records kept, each
tagged (``LogProcessor._tag``), the cut ones counted.

The pure-Python twin below and the compiled module give the same answers, the same buffer and the same
calls of the hooks (tests/transforms/test_logpath.py compares them, and both with the general path). One
thing only the compiled one does, which changes no value: a text field it cut (or left whole) that is not
ASCII gets its UTF-8 form cached in the str, as ``PyUnicode_AsUTF8AndSize`` would cache it, but computed
several times faster; orjson, which encodes the record next, reads that cache instead of encoding the text
again with CPython's slower encoder (``_logpath.pyx``, ``llmship_fill_utf8``).
``NATIVE`` says which one ``scrub_batch`` and ``tag_many`` are; ``LLMSHIP_NO_EXTENSIONS=1`` (read at
import) picks the twin.
"""

from __future__ import annotations

import re
from typing import Any

from llmship import NO_EXTENSIONS
from llmship.transforms.privacy import _USER_AGENT_KEYS, is_structural
from llmship.transforms.scrub import _CUT_MIN_SAVING, _CUT_SEARCH_CHARS, _SHORT_TEXT, HINT_CHARS, scrubbed_first
from llmship.transforms.truncate import truncate_text

NON_ASCII = 0x80  # the byte every code point above ASCII becomes in the scanned buffer
MAX_DEPTH = 64  # deeper nesting: the Python walker takes the record
_NON_ASCII_RE = re.compile("[^\x00-\x7f]")
_NESTED_SKIP = _USER_AGENT_KEYS  # the keys skipped below the top level (privacy._Walker.walk)
_TAG_VALUE_HINT = re.compile(f"(?:^|,)[^,:]*:[^,]*[{re.escape(HINT_CHARS)}]")  # a tag value a rule may match


class _Complex(Exception):
    """The record holds something the walk leaves to the Python walker."""


def mapped(text: str) -> bytes:
    """``text`` one byte per code point: ASCII as is, any other code point ``NON_ASCII``."""
    if text.isascii():
        return text.encode("ascii")
    return _NON_ASCII_RE.sub("\x80", text).encode("latin-1")


def _walk(node, skip, depth: int, out: list) -> None:
    """The strings ``privacy._Walker.walk`` scrubs under ``node`` (a dict or a list), in its order."""
    if depth > MAX_DEPTH:
        raise _Complex
    if node.__class__ is dict:
        for key, value in node.items():
            if key.__class__ is not str:
                raise _Complex
            cls = value.__class__
            if cls is str:
                if not value or key in skip or (key[-1:] in "dD" and is_structural(key, value)):
                    continue
                out.append(value)
            elif cls is dict or cls is list:
                _walk(value, _NESTED_SKIP, depth + 1, out)
            elif isinstance(value, (dict, list)):
                raise _Complex
    elif node.__class__ is not list:  # a record that is a dict subclass
        raise _Complex
    else:
        for value in node:
            cls = value.__class__
            if cls is str:
                if value:
                    out.append(value)
            elif cls is dict or cls is list:
                _walk(value, _NESTED_SKIP, depth + 1, out)
            elif isinstance(value, (dict, list)):
                raise _Complex


def gather(records: list, spec: tuple) -> tuple[bytes, list[int], list[int], list[tuple], list[bool]]:
    """(buffer, the NUL after each string in it, each string's owner, the text fields that are strings as
    (record index, field, value), for each record whether its other strings are in the buffer). An owner is
    the index of a text field in that list, or ``~i`` for record i's other strings."""
    text_fields, skip, max_chars, cuttable = spec[:4]
    pieces: list[bytes] = []
    seps: list[int] = []
    owners: list[int] = []
    texts: list[tuple] = []
    walked: list[bool] = []
    pos = 0
    for i, record in enumerate(records):
        simple = True
        for field in text_fields:
            value = record.get(field)
            if value.__class__ is str:
                piece = mapped(value[:scrubbed_first(value, max_chars, cuttable)])
                owners.append(len(texts))
                texts.append((i, field, value))
                pieces.append(piece)
                pos += len(piece)
                seps.append(pos)
                pos += 1
            elif value is not None:
                simple = False
        strings: list[str] = []
        if simple:
            try:
                _walk(record, skip, 0, strings)
            except _Complex:
                simple = False
        walked.append(simple)
        if simple:
            for value in strings:
                piece = mapped(value)
                owners.append(~i)
                pieces.append(piece)
                pos += len(piece)
                seps.append(pos)
                pos += 1
    return b"".join(p + b"\0" for p in pieces), seps, owners, texts, walked


def tags_unchanged(ddtags: str) -> bool:
    """Whether scrubbing ``ddtags`` ("k:v,k2:v2", each value scrubbed) surely leaves it as it is: short enough
    that each value takes the scrubber's short-text way (``Scrubber._scrub``), and no value holds a character
    that way needs to look further (``HINT_CHARS``)."""
    return len(ddtags) <= _SHORT_TEXT and _TAG_VALUE_HINT.search(ddtags) is None


def candidates(ends: list[int], seps: list[int]) -> list[int]:
    """The indexes of the strings holding the last byte of a match ending at each of ``ends``, ascending."""
    import bisect

    return sorted({bisect.bisect_left(seps, end - 1) for end in ends})


def scrub_batch_py(records: list, kept: list, spec: tuple, scan, hooks) -> list[bool | None]:
    """See the module docstring. ``scan(buffer) -> match ends``; ``hooks``: ``scrub_truncate(text)``,
    ``rest(record)``, ``walk(record)``, ``tags(record)``, ``restore(kept)``, ``failed(error)``."""
    max_chars, memo = spec[2], spec[4]
    data, seps, owners, texts, walked = gather(records, spec)
    found = set()
    touched = set()  # records whose other strings hold a match
    for index in candidates(scan(data), seps):
        owner = owners[index]
        if owner >= 0:
            found.add(owner)
        else:
            touched.add(~owner)
    scrub_truncate = hooks.scrub_truncate
    news = [scrub_truncate(value) if j in found else truncate_text(value, max_chars)
            for j, (_, _, value) in enumerate(texts)]
    out: list[bool | None] = []
    j = 0
    for i, record in enumerate(records):
        start = j
        while j < len(texts) and texts[j][0] == i:
            j += 1
        try:
            truncated = False
            for (_, field, value), (new, cut) in zip(texts[start:j], news[start:j]):
                if new is None:
                    del record[field]
                elif new is not value:  # an unchanged text stays where it is
                    record[field] = new
                if cut:
                    truncated = True
            if not walked[i]:
                if hooks.rest(record):
                    truncated = True
            elif i in touched:
                hooks.walk(record)
            else:
                ddtags = record.get("ddtags")
                if ddtags is not None and not (ddtags.__class__ is str and (
                        not ddtags or tags_unchanged(ddtags) or ("ddtags", ddtags) in memo)):
                    hooks.tags(record)
            if kept[i]:
                hooks.restore(kept[i])
            out.append(truncated)
        except Exception as e:
            hooks.failed(e)
            out.append(None)
    return out


def tag_many_py(records: list, answers: list, spec: tuple) -> list:
    """The records to ship (an answer not None), each tagged (``LogProcessor._tag``), and the cut ones counted
    (``text_truncated``, once). ``spec``: ``(hostname, service, cache, merge, tag, max_cached, telemetry)``,
    the processor's; the compiled ``tag_many`` does ``tag``'s work itself for a record that is a dict, with
    ``cache`` (``_merged_tags``) and ``merge`` (``_merge_tags``) as ``tag`` does."""
    tag, telemetry = spec[4], spec[6]
    out = []
    cut = 0
    try:
        for record, truncated in zip(records, answers):
            if truncated is None:
                continue
            if truncated:
                cut += 1
            tag(record, truncated)
            out.append(record)
    finally:
        if cut:
            telemetry.inc("text_truncated", cut)
    return out


# ------------------------------------------------------------------------------------- the choice


def _load_native() -> Any:
    """The compiled module, or None when it was not built (no compiler at install), cannot load, or was built
    from an older source (an in-place build not redone: its constants differ)."""
    try:
        from llmship.transforms import _logpath
    except ImportError:
        return None
    constants = (MAX_DEPTH, NON_ASCII, _CUT_MIN_SAVING, _CUT_SEARCH_CHARS)
    return _logpath if getattr(_logpath, "CONSTANTS", None) == constants else None


_native = _load_native()
scrub_batch_native = _native.scrub_batch if _native is not None else None
gather_native = _native.gather if _native is not None else None
tag_many_native = _native.tag_many if _native is not None else None
NATIVE = _native is not None and not NO_EXTENSIONS
scrub_batch = scrub_batch_native if NATIVE else scrub_batch_py
tag_many = tag_many_native if NATIVE else tag_many_py
