"""Write src/llmship/data/genai_prices.json from the genai-prices package (pydantic/genai-prices, MIT).

llmship does not depend on genai-prices at run time (it needs pydantic and httpx2, tens of MB of RSS for
a table; and prices are never fetched at run time): this build-time script flattens the package's data
(``genai_prices.data.providers``) into the JSON that ``llmship.transforms.pricing`` reads at start-up.

    pip download --no-deps genai-prices==X && unzip genai_prices-X-py3-none-any.whl -d /tmp/gp
    PYTHONPATH=/tmp/gp python scripts/genai_prices_snapshot.py  # needs pydantic importable

Kept per model: its match clauses, and for the prices in force on the snapshot date (the last
ConditionalPrice whose start date has passed; time-of-day variants are not modelled: the first is kept)
the per-million-token prices of input, output, cache read, cache write and reasoning output, each with
its tiers (threshold on input tokens, "cliff" pricing as the package applies them). Other units (audio,
images, searches, requests) are left out: llmship counts tokens only.
"""

from __future__ import annotations

import datetime
import json
import sys
from decimal import Decimal
from importlib import metadata
from pathlib import Path

from genai_prices import types as t
from genai_prices.data import providers

OUT = Path(__file__).resolve().parent.parent / "src" / "llmship" / "data" / "genai_prices.json"
UNITS = {"input_mtok": "input", "output_mtok": "output", "cache_read_mtok": "cache_read",
         "cache_write_mtok": "cache_write", "output_reasoning_mtok": "reasoning"}


def clause(c):
    if c is None:
        return None
    if isinstance(c, t.ClauseOr):
        return {"or": [clause(x) for x in c.or_]}
    if isinstance(c, t.ClauseAnd):
        return {"and": [clause(x) for x in c.and_]}
    for field in ("starts_with", "ends_with", "contains", "regex", "equals"):
        if hasattr(c, field):
            return {field: getattr(c, field)}
    raise TypeError(f"unknown clause {c!r}")


def num(d: Decimal) -> float:
    return float(d)


def price_value(v):
    if isinstance(v, t.TieredPrices):
        return {"base": num(v.base), "tiers": [[tier.start, num(tier.price)] for tier in v.tiers]}
    return num(v)


def current(prices, today: datetime.date):
    if not isinstance(prices, list):
        return prices
    chosen = None
    for cp in prices:
        c = cp.constraint
        if c is None or (isinstance(c, t.StartDateConstraint) and c.start_date <= today):
            chosen = cp.prices
        elif chosen is None and isinstance(c, t.TimeOfDateConstraint):
            chosen = cp.prices
    return chosen


def main() -> int:
    today = datetime.date.today()
    out = {"source": "https://github.com/pydantic/genai-prices", "package": "genai-prices",
           "version": metadata.version("genai-prices"), "license": "MIT", "snapshot_date": today.isoformat(),
           "unit": "USD per million tokens", "providers": []}
    for p in providers:
        models = []
        for m in p.models:
            mp = current(m.prices, today)
            if mp is None:
                continue
            prices = {UNITS[k]: price_value(v) for k, v in mp.__dict__.items() if k in UNITS and v is not None}
            if "input" not in prices and "output" not in prices:
                continue
            models.append({"id": m.id, "match": clause(m.match), "prices": prices})
        out["providers"].append({"id": p.id, "model_match": clause(p.model_match),
                                 "provider_match": clause(p.provider_match), "models": models})
    OUT.write_text(json.dumps(out, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"{OUT}: {sum(len(p['models']) for p in out['providers'])} models, {OUT.stat().st_size} bytes",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
