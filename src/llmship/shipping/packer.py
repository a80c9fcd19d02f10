"""One packer for every destination: encoded items in, payloads within the destination's limits out.

A sink knows its destination's format and limits and declares them as an ``Encoding``; it encodes each
item once and hands it to a ``Packer`` built from that encoding. The packer is the Agent's stream
compressor (datadog-agent pkg/serializer/internal/stream/compressor.go) made generic:

- items are framed as ``head item (separator item)* tail`` and fed to a streaming compressor as they come,
  at most about FEED_BYTES at a time, so no call compresses a whole payload and the event loop is never
  held for long (a flush of 100k series, or a 5 MB batch of logs, is compressed in ~64 KiB steps);
- what waits uncompressed may grow only while the worst case of compressing it (``compress_bound``) still
  fits below the compressed limit; past that the compressor is flushed, which gives the exact compressed
  size so far, and the item checked again (at most MAX_REPACKS times a payload, as the Agent does). The
  uncompressed limit and the item limit are checked exactly. So no payload is over any limit, an item is
  never cut, nothing is compressed twice, and only the open payload is held;
- each payload records its framing and every item's uncompressed length (packed varints, two bytes an item
  for most), and for items that carry several events (a TracerPayload of many spans) their counts: delivery
  splits a payload on a 413 at those boundaries without parsing it (delivery.payload.split), and the file
  transport writes items as they are;
- a payload is submitted once full, once its oldest item has waited ``max_age_secs`` (when the encoding
  sets one; ``start`` runs that timer), on ``flush`` and on ``shutdown``.

An item too large to fit even alone is never sent (the intake would refuse it): ``on_too_large(events)``
counts it. Sinks reduce items (truncation, dropped input/output) before they get here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from llmship import protobuf as pb
from llmship.compression import compress_bound, isal_fits, isal_level, stream_compressor
from llmship.delivery.payload import Framing, Payload, Route

# Uncompressed bytes that may wait before they are fed to the compressor: each feed is one small call
# (gzip level 6 compresses 64 KiB of JSON in about 2 ms, zstd or gzip level 1 in well under 1 ms).
FEED_BYTES = 64 * 1024
# The Agent's stream compressor stops flushing a payload for an exact size after this many times and
# calls it full: each flush costs a little compression (datadog-agent pkg/serializer/internal/stream).
MAX_REPACKS = 40


@dataclass(frozen=True, slots=True)
class Encoding:
    """A destination's format and limits, as its sink declares them."""

    kind: str  # the lane: delivery's queue, spool directory and counters
    route: Route  # where payloads go; the transport resolves it
    content_type: str
    max_bytes: int  # a payload as sent (compressed)
    max_uncompressed: int  # a payload once decompressed
    framing: Framing = Framing()
    max_items: int | None = None  # None: as many as the sizes allow
    compression: str = "gzip"  # Content-Encoding: gzip, deflate, zstd or identity
    level: int | None = None  # None: the codec's default (compression.DEFAULT_LEVELS)
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    max_age_secs: float | None = None  # submit a payload once its oldest item waited this long


def accepted(configured: str, accepts: Iterable[str], fallback: str = "gzip") -> str:
    """``configured`` ([sinks.datadog] compression) if the intake accepts it, else ``fallback``."""
    return configured if configured in accepts else fallback


def _max_fitting(encoding: str, space: int, isal: bool = False) -> int:
    """The most uncompressed bytes whose worst-case compressed size (by ISA-L's codec when ``isal``) fits in
    ``space``."""
    n = space
    while n > 0 and (excess := compress_bound(encoding, n, isal) - space) > 0:
        n -= excess  # the bound shrinks about as fast as n: this ends in a few steps
    return max(0, n)


