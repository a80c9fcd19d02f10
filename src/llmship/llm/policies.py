"""The policies applied to every ``LLMCall``, in this order (``llm/stage.py`` runs them):

1. proxy: a call whose HTTP child span went to one of ``llm.instrumented_proxy_urls`` is the client side of
   a call an instrumented proxy reports itself: it becomes a ``workflow`` span without model or token
   metrics and derives no ``llm.*`` metrics, so proxy and clients never double-count;
2. identity and tags: service, env, version, model, provider, endpoint and org (the provider account, when
   the carrier names it) normalized as Datadog tags, the agent's tags for the keys a call lacks (``Tags``);
3. text: scrubbed, then each message content / value / document text cut to ``llm.max_text_chars``
   (marker ``…[truncated]``, tag ``llmship.truncated:true``, ``metadata.llmship.truncated``); dropped from the
   event when the trace is not sampled for span text (tag ``llmship.text_sampled:false``); errors keep it;
   a streamed response without a usage chunk gets tokens estimated from its text (``tokens_estimated:true``);
4. metrics: ``llm.requests``, ``llm.errors``, ``llm.request.duration`` (seconds), ``llm.tokens.*``,
   ``llm.cost.usd`` (list prices) and the ``llm.ratelimit.*`` gauges as metric samples (and, when
   configured, the names older integrations emitted: ``llm/compat.py``);
5. sample log: for ``prompt_log_rate`` of the calls (errors always), a log built from the processed text.

Each returns what it produces (metric samples, a log record) rather than writing anywhere: the router
decides what is shipped (a call seen on two paths is counted once).
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from llmship.llm import extract
from llmship.model import LLMCall, LLMObsEvent, LogRecord, MetricSample, Span, Tokens
from llmship.tags import add_missing, normalize_tag
from llmship.transforms import privacy
from llmship.transforms.pricing import Pricing
from llmship.transforms.sampling import Sampler
from llmship.transforms.truncate import truncate_text

# Endpoints whose streamed responses carry usage only when the request set stream_options.include_usage
# (OpenAI API reference, "stream_options"); without it ddtrace reports its own estimate.
_USAGE_OPT_IN_ENDPOINTS = frozenset(("/v1/chat/completions", "/v1/completions"))
# Token estimate for text whose usage was not reported: ~4 characters per token, OpenAI's rule of thumb
# for English ("What are tokens and how to count them"); no tokenizer dependency.
CHARS_PER_TOKEN = 4
# Keys of input/output structures that label text rather than hold it: never scrubbed or truncated.
_STRUCTURAL_KEYS = privacy.STRUCTURAL_KEYS
# The structural keys and those whose values privacy.is_structural always spares (user agents); any other
# key it may spare ends in "d" or "D" (an id key).
_TEXT_SKIP_KEYS = _STRUCTURAL_KEYS | privacy._USER_AGENT_KEYS
_TOKEN_METRICS = ("input_tokens", "output_tokens", "total_tokens")
MAX_CACHED = 4096  # tag strings and proxy URL decisions: few distinct values; bound against junk input
# Texts the scrub rules leave unchanged, remembered with their truncated form: system prompts, few-shot
# examples and retrieved documents repeat from call to call, and a hit costs a hash instead of the rules'
# scans. Bounded in characters (about 4-16 MB of strings) and emptied when full, like the caches above.
_MAX_CLEAN_TEXT_CHARS = 4_000_000
_MAX_CLEAN_TEXT_ENTRIES = 50_000


def bounded_put(cache: dict, key, value, limit: int = MAX_CACHED):
    """Remember ``value`` under ``key``, emptying the cache first when it is full: junk input with ever
    new keys costs a cache miss, never memory."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


# ------------------------------------------------------------------------------------------ 1. proxy


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


