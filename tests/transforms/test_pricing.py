"""Pricing: the genai-prices snapshot, overrides, cache and reasoning tokens, tiers, unknown models.

Expected prices are the snapshot's (src/llmship/data/genai_prices.json), not written by hand elsewhere."""

from __future__ import annotations

import orjson
import pytest
from importlib import resources

from llmship.config import Price, load_config_text
from llmship.transforms.pricing import Pricing, default_prices, table


def flat(price: Price | None) -> tuple[float, float] | None:
    return None if price is None else (price.input, price.output)


@pytest.mark.parametrize("model, provider, expected", [
    ("gpt-4o-mini", "", (0.15, 0.60)),
    ("gpt-4o-mini-2024-07-18", "openai", (0.15, 0.60)),  # the dated snapshot the capture reports
    ("GPT-4o-Mini-2024-07-18", "OpenAI", (0.15, 0.60)),  # case-insensitive
    ("gpt-4o-2024-08-06", "", (2.50, 10.00)),
    ("gpt-4o-2024-05-13", "", (5.00, 15.00)),
    ("gpt-3.5-turbo-instruct", "openai", (1.50, 2.00)),
    ("text-embedding-3-small", "openai", (0.02, 0.00)),
    ("claude-3-5-sonnet-20241022", "", (3.00, 15.00)),
    ("claude-sonnet-4-5-20250929", "anthropic", (3.00, 15.00)),
    ("gemini-2.5-flash-lite", "", (0.10, 0.40)),
    ("gemini-2.5-flash", "google", (0.30, 2.50)),
    ("mistral-large-latest", "", (2.00, 6.00)),
    ("openai/gpt-4o-mini", "", (0.15, 0.60)),  # provider-qualified: the part after the last "/"
    ("models/gemini-1.5-pro-002", "", (1.25, 5.00)),
])
def test_table_prices(model, provider, expected):
    assert flat(Pricing().price_for(model, provider)) == pytest.approx(expected)


@pytest.mark.parametrize("model", ["error-model", "my-finetune", "", "gpt-4o-mini-x"])
def test_unknown_models_have_no_price(model):
    assert Pricing().cost_usd(model, 1000, 1000) is None


