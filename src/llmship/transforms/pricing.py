"""Estimated cost of an LLM call from its token counts and a table of list prices.

The table is the shipped defaults (``llmship/data/pricing.toml``, which says where and when its prices
come from) with the config's ``[llm.pricing]`` merged over them: a config key equal to a default key
replaces it, any other config key is added.

Which price applies to a model (case-insensitive):
1. a key without wildcards equal to the model name;
2. otherwise the matching glob with the most characters other than ``*`` (the most specific one); on a
   tie, config keys before defaults, then the order they are written in;
3. otherwise, for a provider-qualified name such as ``openai/gpt-4o`` or ``models/gemini-1.5-pro``,
   the same lookup for the part after the last ``/``;
4. otherwise the model is unknown: no cost.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import tomllib
from collections.abc import Mapping
from importlib import resources

from llmship.config import Price

_WILDCARDS = re.compile(r"[*?\[]")
_MAX_CACHED_MODELS = 4096  # model names are few; the bound only protects against a tracer sending junk
_TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens


@functools.cache
def default_prices() -> dict[str, Price]:
    """The shipped price table, read once per process."""
    text = resources.files("llmship").joinpath("data/pricing.toml").read_text(encoding="utf-8")
    return {key.lower(): Price(float(p["input"]), float(p["output"]))
            for key, p in tomllib.loads(text)["models"].items()}


class Pricing:
    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        overrides = {key.lower(): price for key, price in (overrides or {}).items()}
        defaults = {key: price for key, price in default_prices().items() if key not in overrides}
        self._exact: dict[str, Price] = {}
        globs: list[tuple[int, int, re.Pattern[str], Price]] = []
        for order, (key, price) in enumerate([*overrides.items(), *defaults.items()]):
            if _WILDCARDS.search(key):
                specificity = len(key) - key.count("*")
                globs.append((-specificity, order, re.compile(fnmatch.translate(key)), price))
            else:
                self._exact.setdefault(key, price)
        globs.sort(key=lambda g: (g[0], g[1]))
        self._globs = [(pattern, price) for _, _, pattern, price in globs]
        self._cache: dict[str, Price | None] = {}

    def price_for(self, model: str) -> Price | None:
        key = model.strip().lower()
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._lookup(key)
        if price is None and "/" in key:
            price = self._lookup(key.rsplit("/", 1)[1])
        if len(self._cache) >= _MAX_CACHED_MODELS:
            self._cache.clear()
        self._cache[key] = price
        return price

    def _lookup(self, model: str) -> Price | None:
        price = self._exact.get(model)
        if price is not None:
            return price
        for pattern, price in self._globs:
            if pattern.match(model):
                return price
        return None

    def cost_usd(self, model: str, input_tokens: float, output_tokens: float) -> float | None:
        """Estimated USD cost of one call, or None when the model has no price."""
        price = self.price_for(model) if model else None
        if price is None:
            return None
        return (input_tokens * price.input + output_tokens * price.output) / _TOKENS_PER_PRICE_UNIT