class Proxies:
    def __init__(self, urls) -> None:
        self.prefixes = tuple(p for p in map(normalize_url, urls) if p)
        self._decisions: dict[str, bool] = {}

    def proxied_parents(self, spans: list[Span]) -> set[int]:
        """Span ids whose child HTTP span called an instrumented proxy."""
        if not self.prefixes:
            return set()
        return {s.parent_id for s in spans
                if s.parent_id and (url := s.meta.get("http.url")) and self._is_proxy(url)}

    def _is_proxy(self, url: str) -> bool:
        found = self._decisions.get(url)
        if found is None:
            normalized = normalize_url(url)
            found = bounded_put(self._decisions, url,
                                normalized is not None and normalized.startswith(self.prefixes))
        return found


def make_workflow(call: LLMCall) -> None:
    """The client side of an instrumented proxy: what ddtrace itself emits for such a call
    (DD_LLMOBS_INSTRUMENTED_PROXY_URLS): a workflow span without model or token metrics."""
    call.kind = "workflow"
    call.proxied = True
    call.tokens = Tokens()
    if call.span is not None:
        call.span.meta["_dd.llmobs.span_kind"] = "workflow"
        metrics = call.span.metrics
        for key in [k for k in metrics if k.startswith("_dd.llmobs.") and k.endswith("_tokens")]:
            del metrics[key]
    event = call.event
    if event is not None:
        ev_meta = event["meta"]
        ev_meta["span"] = {**(ev_meta.get("span") or {}), "kind": "workflow"}
        ev_meta.pop("model_name", None)
        ev_meta.pop("model_provider", None)
        metrics = event.get("metrics")
        if isinstance(metrics, dict):
            for key in [k for k in metrics if k.endswith("_tokens")]:
                del metrics[key]


# ------------------------------------------------------------------------------------------ 2. tags


class TagSet:
    """A call's tags in every form they are used, computed once per distinct identity."""

    __slots__ = ("values", "span_tags", "metric_tags", "with_agent_tags", "log_tags")

    def __init__(self, call: LLMCall, agent_tags: dict[str, str]) -> None:
        identity: dict[str, str] = {}  # key -> normalized "key:value"
        for key, value in (("service", call.service), ("env", call.env), ("version", call.version),
                           ("model", call.model), ("provider", call.provider), ("endpoint", call.endpoint),
                           ("org", call.org)):
            tag = normalize_tag(f"{key}:{value}") if value else ""
            if tag:
                identity[key] = tag
        if call.tokens_estimated:
            identity["tokens_estimated"] = "tokens_estimated:true"
        # the values as they read in the normalized tags (span meta and sample log fields)
        self.values = {key: tag[len(key) + 1:] for key, tag in identity.items()}
        # what tag_span adds to the APM span that carries the call: (key, value) for each it has
        self.span_tags = tuple((key, self.values[key]) for key in ("model", "provider", "endpoint")
                               if key in self.values)
        # the aggregator completes metric tags with the agent's tags for keys they lack
        self.metric_tags = ",".join(identity.values())
        # key -> tag: the call's own, then the agent's for the keys it lacks
        self.with_agent_tags = {**identity, **{k: t for k, t in agent_tags.items() if k not in identity}}
        self.log_tags = ",".join(self.with_agent_tags.values())


class Tags:
    def __init__(self, agent_tags: dict[str, str]) -> None:
        self._agent_tags = agent_tags  # key -> normalized tag: the agent's env, service, version and tags
        self._sets: dict[tuple, TagSet] = {}
        # (tag set, an event's own tags) -> the tags tag_event adds: the same app sends the same tags
        self._additions: dict[tuple, list[str]] = {}

    def of(self, call: LLMCall) -> TagSet:
        key = (call.service, call.env, call.version, call.model, call.provider, call.endpoint, call.org,
               call.tokens_estimated)
        found = self._sets.get(key)
        return found if found is not None else bounded_put(self._sets, key, TagSet(call, self._agent_tags))

    def tag_span(self, call: LLMCall, tag_set: TagSet | None = None) -> None:
        """The APM span carrying a call says its model, provider and endpoint too, as normalized tags.
        ``tag_set``: ``of(call)``, when the caller has it."""
        meta = call.span.meta
        for key, value in (tag_set or self.of(call)).span_tags:
            if key not in meta:
                meta[key] = value

    def tag_event(self, event: LLMObsEvent, call: LLMCall, markers: list[str], tag_set: TagSet | None = None) -> None:
        tags = event.get("tags")
        if not isinstance(tags, list):
            tags = event["tags"] = []
        tag_set = tag_set or self.of(call)
        try:
            key = (tag_set, tuple(tags))
            additions = self._additions.get(key)
        except TypeError:  # an unhashable junk tag: add_missing decides what to do with it
            key = additions = None
        if additions is None:
            additions = add_missing(list(tags), tag_set.with_agent_tags)[len(tags):]
            if key is not None:
                bounded_put(self._additions, key, additions)
        tags.extend(additions)
        tags.extend(markers)