class Packer:
    def __init__(self, encoding: Encoding, submit: Callable[[Payload], object], *,
                 on_too_large: Callable[[int], None] = lambda events: None) -> None:
        self._submit = submit
        self._on_too_large = on_too_large
        self._task: asyncio.Task | None = None
        self._oldest: float | None = None  # when the oldest waiting item came (monotonic)
        self._configure(encoding)
        self._open()

    # ------------------------------------------------------------------------------------------ public

    @property
    def encoding(self) -> Encoding:
        return self._enc

    def __len__(self) -> int:
        """Items in the open payload."""
        return len(self._lengths)

    @property
    def max_item(self) -> int:
        """The largest item that fits in a payload on its own."""
        return self._max_item

    def reconfigure(self, encoding: Encoding) -> None:
        """Use ``encoding`` from now on; the open payload is submitted first if the encoding changed."""
        if encoding != self._enc:
            self._close()
            self._configure(encoding)
            self._open()

    def add(self, item: bytes, events: int = 1) -> None:
        """Pack one encoded item carrying ``events`` events."""
        self.add_many((item,), events)

    def add_many(self, items: Iterable[bytes], events: int = 1) -> None:
        """Pack encoded items, in order, each carrying ``events`` events."""
        max_item, separator = self._max_item, self._separator
        separator_len, tail_len = self._separator_len, self._tail_len
        for item in items:
            n = len(item)
            if n > max_item:
                self._on_too_large(events)
                continue
            lengths = self._lengths
            if lengths and (raw := self._raw + separator_len + n) + tail_len > self._room and (
                    not self._room_for(raw + tail_len)):
                self._close()  # it cannot join the open payload
                lengths = self._lengths
            if lengths:
                pending = self._pending
                pending.append(separator)
                pending.append(item)
                self._raw = raw
            else:  # the payload's first item: its codec is made (ISA-L's unless the item is too large for its
                # looser bound), and the max-age clock starts
                self._isal = n <= self._max_isal_item and isal_fits(self._enc.compression, self._enc.level)
                self._compressor, self._flush_mode = stream_compressor(self._enc.compression, self._enc.level,
                                                                       self._isal)
                if self._isal:
                    self._set_segment(0, _max_fitting(self._enc.compression, self._enc.max_bytes, True))
                self._oldest = time.monotonic()
                self._pending.append(item)
                self._raw += n
            lengths.append(n)
            if events != 1 or self._counts is not None:
                self._count(events)
            if self._raw >= self._feed_at:
                self._feed()
            if len(lengths) >= self._max_items:
                self._close()  # full: no reason to wait for the next item

    def flush(self) -> None:
        """Submit what is waiting, if anything."""
        self._close()
        self._oldest = None

    def start(self) -> None:
        """Run the max-age timer (only for an encoding with ``max_age_secs``)."""
        if self._task is None and self._enc.max_age_secs is not None:
            self._task = asyncio.create_task(self._age_loop(), name=f"packer-{self._enc.kind}")

    async def shutdown(self, deadline: float | None = None) -> None:
        """Stop the timer and submit what is waiting (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()

    # ------------------------------------------------------------------------------------------ packing

    def _configure(self, encoding: Encoding) -> None:
        self._enc = encoding
        f = encoding.framing
        self._separator, self._separator_len, self._tail_len = f.separator, len(f.separator), len(f.tail)
        self._max_uncompressed = encoding.max_uncompressed
        self._max_items = encoding.max_items if encoding.max_items is not None else float("inf")
        # The largest item that fits alone, below both limits (zlib's bound: the codec of a payload whose first
        # item is too large for ISA-L's looser one, _max_isal_item).
        framed = len(f.head) + len(f.tail)
        self._max_item = min(encoding.max_uncompressed,
                             _max_fitting(encoding.compression, encoding.max_bytes)) - framed
        self._max_isal_item = -1  # ISA-L's, where it may take the payload (imported with the first: isal_fits)
        if isal_level(encoding.compression, encoding.level):
            self._max_isal_item = min(encoding.max_uncompressed,
                                      _max_fitting(encoding.compression, encoding.max_bytes, True)) - framed

    def _open(self) -> None:
        enc = self._enc
        # Made for the first item: an idle destination holds no codec state (gzip's is ~256 KiB).
        self._compressor: object | None = None
        self._flush_mode: int | None = None
        self._isal = False  # the payload's codec is ISA-L's (decided with its first item)
        self._chunks: list[bytes] = []  # compressed so far
        self._out = 0  # their length
        self._flushed = 0  # compressed length as of the last flush of the compressor (exact then)
        # Not fed to the compressor yet: the pieces, joined once when fed (a bytearray grown item by item
        # copies itself again and again as it grows).
        self._pending: list[bytes] = [enc.framing.head] if enc.framing.head else []
        self._raw = len(enc.framing.head)  # uncompressed bytes so far
        self._feed_at = FEED_BYTES  # what is pending is fed to the compressor once _raw reaches this
        self._lengths: list[int] = []  # each item's
        self._counts: list[int] | None = None  # each item's events, once an item carried other than one
        self._repacks = 0
        self._set_segment(0, _max_fitting(enc.compression, enc.max_bytes))

    def _set_segment(self, start: int, max_segment: int) -> None:
        """From ``start`` (uncompressed bytes: the last flush of the compressor, or 0), at most ``max_segment``
        uncompressed bytes are sure to compress within the limit: up to ``_segment_end`` in all."""
        self._segment_end = start + max_segment
        self._room = min(self._max_uncompressed, self._segment_end)  # an item that ends within it fits, surely

    def _room_for(self, end: int) -> bool:
        """Whether the open payload may grow to ``end`` uncompressed bytes (its tail included): below the
        uncompressed limit, and surely below the compressed one (flushing the compressor, for the exact size,
        when that is what it takes to know)."""
        return end <= self._max_uncompressed and (end <= self._segment_end or self._repack_for(end))

    def _repack_for(self, end: int) -> bool:
        if self._flush_mode is None or self._repacks >= MAX_REPACKS:
            return False
        self._feed()
        flushed = self._compressor.flush(self._flush_mode)
        self._chunks.append(flushed)
        self._out += len(flushed)
        self._flushed = self._out
        self._repacks += 1
        self._set_segment(self._raw, _max_fitting(self._enc.compression, self._enc.max_bytes - self._flushed,
                                                  self._isal))
        return end <= self._segment_end

    def _count(self, events: int) -> None:
        """The last item added carried ``events`` events (counts are kept once one is not 1)."""
        if self._counts is None:
            self._counts = [1] * (len(self._lengths) - 1)  # every item before it carried one event
        self._counts.append(events)

    def _feed(self) -> None:
        self._feed_at = self._raw + FEED_BYTES
        if not self._pending:
            return
        out = self._compressor.compress(b"".join(self._pending))
        self._pending = []
        if out:
            self._chunks.append(out)
            self._out += len(out)

    def _close(self) -> None:
        """Submit the open payload, if it holds anything, and open a new one."""
        if not self._lengths:
            return
        enc = self._enc
        if enc.framing.tail:
            self._pending.append(enc.framing.tail)
        self._feed()
        self._chunks.append(self._compressor.flush())
        counts = self._counts
        payload = Payload(
            kind=enc.kind, route=enc.route, body=b"".join(self._chunks), content_type=enc.content_type,
            content_encoding=enc.compression, items=len(self._lengths) if counts is None else sum(counts),
            extra_headers=dict(enc.extra_headers), framing=enc.framing, lengths=pb.varints(self._lengths),
            counts=b"" if counts is None else pb.varints(counts), level=enc.level)
        self._open()
        self._oldest = None
        self._submit(payload)

    async def _age_loop(self) -> None:
        max_age = self._enc.max_age_secs
        assert max_age is not None
        while True:
            await asyncio.sleep(min(0.25, max_age / 4))
            max_age = self._enc.max_age_secs or max_age  # a reload may change it
            if self._oldest is not None and time.monotonic() - self._oldest >= max_age:
                self.flush()


def build_payloads(encoding: Encoding, items: Iterable[bytes],
                   on_too_large: Callable[[int], None] = lambda events: None) -> list[Payload]:
    """Pack items of one event each into as few payloads as ``encoding``'s limits allow."""
    payloads: list[Payload] = []
    packer = Packer(encoding, payloads.append, on_too_large=on_too_large)
    for item in items:
        packer.add(item)
    packer.flush()
    return payloads


class PackedSink:
    """The lifecycle every sink whose items go through one Packer (``self._packer``) shares."""

    _packer: Packer

    async def start(self) -> None:
        self._packer.start()

    async def shutdown(self, deadline: float) -> None:
        await self._packer.shutdown(deadline)

    def flush(self) -> None:
        self._packer.flush()
