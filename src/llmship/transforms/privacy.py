"""Scrubbing every string that leaves the host, at any depth, keeping the structure (issue 14).

The scrub rules (``transforms/scrub.py``) run over every string value of what llmship ships, not only the
prompt and completion text; keys and metric names are never changed, and neither are the values that
label or identify rather than say something (``is_structural``):

- LLM Observability events: ``meta.input`` and ``meta.output`` (messages, tool calls and their arguments
  and results, documents: ``llm/policies.py`` scrubs and cuts these), ``meta.error`` (message and stack),
  every other ``meta`` entry (metadata, tool definitions, ...) at any depth, and the value part of each
  tag (``ml_app:x``: ``x``) — ``EventRest``. Not scanned: ``meta.span.kind``, ``meta.model_name``,
  ``meta.model_provider``, the event's ids, name, status and numbers.
- Log records: the text fields (message, prompt, completion, ``[llm] text_fields``: scrubbed and cut) and
  every other string attribute at any depth, and the value part of each ``ddtags`` tag — ``scrub_record``.
  Not scanned: ``ddsource``, ``hostname``, ``service``, ``status`` and the other reserved attributes below.
- APM spans: every ``meta`` value and the resource, in one Hyperscan scan per request (``scrub_chunks``).
  Not scanned (left out of that scan): ``_dd.*`` keys and the few below (the encoder and the intake read
  them).
- Metrics: the value part of each tag of a DogStatsD or OTLP metric (once, when its context is made, in
  one scan of all of them), a DogStatsD event's title and text, a service check's message, and their tags'
  values (``MetricScrubber``). Not scanned: metric names, the agent's own default tags, hosts.
- Everywhere: a value under an id key (``id``, ``*_id``, ``*.id``, ``*Id``) that is only hex digits and dashes
  (a number, a hex id, a UUID) is an identifier, never a card number; user agents ("Chrome/124.0.0.0" is
  no IPv4 address).

A drop_field rule that matches removes the field that held the match (a list element: the element; a
span's resource: it becomes empty, and the intake shows the span's name).

Field policies (``[[scrub.fields]]``, ``FieldPolicies``) run first, on a path: dotted keys (a key holding
dots is matched whole), ``*`` for any key or index, a number for a list index, ``key=value`` for the list
elements (objects) whose key has that value, and, on a list of ``key:value`` tags, a tag key. Actions:
``drop`` (remove), ``hash`` (``[HASHED:<name>:<12 hex>]`` of the value, JSON for a non-string), ``redact_all``
(``[REDACTED:<name>]``), ``keep`` (not scanned). Each is counted as ``scrub_fields{field, action, kind}``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import orjson

from llmship.config import FIELD_ACTIONS, ScrubField
from llmship.sinks.spanenc import span_candidates as _span_candidates

KINDS = ("llmobs", "logs", "spans")  # what field policies apply to; matches are also counted for "metrics"
# Containers nested deeper than this in an event or a log record are refused (RecursionError, handled as
# Python's own limit always was): the walkers count their depth because compiled (setup.py
# COMPILED_MODULES) they do not count against Python's recursion limit, and both twins must stop at the same
# depth, far from the C stack's end. The decoders stop at about 1,000 levels, orjson.dumps at 255.
MAX_NESTING = 200
# Values that label rather than say something, whatever the kind.
_USER_AGENT_KEYS = frozenset(("http.useragent", "useragent", "user_agent", "user-agent", "http.user_agent",
                              "user_agent.original", "http.request.headers.user-agent"))
_ID_VALUE = re.compile(r"[0-9A-Fa-f-]*")
# Span meta the trace sink, the encoder and the intake read as identifiers or labels, and the addresses of the
# servers an app called (its database, cache, LLM API): infrastructure, not personal data, and what APM's
# service map and peer.service inference read (datadog-agent pkg/trace/traceutil peer tags). The end user's
# address (http.client_ip, network.client.ip) and URLs are scanned like any other value.
SPAN_SCAN_SKIP_KEYS = frozenset(("env", "version", "service", "language", "runtime-id", "span.kind", "component",
                                 "_sampling_priority_v1", "out.host", "peer.hostname", "peer.ipv4", "peer.ipv6",
                                 "network.destination.ip", "network.destination.name", "server.address",
                                 "net.peer.name", "db.instance")) | _USER_AGENT_KEYS
# Reserved attributes of a log record (Datadog's preprocessing reads them) and llmship's own labels.
LOG_STRUCTURAL = frozenset(("ddsource", "ddtags", "hostname", "host", "service", "status", "level", "levelname",
                            "severity", "timestamp", "date", "logger", "logger.name")) | _USER_AGENT_KEYS
# An LLM Observability event's meta entries that are labels; input/output/error are the text policy's.
_EVENT_META_SKIP = frozenset(("span", "model_name", "model_provider", "input", "output", "error"))
# Keys of input/output and tool-definition structures that label text rather than hold it.
STRUCTURAL_KEYS = frozenset(("role", "type", "id", "name", "tool_id", "tool_call_id", "mime_type"))
_STRUCTURAL_AND_UA = STRUCTURAL_KEYS | _USER_AGENT_KEYS
_MAX_REMEMBERED = 20_000  # as the scrubber's own results (it empties the same dict)


class ScrubFailed(Exception):
    """Scrubbing a record raised: the record is dropped and counted, never shipped raw."""


def is_id_key(key: str) -> bool:
    return key.endswith(("id", "Id", "ID")) and (len(key) == 2 or key[-3] in "_.-" or key[-2] == "I")


def is_structural(key, value: str) -> bool:
    """An identifier (see the module docstring) or a user agent."""
    return key.__class__ is str and (key in _USER_AGENT_KEYS or (is_id_key(key) and _is_id_value(value)))


def _is_id_value(value: str) -> bool:
    """A number, a hex id or a UUID: hex digits and dashes only."""
    return (value.isdigit() and value.isascii()) or _ID_VALUE.fullmatch(value) is not None  # decimal: common


# ------------------------------------------------------------------------------------------ walking


class _Walker:
    """Scrubs every string under a node in place, removing fields a drop_field rule matched. ``skip``: keys
    whose values are left alone, at the top level (``STRUCTURAL_KEYS``: at every level)."""

    __slots__ = ("scrub", "kind", "results")

    def __init__(self, scrubber, kind: str) -> None:
        self.scrub = scrubber.scrub_cached
        self.kind = kind
        self.results = scrubber.results  # also remembers clean tag lists

    def value(self, text: str) -> str | None:
        return self.scrub(text, self.kind)

    def walk(self, node, skip: frozenset = _USER_AGENT_KEYS, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            raise RecursionError(f"nested more than {MAX_NESTING} levels deep")
        scrub, kind = self.scrub, self.kind
        nested = skip if skip is _STRUCTURAL_AND_UA else _USER_AGENT_KEYS
        if isinstance(node, dict):
            dropped = None
            for key, value in node.items():
                cls = value.__class__
                if cls is str:
                    if not value or key in skip or (key[-1:] in "dD" and is_structural(key, value)):
                        continue
                    new = scrub(value, kind)
                    if new is not value:
                        if new is None:
                            dropped = (dropped or []) + [key]
                        else:
                            node[key] = new  # same keys: iterating stays valid
                elif cls is not int and cls is not float and isinstance(value, (dict, list)):  # numbers: common
                    self.walk(value, nested, depth + 1)
            if dropped:
                for key in dropped:
                    del node[key]
        elif isinstance(node, list):
            dropped = False
            for i, value in enumerate(node):
                if value.__class__ is str:
                    if value:
                        new = scrub(value, kind)
                        if new is not value:
                            node[i] = _DROP if new is None else new
                            dropped |= new is None
                elif isinstance(value, (dict, list)):
                    self.walk(value, nested, depth + 1)
            if dropped:
                node[:] = [v for v in node if v is not _DROP]

    def tags(self, tags: list) -> None:
        """``key:value`` tags: the value part is scrubbed; a tag whose value a drop_field rule matched goes.
        A list found clean is remembered (apps send the same tags again and again)."""
        try:
            key = ("tags", tuple(tags))
        except TypeError:
            key = None
        if key is not None and key in self.results:
            return
        dropped = changed = False
        scrub, kind = self.scrub, self.kind
        for i, tag in enumerate(tags):
            if tag.__class__ is not str:
                continue
            name, sep, value = tag.partition(":")
            if not sep or not value or is_structural(name, value):
                continue
            new = scrub(value, kind)
            if new is None:
                tags[i] = _DROP
                dropped = True
            elif new is not value:
                tags[i] = f"{name}:{new}"
                changed = True
        if dropped:
            tags[:] = [t for t in tags if t is not _DROP]
        elif not changed and key is not None:
            _remember(self.results, key)

    def tag_string(self, ddtags: str) -> str:
        """A log's ``ddtags`` ("k:v,k2:v2"), each value scrubbed."""
        key = ("ddtags", ddtags)
        if key in self.results:
            return ddtags
        tags = ddtags.split(",")
        self.tags(tags)
        out = ",".join(tags)
        if out == ddtags:
            _remember(self.results, key)
            return ddtags
        return out


