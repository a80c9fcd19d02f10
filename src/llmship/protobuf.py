"""Just enough of the protobuf wire format to write and read Datadog's payloads (agent-payload's
SketchPayload and AgentPayload/TracerPayload), without generated code or a protoc build step.

Writing: build messages with the field helpers and concatenate the bytes.
Reading: ``decode(buf)`` returns {field_number: [values]}, where a length-delimited value stays bytes
(the caller knows whether it is a string, a sub-message or packed numbers).
"""

from __future__ import annotations

import struct

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


# A varint is 7-bit groups, low first, each byte but the last with the top bit set. Values below 2**14 (one
# or two groups: lengths, counts, small fields) come from a table, a lookup instead of shifts and appends
# (the span encoder's hot path: measured ~40 -> ~20 us a span with its entry caches); larger ones (ids,
# timestamps) are built group by group. A second table for the higher groups was faster for those but
# held 16,384 more bytes objects (~0.9 MiB) in every process.
_SMALL = [bytes((n,)) if n < 128 else bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(1 << 14)]


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # negative int32/int64 are sent as 10-byte two's complement
    if n < 0x4000:
        return _SMALL[n]
    groups = bytearray()
    while n >= 0x80:
        groups.append((n & 0x7F) | 0x80)
        n >>= 7
    groups.append(n)
    return bytes(groups)


def varints(values: list[int]) -> bytes:
    """The varints of ``values``, one after the other (a packed field's body)."""
    if values and min(values) >= 0 and max(values) < len(_SMALL):
        return b"".join(map(_SMALL.__getitem__, values))  # no Python call a value
    return b"".join(map(varint, values))


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_varint(field: int, n: int) -> bytes:
    return tag(field, VARINT) + varint(n) if n else b""


def f_sint(field: int, n: int) -> bytes:
    return tag(field, VARINT) + varint(zigzag(n)) if n else b""


def f_double(field: int, x: float) -> bytes:
    return tag(field, FIXED64) + struct.pack("<d", x) if x else b""


def f_bytes(field: int, b: bytes) -> bytes:
    return tag(field, LEN) + varint(len(b)) + b if b else b""


def f_str(field: int, s: str) -> bytes:
    return f_bytes(field, s.encode())


def f_msg(field: int, b: bytes) -> bytes:
    """A sub-message: written even when empty (presence matters for repeated messages)."""
    return tag(field, LEN) + varint(len(b)) + b


def packed_varints(field: int, values, signed: bool = False) -> bytes:
    if not values:
        return b""
    return f_bytes(field, varints([zigzag(v) for v in values] if signed else list(values)))


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def decode(buf: bytes) -> dict[int, list]:
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == VARINT:
            val, pos = read_varint(buf, pos)
        elif wt == FIXED64:
            val = buf[pos : pos + 8]
            pos += 8
        elif wt == LEN:
            n, pos = read_varint(buf, pos)
            val = buf[pos : pos + n]
            pos += n
        elif wt == FIXED32:
            val = buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if pos > len(buf):
            raise ValueError("truncated message")
        fields.setdefault(field, []).append(val)
    return fields


def as_double(raw: bytes) -> float:
    return struct.unpack("<d", raw)[0]


def as_int64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def unpack_varints(raw: bytes, signed: bool = False) -> list[int]:
    out, pos = [], 0
    while pos < len(raw):
        v, pos = read_varint(raw, pos)
        out.append(unzigzag(v) if signed else v)
    return out
