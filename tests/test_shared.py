"""The small shared pieces: compression bounds, protobuf wire helpers, telemetry (the packer: tests/shipping)."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from llmship import protobuf as pb
from llmship.compression import DecompressionLimit, compress, decompress
from llmship.telemetry import Telemetry


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "identity"])
def test_compression_round_trips(encoding):
    body = os.urandom(1000) + b"x" * 10_000
    assert decompress(compress(body, encoding), encoding, max_bytes=20_000) == body


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_decompression_stops_at_the_limit(encoding):
    bomb = compress(b"\0" * 10_000_000, encoding)
    assert len(bomb) < 100_000
    with pytest.raises(DecompressionLimit):
        decompress(bomb, encoding, max_bytes=1_000_000)


def test_deflate_accepts_zlib_raw_and_gzip_bodies():
    """Clients that say "deflate" send zlib-wrapped, raw deflate or gzip data; all must be read."""
    body = b'{"a": 1}' * 10
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_body = raw.compress(body) + raw.flush()
    for encoded in (zlib.compress(body), raw_body, gzip.compress(body)):
        assert decompress(encoded, "deflate", 1000) == body


def test_unknown_encoding_is_rejected():
    with pytest.raises(ValueError):
        decompress(b"abc", "br", 100)


def test_protobuf_round_trip():
    msg = (pb.f_str(1, "metric.name") + pb.f_varint(2, 300) + pb.f_sint(3, -5) + pb.f_double(4, 2.5)
           + pb.packed_varints(5, [1, -2, 3], signed=True) + pb.f_msg(6, pb.f_str(1, "inner"))
           + pb.f_varint(7, -1))
    fields = pb.decode(msg)
    assert fields[1] == [b"metric.name"]
    assert fields[2] == [300]
    assert pb.unzigzag(fields[3][0]) == -5
    assert pb.as_double(fields[4][0]) == 2.5
    assert pb.unpack_varints(fields[5][0], signed=True) == [1, -2, 3]
    assert pb.decode(fields[6][0]) == {1: [b"inner"]}
    assert pb.as_int64(fields[7][0]) == -1


@pytest.mark.parametrize("garbage", [b"\x0a\x05ab", b"\xff\xff\xff", b"\x0b"])
def test_protobuf_decode_rejects_truncated_input(garbage):
    with pytest.raises(ValueError):
        pb.decode(garbage)


def test_telemetry_counts_by_label_and_snapshots():
    tel = Telemetry()
    comp = tel.component("dogstatsd")
    comp.inc("dropped", reason="bad_value")
    comp.inc("dropped", 2, reason="unknown_type")
    comp.gauge("queue_bytes", lambda: 42)
    comp.gauge("broken", lambda: 1 / 0)
    assert comp.get("dropped") == 3
    assert comp.get("dropped", reason="unknown_type") == 2
    snap = tel.snapshot()["components"]["dogstatsd"]
    assert snap["gauges"] == {"queue_bytes": 42, "broken": None}
    assert {"name": "dropped", "labels": {"reason": "bad_value"}, "value": 1} in snap["counters"]
