"""Processing of received logs (what apps send to the logs sources): sample, scrub, truncate, tag.

Per record, in this order:
1. sampling: the first ``[[llm.sampling.rules]]`` entry that matches the record's ``service``, ``model``
   and ``endpoint`` attributes and sets a ``prompt_log_rate`` decides, deterministically per trace id
   when the record carries one (``trace_id``, ``dd.trace_id`` or ``dd: {trace_id}``, decimal or hex as
   ddtrace's log injection writes it), else by a coin toss; errors are always kept; a record no rule
   decides is kept (the global ``prompt_log_rate`` is for the logs the agent generates, not for these);
2. text: the ``[[scrub.fields]]`` policies for logs apply; ``message``, ``prompt``, ``completion`` and each
   of ``llm.text_fields`` (a top-level key, or a dotted path into nested objects) are scrubbed, then cut to
   ``llm.max_text_chars``; a string nested in a list or object under such a field is treated the same
   way. A cut adds the tag ``llmship.truncated:true`` (as the LLM processor does for span text). Every
   other string attribute, at any depth, and each ``ddtags`` value are scrubbed, not cut
   (``transforms/privacy.py``). The text fields that are strings, of up to ``SCANNED_TOGETHER`` records a
   source handed over at once, are scrubbed and cut in one call (one Hyperscan scan of them all); with the
   Hyperscan engine and no user rule, every other string of those records joins the same scan, and only a
   record where it finds something goes through the privacy walker (``transforms/logpath.py``, compiled
   when built: the walk, the cut and the tagging without a Python call per string). A field
   a drop_field rule matched is removed; a record whose scrubbing raised is dropped and counted
   (``dropped{reason=scrub_failed}``), never shipped raw, and so are all the records of a call that raised;
3. tags: the agent's env, service, version and tags are added to ``ddtags`` for keys it lacks (the
   ``service`` tag defaults to the record's own ``service``); ``hostname`` and ``service`` are filled in
   when missing.
"""

from __future__ import annotations

from llmship.config import Config
from llmship.model import LogRecord
from llmship.tags import agent_default_tags, normalize_tag, tag_key
from llmship.telemetry import Telemetry
from llmship.log import RateLimited, get_logger
from llmship.transforms import logpath, privacy
from llmship.transforms.sampling import Sampler
from llmship.transforms.scrub import Scrubber

TEXT_FIELDS = ("message", "prompt", "completion")
TRUNCATED_TAG = "llmship.truncated:true"
_ERROR_STATUSES = frozenset(("error", "err", "critical", "crit", "alert", "emerg", "emergency", "fatal"))
_MASK64 = (1 << 64) - 1
_MAX_CACHED_TAGS = 4096
# Logs whose text fields are scanned in one call: one scan costs as much as 1 kB of text, and the text of a few
# dozen logs is still in the CPU's caches when it is cut and encoded (2,000 at once cost half as much again).
SCANNED_TOGETHER = 32
_log = RateLimited(get_logger("logs_processor"))