def _remember(results: dict, key) -> None:
    """A clean tag list or string: no match to count again."""
    if len(results) >= _MAX_REMEMBERED:
        results.clear()
    results[key] = (key, ())


class _Drop:
    __slots__ = ()


_DROP = _Drop()


class _Kept:
    """A value a ``keep`` policy hides from the walkers until ``restore``."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


# ------------------------------------------------------------------------------------------ field policies


class _Policy:
    __slots__ = ("path", "kind", "segments", "action", "name")

    def __init__(self, entry: ScrubField) -> None:
        self.path = entry.path
        self.kind, self.segments = parse_path(entry)
        self.action = entry.action
        named = [s for s in self.segments if s != "*" and not s.isdigit() and "=" not in s]
        self.name = entry.name or (named[-1].split(".")[-1] if named else "field")


def parse_path(entry: ScrubField) -> tuple[str, list[str]]:
    """(kind, segments). logs: ``attributes.`` is optional (a record's attributes are its keys); spans:
    ``meta.<key>`` (the key whole, dots and all) or ``resource``."""
    path, kind = entry.path, entry.kind
    if not kind:
        kind = "logs" if path.startswith("attributes.") else "llmobs"
    if kind == "logs" and path.startswith("attributes."):
        path = path[len("attributes."):]
    if kind == "spans":
        if path.startswith("meta."):
            return kind, ["meta", path[len("meta."):]]
        return kind, [path]
    return kind, path.split(".")


def path_problem(entry: ScrubField) -> str | None:
    """Why a field policy's path cannot apply, for ``llmship validate``."""
    if not entry.path or entry.path.startswith(".") or entry.path.endswith(".") or ".." in entry.path:
        return f"expected a dotted path such as meta.metadata.user_id, got {entry.path!r}"
    kind, segments = parse_path(entry)
    if kind == "spans" and not (segments == ["resource"] or (segments[0] == "meta" and len(segments) == 2
                                                              and segments[1])):
        return f"a span path is meta.<key> or resource, got {entry.path!r}"
    return None


def hash_marker(key: bytes, name: str, value) -> str:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else orjson.dumps(
        value, option=orjson.OPT_SORT_KEYS)
    return f"[HASHED:{name}:{hmac.new(key, data, hashlib.sha256).hexdigest()[:12]}]"


class FieldPolicies:
    """The ``[[scrub.fields]]`` entries by kind. ``apply(kind, root, tel)`` acts on what each path finds and
    returns what ``restore`` puts back once the walkers are done (the ``keep`` values)."""

    def __init__(self, entries: tuple[ScrubField, ...], key: bytes) -> None:
        self.entries = tuple(entries)
        self._key = key
        self.by_kind: dict[str, list[_Policy]] = {k: [] for k in KINDS}
        for entry in self.entries:
            if entry.action in FIELD_ACTIONS and path_problem(entry) is None:
                policy = _Policy(entry)
                self.by_kind[policy.kind].append(policy)

    def apply(self, kind: str, root, telemetry) -> list | None:
        policies = self.by_kind[kind]
        if not policies:
            return None
        kept: list = []
        for policy in policies:
            targets: list = []
            _targets(root, policy.segments, 0, targets)
            for parent, key, tag_key in targets:
                self._act(policy, parent, key, tag_key, kept)
            if targets:
                telemetry.inc("scrub_fields", len(targets), field=policy.path, action=policy.action, kind=kind)
        for parent in {id(p): p for p, _, _ in kept if isinstance(p, list)}.values():
            if any(v is _DROP for v in parent):
                parent[:] = [v for v in parent if v is not _DROP]
        return kept

    def _act(self, policy: _Policy, parent, key, tag_key: str | None, kept: list) -> None:
        value = parent[key]
        if value.__class__ is _Kept or value is _DROP:
            return  # an earlier policy took it
        if tag_key is not None:
            value = value[len(tag_key) + 1:]
        action = policy.action
        if action == "keep":
            parent[key] = _Kept(parent[key])
            kept.append((parent, key, parent[key]))
            return
        if action == "drop":
            if isinstance(parent, list):
                parent[key] = _DROP
                kept.append((parent, key, None))  # the list is compacted after every policy ran
            else:
                del parent[key]
            return
        if action == "hash":
            new = hash_marker(self._key, policy.name, value)
        else:  # redact_all
            new = f"[REDACTED:{policy.name}]"
        parent[key] = f"{tag_key}:{new}" if tag_key is not None else new


def _targets(node, segments: list[str], i: int, out: list) -> None:
    """(parent, key or index, tag key or None) for every value ``segments[i:]`` names under ``node``."""
    seg = segments[i]
    last = i == len(segments) - 1
    if isinstance(node, dict):
        if seg == "*":
            keys = list(node)
        else:
            keys = []
            for j in range(len(segments), i, -1):  # a key holding dots: the longest that exists
                key = ".".join(segments[i:j]) if j > i + 1 else seg
                if key in node:
                    if j == len(segments):
                        out.append((node, key, None))
                    else:
                        _targets(node[key], segments, j, out)
                    return
            return
    elif isinstance(node, list):
        if seg == "*":
            keys = range(len(node))
        elif seg.isdigit():
            keys = [int(seg)] if int(seg) < len(node) else []
        elif "=" in seg:
            k, _, v = seg.partition("=")
            keys = [j for j, x in enumerate(node) if isinstance(x, dict) and x.get(k) == v]
        else:  # a tag key
            if last:
                prefix = seg + ":"
                out.extend((node, j, seg) for j, x in enumerate(node) if x.__class__ is str and x.startswith(prefix))
            return
    else:
        return
    for key in keys:
        if last:
            out.append((node, key, None))
        else:
            _targets(node[key], segments, i + 1, out)


def restore(kept: list | None) -> None:
    """Put back the values a ``keep`` policy hid."""
    if not kept:
        return
    for parent, key, marker in kept:
        if marker is None:
            continue
        if isinstance(parent, dict):
            if parent.get(key) is marker:
                parent[key] = marker.value
        else:
            for j, v in enumerate(parent):
                if v is marker:
                    parent[j] = marker.value
                    break


# ------------------------------------------------------------------------------------------ per kind


class EventRest:
    """Scrubs everything of an LLM Observability event that the text policy does not handle: every ``meta``
    entry but input, output, error and the labels, at any depth, and the tags' values (``rest(event)``).
    Its walker is made once, and again once the scrubber's reload started its results afresh: a walker a
    call was a sixth of the cost of an event's rest."""

    __slots__ = ("_scrubber", "_walker")

    def __init__(self, scrubber) -> None:
        self._scrubber = scrubber
        self._walker: _Walker | None = None

    def __call__(self, event: dict) -> None:
        walker = self._walker
        if walker is None or walker.results is not self._scrubber.results:
            walker = self._walker = _Walker(self._scrubber, "llmobs")
        _scrub_event_rest(walker, event)


def _scrub_event_rest(walker: _Walker, event: dict) -> None:
    meta = event.get("meta")
    if isinstance(meta, dict):
        dropped = []
        for key, value in meta.items():
            if key in _EVENT_META_SKIP:
                continue
            if value.__class__ is str:
                if value and not is_structural(key, value):
                    new = walker.value(value)
                    if new is None:
                        dropped.append(key)
                    elif new is not value:
                        meta[key] = new
            elif isinstance(value, (dict, list)):
                walker.walk(value, _STRUCTURAL_AND_UA if key == "tool_definitions" else _USER_AGENT_KEYS)
        for key in dropped:
            del meta[key]
    tags = event.get("tags")
    if isinstance(tags, list):
        walker.tags(tags)


def scrub_record_rest(scrubber, record: dict, skip: frozenset) -> None:
    """Every string attribute of a log record at any depth but those in ``skip`` (``log_skip``: the text
    fields, already scrubbed and cut, and the reserved ones); each ``ddtags`` value."""
    walker = _Walker(scrubber, "logs")
    walker.walk(record, skip)
    _record_tags(walker, record)


def scrub_record_tags(scrubber, record: dict) -> None:
    """``scrub_record_rest``'s last step alone: each ``ddtags`` value (for a record whose other strings
    scrubbing leaves as they are: ``transforms/logpath.py``)."""
    _record_tags(_Walker(scrubber, "logs"), record)


def _record_tags(walker: _Walker, record: dict) -> None:
    ddtags = record.get("ddtags")
    if isinstance(ddtags, str) and ddtags:
        record["ddtags"] = walker.tag_string(ddtags)
    elif isinstance(ddtags, list):
        walker.tags(ddtags)


class MetricScrubber:
    """Metric tags, DogStatsD events and service checks (kind "metrics"). Only the shipping plane's
    aggregator and metrics sink call it, and only where a context or an event is made, never per sample:
    the values of one call are looked at in one scan and not remembered (100,000 contexts would fill the
    scrubber's cache with values each seen once)."""

    __slots__ = ("_scrubber",)

    def __init__(self, scrubber) -> None:
        self._scrubber = scrubber

    def tags(self, tags: list[str]) -> list[str]:
        """``key:value`` tags with each value scrubbed; a tag whose value a drop_field rule matched goes.
        Keys, key-less tags and identifiers are left alone, as in events' tags."""
        return self._scrub(tags, [])[0]

    def event(self, event: dict) -> dict:
        """A DogStatsD event with its title, text and tag values scrubbed (a copy when anything changed; a
        dropped title leaves an event the sink refuses, and counts)."""
        return self._text_and_tags(event, ("title", "text"))

    def service_check(self, check: dict) -> dict:
        return self._text_and_tags(check, ("message",))

    def _text_and_tags(self, item: dict, fields: tuple[str, ...]) -> dict:
        raw = item.get("tags")
        tags = [t for t in raw.split(",") if t] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        texts = [f for f in fields if isinstance(item.get(f), str) and item[f]]
        new_tags, new_texts = self._scrub(tags, [item[f] for f in texts])
        if new_tags is tags and not new_texts:
            return item
        out = dict(item)
        if new_tags is not tags:
            out["tags"] = new_tags
        for k, new in new_texts.items():
            if new is None:
                del out[texts[k]]
            else:
                out[texts[k]] = new
        return out

    def _scrub(self, tags: list[str], texts: list[str]) -> tuple[list[str], dict[int, str | None]]:
        """(the tags scrubbed, or ``tags`` itself when unchanged; the changed ``texts`` by index).

        Each tag value is also read with its "_" as spaces: datadog's DogStatsd (and other clients) replace
        what a tag may not hold, spaces and "@" among them, with "_" before sending, which hides a card
        number ("4111_1111_1111_1111"), a bearer token or an address after "_" from rules that look for a
        separator; that reading is used only when the value as sent has no match (a user rule may need
        the "_"). An e-mail without its "@" is beyond any rule."""
        values, where = list(texts), []
        for i, tag in enumerate(tags):
            name, sep, value = tag.partition(":") if tag.__class__ is str else ("", "", "")
            if sep and value and not is_structural(name, value):
                values.append(value)
                where.append((i, name))
        if not values:
            return tags, {}
        scrub_many, first_tag = self._scrubber.scrub_many, len(texts)
        changed = scrub_many(values, "metrics")
        in_tags = {k - first_tag: new for k, new in changed.items() if k >= first_tag}
        unchanged = [k for k in range(len(where)) if k not in in_tags and "_" in values[first_tag + k]]
        if unchanged:
            spaced = scrub_many([values[first_tag + k].replace("_", " ") for k in unchanged], "metrics")
            in_tags.update((unchanged[j], new) for j, new in spaced.items())
        if in_tags:
            tags = list(tags)
            for k, new in in_tags.items():
                i, name = where[k]
                tags[i] = _DROP if new is None else f"{name}:{new}"
            tags = [t for t in tags if t is not _DROP]
        return tags, {k: new for k, new in changed.items() if k < first_tag}


def log_skip(text_fields) -> frozenset:
    """The top-level keys of a log record ``scrub_record_rest`` leaves alone."""
    return LOG_STRUCTURAL | frozenset(f for f in text_fields if "." not in f)


def span_key_skip(key: str) -> bool | None:
    """Is a span meta value under ``key`` left alone? True: always (``_dd.*``, the structural keys); None:
    when the value is an identifier (an id key); False: never. Remembered per key (apps use a few hundred)."""
    skip = _SPAN_KEY_SKIP.get(key)
    if skip is None and key not in _SPAN_KEY_SKIP:
        skip = (True if key.startswith(SPAN_SCAN_SKIP_PREFIX) or key in SPAN_SCAN_SKIP_KEYS
                else None if key.__class__ is str and is_id_key(key) else False)
        if len(_SPAN_KEY_SKIP) >= _MAX_REMEMBERED_KEYS:
            _SPAN_KEY_SKIP.clear()  # keys made of ids (unbounded): start again rather than grow
        _SPAN_KEY_SKIP[key] = skip
    return skip


_SPAN_KEY_SKIP: dict[str, bool | None] = {}
_MAX_REMEMBERED_KEYS = 4096
SPAN_SCAN_SKIP_PREFIX = "_dd."  # the tracer's and the Agent's own tags


def scrub_chunks(scrubber, chunks: list) -> None:
    """Scrub every meta value and resource of every span of a tracer request, in place: one scan of all of
    them; only the spans with a match get a new meta dict (the others go to the encoder untouched)."""
    policies = scrubber.fields.by_kind["spans"]
    spans = [span for chunk in chunks for span in chunk]
    if not spans:
        return
    kept_keys: dict[int, set] = {}
    if policies:
        for j, span in enumerate(spans):
            if kept := _span_fields(scrubber, span, policies):
                kept_keys[j] = kept
    found = None
    if _span_candidates is not None and (joined := scrubber.joined_scan()) is not None:
        found = _span_candidates(spans, *joined, SPAN_SCAN_SKIP_PREFIX, SPAN_SCAN_SKIP_KEYS)
    if found is None:
        found = _candidates_py(scrubber, spans)
    # The candidates ascend: walk the spans along with them, each span's keys listed once it has one.
    scrub, tally = scrubber.scrub_cached, {}
    changes: list[tuple[int, str | None, str | None]] = []  # (span, meta key or None: the resource, new)
    last, keys, values, kept = -1, [], [], ()
    for j, k in found:
        if j != last:
            span = spans[j]
            keys, values, kept, last = list(span.meta), list(span.meta.values()), kept_keys.get(j, ()), j
        if k < len(keys):
            text = values[k]
            if not text:
                continue
            key = keys[k]
            skip = span_key_skip(key)
            if skip or (skip is None and _is_id_value(text)) or key in kept:
                continue
        else:
            text, key = span.resource, None
            if not text or "resource" in kept:
                continue
        new = scrub(text, "spans", tally)
        if new is not text:
            changes.append((j, key, new))
    scrubber.count(tally, "spans")
    metas: dict[int, dict] = {}
    for j, key, new in changes:
        span = spans[j]
        if key is None:
            span.resource = "" if new is None else new
            continue
        meta = metas.get(j)
        if meta is None:
            meta = metas[j] = dict(span.meta)
        if new is None:
            del meta[key]
        else:
            meta[key] = new
    for j, meta in metas.items():
        spans[j].meta = meta


def _candidates_py(scrubber, spans: list) -> list[tuple[int, int]]:
    """``sinks.spanenc.span_candidates`` in Python, on ``Scrubber.candidates_many`` (every string without
    Hyperscan): (span index, entry index: a meta value, or ``len(meta)`` for the resource), ascending. The
    str values of the keys the scrub always leaves alone (``span_key_skip``) are not scanned."""
    strings: list[str] = []
    entries: list[tuple[int, int]] = []  # (span index, entry index) of each string
    add_string, add_entry = strings.append, entries.append
    for j, span in enumerate(spans):
        k = -1
        for k, (key, value) in enumerate(span.meta.items()):
            if value.__class__ is not str or key.__class__ is not str or span_key_skip(key) is not True:
                add_string(value)  # anything but a str: candidates_many fails on it, as it always did
                add_entry((j, k))
        add_string(span.resource)
        add_entry((j, k + 1))
    return [entries[i] for i in scrubber.candidates_many(strings)]


def _span_fields(scrubber, span, policies: list) -> set | None:
    """Span field policies: meta keys and the resource. Returns the kept ones (not scanned)."""
    kept = None
    meta = span.meta
    for policy in policies:
        segments = policy.segments
        if segments[0] == "resource":
            value, key = span.resource, "resource"
        else:
            key = segments[1]
            value = meta.get(key)
        if not value:
            continue
        action = policy.action
        scrubber.telemetry.inc("scrub_fields", field=policy.path, action=action, kind="spans")
        if action == "keep":
            kept = kept or set()
            kept.add(key)
            continue
        new = ("" if action == "drop" else hash_marker(scrubber.hash_key_bytes, policy.name, value)
               if action == "hash" else f"[REDACTED:{policy.name}]")
        if key == "resource" and segments[0] == "resource":
            span.resource = new
        else:
            meta = dict(meta) if meta is span.meta else meta
            if action == "drop":
                del meta[key]
            else:
                meta[key] = new
    if meta is not span.meta:
        span.meta = meta
    return kept
