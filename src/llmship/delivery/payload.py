"""What sinks hand to delivery: an encoded, compressed payload that carries its own destination.

Delivery never looks inside. A payload names its ``route`` (opaque to delivery: the transport resolves it)
and, when the packer built it, its ``framing`` and the uncompressed length of each item, so that on a 413
``split`` can cut it in two at an item boundary without knowing the format: inflate, cut, frame each half
with the same head, separator and tail, compress again. No JSON or protobuf is parsed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmship import protobuf as pb
from llmship.compression import Inflater, compress, decompress

# Header carrying the payload id, so the intake (ours) can count each payload exactly once across retries.
PAYLOAD_ID_HEADER = "X-Llmship-Payload-Id"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a payload goes, as the transport resolves it. For the Datadog HTTP transport: the intake's
    host prefix, joined to [sinks.datadog] site (``https://<host>.<site>``, unless [sinks.datadog] url
    replaces scheme and host), and the path."""

    host: str
    path: str


@dataclass(frozen=True, slots=True)
class Framing:
    """The bytes around and between a payload's items: ``head item (separator item)* tail``."""

    head: bytes = b""
    separator: bytes = b""
    tail: bytes = b""


@dataclass(slots=True)
class Payload:
    kind: str  # the lane: delivery's queue, spool directory and counters are per kind
    route: Route
    body: bytes  # encoded and compressed, ready to send
    content_type: str
    content_encoding: str  # "gzip", "zstd", "deflate" or "identity"
    items: int  # how many events (series, log records, spans, ...) it carries
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    extra_headers: dict[str, str] = field(default_factory=dict)
    # Item boundaries, so a 413 splits without decoding. None: a payload that cannot be split (a spool
    # record written before boundaries were recorded).
    framing: Framing | None = None
    lengths: bytes = b""  # packed varints: each item's uncompressed length, in order
    counts: bytes = b""  # packed varints: events in each item; empty when every item is one event
    level: int | None = None  # compression level to use again when split (None: the codec's default)

    def item_lengths(self) -> list[int]:
        return pb.unpack_varints(self.lengths)

    def item_counts(self, n: int) -> list[int]:
        return pb.unpack_varints(self.counts) if self.counts else [1] * n

    def raw_size(self, lengths: list[int] | None = None) -> int:
        """The body's uncompressed size (it needs ``framing``)."""
        assert self.framing is not None
        lengths = self.item_lengths() if lengths is None else lengths
        f = self.framing
        return len(f.head) + sum(lengths) + len(f.separator) * max(len(lengths) - 1, 0) + len(f.tail)


def iter_items(payload: Payload) -> Iterator[bytes]:
    """Each item of ``payload`` as it was packed, read from the compressed body one at a time (so a whole
    inflated body is never held). Needs ``payload.framing``."""
    framing = payload.framing
    assert framing is not None
    reader = Inflater(payload.body, payload.content_encoding)
    if len(reader.read(len(framing.head))) != len(framing.head):
        raise ValueError("body shorter than its head")
    for i, n in enumerate(payload.item_lengths()):
        if i:
            reader.read(len(framing.separator))
        item = reader.read(n)
        if len(item) != n:
            raise ValueError("body shorter than its items")
        yield item


def split(payload: Payload) -> list[Payload]:
    """Two payloads carrying everything ``payload`` did, cut at the item boundary nearest the middle of its
    uncompressed bytes, or [payload] when it cannot be cut (one item, or no recorded boundaries)."""
    framing = payload.framing
    if framing is None:
        return [payload]
    lengths = payload.item_lengths()
    if len(lengths) < 2:
        return [payload]
    counts = payload.item_counts(len(lengths))
    raw = decompress(payload.body, payload.content_encoding, payload.raw_size(lengths))
    sep = len(framing.separator)
    starts = []
    pos = len(framing.head)
    for n in lengths:
        starts.append(pos)
        pos += n + sep
    total, best, best_gap, size = sum(lengths), 1, None, 0
    for cut in range(1, len(lengths)):
        size += lengths[cut - 1]
        gap = abs(2 * size - total)
        if best_gap is None or gap < best_gap:
            best, best_gap = cut, gap
    parts = []
    for lo, hi in ((0, best), (best, len(lengths))):
        end = starts[hi - 1] + lengths[hi - 1]
        body = framing.head + raw[starts[lo]:end] + framing.tail
        part_counts = counts[lo:hi]
        parts.append(Payload(
            kind=payload.kind, route=payload.route,
            body=compress(body, payload.content_encoding, payload.level),
            content_type=payload.content_type, content_encoding=payload.content_encoding,
            items=sum(part_counts), extra_headers=dict(payload.extra_headers), framing=framing,
            lengths=b"".join(map(pb.varint, lengths[lo:hi])),
            counts=b"".join(map(pb.varint, part_counts)) if payload.counts else b"",
            level=payload.level))
    return parts
