"""Pricing: shipped defaults, glob precedence, overrides, unknown models."""

from __future__ import annotations

import pytest

from llmship.config import Price, load_config_text
from llmship.transforms.pricing import Pricing, default_prices


@pytest.mark.parametrize("model, expected", [
    ("gpt-4o-mini", Price(0.15, 0.60)),
    ("gpt-4o-mini-2024-07-18", Price(0.15, 0.60)),  # the dated snapshot the capture reports
    ("GPT-4o-Mini-2024-07-18", Price(0.15, 0.60)),  # case-insensitive
    ("gpt-4o-2024-08-06", Price(2.50, 10.00)),
    ("gpt-4o-2024-05-13", Price(5.00, 15.00)),  # an exact key beats the "gpt-4o-20*" glob
    ("gpt-3.5-turbo-instruct", Price(1.50, 2.00)),
    ("text-embedding-3-small", Price(0.02, 0.00)),
    ("claude-3-5-sonnet-20241022", Price(3.00, 15.00)),
    ("claude-sonnet-4-5-20250929", Price(3.00, 15.00)),
    ("gemini-2.5-flash-lite", Price(0.10, 0.40)),  # more specific than gemini-2.5-flash*
    ("gemini-2.5-flash", Price(0.30, 2.50)),
    ("mistral-large-latest", Price(2.00, 6.00)),
    ("openai/gpt-4o-mini", Price(0.15, 0.60)),  # provider-qualified: the part after the last "/"
    ("models/gemini-1.5-pro-002", Price(1.25, 5.00)),
])
def test_default_prices(model, expected):
    assert Pricing().price_for(model) == expected


@pytest.mark.parametrize("model", ["gpt-4o-realtime-preview", "error-model", "my-finetune", "", "gpt-4o-mini-x"])
def test_unknown_models_have_no_price(model):
    assert Pricing().cost_usd(model, 1000, 1000) is None


def test_cost_is_per_million_tokens():
    assert Pricing().cost_usd("gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(0.15 + 0.30)
    assert Pricing().cost_usd("gpt-4o-mini-2024-07-18", 18, 7) == pytest.approx((18 * 0.15 + 7 * 0.60) / 1e6)


def test_override_with_a_default_key_replaces_the_default():
    pricing = Pricing({"gpt-4o-mini-20*": Price(9, 9)})
    assert pricing.price_for("gpt-4o-mini-2024-07-18") == Price(9, 9)
    assert pricing.price_for("gpt-4o-mini") == Price(0.15, 0.60)  # the exact default key still applies


def test_a_broad_override_does_not_beat_a_more_specific_default():
    pricing = Pricing({"gpt-4o*": Price(1, 1)})
    assert pricing.price_for("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)  # "gpt-4o-mini-20*" is longer
    assert pricing.price_for("gpt-4o-audio-preview") == Price(1, 1)  # no default: the override prices it


def test_catch_all_override_prices_unknown_models_only():
    pricing = Pricing({"*": Price(1, 2)})
    assert pricing.price_for("my-finetune") == Price(1, 2)
    assert pricing.price_for("gpt-4o") == Price(2.50, 10.00)


def test_ties_go_to_overrides_then_to_the_order_written():
    # "gpt-4o-mini-2?*" and the default "gpt-4o-mini-20*" both have 14 characters other than "*"
    assert Pricing({"gpt-4o-mini-2?*": Price(7, 7)}).price_for("gpt-4o-mini-2024-07-18") == Price(7, 7)
    pricing = Pricing({"a*c": Price(1, 1), "ab*": Price(2, 2)})
    assert pricing.price_for("abc") == Price(1, 1)


def test_exact_override_beats_every_glob():
    assert Pricing({"my-model": Price(3, 4)}).cost_usd("My-Model", 1e6, 1e6) == pytest.approx(7)


def test_config_pricing_table_reaches_pricing():
    cfg = load_config_text('[llm.pricing]\n"acme-*" = { input = 1.0, output = 2.0 }\n')
    assert Pricing(cfg.llm.pricing).cost_usd("acme-large", 1e6, 1e6) == pytest.approx(3.0)


def test_shipped_table_covers_each_provider_with_sane_prices():
    prices = default_prices()
    for family in ("gpt-4o", "claude-", "gemini-", "mistral-"):
        assert any(key.startswith(family) for key in prices), family
    assert all(0 <= p.input <= 100 and 0 <= p.output <= 200 for p in prices.values())
