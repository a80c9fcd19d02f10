"""llmship: a local agent that ships LLM telemetry (metrics, spans, LLM Observability events, logs)."""

__version__ = "0.1.0"

import os as _os

# LLMSHIP_NO_EXTENSIONS=1 forces the pure-Python twin of every native fast path (msgspec decode, the
# compiled span encoder, the Hyperscan scrub prefilter), as AIOHTTP_NO_EXTENSIONS does for aiohttp.
NO_EXTENSIONS = _os.environ.get("LLMSHIP_NO_EXTENSIONS", "") not in ("", "0")
