"""Estimated cost of an LLM call from its token counts and a table of list prices.

The table is a snapshot of the maintained genai-prices data (pydantic/genai-prices, MIT; the version and
date are in ``llmship/data/genai_prices.json``, written by ``scripts/genai_prices_snapshot.py``; its
license is ``data/genai_prices.LICENSE``). It is read once at start-up, never fetched: refresh it by running
the script on a newer release. The package itself is not a dependency (pydantic and httpx2 for a table).

``[llm.pricing]`` overrides come first: case-insensitive keys, an exact key before globs, then the glob
with the most characters other than ``*`` (ties: the order written); a key of wildcards only (``"*"``)
is a fallback for the models the table does not know. Then the table, as genai-prices
matches it: the call's provider (its id, or the provider's own match clause on the provider name) and the
first of its models whose match clause accepts the model name; without a provider match, the providers
whose model pattern accepts the name, then every provider in the table's order. A provider-qualified name
(``openai/gpt-4o``, ``models/gemini-1.5-pro``) also tries the part after the last ``/``. Otherwise the
model is unknown: no cost.

Cost, as genai-prices computes it: input tokens include the cached ones (as OpenAI's prompt_tokens and
the GenAI conventions' gen_ai.usage.input_tokens do), so cache reads and writes are priced at their own
rate where the table has one and the rest of the input at the input rate; reasoning tokens are part of
the output, at the reasoning rate where the table has one. Tiered prices (by input tokens, "cliff": past a
threshold the tier's rate applies to every token) apply the tier the call's input reached.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import orjson

from llmship.config import Price

_WILDCARDS = re.compile(r"[*?\[]")
_MAX_CACHED_MODELS = 4096  # model names are few; the bound only protects against a tracer sending junk
_TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens
TABLE = "data/genai_prices.json"


@dataclass(frozen=True, slots=True)
class TablePrice:
    """A model's prices from the table: each a number or (base, ((start, price), ...)) tiers."""

    input: object = 0.0
    output: object = 0.0
    cache_read: object = None
    cache_write: object = None
    reasoning: object = None

    @property
    def tiered(self) -> bool:
        """Does a price depend on the call's input tokens?"""
        return any(isinstance(v, tuple) for v in (self.input, self.output, self.cache_read, self.cache_write,
                                                   self.reasoning))

    def at(self, input_tokens: float) -> Price:
        """The flat prices for a call with ``input_tokens`` input tokens."""
        def rate(value):
            if value is None or isinstance(value, float):
                return value
            base, tiers = value
            for start, price in tiers:
                if input_tokens > start:
                    base = price
            return base

        return Price(rate(self.input) or 0.0, rate(self.output) or 0.0, rate(self.cache_read),
                     rate(self.cache_write), rate(self.reasoning))


def _value(v):
    if isinstance(v, dict):
        return (float(v["base"]), tuple((int(s), float(p)) for s, p in sorted(v["tiers"])))
    return None if v is None else float(v)


def _clause(c):
    """A match clause as a predicate on a lower-cased name."""
    if c is None:
        return None
    if "or" in c:
        parts = [_clause(x) for x in c["or"]]
        return lambda s: any(p(s) for p in parts)
    if "and" in c:
        parts = [_clause(x) for x in c["and"]]
        return lambda s: all(p(s) for p in parts)
    if "regex" in c:
        pattern = re.compile(c["regex"], re.IGNORECASE)
        return lambda s: pattern.search(s) is not None
    (kind, text), = c.items()
    text = text.lower()
    if kind == "equals":
        return lambda s: s == text
    if kind == "starts_with":
        return lambda s: s.startswith(text)
    if kind == "ends_with":
        return lambda s: s.endswith(text)
    if kind == "contains":
        return lambda s: text in s
    raise ValueError(f"unknown clause {kind!r}")


@dataclass(frozen=True, slots=True)
class _Provider:
    id: str
    model_match: object
    provider_match: object
    models: tuple  # ((predicate, TablePrice), ...)


@functools.cache
def table() -> tuple[dict, tuple[_Provider, ...]]:
    """(the snapshot's description, its providers), read once per process."""
    data = orjson.loads(resources.files("llmship").joinpath(TABLE).read_bytes())
    providers = []
    for p in data["providers"]:
        models = tuple((_clause(m["match"]), TablePrice(**{k: _value(v) for k, v in m["prices"].items()}))
                       for m in p["models"])
        providers.append(_Provider(p["id"], _clause(p["model_match"]), _clause(p["provider_match"]), models))
    about = {k: v for k, v in data.items() if k != "providers"}
    return about, tuple(providers)


