"""Which LLM calls keep their prompt/completion text on spans, and which also become a sample log.

Decisions are deterministic per trace: the trace id is hashed with Datadog's Knuth sampler (the one
tracers and the Agent use, so a trace is all-in or all-out across services and restarts) and compared
with ``rate * 2**64``. Span text and prompt logs share the hash, so a trace kept at a lower rate is also
kept at any higher rate: with ``prompt_log_rate <= span_text_rate`` every sampled prompt log belongs to a
trace whose spans kept their text. Erroring calls always keep their text and their log.

Rates come from ``[llm.sampling]``: the global ``span_text_rate`` / ``prompt_log_rate`` and ``rules``
(globs on service, model and endpoint, matched case-insensitively against the normalized tag values).
For each of the two rates, the first rule that matches *and sets that rate* decides; a rule that leaves
a rate unset does not affect it. ``keep_prompt_log`` answers None when no rule decides, so the caller
picks the default (the LLM processor uses the global ``prompt_log_rate``; the logs processor keeps a
received log).
"""

from __future__ import annotations

import fnmatch
import random
import re

from llmship.config import SamplingConfig, SamplingRule

# Datadog's sampling hash: (trace_id * KNUTH_FACTOR) mod 2**64 compared with rate * 2**64.
# dd-trace-py ddtrace/internal/constants.py SAMPLING_KNUTH_FACTOR, used by ddtrace/_trace/sampler.py.
KNUTH_FACTOR = 1111111111111111111
_UINT64 = 1 << 64
_MASK64 = _UINT64 - 1
_MAX_CACHED_MATCHES = 4096  # (service, model, endpoint) combinations are few; bound against junk input


def threshold(rate: float) -> int:
    """The hash bound for ``rate``: rate 1.0 keeps every trace, 0.0 none."""
    return int(rate * _UINT64)


def trace_hash(trace_id: int) -> int:
    """Knuth's multiplicative hash of the low 64 bits of a trace id (as Datadog's samplers use it)."""
    return ((trace_id & _MASK64) * KNUTH_FACTOR) & _MASK64


def sampled(trace_id: int | None, rate: float) -> bool:
    """Keep this trace at ``rate``? Without a trace id there is nothing to be consistent with: a coin."""
    if trace_id is None:
        return random.random() < rate
    return trace_hash(trace_id) < threshold(rate)


class _CompiledRule:
    __slots__ = ("rule", "service", "model", "endpoint")

    def __init__(self, rule: SamplingRule) -> None:
        self.rule = rule
        self.service = re.compile(fnmatch.translate(rule.service.lower())).match
        self.model = re.compile(fnmatch.translate(rule.model.lower())).match
        self.endpoint = re.compile(fnmatch.translate(rule.endpoint.lower())).match

    def matches(self, service: str, model: str, endpoint: str) -> bool:
        return bool(self.service(service) and self.model(model) and self.endpoint(endpoint))


class Sampler:
    def __init__(self, sampling_cfg: SamplingConfig) -> None:
        self.span_text_rate = sampling_cfg.span_text_rate
        self.prompt_log_rate = sampling_cfg.prompt_log_rate
        self._rules = [_CompiledRule(rule) for rule in sampling_cfg.rules]
        # (service, model, endpoint) as sent -> what _rates returns
        self._decisions: dict[tuple[str, str, str], tuple[SamplingRule | None, float, float | None, int, int]] = {}

    def _rates(self, service: str, model: str, endpoint: str
               ) -> tuple[SamplingRule | None, float, float | None, int, int]:
        """(first matching rule, span text rate, prompt log rate or None, and for ``decide`` the thresholds of
        the span text rate and of the prompt log rate that applies: made once per combination)."""
        sent = (service, model, endpoint)
        found = self._decisions.get(sent)  # remembered as sent: a hit needs no lowering
        if found is not None:
            return found
        key = (service.lower(), model.lower(), endpoint.lower())
        first: SamplingRule | None = None
        span_text_rate: float | None = None
        prompt_log_rate: float | None = None
        for compiled in self._rules:
            if not compiled.matches(*key):
                continue
            rule = compiled.rule
            first = first or rule
            if span_text_rate is None:
                span_text_rate = rule.span_text_rate
            if prompt_log_rate is None:
                prompt_log_rate = rule.prompt_log_rate
            if span_text_rate is not None and prompt_log_rate is not None:
                break
        if span_text_rate is None:
            span_text_rate = self.span_text_rate
        found = (first, span_text_rate, prompt_log_rate, threshold(span_text_rate),
                 threshold(self.prompt_log_rate if prompt_log_rate is None else prompt_log_rate))
        if len(self._decisions) >= _MAX_CACHED_MATCHES:
            self._decisions.clear()
        self._decisions[sent] = found
        return found

    def decide(self, trace_id: int | None, service: str, model: str, endpoint: str, error: bool,
               prompt_log: bool) -> tuple[bool, bool]:
        """``keep_span_text`` and, when ``prompt_log``, ``keep_prompt_log`` with ``prompt_log_rate`` where no
        rule decides (else False), from one look at the rules and one hash: what an LLM call needs."""
        if error:
            return True, prompt_log
        _, text_rate, log_rate, text_bound, log_bound = self._rates(service, model, endpoint)
        if trace_id is None:  # a coin for each, as keep_span_text then keep_prompt_log would throw them
            return random.random() < text_rate, prompt_log and random.random() < (
                self.prompt_log_rate if log_rate is None else log_rate)
        hashed = trace_hash(trace_id)
        return hashed < text_bound, prompt_log and hashed < log_bound

    def rule_for(self, service: str, model: str, endpoint: str) -> SamplingRule | None:
        """The first rule whose globs all match, or None."""
        return self._rates(service, model, endpoint)[0]

    def keep_span_text(self, trace_id: int | None, service: str, model: str, endpoint: str, error: bool) -> bool:
        """Keep the prompt/completion text on this call's span? (trace_id None: an event without one)"""
        if error:
            return True
        return sampled(trace_id, self._rates(service, model, endpoint)[1])

    def keep_prompt_log(self, trace_id: int | None, service: str, model: str, endpoint: str,
                        error: bool) -> bool | None:
        """Emit (or keep) a prompt/completion sample log for this call? None when no rule sets a
        prompt_log_rate for it: the caller applies its own default."""
        if error:
            return True
        rate = self._rates(service, model, endpoint)[2]
        if rate is None:
            return None
        return sampled(trace_id, rate)
