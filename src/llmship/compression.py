"""Compression for payloads we send and bounded decompression for bodies we receive."""

from __future__ import annotations

import gzip
import zlib

import zstandard

ENCODINGS = ("gzip", "deflate", "zstd", "identity")
# Levels for the high-volume sinks (spans, LLM Observability events, logs): gzip/deflate at 1 (BestSpeed),
# as the Datadog Agent's trace writer does (pkg/trace/writer/trace.go), where its logs pipeline defaults
# to 6: on sample logs level 1 costs a third of the CPU of 6 for bodies about 20% larger (bench/logs.py).
# zstd keeps its usual level 3, both faster and smaller than either.
FAST_LEVELS = {"gzip": 1, "deflate": 1}


class DecompressionLimit(ValueError):
    """A body inflated past the allowed size (a zip bomb or simply too large)."""


def compress(body: bytes, encoding: str, level: int | None = None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6 if level is None else level, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body, 6 if level is None else level)
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=3 if level is None else level).compress(body)
    if encoding in ("identity", ""):
        return body
    raise ValueError(f"unknown content encoding {encoding!r}")


def compress_fast(body: bytes, encoding: str) -> bytes:
    """``compress`` at FAST_LEVELS."""
    return compress(body, encoding, FAST_LEVELS.get(encoding))


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Inflate ``body``; raise DecompressionLimit past ``max_bytes`` without inflating it all first."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        if len(body) > max_bytes:
            raise DecompressionLimit(f"body of {len(body)} bytes exceeds {max_bytes}")
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        # wbits: 16+ expects a gzip header; 32+ auto-detects zlib or gzip, because clients labelling a body
        # "deflate" send zlib-wrapped, raw or even gzip data; raw deflate is the fallback below.
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else 32 + zlib.MAX_WBITS
        try:
            return _bounded_zlib(body, wbits, max_bytes)
        except zlib.error:
            if encoding != "deflate":
                raise
            return _bounded_zlib(body, -zlib.MAX_WBITS, max_bytes)
    if encoding == "zstd":
        out = bytearray()
        reader = zstandard.ZstdDecompressor().stream_reader(body)
        while chunk := reader.read(65536):
            out += chunk
            if len(out) > max_bytes:
                raise DecompressionLimit(f"body inflates past {max_bytes} bytes")
        return bytes(out)
    raise ValueError(f"unsupported content encoding {encoding!r}")


def _bounded_zlib(body: bytes, wbits: int, max_bytes: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, max_bytes + 1)
    if len(out) > max_bytes or d.unconsumed_tail:
        raise DecompressionLimit(f"body inflates past {max_bytes} bytes")
    return out + d.flush()
