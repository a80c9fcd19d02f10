"""LLM processing of trace chunks and LLM Observability events: tag, detect proxies, scrub and truncate
text, sample text, derive ``llm.*`` metrics, and generate prompt/completion sample logs.

An LLM call reaches us on one of two paths: an APM span (type ``llm``) usually carrying its LLM
Observability event (``Span.llmobs``, decoded from ``meta_struct["_llmobs"]``), or a bare event posted to
the EVP proxy (``DD_APM_TRACING_ENABLED=false``, or spans the tracer expects to be dropped). Either way
it is processed the same way, and once: span ids seen lately are remembered, so an event that arrives on
both paths is shipped once and counted once.

Per call, in this order:
1. identity: service, env, version, model, provider, endpoint from what the tracer sent (normalized
   as Datadog tags), the agent's env/service/version filling in what the span lacks;
2. proxy: a call whose HTTP child span went to one of ``llm.instrumented_proxy_urls`` is the client side
   of a call an instrumented proxy reports itself: it becomes a ``workflow`` span without model or token
   metrics and derives no ``llm.*`` metrics, so proxy and clients never double-count;
3. text: scrubbed, then each message content / value / document text cut to ``llm.max_text_chars``
   (marker ``…[truncated]``, tag ``llmship.truncated:true``, ``metadata.llmship.truncated``); dropped from the
   event when the trace is not sampled for span text (tag ``llmship.text_sampled:false``); errors keep it;
4. tokens: a streamed response without a usage chunk gets estimated counts, tagged ``tokens_estimated:true``;
5. metrics: ``llm.requests``, ``llm.errors``, ``llm.request.duration`` (seconds), ``llm.tokens.*`` and
   ``llm.cost.usd`` (estimated from list prices) into the aggregator, which adds the agent's tags;
6. sample log: for ``prompt_log_rate`` of the calls (errors always), a log built from the processed text.

Only ``llm`` and ``embedding`` spans are LLM calls (metrics, sample logs); other LLM Observability kinds
(workflow, agent, tool, task, retrieval) are tagged, scrubbed, truncated and sampled the same way.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from llmship.config import Config
from llmship.events import LLMObsEvent, LogRecord, Span
from llmship.log import RateLimited, get_logger
from llmship.tags import add_missing, agent_default_tags, normalize_tag
from llmship.telemetry import Telemetry
from llmship.transforms.pricing import Pricing
from llmship.transforms.sampling import Sampler, sampled
from llmship.transforms.truncate import truncate_text

_log = RateLimited(get_logger("llm"))

LLM_CALL_KINDS = frozenset(("llm", "embedding"))

# OpenAI operation ids (the APM span's resource; the LLM Obs span is named "<provider>.<operation>") and
# their endpoints: ddtrace/contrib/internal/openai/_endpoint_hooks.py (OPERATION_ID, ENDPOINT_NAME). Events
# posted to the EVP proxy carry no endpoint, so this is how both paths agree on it.
_OPENAI_ENDPOINTS = {
    "createCompletion": "/v1/completions",
    "createChatCompletion": "/v1/chat/completions",
    "parseChatCompletion": "/v1/chat/completions",
    "createEmbedding": "/v1/embeddings",
    "createResponse": "/v1/responses",
    "parseResponse": "/v1/responses",
}
# Endpoints whose streamed responses carry usage only when the request set stream_options.include_usage
# (OpenAI API reference, "stream_options"); without it ddtrace reports its own estimate.
_USAGE_OPT_IN_ENDPOINTS = frozenset(("/v1/chat/completions", "/v1/completions"))

# Token estimate for text whose usage was not reported: ~4 characters per token, OpenAI's rule of thumb
# for English ("What are tokens and how to count them"); no tokenizer dependency.
CHARS_PER_TOKEN = 4

# Span ids remembered to count and ship each call once across both paths. ddtrace flushes traces and EVP
# events every second, so the two copies of one event arrive seconds apart; at least the last 25,000 LLM
# spans are remembered (25 s at 1,000 calls/s), for about 5 MB per set when full (measured).
_RECENT_IDS = 50_000

# Keys of input/output structures that label text rather than hold it: never scrubbed or truncated.
_STRUCTURAL_KEYS = frozenset(("role", "type", "id", "name", "tool_id", "tool_call_id", "mime_type"))

_TOKEN_METRICS = ("input_tokens", "output_tokens", "total_tokens")
_APM_TOKEN_METRICS = (  # ddtrace's shadows of the event's token metrics on the APM span
    ("_dd.llmobs.input_tokens", "gen_ai.usage.input_tokens"),
    ("_dd.llmobs.output_tokens", "gen_ai.usage.output_tokens"),
    ("_dd.llmobs.total_tokens", "gen_ai.usage.total_tokens"),
)
_MASK64 = (1 << 64) - 1
# What a malformed event raises here (RecursionError: absurdly nested input/output); the event is
# dropped and counted, the rest of its batch carries on.
_BAD_EVENT = (AttributeError, KeyError, TypeError, ValueError, RecursionError)
_MAX_CACHED = 4096  # tag strings and proxy URL decisions: few distinct values; bound against junk input
# Texts the scrub rules leave unchanged, remembered with their truncated form: system prompts, few-shot
# examples and retrieved documents repeat from call to call, and a hit costs a hash instead of the rules'
# scans. Bounded in characters (about 4-16 MB of strings) and emptied when full, like the caches above.
_MAX_CLEAN_TEXT_CHARS = 4_000_000
_MAX_CLEAN_TEXT_ENTRIES = 50_000


class _RecentIds:
    """A bounded "seen lately" set: two generations, the older dropped when the newer fills up."""

    def __init__(self, capacity: int) -> None:
        self._half = capacity // 2
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def add(self, span_id: int) -> bool:
        """Remember ``span_id``; True when it was not seen lately."""
        if span_id in self._current or span_id in self._previous:
            return False
        if len(self._current) >= self._half:
            self._previous = self._current
            self._current = set()
        self._current.add(span_id)
        return True


class _Call:
    """What the metrics, sampling and sample log need to know about one LLM call (raw tag values)."""

    __slots__ = ("trace_id", "span_id", "kind", "error", "start_ns", "duration_ns", "service", "env",
                 "version", "model", "provider", "endpoint", "tokens", "tokens_estimated", "tag_set")

    def __init__(self, trace_id: int | None, span_id: int | None, kind: str, error: bool, start_ns: int,
                 duration_ns: int, service: str, env: str, version: str) -> None:
        self.trace_id = trace_id  # low 64 bits of the APM trace id: the sampling key
        self.span_id = span_id
        self.kind = kind
        self.error = error
        self.start_ns = start_ns
        self.duration_ns = duration_ns
        self.service = service
        self.env = env
        self.version = version
        self.model = self.provider = self.endpoint = ""
        self.tokens: list[float | None] = [None, None, None]  # input, output, total
        self.tokens_estimated = False
        self.tag_set: _TagSet | None = None  # LLMProcessor._tags, once the identity is settled


class _CleanTexts:
    """Texts the scrub rules leave unchanged -> (truncated text, whether it was cut). Only unchanged texts
    are remembered: a hit then does exactly what scrubbing would (nothing, and no match to count)."""

    __slots__ = ("results", "chars")

    def __init__(self) -> None:
        self.results: dict[str, tuple[str, bool]] = {}
        self.chars = 0

    def remember(self, text: str, result: tuple[str, bool]) -> None:
        chars = len(text) + (len(result[0]) if result[0] is not text else 0)  # a truncated copy counts too
        if self.chars + chars > _MAX_CLEAN_TEXT_CHARS or len(self.results) >= _MAX_CLEAN_TEXT_ENTRIES:
            self.results.clear()
            self.chars = 0
            if chars > _MAX_CLEAN_TEXT_CHARS:
                return
        self.results[text] = result
        self.chars += chars


class _TextPass:
    """Walks an input/output structure: counts the characters of its text leaves and, when ``rewrite``,
    replaces each with its scrubbed then truncated form (in place)."""

    __slots__ = ("scrub", "max_chars", "rewrite", "clean", "chars", "truncated")

    def __init__(self, scrub, max_chars: int, rewrite: bool, clean: _CleanTexts) -> None:
        self.scrub = scrub
        self.max_chars = max_chars
        self.rewrite = rewrite
        self.clean = clean
        self.chars = 0
        self.truncated = False

    def text(self, value: str) -> str:
        self.chars += len(value)
        if not self.rewrite:
            return value
        done = self.clean.results.get(value)
        if done is None:
            scrubbed = self.scrub(value)
            done = truncate_text(scrubbed, self.max_chars)  # scrub first: never cut a secret in two
            if scrubbed == value:
                self.clean.remember(value, done)
        self.truncated |= done[1]
        return done[0]

    def walk(self, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key not in _STRUCTURAL_KEYS:
                        node[key] = self.text(value)
                elif isinstance(value, (dict, list)):
                    self.walk(value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, str):
                    node[i] = self.text(value)
                elif isinstance(value, (dict, list)):
                    self.walk(value)


class _TagSet:
    """A call's tags in every form they are used, computed once per distinct identity."""

    __slots__ = ("values", "metric_tags", "with_agent_tags", "log_tags")

    def __init__(self, call: _Call, agent_tags: dict[str, str]) -> None:
        identity: dict[str, str] = {}  # key -> normalized "key:value"
        for key, value in (("service", call.service), ("env", call.env), ("version", call.version),
                           ("model", call.model), ("provider", call.provider), ("endpoint", call.endpoint)):
            tag = normalize_tag(f"{key}:{value}") if value else ""
            if tag:
                identity[key] = tag
        if call.tokens_estimated:
            identity["tokens_estimated"] = "tokens_estimated:true"
        # the values as they read in the normalized tags (span meta and sample log fields)
        self.values = {key: tag[len(key) + 1:] for key, tag in identity.items()}
        # the aggregator completes metric tags with the agent's tags for keys they lack
        self.metric_tags = ",".join(identity.values())
        # key -> tag: the call's own, then the agent's for the keys it lacks
        self.with_agent_tags = {**identity, **{k: t for k, t in agent_tags.items() if k not in identity}}
        self.log_tags = ",".join(self.with_agent_tags.values())