def record_trace_id(record: LogRecord) -> int | None:
    """The low 64 bits of the record's trace id, as the sampler hashes them, or None."""
    value = record.get("trace_id")
    if value is None:
        value = record.get("dd.trace_id")
        if value is None and isinstance(dd := record.get("dd"), dict):
            value = dd.get("trace_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value & _MASK64
    if not isinstance(value, str) or not value:
        return None
    # ddtrace writes 64-bit ids in decimal and 128-bit ids as 32 hex digits (log injection)
    if value.isdigit() and len(value) <= 20:
        return int(value) & _MASK64
    try:
        if len(value) in (16, 32):
            return int(value, 16) & _MASK64
        if value.isdigit():
            return int(value) & _MASK64
    except ValueError:
        pass
    return None


def _status(record: LogRecord) -> str:
    # Datadog's status remapper reads these attributes, in this order, when "status" is absent.
    for key in ("status", "level", "levelname", "severity"):
        value = record.get(key)
        if isinstance(value, str):
            return value.lower()
    return ""


class _Hooks:
    """What ``logpath.scrub_batch`` leaves to Python (see its docstring)."""

    __slots__ = ("_scrubber", "_max_chars", "_skip", "rest", "failed")

    def __init__(self, processor: LogProcessor) -> None:
        self._scrubber = processor._scrubber
        self._max_chars = processor._max_chars
        self._skip = processor._skip
        self.rest = processor._rest
        self.failed = processor._scrub_failed

    def scrub_truncate(self, text: str) -> tuple[str | None, bool]:
        return self._scrubber.scrub_truncate(text, self._max_chars, "logs")

    def walk(self, record: LogRecord) -> None:
        privacy.scrub_record_rest(self._scrubber, record, self._skip)

    def tags(self, record: LogRecord) -> None:
        privacy.scrub_record_tags(self._scrubber, record)

    restore = staticmethod(privacy.restore)


class LogProcessor:
    def __init__(self, cfg: Config, sampler: Sampler, scrubber: Scrubber, telemetry: Telemetry) -> None:
        self._tel = telemetry.component("logs_processor")
        self._sampler = sampler
        self._scrubber = scrubber
        self._apply_config(cfg)

    def reload(self, cfg: Config) -> None:
        self._sampler = Sampler(cfg.llm.sampling)
        # shared with the LLM stage and the span scrubbing: they follow too
        self._scrubber.reload(cfg.scrub.rules, hash_key=cfg.scrub.hash_key, fields=cfg.scrub.fields)
        self._apply_config(cfg)

    def _apply_config(self, cfg: Config) -> None:
        agent = cfg.agent
        self._max_chars = cfg.llm.max_text_chars
        self._text_fields = tuple(dict.fromkeys((*TEXT_FIELDS, *cfg.llm.text_fields)))
        self._skip = privacy.log_skip(self._text_fields)  # not scanned beyond the text fields
        self._plain_fields = not any("." in f for f in self._text_fields)  # logpath takes top-level ones only
        self._hooks = _Hooks(self)
        # Without a rule that sets prompt_log_rate every received log is kept: skip the sampler entirely.
        self._sampling = any(rule.prompt_log_rate is not None for rule in cfg.llm.sampling.rules)
        self._hostname = agent.hostname
        self._service = agent.service
        self._default_tags = agent_default_tags(agent)  # key -> "key:value"
        # (ddtags as received, service, truncated) -> ddtags to send: logs of one app repeat these
        self._merged_tags: dict[tuple[str, str, bool], str] = {}

    def process(self, record: LogRecord) -> LogRecord | None:
        """``process_many`` of one record: the record to ship, or None."""
        kept = self.process_many([record])
        return kept[0] if kept else None

    def process_many(self, records: list[LogRecord]) -> list[LogRecord]:
        """The records to ship, in order, each sampled, scrubbed, cut and tagged in place."""
        tel = self._tel
        tel.inc("received", len(records))
        if self._sampling:
            sampled = [r for r in records if self._keep(r)]
            if len(sampled) < len(records):
                tel.discard("sampled_out", len(records) - len(sampled), intentional=True)
            records = sampled
        answers = self._scrub_many(records)
        return logpath.tag_many(records, answers, (self._hostname, self._service, self._merged_tags,
                                                   self._merge_tags, self._tag, _MAX_CACHED_TAGS, tel))

    def _scrub_many(self, records: list[LogRecord]) -> list[bool | None]:
        """Each record's field policies, text fields (scrubbed and cut) and every other string, in place: True
        when text was cut, None when scrubbing raised (never shipped raw: dropped, counted)."""
        out: list[bool | None] = []
        for i in range(0, len(records), SCANNED_TOGETHER):
            out += self._scrub_batch(records[i:i + SCANNED_TOGETHER])
        return out

    def _scrub_batch(self, records: list[LogRecord]) -> list[bool | None]:
        """``_scrub_many``: through ``logpath`` (one Hyperscan scan of every string of the records) when the
        scrubber can give it a scan (the Hyperscan engine, no user rule) and the records are plain dicts
        without dotted text fields, else ``_scrub_batch_general``. The same records come out either way."""
        scanner = self._scrubber.mapped_scanner() if self._plain_fields else None
        if scanner is None or not all(r.__class__ is dict for r in records):
            return self._scrub_batch_general(records)
        scan, cuttable = scanner
        scrubber = self._scrubber
        live, kept = records, [None] * len(records)
        failed = None
        if scrubber.fields.by_kind["logs"]:  # field policies first, as in the general path
            live, kept, failed = [], [], []
            for i, record in enumerate(records):
                try:
                    kept.append(scrubber.fields.apply("logs", record, scrubber.telemetry))
                    live.append(record)
                except Exception as e:
                    self._scrub_failed(e)
                    failed.append(i)
        spec = (self._text_fields, self._skip, self._max_chars, cuttable, scrubber.results)
        try:
            done = logpath.scrub_batch(live, kept, spec, scan, self._hooks)
        except Exception as e:  # the scan, or scrubbing a text field: none of the records is shipped
            for _ in live:
                self._scrub_failed(e)
            return [None] * len(records)
        if failed:
            for i in failed:
                done.insert(i, None)
        return done

    def _scrub_batch_general(self, records: list[LogRecord]) -> list[bool | None]:
        """``_scrub_many``; the text fields that are strings, of all the records, are scrubbed and cut in one
        call (one Hyperscan scan); when that call raises, none of the records is shipped."""
        scrubber = self._scrubber
        pending: list[tuple | None] = []  # (record, the values a keep policy hid, its text fields that are strings)
        texts: list[str] = []
        for record in records:
            try:
                kept = scrubber.fields.apply("logs", record, scrubber.telemetry)
            except Exception as e:
                self._scrub_failed(e)
                pending.append(None)
                continue
            fields = []
            for field in self._text_fields:
                value = record.get(field)
                if value.__class__ is str:
                    fields.append(field)
                    texts.append(value)
            pending.append((record, kept, fields))
        try:
            results = scrubber.scrub_truncate_many(texts, self._max_chars, "logs")
        except Exception as e:
            for _ in filter(None, pending):
                self._scrub_failed(e)
            return [None] * len(records)
        out: list[bool | None] = []
        end = 0
        for item in pending:
            if item is None:
                out.append(None)
                continue
            record, kept, fields = item
            start, end = end, end + len(fields)
            try:
                out.append(self._scrub_rest(record, kept, fields, results[start:end]))
            except Exception as e:
                self._scrub_failed(e)
                out.append(None)
        return out

    def _scrub_rest(self, record: LogRecord, kept, fields: list[str], done: list) -> bool:
        """``fields`` given their scrubbed and cut text (``scrub_truncate``'s answers), then the other text
        fields and every other string, in place; True when text was cut."""
        truncated = False
        for field, (new, cut) in zip(fields, done):
            if new is None:
                del record[field]
            else:
                record[field] = new
            truncated |= cut
        truncated |= self._rest(record)
        privacy.restore(kept)
        return truncated

    def _rest(self, record: LogRecord) -> bool:
        """The text fields that are no strings, then every other string; True when text was cut."""
        truncated = False
        for field in self._text_fields:  # a list or object, or a dotted path into nested objects
            value = record.get(field)
            if value.__class__ is not str and (value is not None or (field not in record and "." in field)):
                truncated |= self._process_field(record, field)
        privacy.scrub_record_rest(self._scrubber, record, self._skip)
        return truncated

    def _scrub_failed(self, e: Exception) -> None:
        self._tel.discard("scrub_failed")
        self._scrubber.telemetry.inc("scrub_failed", kind="logs")
        self._tel.error("scrub_failed", f"{type(e).__name__}: {e}")
        _log.warning("scrub_failed", "log_dropped", error=f"{type(e).__name__}: {e}")

    def _keep(self, record: LogRecord) -> bool:
        def attr(key: str) -> str:
            value = record.get(key)
            return value if isinstance(value, str) else ""

        keep = self._sampler.keep_prompt_log(record_trace_id(record), attr("service") or self._service,
                                             attr("model"), attr("endpoint"), _status(record) in _ERROR_STATUSES)
        return keep is None or keep

    # ------------------------------------------------------------------------------------------- text

    def _process_field(self, record: LogRecord, field: str) -> bool:
        """Scrub and cut the field's text in place; True when some text was cut."""
        parent, key = record, field
        if field not in record and "." in field:  # a dotted path into nested objects
            *path, key = field.split(".")
            for part in path:
                parent = parent.get(part)
                if not isinstance(parent, dict):
                    return False
        value = parent.get(key)
        if isinstance(value, str):
            new, cut = self._text(value)
            if new is None:
                del parent[key]
            else:
                parent[key] = new
            return cut
        if isinstance(value, (dict, list)):
            return self._walk(value)
        return False

    def _text(self, value: str) -> tuple[str | None, bool]:
        # scrubbed first: a cut secret is caught
        return self._scrubber.scrub_truncate(value, self._max_chars, "logs")

    def _walk(self, node: dict | list, depth: int = 0) -> bool:
        if depth > privacy.MAX_NESTING:
            raise RecursionError(f"nested more than {privacy.MAX_NESTING} levels deep")
        cut_any = False
        items = node.items() if isinstance(node, dict) else enumerate(node)
        dropped = []
        for key, value in list(items):
            if isinstance(value, str):
                new, cut = self._text(value)
                if new is None:
                    dropped.append(key)
                else:
                    node[key] = new
                cut_any |= cut
            elif isinstance(value, (dict, list)):
                cut_any |= self._walk(value, depth + 1)
        for key in reversed(dropped):  # list indexes from the last: the earlier ones stay valid
            del node[key]
        return cut_any

    # ------------------------------------------------------------------------------------------- tags

    def _tag(self, record: LogRecord, truncated: bool) -> None:
        if not record.get("hostname"):
            record["hostname"] = self._hostname
        service = record.get("service")
        if not service and self._service:
            record["service"] = service = self._service
        ddtags = record.get("ddtags")
        if isinstance(ddtags, list):  # some clients send a list; the intake wants "k:v,k2:v2"
            ddtags = ",".join(str(t) for t in ddtags)
        if not isinstance(ddtags, str):
            ddtags = ""
        key = (ddtags, service if isinstance(service, str) else "", truncated)
        merged = self._merged_tags.get(key)
        if merged is None:
            merged = self._merge_tags(ddtags, service, truncated)
            if len(self._merged_tags) >= _MAX_CACHED_TAGS:  # bounded: junk input must not grow it
                self._merged_tags.clear()
            self._merged_tags[key] = merged
        if merged:
            record["ddtags"] = merged

    def _merge_tags(self, ddtags: str, service, truncated: bool) -> str:
        defaults = self._default_tags
        if isinstance(service, str) and service and service != self._service:
            defaults = dict(defaults)
            if tag := normalize_tag(f"service:{service}"):
                defaults["service"] = tag  # in the agent's service tag's place, if it has one
            else:
                defaults.pop("service", None)
        if not ddtags:
            merged = ",".join(defaults.values())
        else:
            present = {tag_key(t) for t in ddtags.split(",")}
            missing = [t for k, t in defaults.items() if k not in present]
            merged = ",".join((ddtags, *missing)) if missing else ddtags
        if truncated and TRUNCATED_TAG not in merged:
            merged = f"{merged},{TRUNCATED_TAG}" if merged else TRUNCATED_TAG
        return merged
