"""Compression for payloads we send and bounded decompression for bodies we receive."""

from __future__ import annotations

import gzip
import io
import zlib

import zstandard

from llmship import NO_EXTENSIONS

# ISA-L's deflate (python-isal): the same gzip and deflate formats, for far fewer instructions at level 1.
# Imported on first use (_isal), not with this module: its 0.45 MiB stay out of a process that ships no
# level-1 gzip (the file sink, metrics only). None: not installed (no wheel for this platform), or
# LLMSHIP_NO_EXTENSIONS is set; zlib is its twin.
_NOT_LOADED = object()
_isal_zlib = _NOT_LOADED


def _isal():
    global _isal_zlib
    if _isal_zlib is _NOT_LOADED:
        _isal_zlib = None
        if not NO_EXTENSIONS:
            try:
                from isal import isal_zlib
                _isal_zlib = isal_zlib
            except ImportError:
                pass
    return _isal_zlib

ENCODINGS = ("gzip", "deflate", "zstd", "identity")
# Levels when none is given: gzip/deflate at zlib's usual 6 (the Agent's metrics serializer with zlib); zstd
# at 1, the Agent's serializer_zstd_compressor_level default (comp/serializer/metricscompression).
DEFAULT_LEVELS = {"gzip": 6, "deflate": 6, "zstd": 1}
# Levels for the high-volume sinks (spans, LLM Observability events, logs): gzip/deflate at 1 (BestSpeed),
# as the Datadog Agent's trace writer does (pkg/trace/writer/trace.go), where its logs pipeline defaults
# to 6: on sample logs level 1 costs a third of the CPU of 6 for bodies about 20% larger (bench/logs.py).
# zstd at 1 too: the trace writer's zstd.BestSpeed (pkg/trace/writer/zstd.go) and logs_config's
# zstd_compression_level default.
FAST_LEVELS = {"gzip": 1, "deflate": 1, "zstd": 1}


class DecompressionLimit(ValueError):
    """A body inflated past the allowed size (a zip bomb or simply too large)."""


# Wrapper bytes (gzip header and trailer: 18, zstd frame header and checksum: at most 22) and the empty
# block a flush or the final block adds, on top of the codecs' own bounds in compress_bound.
_BOUND_SLACK = 32


def compress(body: bytes, encoding: str, level: int | None = None) -> bytes:
    level = DEFAULT_LEVELS.get(encoding) if level is None else level
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=level, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body, level)
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(body)
    if encoding in ("identity", ""):
        return body
    raise ValueError(f"unknown content encoding {encoding!r}")


def compress_fast(body: bytes, encoding: str) -> bytes:
    """``compress`` at FAST_LEVELS."""
    return compress(body, encoding, FAST_LEVELS.get(encoding))


class _Identity:
    """The compressor interface (zlib's compressobj) for Content-Encoding identity."""

    def compress(self, data: bytes | bytearray) -> bytes:
        return bytes(data)

    def flush(self, mode: int = 0) -> bytes:
        return b""


def isal_level(encoding: str, level: int | None) -> bool:
    """Is ``encoding`` at ``level`` ISA-L's to take where python-isal is installed (gzip and deflate at level 1:
    FAST_LEVELS, the high-volume sinks)? Asked without importing it."""
    return level == 1 and encoding in ("gzip", "deflate")


def isal_fits(encoding: str, level: int | None) -> bool:
    """May ``stream_compressor`` use ISA-L for ``encoding`` at ``level``: ``isal_level``, and python-isal is
    installed (imported on the first ask). On the LLM-heavy bench's events ISA-L's level 1 takes a sixth of
    zlib's instructions for a body a quarter smaller (bench/llm_calls.py)."""
    return isal_level(encoding, level) and _isal() is not None


def stream_compressor(encoding: str, level: int | None = None, isal: bool = False) -> tuple[object, int | None]:
    """A streaming compressor for ``encoding`` and the flush mode that empties it without ending the stream
    (None: nothing to flush). Same formats and default levels as ``compress``. ``isal``: ISA-L's codec
    rather than zlib's (only where ``isal_fits``); any inflater reads either."""
    level = DEFAULT_LEVELS.get(encoding) if level is None else level
    if encoding in ("gzip", "deflate"):
        codec = _isal() if isal and isal_fits(encoding, level) else zlib
        wbits = 16 + codec.MAX_WBITS if encoding == "gzip" else codec.MAX_WBITS
        return codec.compressobj(level, codec.DEFLATED, wbits), codec.Z_SYNC_FLUSH
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=level).compressobj(), zstandard.COMPRESSOBJ_FLUSH_BLOCK
    if encoding in ("identity", ""):
        return _Identity(), None
    raise ValueError(f"unknown content encoding {encoding!r}")


def compress_bound(encoding: str, n: int, isal: bool = False) -> int:
    """The most ``n`` bytes can take once compressed with ``encoding`` (worst case, incompressible input) by
    ``stream_compressor``'s codec (``isal``: ISA-L's)."""
    if encoding in ("identity", ""):
        return n
    if encoding == "zstd":  # ZSTD_COMPRESSBOUND (zstd.h)
        return n + (n >> 8) + ((128 * 1024 - n) >> 11 if n < 128 * 1024 else 0) + _BOUND_SLACK
    if isal:
        # ISA-L states no bound, and writes a block stored only while the block's input is still at hand
        # (igzip.c create_icf_block_hdr), so streamed input may come out Huffman-coded and larger (measured
        # on random bytes: up to 0.12%, where zlib's compressBound allows 0.03%). Allowed here: 9 bits a
        # literal (an optimal code for 257 symbols needs fewer), and a block header (at most 328 bytes,
        # ISAL_DEF_MAX_HDR_SIZE) for every 10 KiB (level 1 blocks hold up to 64 Ki tokens) and for the block
        # a flush ends.
        return n + (n >> 3) + (n >> 5) + 1024 + _BOUND_SLACK
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + _BOUND_SLACK  # zlib's compressBound (zlib.h)


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


class Inflater:
    """Reads a compressed body back a given number of bytes at a time, inflating no more than it is asked
    for (plus a zstd block): a payload's items are read one by one, never the whole body at once.
    ``read(n)`` returns exactly ``n`` bytes, or fewer at the end of the stream."""

    def __init__(self, body: bytes, encoding: str | None) -> None:
        encoding = (encoding or "identity").strip().lower()
        self._zlib = None
        if encoding in ("identity", ""):
            self._reader = io.BytesIO(body)
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._reader = None
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding != "deflate" else 32 + zlib.MAX_WBITS)
            self._tail = body  # compressed bytes not given to the codec yet
        elif encoding == "zstd":
            self._reader = zstandard.ZstdDecompressor().stream_reader(body)
        else:
            raise ValueError(f"unsupported content encoding {encoding!r}")

    def read(self, n: int) -> bytes:
        """Raises ValueError on a corrupt stream."""
        try:
            return self._read(n)
        except (zlib.error, zstandard.ZstdError) as e:
            raise ValueError(f"corrupt compressed body: {e}") from e

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if self._zlib is not None:
                if not self._tail:
                    break
                got = self._zlib.decompress(self._tail, n - len(out))
                self._tail = self._zlib.unconsumed_tail
            else:
                got = self._reader.read(n - len(out))
            if not got:
                break
            out += got
        return bytes(out)


def _bounded_zlib(body: bytes, wbits: int, max_bytes: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, max_bytes + 1)
    if len(out) > max_bytes or d.unconsumed_tail:
        raise DecompressionLimit(f"body inflates past {max_bytes} bytes")
    return out + d.flush()
