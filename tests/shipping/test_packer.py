"""The packer: no payload over any limit, items never cut, exact counts, small compression steps, max age."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from llmship import compression
from llmship.compression import decompress
from llmship.delivery.payload import Framing, Payload, Route, iter_items, split
from llmship.shipping import packer as packer_module
from llmship.shipping.packer import FEED_BYTES, Encoding, Packer, accepted, build_payloads

ROUTE = Route("api", "/test")
BIG = 64 << 20


def encoding(compression: str = "gzip", **overrides) -> Encoding:
    settings = dict(kind="test", route=ROUTE, content_type="application/json", max_bytes=20_000,
                    max_uncompressed=60_000, framing=Framing(b"[", b",", b"]"), compression=compression)
    settings.update(overrides)
    return Encoding(**settings)


def pack(enc: Encoding, items: list[tuple[bytes, int]]) -> tuple[list[Payload], list[int]]:
    out: list[Payload] = []
    too_large: list[int] = []
    p = Packer(enc, out.append, on_too_large=too_large.append)
    for item, events in items:
        p.add(item, events)
    p.flush()
    return out, too_large


def mixed_items(n: int, seed: int = 1) -> list[tuple[bytes, int]]:
    """Half random (incompressible), half repetitive; sizes 1 B .. 3 KB; 1 to 5 events each."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        size = rng.choice((1, 40, 300, 3000))
        body = os.urandom(size).hex()[:size] if i % 2 else ("%06d" % i * (size // 6 + 1))[:size]
        items.append((b'"' + body.encode() + b'"', rng.randint(1, 5)))
    return items


@pytest.mark.parametrize("codec, level", [("gzip", None), ("gzip", 1), ("deflate", None), ("deflate", 1),
                                          ("zstd", None), ("identity", None)])
def test_no_payload_over_a_limit_items_whole_and_in_order_counts_exact(codec, level):
    """Level 1 gzip and deflate: ISA-L's codec where installed (compression.isal_fits)."""
    items = mixed_items(600)
    enc = encoding(codec, level=level)
    payloads, too_large = pack(enc, items)
    assert too_large == [] and len(payloads) >= 3
    got = []
    for p in payloads:
        raw = decompress(p.body, p.content_encoding, BIG)
        assert len(p.body) <= enc.max_bytes and len(raw) <= enc.max_uncompressed
        assert raw.startswith(b"[") and raw.endswith(b"]")
        assert raw == b"[" + b",".join(iter_items(p)) + b"]"  # the boundaries are exact
        assert p.raw_size() == len(raw)
        lengths = p.item_lengths()
        assert p.items == sum(p.item_counts(len(lengths)))
        assert (p.kind, p.route, p.content_encoding, p.framing) == ("test", ROUTE, codec, enc.framing)
        got.extend(iter_items(p))
    assert got == [item for item, _ in items]
    assert sum(p.items for p in payloads) == sum(events for _, events in items)


# Level 1 where ISA-L is installed: its worst case allows a constant KiB more (compression.compress_bound)
@pytest.mark.parametrize("level, packed_over", [(None, 9_000), (1, 9_000 if not compression.isal_fits("gzip", 1)
                                                                  else 8_000)])
def test_the_compressed_limit_binds_for_incompressible_items(level, packed_over):
    items = [(os.urandom(500), 1) for _ in range(200)]  # 100 kB that does not compress
    enc = encoding("gzip", framing=Framing(), max_bytes=10_000, max_uncompressed=1 << 20, level=level)
    payloads, _ = pack(enc, items)
    assert all(len(p.body) <= 10_000 for p in payloads)
    assert max(len(p.body) for p in payloads) > packed_over  # packed close to the limit, not far below it
    assert sum(p.items for p in payloads) == 200


needs_isal = pytest.mark.skipif(not compression.isal_fits("gzip", 1),
                                reason="python-isal is not installed (or LLMSHIP_NO_EXTENSIONS is set)")


@needs_isal
@pytest.mark.parametrize("codec", ["gzip", "deflate"])
def test_isa_l_and_its_zlib_twin_pack_the_same_items_into_the_same_payloads(codec, monkeypatch):
    """Level 1 is ISA-L's codec where installed, zlib's (the twin) where not: other bytes on the wire, the
    same payloads once inflated, item boundaries and counts."""
    items = mixed_items(300, seed=5)
    enc = encoding(codec, level=1, max_bytes=1 << 20, max_uncompressed=1 << 20)
    fast, _ = pack(enc, items)
    monkeypatch.setattr(compression, "_isal_zlib", None)
    twin, _ = pack(enc, items)
    assert len(fast) == len(twin) == 1
    assert fast[0].body != twin[0].body  # ISA-L's own deflate stream: it was used
    assert decompress(fast[0].body, codec, BIG) == decompress(twin[0].body, codec, BIG)
    assert (fast[0].lengths, fast[0].counts, fast[0].items) == (twin[0].lengths, twin[0].counts, twin[0].items)


@needs_isal
def test_an_item_too_large_for_isa_ls_bound_goes_in_a_zlib_payload_within_the_limit():
    """ISA-L's worst case is looser than zlib's: an incompressible item that fits alone only by zlib's bound
    makes its payload zlib's, still shipped and within the limit; a smaller one after it starts an ISA-L one."""
    enc = encoding("gzip", level=1, framing=Framing(), max_bytes=10_000, max_uncompressed=1 << 20)
    probe = Packer(enc, lambda payload: None)
    assert probe._max_isal_item < probe.max_item  # the bounds differ
    big, small = os.urandom(probe.max_item), os.urandom(100)
    payloads, too_large = pack(enc, [(big, 1), (small, 1)])
    assert too_large == [] and [p.items for p in payloads] == [1, 1]
    assert all(len(p.body) <= 10_000 for p in payloads)
    assert [decompress(p.body, "gzip", BIG) for p in payloads] == [big, small]


def test_max_items_cuts_and_a_full_payload_goes_at_once():
    sent: list[Payload] = []
    p = Packer(encoding(max_items=3), sent.append)
    for i in range(7):
        p.add(b'"%d"' % i)
    assert [x.items for x in sent] == [3, 3]  # submitted when full, not at the next add
    p.flush()
    assert [x.items for x in sent] == [3, 3, 1]


def test_an_item_too_large_to_ever_fit_is_counted_with_its_events_not_sent():
    payloads, too_large = pack(encoding("identity", max_bytes=100, max_uncompressed=100),
                               [(b"x" * 98, 1), (b"x" * 99, 4), (b"y", 1)])
    assert too_large == [4]  # 98 + "[" + "]" is exactly 100; 99 is one too many
    assert [p.items for p in payloads] == [1, 1]


def test_an_empty_packer_submits_nothing():
    assert build_payloads(encoding(), []) == []


def test_compression_is_fed_in_small_steps(monkeypatch):
    """No compress call ever gets the whole payload: at most FEED_BYTES plus one item."""
    sizes: list[int] = []
    real = compression.stream_compressor

    def recording(encoding_name, level=None, isal=False):
        compressor, mode = real(encoding_name, level, isal)

        class Recording:
            def compress(self, data):
                sizes.append(len(data))
                return compressor.compress(data)

            def flush(self, *args):
                return compressor.flush(*args)

        return Recording(), mode

    monkeypatch.setattr(packer_module, "stream_compressor", recording)
    item = b'"' + b"a" * 998 + b'"'
    payloads, _ = pack(encoding("gzip", max_bytes=5 << 20, max_uncompressed=5 << 20), [(item, 1)] * 4000)
    assert len(payloads) == 1 and len(decompress(payloads[0].body, "gzip", BIG)) > 3_900_000
    assert len(sizes) > 50 and max(sizes) <= FEED_BYTES + len(item) + 1


@pytest.mark.parametrize("codec", ["gzip", "zstd", "identity"])
def test_split_cuts_at_item_boundaries_keeps_framing_counts_and_headers(codec):
    enc = encoding(codec, framing=Framing(b"HEAD{", b"|", b"}TAIL"), level=1, extra_headers={"X-A": "b"},
                   max_bytes=1 << 20, max_uncompressed=1 << 20)
    items = mixed_items(41, seed=3)
    [payload], _ = pack(enc, items)
    halves = split(payload)
    assert len(halves) == 2 and sum(h.items for h in halves) == payload.items
    assert [i for h in halves for i in iter_items(h)] == [i for i, _ in items]
    for h in halves:
        raw = decompress(h.body, codec, BIG)
        assert raw.startswith(b"HEAD{") and raw.endswith(b"}TAIL") and h.extra_headers == {"X-A": "b"}
        assert h.id != payload.id and h.level == 1 and h.route == ROUTE
    # halves of halves, down to single items, which cannot be cut
    parts = [payload]
    while any(len(p.item_lengths()) > 1 for p in parts):
        parts = [q for p in parts for q in split(p)]
    assert [p.items for p in parts] == [events for _, events in items]
    assert split(parts[0]) == [parts[0]]


def test_a_payload_without_boundaries_is_not_split():
    legacy = Payload("logs", ROUTE, b"[1,2]", "application/json", "identity", 2)
    assert split(legacy) == [legacy]


async def test_max_age_submits_a_waiting_payload_and_shutdown_the_rest():
    sent: list[Payload] = []
    p = Packer(encoding(max_age_secs=0.2), sent.append)
    p.start()
    p.add(b'"soon"')
    started = time.monotonic()
    while not sent and time.monotonic() - started < 5:
        await asyncio.sleep(0.02)
    assert len(sent) == 1 and 0.15 <= time.monotonic() - started < 2
    p.add(b'"at shutdown"')
    await p.shutdown()
    await p.shutdown()  # idempotent
    assert [list(iter_items(x)) for x in sent] == [[b'"soon"'], [b'"at shutdown"']]


def test_reconfigure_submits_the_open_payload_under_its_old_encoding():
    sent: list[Payload] = []
    p = Packer(encoding("gzip"), sent.append)
    p.add(b'"a"')
    p.reconfigure(encoding("gzip"))  # the same: nothing happens
    assert sent == []
    p.reconfigure(encoding("zstd"))
    p.add(b'"b"')
    p.flush()
    assert [(x.content_encoding, list(iter_items(x))) for x in sent] == [("gzip", [b'"a"']), ("zstd", [b'"b"'])]


def test_accepted_falls_back_when_the_intake_does_not_take_the_configured_codec():
    assert accepted("zstd", ("gzip", "zstd")) == "zstd"
    assert accepted("zstd", ("gzip", "identity")) == "gzip"
    assert accepted("deflate", ("gzip", "zstd")) == "gzip"
