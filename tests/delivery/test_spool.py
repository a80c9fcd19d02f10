"""The disk spool: write, replay oldest first, survive corruption, stay within its budgets."""

from __future__ import annotations

import os
import shutil
import time
import zlib
from pathlib import Path

import orjson
import pytest

from llmship.delivery.payload import Framing, Payload, Route, split
from llmship.delivery.spool import FILE_HEADER, MAGIC, RECORD_HEADER, RECORD_HEADER_V1, VERSION, Spool
from llmship.shipping.packer import Encoding, Packer
from llmship.sinks.intakes import ROUTES
from llmship.telemetry import Telemetry

MiB = 1024 * 1024


def make_spool(directory: Path, telemetry: Telemetry, **limits) -> Spool:
    settings = dict(max_bytes=64 * MiB, max_age_secs=3600, min_free_bytes=0, legacy_routes=ROUTES)
    settings.update(limits)
    return Spool(directory, component=lambda kind: telemetry.component(f"delivery.{kind}"), **settings)


def payload(n: int, kind: str = "logs", size: int = 100, created: float | None = None) -> Payload:
    body = (f"[{n}]".encode() + b" " * size)[:max(size, 8)]
    p = Payload(kind=kind, route=ROUTES.get(kind, ROUTES["logs"]), body=body, content_type="application/json",
                content_encoding="identity", items=n, extra_headers={"X-Test": str(n)})
    if created is not None:
        p.created = created
    return p


async def replay_all(spool: Spool, kind: str = "logs") -> list[Payload]:
    """Lease, read and complete every record, oldest first."""
    out = []
    while (lease := spool.lease(kind)) is not None:
        got = await spool.read(lease)
        spool.done(lease)
        if got is not None:
            out.append(got)
    return out


def spool_files(directory: Path, kind: str = "logs") -> list[Path]:
    return sorted((directory / kind).glob("*.spool"))


