"""The worker channel's framing: frames cut anywhere by the reads come out whole, in order, once."""

from __future__ import annotations

import random

import msgspec
import pytest

from llmship import workers

MESSAGES = [[(workers.CALLS, [[i, b"x" * (i * 37 % 500), [("llm.requests", "c", 1, f"model:m{i}")]]])]
            for i in range(40)]


def stream() -> bytes:
    return b"".join(workers.frame(m) for m in MESSAGES)


def fed(reader: workers.FrameReader, data: bytes, cuts: list[int]) -> list:
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        out += reader.feed(data[start:end])
    return out


@pytest.mark.parametrize("seed", range(20))
def test_frames_cut_anywhere_come_out_whole(seed):
    data = stream()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 60)))
    reader = workers.FrameReader()
    # as sent, with tuples read back as lists (msgpack has arrays only)
    assert fed(reader, data, cuts) == [msgspec.msgpack.decode(msgspec.msgpack.encode(m)) for m in MESSAGES]
    assert reader.pending == 0


def test_byte_by_byte_and_in_one_read_agree():
    data = stream()
    one = workers.FrameReader().feed(data)
    reader = workers.FrameReader()
    assert fed(reader, data, list(range(1, len(data)))) == one and len(one) == len(MESSAGES)
    assert reader.pending == 0


def test_a_cut_frame_waits_for_the_rest():
    data = workers.frame(MESSAGES[3])
    reader = workers.FrameReader()
    assert reader.feed(data[:2]) == [] and reader.feed(data[2:-1]) == []
    assert reader.pending == len(data) - 1
    assert reader.feed(data[-1:] + data[:5]) == workers.FrameReader().feed(data)
    assert reader.pending == 5


def test_a_frame_longer_than_the_bound_is_refused_in_either_place():
    bad = workers.HEADER.pack(workers.MAX_FRAME_BYTES + 1)
    with pytest.raises(ValueError):
        workers.FrameReader().feed(bad)
    reader = workers.FrameReader()
    reader.feed(bad[:2])
    with pytest.raises(ValueError):
        reader.feed(bad[2:])