def default_prices() -> dict[str, TablePrice]:
    """Every model id in the table with its prices (the first provider's, for an id several list)."""
    out: dict[str, TablePrice] = {}
    data = orjson.loads(resources.files("llmship").joinpath(TABLE).read_bytes())
    for p in data["providers"]:
        for m in p["models"]:
            out.setdefault(m["id"].lower(), TablePrice(**{k: _value(v) for k, v in m["prices"].items()}))
    return out


class Pricing:
    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._exact: dict[str, Price] = {}
        globs: list[tuple[int, int, re.Pattern[str], Price]] = []
        self._fallback: list[tuple[re.Pattern[str], Price]] = []  # "*": for models the table does not know
        for order, (key, price) in enumerate((key.lower(), p) for key, p in (overrides or {}).items()):
            if not key.strip("*?"):
                self._fallback.append((re.compile(fnmatch.translate(key)), price))
            elif _WILDCARDS.search(key):
                globs.append((-(len(key) - key.count("*")), order, re.compile(fnmatch.translate(key)), price))
            else:
                self._exact.setdefault(key, price)
        globs.sort(key=lambda g: (g[0], g[1]))
        self._globs = [(pattern, price) for _, _, pattern, price in globs]
        self._fallback_prices = [p for _, p in self._fallback]
        self._cache: dict[tuple[str, str], Price | TablePrice | None] = {}

    def price_for(self, model: str, provider: str = "", input_tokens: float = 0) -> Price | None:
        """The flat prices that apply to a call of ``model`` (by ``provider``) with ``input_tokens``."""
        found = self._find(model, provider)
        if isinstance(found, TablePrice):
            return found.at(input_tokens)
        return found

    def _find(self, model: str, provider: str) -> Price | TablePrice | None:
        """Remembered by the names as sent: a tracer sends the same few again and again, so a hit costs one
        lookup, without normalising them first."""
        key = (model, provider)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._price_of(model.strip().lower(), provider.strip().lower())
        if len(self._cache) >= _MAX_CACHED_MODELS:
            self._cache.clear()
        self._cache[key] = price
        return price

    def _price_of(self, model: str, provider: str) -> Price | TablePrice | None:
        """The price of a normalised (stripped, lower-case) model and provider name."""
        price = self._lookup(model, provider)
        if (price is None or price in self._fallback_prices) and "/" in model:
            price = self._lookup(model.rsplit("/", 1)[1], provider) or price
        if isinstance(price, TablePrice) and not price.tiered:
            price = price.at(0)  # the same flat prices whatever the call: made once, not per call
        return price

    def _lookup(self, model: str, provider: str) -> Price | TablePrice | None:
        price = self._exact.get(model)
        if price is not None:
            return price
        for pattern, price in self._globs:
            if pattern.match(model):
                return price
        providers = table()[1]  # read at the first call to price: an agent with no LLM traffic never holds it
        tried: set[str] = set()
        for candidates in (
            [p for p in providers if provider and (p.id == provider or (p.provider_match and p.provider_match(provider)))],
            [p for p in providers if p.model_match is not None and p.model_match(model)],
            providers,
        ):
            for p in candidates:
                if p.id in tried:
                    continue
                tried.add(p.id)
                for match, table_price in p.models:
                    if match(model):
                        return table_price
        for pattern, price in self._fallback:
            if pattern.match(model):
                return price
        return None

    def cost_usd(self, model: str, input_tokens: float, output_tokens: float, *, cache_read: float = 0,
                 cache_write: float = 0, reasoning: float = 0, provider: str = "") -> float | None:
        """Estimated USD cost of one call, or None when the model has no price."""
        price = self.price_for(model, provider, input_tokens) if model else None
        if price is None:
            return None
        cost = 0.0
        uncached = input_tokens
        if cache_read and price.cache_read is not None:
            cost += cache_read * price.cache_read
            uncached -= cache_read
        if cache_write and price.cache_write is not None:
            cost += cache_write * price.cache_write
            uncached -= cache_write
        cost += max(uncached, 0) * price.input
        if reasoning and price.reasoning is not None:
            cost += reasoning * price.reasoning + max(output_tokens - reasoning, 0) * price.output
        else:
            cost += output_tokens * price.output
        return cost / _TOKENS_PER_PRICE_UNIT