def own_identity(tags, cache: dict) -> tuple[str, str, str]:
    """The service, env and version an EVP event's tags name (the first of each), "" where none."""
    if not isinstance(tags, list):
        return "", "", ""
    try:
        key = tuple(tags)
        found = cache.get(key)
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
            bounded_put(cache, key, found)
    return found


# ------------------------------------------------------------------------------------------ 3. text


class CleanTexts:
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

    def __init__(self, scrub, max_chars: int, rewrite: bool, clean: CleanTexts) -> None:
        self.scrub = scrub
        self.max_chars = max_chars
        self.rewrite = rewrite
        self.clean = clean
        self.chars = 0
        self.truncated = False

    def text(self, value: str) -> str | None:
        """The scrubbed then cut text; None when a drop_field rule matched (the field goes)."""
        self.chars += len(value)
        if not self.rewrite:
            return value
        done = self.clean.results.get(value)
        if done is None:
            scrubbed = self.scrub(value)
            if scrubbed is None:
                return None
            done = truncate_text(scrubbed, self.max_chars)  # scrub first: never cut a secret in two
            if scrubbed == value:
                self.clean.remember(value, done)
        self.truncated |= done[1]
        return done[0]

    def walk(self, node, depth: int = 0) -> None:
        if depth > privacy.MAX_NESTING:
            raise RecursionError(f"nested more than {privacy.MAX_NESTING} levels deep")
        # Exact type tests first: isinstance on a value of another type takes CPython's slow path, and the
        # text policy runs for every string of every call; the isinstance after each keeps subclasses.
        results = self.clean.results if self.rewrite else None
        if isinstance(node, dict):
            dropped = None
            for key, value in node.items():
                cls = value.__class__
                if cls is str or (cls is not dict and cls is not list and isinstance(value, str)):
                    if key in _TEXT_SKIP_KEYS or (key.__class__ is str and key[-1:] in "dD"
                                                  and privacy.is_structural(key, value)):
                        continue
                    done = results.get(value) if results is not None else None
                    if done is None:
                        new = node[key] = self.text(value)
                        if new is None:
                            dropped = (dropped or []) + [key]
                    else:  # text(value), for a text found clean before, without the call
                        self.chars += len(value)
                        if done[1]:  # cut; else its text is this one
                            self.truncated = True
                            node[key] = done[0]
                elif cls is dict or cls is list or isinstance(value, (dict, list)):
                    self.walk(value, depth + 1)
            for key in dropped or ():
                del node[key]
        elif isinstance(node, list):
            dropped = False
            for i, value in enumerate(node):
                cls = value.__class__
                if cls is str or (cls is not dict and cls is not list and isinstance(value, str)):
                    new = node[i] = self.text(value)
                    dropped |= new is None
                elif cls is dict or cls is list or isinstance(value, (dict, list)):
                    self.walk(value, depth + 1)
            if dropped:
                node[:] = [v for v in node if v is not None]


class TextDecision:
    __slots__ = ("keep_text", "keep_log", "markers", "truncated", "estimated")

    def __init__(self, keep_text: bool, keep_log: bool) -> None:
        self.keep_text = keep_text
        self.keep_log = keep_log
        self.markers: list[str] = []
        self.truncated = False
        self.estimated = False