async def test_round_trip_keeps_every_field_and_deletes_files_once_delivered(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    written = [payload(1), payload(2), payload(3)]
    assert await spool.write("logs", written) is None
    assert spool.files("logs") == 1 and spool.bytes("logs") == spool_files(tmp_path)[0].stat().st_size
    got = await replay_all(spool)
    def fields(p: Payload) -> tuple:
        return (p.id, p.body, p.items, p.created, p.extra_headers, p.content_type, p.content_encoding, p.route,
                p.framing, p.lengths, p.counts, p.level)

    assert [fields(p) for p in got] == [fields(p) for p in written]
    assert spool_files(tmp_path) == [] and spool.files() == 0 and spool.bytes() == 0


async def test_file_format_header_and_no_temp_files_left(tmp_path):
    spool = make_spool(tmp_path, Telemetry())
    await spool.open()
    await spool.write("logs", [payload(1)])
    [path] = spool_files(tmp_path)
    raw = path.read_bytes()
    magic, version, _flags = FILE_HEADER.unpack_from(raw)
    assert magic == MAGIC == b"LLMSPOOL" and version == VERSION == 2
    meta_len, index_len, body_len, _crc = RECORD_HEADER.unpack_from(raw, FILE_HEADER.size)
    assert FILE_HEADER.size + RECORD_HEADER.size + meta_len + index_len + body_len == len(raw)
    assert b"api_key" not in raw.lower() and b"dd-api-key" not in raw.lower()
    assert not [p for p in (tmp_path / "logs").iterdir() if p.name.endswith(".tmp")]


async def test_replay_after_restart_is_oldest_first_and_per_kind(tmp_path):
    tel = Telemetry()
    first = make_spool(tmp_path, tel)
    await first.open()
    for n in range(1, 6):
        await first.write("logs", [payload(n)])
    await first.write("series", [payload(99, kind="series")])
    # A restart: a new index built from what is on disk.
    second = make_spool(tmp_path, tel)
    await second.open()
    assert sorted(second.kinds()) == ["logs", "series"]
    assert [p.items for p in await replay_all(second, "logs")] == [1, 2, 3, 4, 5]
    assert [p.items for p in await replay_all(second, "series")] == [99]


async def test_a_released_record_comes_back_first_and_a_leased_one_is_not_handed_out_twice(tmp_path):
    spool = make_spool(tmp_path, Telemetry())
    await spool.open()
    await spool.write("logs", [payload(1), payload(2)])
    a = spool.lease("logs")
    b = spool.lease("logs")
    assert a.record is not b.record and spool.lease("logs") is None
    spool.release(a)
    again = spool.lease("logs")
    assert again.record is a.record
    assert (await spool.read(again)).items == 1


async def test_a_file_is_kept_until_all_its_records_are_done(tmp_path):
    spool = make_spool(tmp_path, Telemetry())
    await spool.open()
    await spool.write("logs", [payload(1), payload(2)])
    first = spool.lease("logs")
    spool.done(first)
    assert len(spool_files(tmp_path)) == 1
    # A restart re-sends the undelivered record (and, at-least-once, possibly the delivered one too).
    restarted = make_spool(tmp_path, Telemetry())
    await restarted.open()
    assert 2 in [p.items for p in await replay_all(restarted)]


async def test_truncated_file_keeps_its_whole_records_and_counts_the_rest(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    await spool.write("logs", [payload(1), payload(2), payload(3)])
    [path] = spool_files(tmp_path)
    os.truncate(path, path.stat().st_size - 10)  # cut into the last record
    reopened = make_spool(tmp_path, tel)
    await reopened.open()
    assert [p.items for p in await replay_all(reopened)] == [1, 2]
    assert tel.component("delivery.logs").get("errors", error_type="spool_corrupt") == 1


async def test_flipped_byte_in_a_body_skips_that_record_only(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    await spool.write("logs", [payload(1), payload(2), payload(3)])
    [path] = spool_files(tmp_path)
    raw = bytearray(path.read_bytes())
    second_body = raw.index(b"[2]")
    raw[second_body + 1] ^= 0xFF
    path.write_bytes(bytes(raw))
    reopened = make_spool(tmp_path, tel)
    await reopened.open()
    assert [p.items for p in await replay_all(reopened)] == [1, 3]
    comp = tel.component("delivery.logs")
    assert comp.get("errors", error_type="spool_corrupt") == 1
    assert comp.get("discarded", reason="spool_corrupt") == 2  # the corrupt record's items
    assert spool_files(tmp_path) == []  # all records done: the file is gone


@pytest.mark.parametrize("damage", ["magic", "empty", "garbage_meta"])
async def test_unreadable_files_are_skipped_counted_and_removed_without_crashing(tmp_path, damage):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    await spool.write("logs", [payload(1)])
    await spool.write("logs", [payload(2)])
    bad = spool_files(tmp_path)[0]
    raw = bytearray(bad.read_bytes())
    if damage == "magic":
        raw[0] ^= 0xFF
    elif damage == "empty":
        raw = bytearray()
    else:
        raw[FILE_HEADER.size + RECORD_HEADER.size] = ord("!")  # first byte of the JSON meta
    bad.write_bytes(bytes(raw))
    # A leftover temporary file from a write a crash interrupted.
    (tmp_path / "logs" / ".00000000000000000001-000001.spool.tmp").write_bytes(b"partial")
    reopened = make_spool(tmp_path, tel)
    await reopened.open()
    assert [p.items for p in await replay_all(reopened)] == [2]
    assert tel.component("delivery.logs").get("errors", error_type="spool_corrupt") == 2  # bad file + tmp file
    assert list((tmp_path / "logs").iterdir()) == []


async def test_budget_evicts_the_oldest_files_and_counts_their_items(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    await spool.write("logs", [payload(1, size=900)])
    budget = 3 * spool.bytes() + 100  # room for three files of this size
    spool.configure(max_bytes=budget, max_age_secs=3600, min_free_bytes=0)
    for n in range(2, 6):
        assert await spool.write("logs", [payload(n, size=900)]) is None
    assert spool.bytes() <= budget
    kept = [p.items for p in await replay_all(spool)]
    assert kept == [3, 4, 5]
    assert tel.component("delivery.logs").get("discarded", reason="spool_full") == 1 + 2


async def test_budget_spans_kinds_and_never_evicts_a_leased_record(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel, max_bytes=2500)
    await spool.open()
    await spool.write("series", [payload(7, kind="series", size=900)])
    lease = spool.lease("series")
    await spool.write("logs", [payload(1, size=900)])
    assert await spool.write("logs", [payload(2, size=900)]) is None  # evicts logs #1, not the leased one
    assert tel.component("delivery.logs").get("discarded", reason="spool_full") == 1
    assert await spool.write("logs", [payload(3, size=5000)]) == "spool_full"  # larger than the budget
    assert (await spool.read(lease)).items == 7


async def test_age_eviction_counts_expired_items(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel, max_age_secs=60)
    await spool.open()
    await spool.write("logs", [payload(4)])
    await spool.write("logs", [payload(5)])
    spool.expire(now=time.time() + 30)
    assert spool.files("logs") == 2
    spool.expire(now=time.time() + 120)
    assert spool.files("logs") == 0 and spool_files(tmp_path) == []
    assert tel.component("delivery.logs").get("discarded", reason="spool_expired") == 9


async def test_free_space_guard_refuses_writes(tmp_path):
    tel = Telemetry()
    free = shutil.disk_usage(tmp_path).free
    spool = make_spool(tmp_path, tel, min_free_bytes=free + 10 * MiB)  # demands more than the disk has
    await spool.open()
    assert await spool.write("logs", [payload(1)]) == "spool_disk_low"
    assert spool_files(tmp_path) == [] and spool.bytes() == 0
    spool.configure(max_bytes=64 * MiB, max_age_secs=3600, min_free_bytes=0)
    assert await spool.write("logs", [payload(1)]) is None


async def test_write_errors_are_reported_not_raised(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    (tmp_path / "logs").write_text("a file where the kind's directory should be")
    assert await spool.write("logs", [payload(1)]) == "spool_write_error"
    assert tel.component("delivery.logs").get("errors", error_type="spool_write") == 1


async def test_kind_names_cannot_escape_the_spool_directory(tmp_path):
    spool = make_spool(tmp_path, Telemetry())
    await spool.open()
    with pytest.raises(ValueError):
        await spool.write("../etc", [payload(1, kind="../etc")])


async def test_a_failing_free_space_check_is_an_error_not_disk_low(tmp_path, monkeypatch):
    """statvfs failing says nothing about free space: counted as an error with its reason, and the write
    is still attempted (it succeeds here), never refused as "spool_disk_low"."""
    import errno

    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()

    def broken_disk_usage(path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(shutil, "disk_usage", broken_disk_usage)
    assert await spool.write("logs", [payload(3)]) is None
    assert spool.files("logs") == 1
    comp = tel.component("delivery.logs")
    assert comp.get("errors", error_type="spool_disk_usage") == 1
    assert comp.get("discarded") == 0
    assert "Input/output error" in comp.info["last_error"]["detail"]


def packed(kind: str = "traces", compression: str = "zstd") -> Payload:
    """A payload from the real packer: items of several events each, a head and a tail, a level."""
    out: list[Payload] = []
    encoding = Encoding(kind, Route("trace.agent", "/api/v0.2/traces"), "application/x-protobuf", 1 << 20, 1 << 20,
                        Framing(b"HEAD", b"", b"TAIL"), compression=compression, level=1,
                        extra_headers={"X-Datadog-Reported-Languages": "python"})
    packer = Packer(encoding, out.append)
    for i in range(5):
        packer.add(b"item-%d;" % i * (i + 1), events=i + 1)
    packer.flush()
    return out[0]


async def test_route_framing_and_boundaries_survive_the_spool_and_still_split(tmp_path):
    spool = make_spool(tmp_path, Telemetry())
    await spool.open()
    original = packed()
    assert original.counts and original.framing.head == b"HEAD" and original.level == 1
    await spool.write("traces", [original])
    restarted = make_spool(tmp_path, Telemetry())  # read back by a new index, as after a restart
    await restarted.open()
    [got] = await replay_all(restarted, "traces")
    for name in ("kind", "route", "body", "content_type", "content_encoding", "items", "id", "created",
                 "extra_headers", "framing", "lengths", "counts", "level"):
        assert getattr(got, name) == getattr(original, name), name
    assert [p.items for p in split(got)] == [p.items for p in split(original)]


def write_v1_file(path: Path, records: list[tuple[dict, bytes]]) -> None:
    """A spool file as format 1 wrote it (no route, no boundaries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = bytearray(FILE_HEADER.pack(MAGIC, 1, 0))
    for meta, body in records:
        m = orjson.dumps(meta)
        out += RECORD_HEADER_V1.pack(len(m), len(body), zlib.crc32(body, zlib.crc32(m))) + m + body
    path.write_bytes(bytes(out))


async def test_version_1_files_are_read_with_the_route_of_their_kind(tmp_path):
    tel = Telemetry()
    meta = {"kind": "logs", "content_type": "application/json", "content_encoding": "identity", "items": 2,
            "id": "abc", "created": 1.5, "extra_headers": {"X-Test": "1"}}
    write_v1_file(tmp_path / "logs" / f"{time.time_ns():020d}-000001.spool", [(meta, b'[{"a":1},{"b":2}]')])
    unknown = dict(meta, kind="gone")
    write_v1_file(tmp_path / "gone" / f"{time.time_ns():020d}-000002.spool", [(unknown, b"[]")])
    spool = make_spool(tmp_path, tel)
    await spool.open()
    [got] = await replay_all(spool, "logs")
    assert (got.route, got.items, got.id, got.body, got.framing) == (ROUTES["logs"], 2, "abc", b'[{"a":1},{"b":2}]',
                                                                     None)
    assert split(got) == [got]  # no boundaries: a 413 cannot split it
    assert await replay_all(spool, "gone") == []  # no route known for its kind: skipped and counted
    assert tel.component("delivery.gone").get("discarded", reason="spool_corrupt") == 2


async def test_an_unknown_format_version_is_skipped_and_counted(tmp_path):
    tel = Telemetry()
    spool = make_spool(tmp_path, tel)
    await spool.open()
    await spool.write("logs", [payload(1)])
    [path] = spool_files(tmp_path)
    raw = bytearray(path.read_bytes())
    FILE_HEADER.pack_into(raw, 0, MAGIC, 99, 0)
    path.write_bytes(bytes(raw))
    reopened = make_spool(tmp_path, tel)
    await reopened.open()
    assert await replay_all(reopened) == []
    assert tel.component("delivery.logs").get("errors", error_type="spool_corrupt") == 1
