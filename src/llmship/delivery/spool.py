"""The disk spool: encoded payloads kept on disk while an intake cannot take them, replayed oldest first.

Layout: ``<spool_dir>/<kind>/<unix time ns, 20 digits>-<sequence, 6 digits>.spool``, one directory per
payload kind so each kind replays in its own order. A file is written under a temporary name
(``.<name>.tmp``), fsynced, renamed, and the directory fsynced: a file with the final name is complete.
Leftover temporary files after a crash are deleted at start.

File format (little-endian), version 2:

    header  : magic b"LLMSPOOL" (8 bytes) | version u16 (= 2) | flags u16 (= 0)
    record* : meta_len u32 | index_len u32 | body_len u32 | crc32(meta + index + body) u32
              | meta (JSON) | index | body

``meta`` holds the payload's kind, route, content type and encoding, compression level, item count, id,
creation time, extra headers and framing (head, separator, tail, base64); ``index`` is the payload's item
boundaries (its ``lengths`` then its ``counts``, packed varints; meta says where one ends); ``body`` is the
payload exactly as it would be sent. Never the API key: the transport adds it at send time.

Version 1 files (before payloads carried their route and boundaries: record ``meta_len u32 | body_len u32 |
crc32 u32 | meta | body``) are still read: the route comes from ``legacy_routes`` (kind -> Route, given by
whoever builds delivery), and such a payload has no boundaries, so a 413 cannot split it (it is dropped,
counted discarded{reason="too_large"}) and the file transport decodes it whole. At start only the record headers and metas
are read (fast); each record's checksum is verified when it is read for sending. A bad header, a
truncated record or a checksum mismatch skips what it affects and is counted (errors{reason=
"spool_corrupt"}, and discarded{reason="spool_corrupt"} for the items when known): never a crash loop.

A record is leased to one sender at a time; once delivered (or permanently rejected) it is done, and a
file is deleted when all its records are done. Delivery is at-least-once: a crash between a send and the
delete sends that record again after the restart (the payload id lets an intake recognise it).

Bounds: ``max_bytes`` over all kinds (the oldest files are evicted to make room, counted as
discarded{reason="spool_full"}), ``max_age_secs`` (older files are deleted, discarded{reason=
"spool_expired"}), and ``min_free_bytes``: a write that would leave less free space on the file system is
refused (the caller counts discarded{reason="spool_disk_low"}). Leased records are never evicted.

The index lives on the event loop thread; only file reads and writes run in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from llmship.delivery.payload import Framing, Payload, Route
from llmship.log import RateLimited, get_logger
from llmship.telemetry import Component

MAGIC = b"LLMSPOOL"
VERSION = 2
FILE_HEADER = struct.Struct("<8sHH")
RECORD_HEADER = struct.Struct("<IIII")  # meta_len, index_len, body_len, crc32(meta + index + body)
RECORD_HEADER_V1 = struct.Struct("<III")  # meta_len, body_len, crc32(meta + body)
SUFFIX = ".spool"
# Sanity bounds on lengths read back, so a corrupt length cannot make us allocate gigabytes. The largest
# payload any intake takes is far below (traces flush at ~3.2 MB, others cap at 5 MiB): PROTOCOLS.md.
MAX_META_BYTES = 64 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024  # two varints an item at most: far above what a payload's limits allow
MAX_BODY_BYTES = 256 * 1024 * 1024
# Payload kinds (lanes) are code-defined names and name spool directories: refuse anything path-like.
LANE_NAME = re.compile(r"[a-z0-9_]{1,64}")
_KIND = LANE_NAME
_NAME = re.compile(r"(\d{20})-(\d{6})" + re.escape(SUFFIX))

PENDING, LEASED, DONE = "pending", "leased", "done"

_log = get_logger("delivery.spool")


class SpoolCorrupt(ValueError):
    """A record or file that cannot be trusted."""


@dataclass(eq=False)
class Record:
    offset: int  # of the record header in its file
    length: int  # header + meta + body
    items: int
    created: float  # wall-clock seconds: when the payload was made
    state: str = PENDING


@dataclass(eq=False)
class SpoolFile:
    path: Path
    kind: str
    size: int
    written: float  # wall-clock seconds, from the name
    records: list[Record] = field(default_factory=list)
    version: int = VERSION

    def undelivered_items(self) -> int:
        return sum(r.items for r in self.records if r.state != DONE)

    def leased(self) -> bool:
        return any(r.state == LEASED for r in self.records)


@dataclass(frozen=True, eq=False)
class Lease:
    file: SpoolFile
    record: Record


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_bytes: int,
        max_age_secs: float,
        min_free_bytes: int,
        component: Callable[[str], Component],
        legacy_routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._legacy_routes = dict(legacy_routes or {})  # kind -> route, for version 1 records
        self.max_bytes = max_bytes
        self.max_age_secs = max_age_secs
        self.min_free_bytes = min_free_bytes
        self._component = component  # kind -> where its counters go
        self._files: dict[str, list[SpoolFile]] = {}  # per kind, sorted by name (oldest first)
        self._bytes: dict[str, int] = {}
        self._reserved = 0  # bytes of writes under way, so concurrent writes respect the budget
        self._seq = 0
        self._limited = RateLimited(_log)

    # ------------------------------------------------------------------------------------------ state

    def configure(self, *, max_bytes: int, max_age_secs: float, min_free_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_age_secs = max_age_secs
        self.min_free_bytes = min_free_bytes

    def kinds(self) -> list[str]:
        return [kind for kind, files in self._files.items() if files]

    def bytes(self, kind: str | None = None) -> int:
        return sum(self._bytes.values()) if kind is None else self._bytes.get(kind, 0)

    def files(self, kind: str | None = None) -> int:
        if kind is None:
            return sum(len(files) for files in self._files.values())
        return len(self._files.get(kind, ()))

    # ------------------------------------------------------------------------------------------ start

    async def open(self) -> None:
        """Create the directory and index what a previous run left (in a thread: it reads every file)."""
        found, problems = await asyncio.to_thread(_scan, self.directory)
        for kind, reason, path in problems:
            self._corrupt(kind, reason, str(path), 0)  # how many items a corrupt tail held is unknown
        for spool_file in found:
            self._add(spool_file)
        if found:
            _log.info("spool_opened", directory=str(self.directory), files=len(found), bytes=self.bytes())

    # ------------------------------------------------------------------------------------------ replay

    def oldest(self, kind: str) -> float | None:
        """Creation time of the record ``lease(kind)`` would return, or None when there is none."""
        found = self._next_pending(kind)
        return found[1].created if found else None

    def lease(self, kind: str) -> Lease | None:
        found = self._next_pending(kind)
        if found is None:
            return None
        spool_file, record = found
        record.state = LEASED
        return Lease(spool_file, record)

    def _next_pending(self, kind: str) -> tuple[SpoolFile, Record] | None:
        for spool_file in self._files.get(kind, ()):
            for record in spool_file.records:
                if record.state == PENDING:
                    return spool_file, record
        return None

    async def read(self, lease: Lease) -> Payload | None:
        """The leased payload; None (counted, and the record marked done) when it is corrupt or gone."""
        try:
            return await asyncio.to_thread(_read_record, lease.file.path, lease.record.offset,
                                           lease.record.length, lease.file.version, self._legacy_routes)
        except (OSError, SpoolCorrupt) as e:
            self._corrupt(lease.file.kind, f"{type(e).__name__}: {e}", str(lease.file.path), lease.record.items)
            self.done(lease)
            return None

    def release(self, lease: Lease) -> None:
        """Not delivered this time: the record stays on disk for a later attempt."""
        if lease.record.state == LEASED:
            lease.record.state = PENDING

    def done(self, lease: Lease) -> None:
        """Delivered or permanently rejected: the file goes once all its records are done."""
        lease.record.state = DONE
        if all(r.state == DONE for r in lease.file.records):
            self._delete(lease.file)

    # ------------------------------------------------------------------------------------------ write

    async def write(self, kind: str, payloads: list[Payload]) -> str | None:
        """Write ``payloads`` (all of ``kind``) as one file. None on success, else why it was refused:
        "spool_full" (nothing evictable makes room), "spool_disk_low" or "spool_write_error"."""
        if not _KIND.fullmatch(kind):
            raise ValueError(f"payload kind {kind!r} is not a valid spool directory name")
        metas = [_meta(p) for p in payloads]
        size = FILE_HEADER.size + sum(RECORD_HEADER.size + len(m) + len(p.lengths) + len(p.counts) + len(p.body)
                                      for m, p in zip(metas, payloads))
        refused = self._make_room(size, kind)
        if refused:
            return refused
        self._seq = (self._seq + 1) % 1_000_000
        name = f"{time.time_ns():020d}-{self._seq:06d}{SUFFIX}"
        path = self.directory / kind / name
        self._reserved += size
        try:
            records = await asyncio.to_thread(_write_file, path, metas, payloads)
        except OSError as e:
            self._component(kind).error("spool_write", f"{type(e).__name__}: {e.strerror or e}", stage="sending")
            self._limited.error(f"write:{kind}", "spool_write_failed", kind=kind, path=str(path),
                                error=f"{type(e).__name__}: {e.strerror or e}")
            return "spool_write_error"
        finally:
            self._reserved -= size
        self._add(SpoolFile(path, kind, size, _written(name), records))
        return None

    def _make_room(self, size: int, kind: str) -> str | None:
        """None when ``size`` more bytes fit (evicting the oldest files for the budget), else why not."""
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as e:
            # Unknown is not "low": say what failed, and let the write itself find out (it fails with
            # its own error, or succeeds: refusing would drop data over a failed statvfs).
            detail = f"cannot read free space of {self.directory}: {type(e).__name__}: {e.strerror or e}"
            self._component(kind).error("spool_disk_usage", detail, stage="sending")
            self._limited.error(f"disk_usage:{kind}", "spool_disk_usage_failed", kind=kind, error=detail)
            free = None
        if free is not None and free - size < self.min_free_bytes:  # first: refusing must not cost evictions
            self._limited.warning("disk_low", "spool_disk_low", directory=str(self.directory), free_bytes=free,
                                  min_free_bytes=self.min_free_bytes)
            return "spool_disk_low"
        if size > self.max_bytes:
            return "spool_full"
        while self.bytes() + self._reserved + size > self.max_bytes:
            victim = self._oldest_evictable()
            if victim is None:
                return "spool_full"
            self._evict(victim, "spool_full")
        return None

    def _oldest_evictable(self) -> SpoolFile | None:
        candidates = [next((f for f in files if not f.leased()), None) for files in self._files.values()]
        candidates = [f for f in candidates if f is not None]
        return min(candidates, key=lambda f: f.path.name, default=None)

    # ------------------------------------------------------------------------------------------ age

    def expire(self, now: float | None = None) -> None:
        """Delete files older than max_age_secs (their items are counted as dropped, spool_expired)."""
        now = time.time() if now is None else now
        for files in self._files.values():
            expired = []
            for spool_file in files:  # oldest first: stop at the first young enough
                if now - spool_file.written <= self.max_age_secs:
                    break
                if not spool_file.leased():
                    expired.append(spool_file)
            for spool_file in expired:
                self._evict(spool_file, "spool_expired")

    # ------------------------------------------------------------------------------------------ index

    def _add(self, spool_file: SpoolFile) -> None:
        files = self._files.setdefault(spool_file.kind, [])
        bisect.insort(files, spool_file, key=lambda f: f.path.name)
        self._bytes[spool_file.kind] = self._bytes.get(spool_file.kind, 0) + spool_file.size

    def _evict(self, spool_file: SpoolFile, reason: str) -> None:
        items = spool_file.undelivered_items()
        if items:
            self._component(spool_file.kind).discard(reason, items)
        self._limited.warning(f"{reason}:{spool_file.kind}", "spool_evicted", reason=reason,
                              kind=spool_file.kind, items=items, path=str(spool_file.path))
        self._delete(spool_file)

    def _delete(self, spool_file: SpoolFile) -> None:
        files = self._files.get(spool_file.kind, [])
        if spool_file in files:
            files.remove(spool_file)
            self._bytes[spool_file.kind] -= spool_file.size
        try:
            spool_file.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            self._component(spool_file.kind).error("spool_delete", f"{type(e).__name__}: {e.strerror or e}", stage="sending")

    def _corrupt(self, kind: str, reason: str, path: str, items: int) -> None:
        comp = self._component(kind)
        comp.error("spool_corrupt", f"{path}: {reason}", stage="sending")
        if items:
            comp.discard("spool_corrupt", items)
        self._limited.error(f"corrupt:{kind}", "spool_record_skipped", kind=kind, path=path, reason=reason)


# ---------------------------------------------------------------------------------------------- file I/O
# These run in a worker thread: they touch files only, never the index or telemetry.


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _meta(payload: Payload) -> bytes:
    f = payload.framing
    return orjson.dumps({
        "kind": payload.kind,
        "route": [payload.route.host, payload.route.path],
        "content_type": payload.content_type,
        "content_encoding": payload.content_encoding,
        "level": payload.level,
        "items": payload.items,
        "id": payload.id,
        "created": payload.created,
        "extra_headers": payload.extra_headers,
        "framing": None if f is None else [_b64(f.head), _b64(f.separator), _b64(f.tail)],
        "lengths_bytes": len(payload.lengths),
    })


def _written(name: str) -> float:
    return int(name[:20]) / 1e9


def _write_file(path: Path, metas: list[bytes], payloads: list[Payload]) -> list[Record]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    records: list[Record] = []
    offset = FILE_HEADER.size
    try:
        with open(tmp, "wb") as f:
            f.write(FILE_HEADER.pack(MAGIC, VERSION, 0))
            for meta, payload in zip(metas, payloads):
                index = payload.lengths + payload.counts
                crc = zlib.crc32(payload.body, zlib.crc32(index, zlib.crc32(meta)))
                f.write(RECORD_HEADER.pack(len(meta), len(index), len(payload.body), crc))
                f.write(meta)
                f.write(index)
                f.write(payload.body)
                length = RECORD_HEADER.size + len(meta) + len(index) + len(payload.body)
                records.append(Record(offset, length, payload.items, payload.created))
                offset += length
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return records


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: without it a power cut can forget the new name."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_record(path: Path, offset: int, length: int, version: int = VERSION,
                 legacy_routes: Mapping[str, Route] | None = None) -> Payload:
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    if len(raw) != length:
        raise SpoolCorrupt("truncated record")
    if version == 1:
        meta_len, body_len, crc = RECORD_HEADER_V1.unpack_from(raw)
        index_len, start = 0, RECORD_HEADER_V1.size
    else:
        meta_len, index_len, body_len, crc = RECORD_HEADER.unpack_from(raw)
        start = RECORD_HEADER.size
    if start + meta_len + index_len + body_len != length:
        raise SpoolCorrupt("record lengths changed")
    meta = raw[start:start + meta_len]
    index = raw[start + meta_len:start + meta_len + index_len]
    body = raw[start + meta_len + index_len:]
    check = zlib.crc32(body, zlib.crc32(index, zlib.crc32(meta)))  # index is empty in version 1
    if check != crc:
        raise SpoolCorrupt("checksum mismatch")
    try:
        m = orjson.loads(meta)
        payload = Payload(kind=m["kind"], route=_route(m, legacy_routes), body=body, content_type=m["content_type"],
                          content_encoding=m["content_encoding"], items=m["items"], id=m["id"],
                          created=m["created"], extra_headers=m["extra_headers"])
        if version > 1:
            payload.level = m["level"]
            if m["framing"] is not None:
                head, separator, tail = (base64.b64decode(x) for x in m["framing"])
                payload.framing = Framing(head, separator, tail)
                cut = int(m["lengths_bytes"])
                payload.lengths, payload.counts = index[:cut], index[cut:]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise SpoolCorrupt(f"corrupt record metadata: {e}") from None
    return payload


def _route(meta: dict, legacy_routes: Mapping[str, Route] | None) -> Route:
    if "route" in meta:
        host, path = meta["route"]
        return Route(str(host), str(path))
    route = (legacy_routes or {}).get(meta["kind"])
    if route is None:
        raise ValueError(f"no route known for a version 1 record of kind {meta['kind']!r}")
    return route


def _scan(directory: Path) -> tuple[list[SpoolFile], list[tuple[str, str, Path]]]:
    """Index every spool file under ``directory``; return (files, problems as (kind, reason, path))."""
    directory.mkdir(parents=True, exist_ok=True)
    found: list[SpoolFile] = []
    problems: list[tuple[str, str, Path]] = []
    for kind_dir in sorted(directory.iterdir()):
        if not kind_dir.is_dir() or not _KIND.fullmatch(kind_dir.name):
            continue
        kind = kind_dir.name
        for path in sorted(kind_dir.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write a crash interrupted: never renamed, never complete
                problems.append((kind, "partial write left by a crash", path))
                continue
            if not _NAME.fullmatch(path.name):
                continue  # not ours: leave it alone
            try:
                spool_file, reason = _scan_file(path, kind)
            except OSError as e:
                problems.append((kind, f"unreadable: {e.strerror or e}", path))
                continue
            if reason:
                problems.append((kind, reason, path))
            if spool_file.records:
                found.append(spool_file)
            else:
                path.unlink(missing_ok=True)
    return found, problems


def _scan_file(path: Path, kind: str) -> tuple[SpoolFile, str]:
    """The file's readable records, and why the rest (if any) was skipped."""
    size = path.stat().st_size
    spool_file = SpoolFile(path, kind, size, _written(path.name))
    with open(path, "rb") as f:
        header = f.read(FILE_HEADER.size)
        if len(header) < FILE_HEADER.size:
            return spool_file, "truncated file header"
        magic, version, _flags = FILE_HEADER.unpack(header)
        if magic != MAGIC or version not in (1, VERSION):
            return spool_file, f"bad file header (magic {magic!r}, version {version})"
        spool_file.version = version
        record_header = RECORD_HEADER_V1 if version == 1 else RECORD_HEADER
        offset = FILE_HEADER.size
        while offset < size:
            raw = f.read(record_header.size)
            if len(raw) < record_header.size:
                return spool_file, "truncated record header"
            if version == 1:
                (meta_len, body_len, _crc), index_len = record_header.unpack(raw), 0
            else:
                meta_len, index_len, body_len, _crc = record_header.unpack(raw)
            length = record_header.size + meta_len + index_len + body_len
            if (meta_len > MAX_META_BYTES or index_len > MAX_INDEX_BYTES or body_len > MAX_BODY_BYTES
                    or offset + length > size):
                return spool_file, "truncated or corrupt record"
            try:
                meta = orjson.loads(f.read(meta_len))
                items, created = int(meta["items"]), float(meta["created"])
                if meta["kind"] != kind:
                    raise ValueError(f"record of kind {meta['kind']!r} in the {kind!r} directory")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                return spool_file, f"corrupt record metadata: {e}"
            spool_file.records.append(Record(offset, length, items, created))
            f.seek(index_len + body_len, os.SEEK_CUR)
            offset += length
    return spool_file, ""