class TextPolicy:
    """Scrub, truncate and sample an event's text; estimate tokens a streamed response did not report."""

    def __init__(self, scrub, max_chars: int, sampler: Sampler, scrubber=None) -> None:
        """``scrub(text) -> str | None``: None when the field must go (``Scrubber.scrub_value``);
        ``scrubber``: for the rest of the event (metadata, tags, tool definitions, field policies)."""
        self._scrub = scrub
        self._scrubber = scrubber
        self._max_chars = max_chars
        self._sampler = sampler
        self._clean_texts = CleanTexts()  # results depend on max_text_chars: a reload starts afresh
        self._clean_errors = CleanTexts()  # error messages and stacks (not truncated)
        self._event_rest = privacy.EventRest(scrubber) if scrubber is not None else None
        self._text_pass = _TextPass(scrub, max_chars, True, self._clean_texts)  # reset for each call (_scrub_all)

    def apply(self, call: LLMCall) -> TextDecision:
        event = call.event
        ev_meta = event["meta"]
        keep_text, keep_log = self._sampler.decide(call.trace_id, call.service, call.model, call.endpoint,
                                                    call.error, call.is_call)
        decision = TextDecision(keep_text, keep_log)
        estimate = call.kind == "llm" and _usage_missing(call, ev_meta)
        rewrite = keep_text or keep_log
        try:
            self._scrub_all(call, decision, rewrite, estimate)
        except Exception as e:
            # Never shipped raw: the emitter drops the chunk or batch and counts a processing error, and
            # nothing of the call is marked shipped, so a copy on the other path still goes.
            if self._scrubber is not None:
                self._scrubber.telemetry.inc("scrub_failed", kind="llmobs")
            raise privacy.ScrubFailed(f"{type(e).__name__}: {e}") from e
        return decision

    def _scrub_all(self, call: LLMCall, decision: TextDecision, rewrite: bool, estimate: bool) -> None:
        event = call.event
        ev_meta = event["meta"]
        kept = None
        scrubber = self._scrubber
        if scrubber is not None:  # field policies first (a dropped system prompt is gone from the sample
            # log too), then every string but input, output and error
            kept = scrubber.fields.apply("llmobs", event, scrubber.telemetry)
            self._event_rest(event)
        error = ev_meta.get("error")
        if error is not None:
            self._scrub_error(error)  # shipped whether the text is sampled or not
        if rewrite or estimate:
            text = self._text_pass
            text.scrub, text.rewrite, text.chars, text.truncated = self._scrub, rewrite, 0, False
            text.walk(ev_meta.get("input"))
            input_chars, text.chars = text.chars, 0
            text.walk(ev_meta.get("output"))
            if text.truncated:
                decision.truncated = True
                decision.markers.append("llmship.truncated:true")
                _note(ev_meta, truncated=True, max_text_chars=self._max_chars)
            if estimate:
                _estimate_tokens(call, event, input_chars, text.chars)
                decision.estimated = True
                decision.markers.append("tokens_estimated:true")
        if kept:
            privacy.restore(kept)

    def drop_unsampled(self, call: LLMCall, decision: TextDecision) -> None:
        """After the sample log took what it needs: an unsampled trace's event loses its text."""
        if not decision.keep_text:
            ev_meta = call.event["meta"]
            ev_meta.pop("input", None)
            ev_meta.pop("output", None)
            decision.markers.append("llmship.text_sampled:false")
            _note(ev_meta, text_sampled=False)

    def _scrub_error(self, error) -> None:
        if isinstance(error, dict):
            clean = self._clean_errors
            for key in ("message", "stack"):
                value = error.get(key)
                if isinstance(value, str) and value not in clean.results:  # stacks repeat: scrub each once
                    scrubbed = error[key] = self._scrub(value)
                    if scrubbed is None:
                        del error[key]
                    elif scrubbed == value:
                        clean.remember(value, (value, False))


def _usage_missing(call: LLMCall, ev_meta: dict) -> bool:
    """A streamed response whose usage chunk was not reported: no token counts at all, or an OpenAI
    endpoint streamed without stream_options.include_usage (whatever counts exist are estimates)."""
    metadata = ev_meta.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("stream"):
        return False
    if call.tokens.input is None and call.tokens.output is None:
        return True
    if call.endpoint in _USAGE_OPT_IN_ENDPOINTS:
        options = metadata.get("stream_options")
        return not (isinstance(options, dict) and options.get("include_usage") is True)
    return False


