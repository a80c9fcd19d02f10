"""The LLM stage of the processing plane: carriers in, ``CallOutput``s out.

For a trace chunk, it finds the spans that carry an LLM Observability span (``extract.carriers``),
extracts each ``LLMCall`` and applies the policies (``llm/policies.py``); for EVP events, the same. It
writes nowhere: each call's output (the event to ship, its metric samples, its sample log) goes to the
router, which ships an event and counts a call once even when the tracer sent it on both paths.

A call whose event cannot be read, or whose text processing fails, still yields its metrics (they come
from the span's own tags when the event is unreadable); only the event is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmship.config import Config
from llmship.llm import compat, extract, policies
from llmship.llm.policies import Proxies, Tags, TextPolicy
from llmship.log import RateLimited, get_logger
from llmship.model import LLMCall, LLMObsEvent, LogRecord, MetricSample, Span
from llmship.sinks.otlp import operation_name
from llmship.tags import agent_default_tags
from llmship.telemetry import Telemetry
from llmship.transforms.pricing import Pricing
from llmship.transforms.sampling import Sampler

_log = RateLimited(get_logger("llm"))


@dataclass(slots=True)
class CallOutput:
    """What one call produces; the router ships the event once per ``span_id`` and the samples and log
    once per ``span_id`` (None: no id to de-duplicate on, always shipped). The processing plane replaces the
    event and the log by their encoded bytes before handing them over."""

    span_id: int | None
    event: LLMObsEvent | bytes | None = None
    samples: list[MetricSample] = field(default_factory=list)
    log: LogRecord | bytes | None = None
    # For the OTLP sink (sinks/otlp.py): the call for the GenAI histograms (a plain tuple, ``GenAICall``),
    # and the OTLP span and log items the processing plane encoded (a span item b"": the call's span is in
    # its chunk, shipped with it; None: none to ship).
    genai: tuple | None = None
    otlp_span: bytes | None = None
    otlp_log: bytes | None = None


class LLMStage:
    def __init__(self, cfg: Config, scrubber, telemetry: Telemetry) -> None:
        self._scrubber = scrubber
        self._scrub = scrubber.scrub_value
        self._tel = telemetry.component("llm")
        self._identities: dict[tuple, tuple[str, str, str]] = {}  # an EVP event's tags -> its identity
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        agent, llm = cfg.agent, cfg.llm
        self._hostname = agent.hostname
        self._defaults = (agent.service, agent.env, agent.version)
        self._pricing = Pricing(llm.pricing)
        self._proxies = Proxies(llm.instrumented_proxy_urls)
        self._tags = Tags(agent_default_tags(agent))
        self._text = TextPolicy(self._scrub, llm.max_text_chars, Sampler(llm.sampling), self._scrubber)
        self._openai_compat = compat.OpenAICompat() if "openai" in llm.compat_metrics else None
        self._genai = cfg.ships_to_otlp  # only the OTLP sink reads a call's GenAI tuple (CallOutput.genai)

    # ------------------------------------------------------------------------------------------ carriers

    def process_chunk(self, spans: list[Span]) -> list[CallOutput]:
        """The calls one trace chunk carries (usually none: then this costs one scan of the span types)."""
        carriers = extract.carriers(spans)
        if not carriers:
            return []
        proxied = self._proxies.proxied_parents(spans)
        outputs = []
        service, env, version = self._defaults
        for span in carriers:
            try:
                call = extract.from_span(span, service, env, version)
            except extract.BadEvent as e:
                self._bad_event(e)
                # The APM span is good and still says it was a call: count it from its own tags and metrics.
                span.meta_struct = {k: v for k, v in span.meta_struct.items() if k != "_llmobs"}
                call = extract.from_span(span, service, env, version)
            if span.span_id in proxied:
                policies.make_workflow(call)
                self._tel.inc("proxied_calls")
            outputs.append(self._process(call))
        return outputs

    def process_calls(self, spans: list[Span], calls: list[LLMCall]) -> list[CallOutput]:
        """Calls a source extracted itself from the chunk ``spans`` (OTLP GenAI spans, ``llm/otlp.py``):
        the agent's defaults for what they do not name, proxy awareness from the chunk's HTTP client spans
        (``http.url``, which the OTLP conversion maps from ``url.full``), then the same policies."""
        proxied = self._proxies.proxied_parents(spans)
        service, env, version = self._defaults
        outputs = []
        for call in calls:
            call.service = call.service or service
            call.env = call.env or env
            call.version = call.version or version
            if call.span_id in proxied and call.is_call:
                policies.make_workflow(call)
                self._tel.inc("proxied_calls")
            outputs.append(self._process(call))
        return outputs

    def process_events(self, events: list) -> list[CallOutput]:
        """Events posted to the EVP proxy; one that cannot be read is counted and the rest carry on."""
        outputs = []
        for event in events:
            try:
                identity = policies.own_identity(event.get("tags") if isinstance(event, dict) else None,
                                                 self._identities)
                call = extract.from_event(event, identity, self._defaults)
            except extract.BadEvent as e:
                self._bad_event(e)
                continue
            outputs.append(self._process(call))
        return outputs

    # ------------------------------------------------------------------------------------------ policies

    def _process(self, call: LLMCall) -> CallOutput:
        out = CallOutput(call.span_id)
        tag_set = None  # the call's tags, once the text policy has run (it may mark tokens as estimated)
        if call.event is not None:
            try:
                decision = self._text.apply(call)
                tag_set = self._tags.of(call)
                if decision.keep_log:
                    out.log = policies.sample_log(call, tag_set, self._hostname)
                self._text.drop_unsampled(call, decision)
                self._tags.tag_event(call.event, call, decision.markers, tag_set)
                self._count_text(decision)
                out.event = call.event
            except extract.BAD_EVENT as e:  # an event shape we did not foresee: ship the call's metrics anyway
                self._bad_event(e)
                out.log = None
        if tag_set is None:
            tag_set = self._tags.of(call)
        if call.span is not None:
            self._tags.tag_span(call, tag_set)
        if call.is_call:
            if self._genai:
                out.genai = genai_call(call)
            out.samples, unknown_cost = policies.call_metrics(call, tag_set.metric_tags, self._pricing)
            if unknown_cost:
                self._tel.inc("unknown_model_cost")
            if self._openai_compat is not None and compat.from_openai_client(call):
                out.samples += self._openai_compat.samples(call)
        return out

    def _count_text(self, decision) -> None:
        if decision.truncated:
            self._tel.inc("text_truncated")
        if decision.estimated:
            self._tel.inc("tokens_estimated")
        if not decision.keep_text:
            self._tel.inc("text_sampled_out")

    def _bad_event(self, error: Exception) -> None:
        self._tel.discard("bad_llmobs_event")
        self._tel.error("bad_llmobs_event", f"{type(error).__name__}: {error}")
        _log.warning("bad_llmobs_event", "llmobs_event_rejected", error=f"{type(error).__name__}: {error}")


def genai_call(call: LLMCall) -> tuple:
    """What the OTLP sink's GenAI histograms need of a call (sinks.otlp.GenAICall)."""
    error_type = None
    if call.error:
        meta = call.span.meta if call.span is not None else (call.event or {}).get("meta") or {}
        error_type = (meta.get("error.type") if isinstance(meta, dict) else None) or "_OTHER"
    return (call.service, call.env, operation_name(call.kind, call.endpoint or ""), (call.provider or "").lower(),
            call.model or "", call.model or "", error_type, call.tokens.input, call.tokens.output,
            call.duration_ns / 1e9 if call.duration_ns else None)
