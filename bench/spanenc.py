"""Micro-benchmark of the span encoder: µs a span, compiled vs pure-Python twin vs today's `_encode_span`,
on the spans of the ddtrace capture (v04_traces_llmobs_default: `openai.request` spans with 30 meta and
16-19 metrics, and their `http.request` children), with three meta defaults (env, version, a tag).

    PYTHONPATH=src .venv/bin/python bench/spanenc.py      # about 4 s

Two loads: "as captured" (the same 12 spans over and over: entry caches always hit) and "fresh values"
(2,000 copies, each with its own ids, `_dd.p.tid`, `runtime-id` and token counts, as under real load).
Today's encoder gets the defaults merged into each span's meta beforehand (the sink mutates meta today),
so all three write the same entries; that merge is not timed.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import msgspec

from llmship import events
from llmship.model import Span
from llmship.sinks import spanenc
from llmship.sinks.traces import _encode_span

CAPTURE = Path(__file__).parents[1] / "tests/fixtures/captures/ddtrace-4.16/v04_traces_llmobs_default.msgpack"
DEFAULTS = (("env", "prod"), ("version", "1.2.3"), ("team", "llm-platform"))
SECONDS = 0.4  # a measurement


def capture_spans() -> list[Span]:
    return [s for c in msgspec.msgpack.decode(CAPTURE.read_bytes(), type=list[list[Span]]) for s in c]


def fresh(spans: list[Span], n: int) -> list[Span]:
    rnd = random.Random(7)
    out = []
    for i in range(n):
        s = spans[i % len(spans)]
        meta = dict(s.meta)
        if "_dd.p.tid" in meta:
            meta["_dd.p.tid"] = f"{rnd.getrandbits(32):08x}00000000"
        if "runtime-id" in meta:
            meta["runtime-id"] = f"{rnd.getrandbits(128):032x}"
        metrics = {k: (float(rnd.randrange(1, 5000)) if "token" in k else v) for k, v in s.metrics.items()}
        out.append(msgspec.structs.replace(s, trace_id=rnd.getrandbits(64), span_id=rnd.getrandbits(64),
                                           meta=meta, metrics=metrics))
    return out


def as_old(s: Span) -> events.Span:
    meta = {**s.meta, **{k: v for k, v in DEFAULTS if k not in s.meta}}
    return events.Span(trace_id=s.trace_id, span_id=s.span_id, parent_id=s.parent_id, service=s.service,
                       name=s.name, resource=s.resource, type=s.type, start=s.start, duration=s.duration,
                       error=s.error, meta=meta, metrics=dict(s.metrics),
                       meta_struct={k: v for k, v in s.meta_struct.items() if k != "_llmobs"})


def us_per_span(encode, spans, *args) -> float:
    for s in spans:  # warm caches and the allocator
        encode(s, *args)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < SECONDS:
        for s in spans:
            encode(s, *args)
        n += len(spans)
    return elapsed / n * 1e6


def main() -> None:
    base = capture_spans()
    for label, spans in (("as captured", base), ("fresh values", fresh(base, 2000))):
        olds = [as_old(s) for s in spans]
        assert all(spanenc.encode_span_py(s, "python", DEFAULTS) == _encode_span(o, "python")
                   for s, o in zip(spans, olds))
        today = us_per_span(_encode_span, olds, "python")
        twin = us_per_span(spanenc.encode_span_py, spans, "python", DEFAULTS)
        line = f"{label:<13} today {today:6.2f} µs/span   twin {twin:6.2f}"
        if spanenc.encode_span_native is not None:
            native = us_per_span(spanenc.encode_span_native, spans, "python", DEFAULTS)
            line += f"   native {native:5.2f}   ({today / native:.1f}x today, {twin / native:.1f}x twin)"
        else:
            line += "   native: not built"
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