def _estimate_tokens(call: LLMCall, event: LLMObsEvent, input_chars: int, output_chars: int) -> None:
    call.tokens_estimated = True
    if call.tokens.input is not None or call.tokens.output is not None:
        return  # the tracer already estimated them from the same text: keep its figures
    call.tokens = Tokens(math.ceil(input_chars / CHARS_PER_TOKEN), math.ceil(output_chars / CHARS_PER_TOKEN))
    metrics = event.get("metrics")
    if not isinstance(metrics, dict):
        metrics = event["metrics"] = {}
    metrics.update(zip(_TOKEN_METRICS, (call.tokens.input, call.tokens.output, call.tokens.total)))


def _note(ev_meta: dict, **notes) -> None:
    """Say in the event's metadata (shown with the span in LLM Observability) what llmship changed."""
    metadata = ev_meta.get("metadata")
    if not isinstance(metadata, dict):
        metadata = ev_meta["metadata"] = {}
    llmship = metadata.get("llmship")
    if not isinstance(llmship, dict):
        llmship = metadata["llmship"] = {}
    llmship.update(notes)


# ------------------------------------------------------------------------------------------ 4. metrics


# The rate-limit gauges' names, made once (the keys extract.span_rate_limits gives)
_RATE_LIMIT_NAMES = {key: f"llm.ratelimit.{key}" for key in extract._RATE_LIMIT_METRICS}


def call_metrics(call: LLMCall, tags: str, pricing: Pricing) -> tuple[list[MetricSample], bool]:
    """The ``llm.*`` samples of one call, and whether its cost was unknown (a model without a price)."""
    samples: list[MetricSample] = [("llm.requests", "c", 1, tags)]
    if call.error:
        samples.append(("llm.errors", "c", 1, tags))
    samples.append(("llm.request.duration", "d", call.duration_ns / 1e9, tags))
    if call.rate_limits:  # the headroom left before the provider answers 429, as of this answer
        for key, value in call.rate_limits.items():
            samples.append((_RATE_LIMIT_NAMES.get(key) or f"llm.ratelimit.{key}", "g", value, tags))
    tokens = call.tokens
    if tokens.total is None:
        return samples, False
    input_tokens = tokens.input or 0
    output_tokens = tokens.output or 0
    samples += (("llm.tokens.input", "c", input_tokens, tags), ("llm.tokens.output", "c", output_tokens, tags),
                ("llm.tokens.total", "c", tokens.total, tags))
    cost = pricing.cost_usd(call.model, input_tokens, output_tokens, cache_read=tokens.cache_read or 0,
                            cache_write=tokens.cache_write or 0, reasoning=tokens.reasoning or 0,
                            provider=call.provider)
    if cost is not None:
        samples.append(("llm.cost.usd", "c", cost, tags))
    return samples, cost is None


# ------------------------------------------------------------------------------------------ 5. sample log


def sample_log(call: LLMCall, tags: TagSet, hostname: str) -> LogRecord:
    ev_meta = call.event["meta"] if call.event is not None else {}
    completion = _section_text(ev_meta.get("output"), with_roles=False)
    error = ev_meta.get("error")
    error_message = _str(error.get("message")) if isinstance(error, dict) else ""
    tokens = call.tokens
    return {
        "message": (error_message or completion) if call.error else completion,
        "ddsource": "llmship",
        "service": tags.values.get("service", ""),
        "hostname": hostname,
        "status": "error" if call.error else "info",
        "ddtags": tags.log_tags,
        "prompt": _section_text(ev_meta.get("input"), with_roles=True),
        "completion": completion,
        "model": tags.values.get("model", ""),
        "provider": tags.values.get("provider", ""),
        "endpoint": tags.values.get("endpoint", ""),
        "trace_id": str(call.trace_id) if call.trace_id is not None else "",
        "span_id": str(call.span_id) if call.span_id is not None else "",
        "tokens": {"input": tokens.input, "output": tokens.output, "total": tokens.total},
        "duration_ms": call.duration_ns / 1e6,
        "timestamp": call.start_ns // 1_000_000,
    }


def _str(value) -> str:
    return value if isinstance(value, str) else ""


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
