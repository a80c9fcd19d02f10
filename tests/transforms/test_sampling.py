"""Sampler: deterministic per trace id (Datadog's Knuth hash), rates within bounds, rules, errors kept."""

from __future__ import annotations

import math
import random

import pytest

from llmship.config import SamplingConfig, SamplingRule
from llmship.transforms.sampling import Sampler, sampled, trace_hash

N = 10_000


def random_trace_ids(n: int = N, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


def kept_fraction(keep, ids) -> float:
    return sum(1 for t in ids if keep(t)) / len(ids)


def within_4_sigma(fraction: float, rate: float, n: int = N) -> bool:
    return abs(fraction - rate) <= 4 * math.sqrt(rate * (1 - rate) / n)


def test_hash_agrees_with_ddtrace_rate_sampler():
    from ddtrace._trace.sampler import RateSampler
    from ddtrace.trace import Span

    ids = random_trace_ids(2000)
    theirs = RateSampler(0.3)
    assert [sampled(t, 0.3) for t in ids] == [theirs.sample(Span("x", trace_id=t)) for t in ids]


def test_hash_uses_the_low_64_bits_of_a_128_bit_trace_id():
    low = 0xD17BAED11EF915F5
    assert trace_hash((0x6B03DF9500000000 << 64) | low) == trace_hash(low)


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_span_text_rate_over_random_trace_ids(rate):
    sampler = Sampler(SamplingConfig(span_text_rate=rate))
    fraction = kept_fraction(lambda t: sampler.keep_span_text(t, "svc", "m", "/e", False), random_trace_ids())
    assert within_4_sigma(fraction, rate), fraction


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_rate_holds_for_sequential_trace_ids(rate):
    sampler = Sampler(SamplingConfig(span_text_rate=rate))
    fraction = kept_fraction(lambda t: sampler.keep_span_text(t, "s", "m", "e", False), range(1, N + 1))
    assert within_4_sigma(fraction, rate), fraction


def test_decisions_are_deterministic_across_instances():
    ids = random_trace_ids(1000)
    a = Sampler(SamplingConfig(span_text_rate=0.5))
    b = Sampler(SamplingConfig(span_text_rate=0.5))
    first = [a.keep_span_text(t, "s", "m", "e", False) for t in ids]
    assert first == [b.keep_span_text(t, "s", "m", "e", False) for t in ids]
    assert first == [a.keep_span_text(t, "s", "m", "e", False) for t in ids]


def test_a_trace_kept_at_a_lower_rate_is_kept_at_every_higher_rate():
    ids = random_trace_ids()
    logs = Sampler(SamplingConfig(span_text_rate=0.3, prompt_log_rate=0.1,
                                  rules=(SamplingRule(prompt_log_rate=0.1),)))
    kept_logs = [t for t in ids if logs.keep_prompt_log(t, "s", "m", "e", False)]
    assert kept_logs and all(logs.keep_span_text(t, "s", "m", "e", False) for t in kept_logs)
    assert all(sampled(t, 0.2) for t in ids if sampled(t, 0.1))


def test_rates_zero_and_one():
    ids = random_trace_ids(1000)
    none = Sampler(SamplingConfig(span_text_rate=0.0))
    every = Sampler(SamplingConfig(span_text_rate=1.0))
    assert not any(none.keep_span_text(t, "s", "m", "e", False) for t in ids)
    assert all(every.keep_span_text(t, "s", "m", "e", False) for t in ids)
    assert all(every.keep_span_text(t, "s", "m", "e", False) for t in (0, (1 << 64) - 1))


def test_errors_are_always_kept():
    sampler = Sampler(SamplingConfig(span_text_rate=0.0, prompt_log_rate=0.0,
                                     rules=(SamplingRule(prompt_log_rate=0.0),)))
    ids = random_trace_ids(1000)
    assert all(sampler.keep_span_text(t, "s", "m", "e", True) for t in ids)
    assert all(sampler.keep_prompt_log(t, "s", "m", "e", True) for t in ids)
    assert sampler.keep_prompt_log(None, "s", "m", "e", True) is True


def test_first_matching_rule_that_sets_a_rate_decides_it():
    rules = (
        SamplingRule(service="chat*", model="gpt-4o*", span_text_rate=0.0),  # sets span text only
        SamplingRule(service="chat*", prompt_log_rate=1.0),
        SamplingRule(service="*", span_text_rate=1.0, prompt_log_rate=0.0),
    )
    sampler = Sampler(SamplingConfig(span_text_rate=0.5, prompt_log_rate=0.5, rules=rules))
    ids = random_trace_ids(500)
    assert not any(sampler.keep_span_text(t, "chatbot", "gpt-4o-mini", "/v1/chat/completions", False) for t in ids)
    assert all(sampler.keep_prompt_log(t, "chatbot", "gpt-4o-mini", "/v1/chat/completions", False) for t in ids)
    assert all(sampler.keep_span_text(t, "chatbot", "claude-3-haiku", "/v1/messages", False) for t in ids)
    assert not any(sampler.keep_prompt_log(t, "batch", "gpt-4o", "/v1/embeddings", False) for t in ids)
    assert sampler.rule_for("chatbot", "gpt-4o-mini", "/v1/chat/completions") is rules[0]
    assert sampler.rule_for("batch", "x", "y") is rules[2]


def test_globs_match_case_insensitively_on_each_field():
    rule = SamplingRule(service="ChatBot", model="GPT-4O-*", endpoint="/v1/chat/*", span_text_rate=0.0)
    sampler = Sampler(SamplingConfig(rules=(rule,)))
    assert sampler.rule_for("chatbot", "gpt-4o-mini", "/v1/chat/completions") is rule
    assert sampler.rule_for("chatbot", "gpt-4o-mini", "/v1/embeddings") is None
    assert sampler.rule_for("chatbot-2", "gpt-4o-mini", "/v1/chat/completions") is None


def test_prompt_log_decision_is_none_when_no_rule_sets_it():
    sampler = Sampler(SamplingConfig(prompt_log_rate=1.0, rules=(SamplingRule(service="x", span_text_rate=0.5),)))
    assert sampler.keep_prompt_log(123, "x", "m", "e", False) is None  # the rule only sets span text
    assert sampler.keep_prompt_log(123, "other", "m", "e", False) is None  # no rule matches


def test_prompt_log_rate_without_trace_id_is_a_coin_at_that_rate():
    keep_all = Sampler(SamplingConfig(rules=(SamplingRule(prompt_log_rate=1.0),)))
    keep_none = Sampler(SamplingConfig(rules=(SamplingRule(prompt_log_rate=0.0),)))
    assert all(keep_all.keep_prompt_log(None, "s", "m", "e", False) for _ in range(100))
    assert not any(keep_none.keep_prompt_log(None, "s", "m", "e", False) for _ in range(100))
    half = Sampler(SamplingConfig(rules=(SamplingRule(prompt_log_rate=0.5),)))
    fraction = sum(bool(half.keep_prompt_log(None, "s", "m", "e", False)) for _ in range(N)) / N
    assert within_4_sigma(fraction, 0.5), fraction


def test_decide_answers_as_keep_span_text_then_keep_prompt_log():
    """``decide`` (what an LLM call asks, in one look) gives what the two questions give, the global
    prompt_log_rate standing in where no rule sets one, for traces, errors, calls that log no prompt, and
    events without a trace id (a coin each, thrown in the same order)."""
    cfg = SamplingConfig(span_text_rate=0.6, prompt_log_rate=0.2, rules=(
        SamplingRule(service="billing*", span_text_rate=0.1),
        SamplingRule(model="gpt-4o*", prompt_log_rate=0.9),
    ))
    sampler = Sampler(cfg)
    cases = [(svc, model, "/v1/chat/completions") for svc in ("Billing-API", "chatbot")
             for model in ("GPT-4o-mini", "claude-3")]
    for trace_id in random_trace_ids(500) + [None] * 50:
        for service, model, endpoint in cases:
            for error in (False, True):
                for prompt_log in (False, True):
                    seed = random.random()
                    random.seed(seed)
                    text = sampler.keep_span_text(trace_id, service, model, endpoint, error)
                    log = sampler.keep_prompt_log(trace_id, service, model, endpoint, error) if prompt_log else False
                    if log is None:
                        log = sampled(trace_id, cfg.prompt_log_rate)
                    random.seed(seed)
                    assert sampler.decide(trace_id, service, model, endpoint, error, prompt_log) == (text, log)