def normalize_url(url: str) -> str | None:
    """``scheme://host:port/path/`` with lowercase scheme and host, the default port made explicit, no
    query, user info or fragment, and a trailing slash, so that a prefix test matches whole path
    segments only. None for anything that is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a malformed port or IPv6 literal
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lowercased, brackets removed
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}{path}"


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _known(value) -> str:
    """A provider name unless the tracer said it does not know (ddtrace reports "unknown" for base URLs
    it does not recognise)."""
    return value if isinstance(value, str) and value.lower() != "unknown" else ""


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _section_text(section, with_roles: bool) -> str:
    """The text of an input/output section as one string: one line per message (``role: content`` when
    ``with_roles``), document texts, or the value."""
    if not isinstance(section, dict):
        return ""
    messages = section.get("messages")
    if isinstance(messages, list):
        lines = []
        for message in messages:
            if isinstance(message, dict):
                content = _str(message.get("content"))
                role = _str(message.get("role")) if with_roles else ""
                lines.append(f"{role}: {content}" if role else content)
        return "\n".join(lines)
    documents = section.get("documents")
    if isinstance(documents, list):
        return "\n".join(_str(d.get("text")) for d in documents if isinstance(d, dict))
    return _str(section.get("value"))


def _tokens(input_tokens: float | None, output_tokens: float | None, total_tokens: float | None
            ) -> list[float | None]:
    """[input, output, total], the total completed when the tracer reported only its parts."""
    if total_tokens is None and (input_tokens is not None or output_tokens is not None):
        total_tokens = (input_tokens or 0) + (output_tokens or 0)
    return [input_tokens, output_tokens, total_tokens]


def _parse_trace_id(event: LLMObsEvent) -> int | None:
    """The APM trace id's low 64 bits (the sampling key both paths share) from an EVP event:
    ``_dd.apm_trace_id`` (128-bit hex, as ddtrace writes it) or else ``trace_id`` (hex or decimal)."""
    dd = event.get("_dd")
    raw = dd.get("apm_trace_id") if isinstance(dd, dict) else None
    raw = raw or event.get("trace_id")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw & _MASK64
    if isinstance(raw, str):
        try:
            if len(raw) == 32:
                return int(raw[16:], 16)
            if raw.isdigit():
                return int(raw) & _MASK64
        except ValueError:
            return None
    return None


def _parse_span_id(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class LLMProcessor:
    def __init__(self, cfg: Config, aggregator, scrubber, telemetry: Telemetry) -> None:
        self._aggregator = aggregator
        self._scrub = scrubber.scrub
        self._tel = telemetry.component("llm")
        self._counted = _RecentIds(_RECENT_IDS)  # calls whose metrics (and sample log) were produced
        self._shipped = _RecentIds(_RECENT_IDS)  # events passed on to the LLM Observability sink
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        agent, llm = cfg.agent, cfg.llm
        self._hostname = agent.hostname
        self._max_chars = llm.max_text_chars
        self._sampler = Sampler(llm.sampling)
        self._pricing = Pricing(llm.pricing)
        self._proxy_prefixes = tuple(p for p in map(normalize_url, llm.instrumented_proxy_urls) if p)
        self._default_service = agent.service
        self._default_env = agent.env
        self._default_version = agent.version
        # key -> normalized tag: the agent's env, service, version and tags, for what a call lacks
        self._agent_tags = agent_default_tags(agent)
        # what every APM span gets in meta when it lacks the key (the service is a field of its own)
        self._span_defaults = tuple((key, tag[len(key) + 1:]) for key, tag in self._agent_tags.items()
                                    if key != "service" and ":" in tag)
        self._tag_sets: dict[tuple, _TagSet] = {}
        # (tag set, an event's own tags) -> the tags _tag_event adds: the same app sends the same tags
        self._tag_additions: dict[tuple, list[str]] = {}
        # an EVP event's tags -> its service, env and version
        self._own_identities: dict[tuple, tuple[str, str, str]] = {}
        self._proxy_cache: dict[str, bool] = {}
        self._clean_texts = _CleanTexts()  # results depend on max_text_chars: start afresh
        self._clean_errors = _CleanTexts()  # error messages and stacks (not truncated)

    # ------------------------------------------------------------------------------------------ APM path

    def process_chunk(self, spans: list[Span]) -> tuple[list[Span], list[LLMObsEvent], list[LogRecord]]:
        """Tag every span; process the LLM spans among them. Returns (APM spans to ship, LLM Obs events to
        ship, generated sample logs)."""
        llm_spans = None
        default_service = self._default_service
        span_defaults = self._span_defaults
        for span in spans:
            if not span.service and default_service:
                span.service = default_service
            if span_defaults:
                meta = span.meta
                for key, value in span_defaults:
                    if key not in meta:
                        meta[key] = value
            if span.llmobs is not None or span.type == "llm":
                if llm_spans is None:
                    llm_spans = []
                llm_spans.append(span)
        if llm_spans is None:
            return spans, [], []
        events: list[LLMObsEvent] = []
        logs: list[LogRecord] = []
        proxied = self._proxied_parents(spans) if self._proxy_prefixes else ()
        for span in llm_spans:
            try:
                event = self._process_llm_span(span, span.span_id in proxied, logs)
            except _BAD_EVENT as e:  # an event shape we did not foresee
                self._reject(e)
                span.llmobs = None
                continue
            if event is not None:
                events.append(event)
        return spans, events, logs

    def _proxied_parents(self, spans: list[Span]) -> set[int]:
        """Span ids whose child HTTP span called an instrumented proxy."""
        parents = set()
        for span in spans:
            url = span.meta.get("http.url")
            if url and span.parent_id and self._is_proxy_url(url):
                parents.add(span.parent_id)
        return parents

    def _is_proxy_url(self, url: str) -> bool:
        found = self._proxy_cache.get(url)
        if found is None:
            normalized = normalize_url(url)
            found = normalized is not None and normalized.startswith(self._proxy_prefixes)
            if len(self._proxy_cache) >= _MAX_CACHED:
                self._proxy_cache.clear()
            self._proxy_cache[url] = found
        return found

    def _process_llm_span(self, span: Span, proxied: bool, logs: list[LogRecord]) -> LLMObsEvent | None:
        meta = span.meta
        event = span.llmobs
        ev_meta = event.get("meta") if event is not None else None
        if event is not None and not isinstance(ev_meta, dict):
            ev_meta = event["meta"] = {}
        if ev_meta is not None:
            kind = _str((ev_meta.get("span") or {}).get("kind")) or "llm"
            name = _str(event.get("name"))
        else:
            kind = meta.get("_dd.llmobs.span_kind") or "llm"
            name = ""
        call = _Call(span.trace_id & _MASK64, span.span_id, kind, bool(span.error), span.start, span.duration,
                     span.service, meta.get("env", ""), meta.get("version", ""))
        is_call = kind in LLM_CALL_KINDS
        if is_call:
            self._identify(call, ev_meta or {}, name, meta, span.resource)
            if event is not None:
                self._read_event_tokens(call, event)
            else:
                self._read_span_tokens(call, span.metrics)
            if proxied:
                self._make_workflow(call, event)
                meta["_dd.llmobs.span_kind"] = "workflow"
                for key in [k for k in span.metrics if k.startswith("_dd.llmobs.") and k.endswith("_tokens")]:
                    del span.metrics[key]
            values = self._tags(call).values
            for key in ("model", "provider", "endpoint"):
                if key in values and key not in meta:
                    meta[key] = values[key]
        return self._finish(call, event, logs)

    # ------------------------------------------------------------------------------------------ EVP path

    def process_llmobs_events(self, events: list[LLMObsEvent]) -> tuple[list[LLMObsEvent], list[LogRecord]]:
        """Process events posted to the EVP proxy. Returns (events to ship, generated sample logs)."""
        out: list[LLMObsEvent] = []
        logs: list[LogRecord] = []
        for event in events:
            try:
                kept = self._process_event(event, logs)
            except _BAD_EVENT as e:
                self._reject(e)
                continue
            if kept is not None:
                out.append(kept)
        return out, logs

    def _process_event(self, event: LLMObsEvent, logs: list[LogRecord]) -> LLMObsEvent | None:
        if not isinstance(event, dict):
            raise TypeError(f"an LLM Observability event must be an object, got {type(event).__name__}")
        ev_meta = event.get("meta")
        if not isinstance(ev_meta, dict):
            ev_meta = event["meta"] = {}
        service, env, version = self._own_identity(event.get("tags"))
        kind = _str((ev_meta.get("span") or {}).get("kind")) or "llm"
        call = _Call(_parse_trace_id(event), _parse_span_id(event.get("span_id")), kind,
                     event.get("status") == "error", int(event.get("start_ns") or 0),
                     int(event.get("duration") or 0), service or self._default_service,
                     env or self._default_env, version or self._default_version)
        if kind in LLM_CALL_KINDS:
            self._identify(call, ev_meta, _str(event.get("name")), {}, "")
            self._read_event_tokens(call, event)
        return self._finish(call, event, logs)

    def _own_identity(self, tags) -> tuple[str, str, str]:
        """The service, env and version an EVP event's tags name (the first of each), "" where none."""
        if not isinstance(tags, list):
            return "", "", ""
        try:
            key = tuple(tags)
            found = self._own_identities.get(key)
        except TypeError:  # an unhashable junk tag: read them without remembering
            key = found = None
        if found is None:
            own: dict[str, str] = {}
            for tag in tags:
                if isinstance(tag, str):
                    name, _, value = tag.partition(":")
                    own.setdefault(name, value)
            found = (own.get("service", ""), own.get("env", ""), own.get("version", ""))
            if key is not None:
                if len(self._own_identities) >= _MAX_CACHED:
                    self._own_identities.clear()
                self._own_identities[key] = found
        return found

    # ------------------------------------------------------------------------------------------ shared

    def _reject(self, error: Exception) -> None:
        self._tel.inc("dropped", reason="bad_llmobs_event")
        self._tel.error("bad_llmobs_event", f"{type(error).__name__}: {error}")
        _log.warning("bad_llmobs_event", "llmobs_event_rejected", error=f"{type(error).__name__}: {error}")

    @staticmethod
    def _identify(call: _Call, ev_meta: dict, name: str, apm_meta: dict, resource: str) -> None:
        """Model, provider and endpoint from the event and the APM span, preferring what both paths have
        (the event) so that a call is tagged the same whichever way it arrived."""
        call.model = (_str(ev_meta.get("model_name")) or apm_meta.get("_dd.llmobs.model_name")
                      or apm_meta.get("openai.response.model") or apm_meta.get("openai.request.model")
                      or apm_meta.get("gen_ai.request.model") or "")
        prefix, dot, operation = name.rpartition(".")
        call.provider = (_known(ev_meta.get("model_provider")) or apm_meta.get("openai.request.provider")
                         or (prefix if dot else "") or _known(apm_meta.get("_dd.llmobs.model_provider"))
                         or _known(apm_meta.get("gen_ai.provider.name")))
        call.endpoint = (apm_meta.get("openai.request.endpoint") or _OPENAI_ENDPOINTS.get(operation)
                         or _OPENAI_ENDPOINTS.get(resource) or "")

    @staticmethod
    def _read_event_tokens(call: _Call, event: LLMObsEvent) -> None:
        metrics = event.get("metrics")
        if isinstance(metrics, dict):
            get = metrics.get
            call.tokens = _tokens(_number(get("input_tokens")), _number(get("output_tokens")),
                                  _number(get("total_tokens")))

    @staticmethod
    def _read_span_tokens(call: _Call, metrics: dict[str, float]) -> None:
        call.tokens = _tokens(*(_number(metrics.get(ours, metrics.get(semconv)))
                                for ours, semconv in _APM_TOKEN_METRICS))

    def _make_workflow(self, call: _Call, event: LLMObsEvent | None) -> None:
        """The client side of an instrumented proxy: what ddtrace itself emits for such a call
        (DD_LLMOBS_INSTRUMENTED_PROXY_URLS): a workflow span without model or token metrics."""
        call.kind = "workflow"
        call.tokens = [None, None, None]
        self._tel.inc("proxied_calls")
        if event is not None:
            ev_meta = event["meta"]
            ev_meta["span"] = {**(ev_meta.get("span") or {}), "kind": "workflow"}
            ev_meta.pop("model_name", None)
            ev_meta.pop("model_provider", None)
            metrics = event.get("metrics")
            if isinstance(metrics, dict):
                for key in [k for k in metrics if k.endswith("_tokens")]:
                    del metrics[key]

    def _finish(self, call: _Call, event: LLMObsEvent | None, logs: list[LogRecord]) -> LLMObsEvent | None:
        """Text, tags, metrics and sample log for one call; the event to ship, or None (a duplicate)."""
        is_call = call.kind in LLM_CALL_KINDS
        first_count = is_call and (call.span_id is None or self._counted.add(call.span_id))
        ship = event is not None and (call.span_id is None or self._shipped.add(call.span_id))
        if event is not None and not ship:
            self._tel.inc("dropped", reason="duplicate_event")
        if event is not None and (ship or first_count):
            self._process_text(call, event, want_log=first_count, logs=logs)
        if first_count:
            self._tel.inc("llm_calls")
            self._emit_metrics(call)
        return event if ship else None

    def _process_text(self, call: _Call, event: LLMObsEvent, want_log: bool, logs: list[LogRecord]) -> None:
        ev_meta = event["meta"]
        sampler = self._sampler
        keep_text = sampler.keep_span_text(call.trace_id, call.service, call.model, call.endpoint, call.error)
        keep_log = False
        if want_log:
            keep_log = sampler.keep_prompt_log(call.trace_id, call.service, call.model, call.endpoint, call.error)
            if keep_log is None:
                keep_log = sampled(call.trace_id, sampler.prompt_log_rate)
        estimate = call.kind == "llm" and self._usage_missing(call, ev_meta)
        rewrite = keep_text or keep_log
        markers: list[str] = []
        if rewrite or estimate:
            text_in = _TextPass(self._scrub, self._max_chars, rewrite, self._clean_texts)
            text_in.walk(ev_meta.get("input"))
            text_out = _TextPass(self._scrub, self._max_chars, rewrite, self._clean_texts)
            text_out.walk(ev_meta.get("output"))
            if rewrite:
                self._scrub_error(ev_meta.get("error"))
            if text_in.truncated or text_out.truncated:
                self._tel.inc("text_truncated")
                markers.append("llmship.truncated:true")
                self._note(ev_meta, truncated=True, max_text_chars=self._max_chars)
            if estimate:
                self._estimate_tokens(call, event, text_in.chars, text_out.chars)
                markers.append("tokens_estimated:true")
        if keep_log:
            logs.append(self._sample_log(call, ev_meta))
        if not keep_text:
            ev_meta.pop("input", None)
            ev_meta.pop("output", None)
            self._tel.inc("text_sampled_out")
            markers.append("llmship.text_sampled:false")
            self._note(ev_meta, text_sampled=False)
        self._tag_event(event, call, markers)

    @staticmethod
    def _usage_missing(call: _Call, ev_meta: dict) -> bool:
        """A streamed response whose usage chunk was not reported: no token counts at all, or an OpenAI
        endpoint streamed without stream_options.include_usage (whatever counts exist are estimates)."""
        metadata = ev_meta.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("stream"):
            return False
        if call.tokens[0] is None and call.tokens[1] is None:
            return True
        if call.endpoint in _USAGE_OPT_IN_ENDPOINTS:
            options = metadata.get("stream_options")
            return not (isinstance(options, dict) and options.get("include_usage") is True)
        return False

    def _estimate_tokens(self, call: _Call, event: LLMObsEvent, input_chars: int, output_chars: int) -> None:
        call.tokens_estimated = True
        call.tag_set = None  # its tags now say so
        self._tel.inc("tokens_estimated")
        if call.tokens[0] is not None or call.tokens[1] is not None:
            return  # the tracer already estimated them from the same text: keep its figures
        input_tokens = math.ceil(input_chars / CHARS_PER_TOKEN)
        output_tokens = math.ceil(output_chars / CHARS_PER_TOKEN)
        call.tokens = [input_tokens, output_tokens, input_tokens + output_tokens]
        metrics = event.get("metrics")
        if not isinstance(metrics, dict):
            metrics = event["metrics"] = {}
        metrics.update(zip(_TOKEN_METRICS, call.tokens))

    def _scrub_error(self, error) -> None:
        if isinstance(error, dict):
            clean = self._clean_errors
            for key in ("message", "stack"):
                value = error.get(key)
                if isinstance(value, str) and value not in clean.results:  # stacks repeat: scrub each once
                    scrubbed = error[key] = self._scrub(value)
                    if scrubbed == value:
                        clean.remember(value, (value, False))

    @staticmethod
    def _note(ev_meta: dict, **notes) -> None:
        """Say in the event's metadata (shown with the span in LLM Observability) what llmship changed."""
        metadata = ev_meta.get("metadata")
        if not isinstance(metadata, dict):
            metadata = ev_meta["metadata"] = {}
        llmship = metadata.get("llmship")
        if not isinstance(llmship, dict):
            llmship = metadata["llmship"] = {}
        llmship.update(notes)

    def _tags(self, call: _Call) -> _TagSet:
        tags = call.tag_set
        if tags is not None:
            return tags
        key = (call.service, call.env, call.version, call.model, call.provider, call.endpoint,
               call.tokens_estimated)
        tags = self._tag_sets.get(key)
        if tags is None:
            if len(self._tag_sets) >= _MAX_CACHED:
                self._tag_sets.clear()
            tags = self._tag_sets[key] = _TagSet(call, self._agent_tags)
        call.tag_set = tags
        return tags

    def _tag_event(self, event: LLMObsEvent, call: _Call, markers: list[str]) -> None:
        tags = event.get("tags")
        if not isinstance(tags, list):
            tags = event["tags"] = []
        tag_set = self._tags(call)
        try:
            key = (tag_set, tuple(tags))
            additions = self._tag_additions.get(key)
        except TypeError:  # an unhashable junk tag: add_missing decides what to do with it
            key = additions = None
        if additions is None:
            additions = add_missing(list(tags), tag_set.with_agent_tags)[len(tags):]
            if key is not None:
                if len(self._tag_additions) >= _MAX_CACHED:
                    self._tag_additions.clear()
                self._tag_additions[key] = additions
        tags.extend(additions)
        tags.extend(markers)

    def _emit_metrics(self, call: _Call) -> None:
        tags = self._tags(call).metric_tags
        add = self._aggregator.add
        add("llm.requests", "c", 1, tags)
        if call.error:
            add("llm.errors", "c", 1, tags)
        add("llm.request.duration", "d", call.duration_ns / 1e9, tags)
        input_tokens, output_tokens, total_tokens = call.tokens
        if total_tokens is None:
            return
        input_tokens = input_tokens or 0
        output_tokens = output_tokens or 0
        add("llm.tokens.input", "c", input_tokens, tags)
        add("llm.tokens.output", "c", output_tokens, tags)
        add("llm.tokens.total", "c", total_tokens, tags)
        cost = self._pricing.cost_usd(call.model, input_tokens, output_tokens)
        if cost is None:
            self._tel.inc("unknown_model_cost")
        else:
            add("llm.cost.usd", "c", cost, tags)

    def _sample_log(self, call: _Call, ev_meta: dict) -> LogRecord:
        completion = _section_text(ev_meta.get("output"), with_roles=False)
        error = ev_meta.get("error")
        error_message = _str(error.get("message")) if isinstance(error, dict) else ""
        tags = self._tags(call)
        input_tokens, output_tokens, total_tokens = call.tokens
        return {
            "message": (error_message or completion) if call.error else completion,
            "ddsource": "llmship",
            "service": tags.values.get("service", ""),
            "hostname": self._hostname,
            "status": "error" if call.error else "info",
            "ddtags": tags.log_tags,
            "prompt": _section_text(ev_meta.get("input"), with_roles=True),
            "completion": completion,
            "model": tags.values.get("model", ""),
            "provider": tags.values.get("provider", ""),
            "endpoint": tags.values.get("endpoint", ""),
            "trace_id": str(call.trace_id) if call.trace_id is not None else "",
            "span_id": str(call.span_id) if call.span_id is not None else "",
            "tokens": {"input": input_tokens, "output": output_tokens, "total": total_tokens},
            "duration_ms": call.duration_ns / 1e6,
            "timestamp": call.start_ns // 1_000_000,
        }