def test_cost_is_per_million_tokens():
    assert Pricing().cost_usd("gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(0.15 + 0.30)
    assert Pricing().cost_usd("gpt-4o-mini-2024-07-18", 18, 7) == pytest.approx((18 * 0.15 + 7 * 0.60) / 1e6)


def test_cache_read_and_write_tokens_at_their_own_rates():
    price = Pricing().price_for("claude-3-5-sonnet-20241022", "anthropic")
    assert price.cache_read is not None and price.cache_write is not None
    cost = Pricing().cost_usd("claude-3-5-sonnet-20241022", 1000, 100, cache_read=600, cache_write=300,
                              provider="anthropic")
    assert cost == pytest.approx((100 * price.input + 600 * price.cache_read + 300 * price.cache_write
                                  + 100 * price.output) / 1e6)
    mini = Pricing().price_for("gpt-4o-mini")
    assert Pricing().cost_usd("gpt-4o-mini", 1000, 0, cache_read=1000) == pytest.approx(1000 * mini.cache_read / 1e6)


def test_reasoning_tokens_at_the_reasoning_rate_where_the_table_has_one():
    about, providers = table()
    data = orjson.loads(resources.files("llmship").joinpath("data/genai_prices.json").read_bytes())
    with_reasoning = [(p["id"], m["id"]) for p in data["providers"] for m in p["models"]
                      if isinstance(m["prices"].get("reasoning"), float)]
    assert with_reasoning
    provider, model = with_reasoning[0]
    price = Pricing().price_for(model, provider)
    assert Pricing().cost_usd(model, 0, 100, reasoning=40, provider=provider) == pytest.approx(
        (40 * price.reasoning + 60 * price.output) / 1e6)
    # no reasoning price: reasoning tokens are output tokens
    assert Pricing().cost_usd("gpt-4o-mini", 0, 100, reasoning=40) == pytest.approx(100 * 0.60 / 1e6)


def test_tiered_prices_apply_the_tier_the_input_reached():
    data = orjson.loads(resources.files("llmship").joinpath("data/genai_prices.json").read_bytes())
    provider, model, tiered = next((p["id"], m["id"], m["prices"]["input"]) for p in data["providers"]
                                   for m in p["models"] if isinstance(m["prices"].get("input"), dict))
    start, tier_price = tiered["tiers"][0]
    assert Pricing().price_for(model, provider, start).input == pytest.approx(tiered["base"])
    assert Pricing().price_for(model, provider, start + 1).input == pytest.approx(tier_price)


def test_an_override_beats_the_table():
    pricing = Pricing({"gpt-4o-mini-20*": Price(9, 9)})
    assert flat(pricing.price_for("gpt-4o-mini-2024-07-18")) == (9, 9)
    assert flat(pricing.price_for("gpt-4o-mini")) == (0.15, 0.60)  # the glob does not match: the table's
    assert flat(Pricing({"gpt-4o*": Price(1, 1)}).price_for("gpt-4o-mini")) == (1, 1)


def test_catch_all_override_prices_unknown_models_only():
    pricing = Pricing({"*": Price(1, 2)})
    assert flat(pricing.price_for("my-finetune")) == (1, 2)
    assert flat(pricing.price_for("gpt-4o")) == (2.50, 10.00)
    assert flat(pricing.price_for("openai/gpt-4o")) == (2.50, 10.00)


def test_ties_go_to_the_order_written():
    pricing = Pricing({"a*c": Price(1, 1), "ab*": Price(2, 2)})
    assert flat(pricing.price_for("abc")) == (1, 1)


def test_exact_override_beats_every_glob():
    assert Pricing({"my-model": Price(3, 4), "my-*": Price(9, 9)}).cost_usd("My-Model", 1e6, 1e6) == pytest.approx(7)


def test_config_pricing_table_reaches_pricing():
    cfg = load_config_text('[llm.pricing]\n"acme-*" = { input = 1.0, output = 2.0, cache_read = 0.5 }\n')
    assert Pricing(cfg.llm.pricing).cost_usd("acme-large", 1e6, 1e6, cache_read=1e6) == pytest.approx(2.5)


def test_snapshot_says_where_it_comes_from_and_covers_each_provider():
    about, providers = table()
    assert about["package"] == "genai-prices" and about["license"] == "MIT" and about["version"]
    ids = {p.id for p in providers}
    assert {"openai", "anthropic", "google", "mistral"} <= ids
    prices = default_prices()
    assert all(isinstance(p.input, (float, tuple)) for p in prices.values())


def test_names_as_sent_price_as_their_normal_form_first_time_and_remembered():
    """The cache is keyed by the names as sent: a hit, a first lookup and the normalised names agree, for
    table prices, tiers, overrides (exact, glob, catch-all) and unknown models."""
    overrides = {"my-model": Price(3, 4), "acme-*": Price(1, 2), "*": Price(5, 6)}
    names = [("gpt-4o-mini-2024-07-18", "openai"), (" GPT-4o-Mini-2024-07-18 ", "OpenAI "), ("My-Model", ""),
             ("ACME-large", "x"), ("openai/GPT-4o", ""), ("my-finetune", ""), ("models/gemini-1.5-pro-002", "")]
    tiered = next((m["id"], p["id"]) for p in orjson.loads(
        resources.files("llmship").joinpath("data/genai_prices.json").read_bytes())["providers"]
        for m in p["models"] if isinstance(m["prices"].get("input"), dict))
    names += [tiered, (tiered[0].upper(), tiered[1].title())]
    remembered = Pricing(overrides)
    for model, provider in names:
        normal = Pricing(overrides).price_for(model.strip().lower(), provider.strip().lower(), 10**7)
        assert normal is not None
        for _ in range(2):  # a first lookup, then a hit
            assert remembered.price_for(model, provider, 10**7) == normal
            assert remembered.cost_usd(model, 10**7, 5) == Pricing(overrides).cost_usd(model.strip().lower(), 10**7, 5)
    assert Pricing().price_for(" Unknown-Thing ") is None and Pricing().price_for("unknown-thing") is None
