"""The OTLP trace path's CPU per LLM call, next to the v0.4 path's on the same calls, in one process.

    .venv/bin/python bench/otlp.py            # about 20 s
    .venv/bin/python bench/otlp.py --quick    # about 4 s
    .venv/bin/python bench/otlp.py --callgrind   # instructions a call (bench/callgrind.py), about 30 s

Both workloads are what real clients sent for six OpenAI chat calls (one with a 600-word prompt, one with an
e-mail address, one streamed, one failing): ddtrace 4.16's v0.4 payload (captures/ddtrace-4.16: 12 spans,
each call an `openai.request` span with its `_llmobs` event and an `http.request` child) and
opentelemetry-instrumentation-openai-v2's / OpenInference's OTLP export (captures/otel-1.45: 7 spans, the six
calls under one `handle_request` root). Each request goes the whole processing path with the agent's
default config: decode, conversion (OTLP: to APM spans and LLM calls), the LLM stage (tags, scrub, truncate,
sample, metrics, sample logs), the router, the aggregator and the sinks' encoding and compression
(payloads are handed to a delivery that drops them: no network). De-duplication is off (the same ids repeat).

The figure is process CPU time (time.process_time) per request divided by the six calls; goal (issue 12):
the OTLP path within 1.5x of the v0.4 path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import callgrind  # noqa: E402  bench/callgrind.py

from llmship.agent import build_processing  # noqa: E402
from llmship.aggregation import Aggregator  # noqa: E402
from llmship.config import load_config_text  # noqa: E402
from llmship.model import TracerInfo  # noqa: E402
from llmship.processing import Emitter  # noqa: E402
from llmship.shipping.router import Router  # noqa: E402
from llmship.sinks.metrics import MetricsSink  # noqa: E402
from llmship.sources import otlp_map  # noqa: E402
from llmship.sources.otlp import TRACES, decode_request  # noqa: E402
from llmship.sources.traces import decode_v04  # noqa: E402
from llmship.telemetry import Telemetry  # noqa: E402

CAPTURES = ROOT / "tests" / "fixtures" / "captures"
CALLS = 6


class NullDelivery:
    def overloaded(self, kind: str) -> bool:
        return False


def emitter() -> Emitter:
    """The processing plane as `llmship run` builds it (agent.build_processing), around a real router whose
    payloads are dropped."""
    cfg = load_config_text('[agent]\nhostname = "bench"\n')
    tel = Telemetry()
    drop = lambda payload: True  # noqa: E731
    router = Router(telemetry=tel, aggregator=Aggregator(cfg, tel), delivery=NullDelivery(),
                    metrics_sink=MetricsSink(cfg, drop, tel), trace_sink=None, llmobs_sink=None, logs_sink=None)
    processing = build_processing(cfg, tel, router, submit=drop)
    router.attach_sinks(*processing.sinks)
    router._counted.add = router._shipped.add = lambda span_id: True  # the same ids on every request
    return processing.emitter


def v04(em: Emitter, body: bytes) -> None:
    em.submit_spans(decode_v04(body), TracerInfo(language="python"))


def otlp(em: Emitter, body: bytes) -> None:
    for batch in otlp_map.convert_traces(decode_request(TRACES, body, False)).batches:
        em.submit_otlp(batch.chunks, batch.calls, batch.tracer)


def measure(fn, body: bytes, seconds: float) -> float:
    """CPU µs per request, after a warm-up."""
    em = emitter()
    for _ in range(50):
        fn(em, body)
    n, start, wall = 0, time.process_time(), time.monotonic()
    while time.monotonic() - wall < seconds:
        for _ in range(20):
            fn(em, body)
        n += 20
    return (time.process_time() - start) / n * 1e6


CALLGRIND_REQUESTS = 40


def count_one(workload: str) -> None:
    """In callgrind's child: ``CALLGRIND_REQUESTS`` requests of one workload counted, after a warm-up."""
    fn, body = next((fn, body) for name, fn, body in workloads() if name == workload)
    em = emitter()
    for _ in range(50):
        fn(em, body)
    with callgrind.measured():
        for _ in range(CALLGRIND_REQUESTS):
            fn(em, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per measurement")
    parser.add_argument("--callgrind", action="store_true", help="count instructions (callgrind) instead")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # callgrind's child: the one it counts
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    if args.callgrind:
        if callgrind.in_child():
            count_one(args.workload)
            return 0
        per_call = {}
        for name, _, _ in workloads():
            counted = callgrind.run(["--callgrind", "--workload", name])
            counted.cleanup()
            per_call[name] = counted.instructions / CALLGRIND_REQUESTS / CALLS
            ratio = f" = {per_call[name] / per_call['v0.4']:.2f}x v0.4" if name != "v0.4" else ""
            print(f"{name:<14} {per_call[name]:10,.0f} instructions per LLM call{ratio}")
        return 0
    v04_body = (CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes()
    baseline = measure(v04, v04_body, seconds) / CALLS
    print(f"v0.4 (ddtrace 4.16, 12 spans)           {baseline:7.1f} µs of CPU per LLM call")
    worst = 0.0
    for app in ("openai-v2", "openinference"):
        body = (CAPTURES / "otel-1.45" / f"{app}_traces_1.pb").read_bytes()
        us = measure(otlp, body, seconds) / CALLS
        worst = max(worst, us / baseline)
        print(f"OTLP ({app + ', 7 spans)':<26}   {us:7.1f} µs of CPU per LLM call = {us / baseline:.2f}x v0.4")
    print(f"goal: within 1.5x of v0.4: {'met' if worst <= 1.5 else 'missed'} ({worst:.2f}x)")
    return 0


def workloads():
    yield "v0.4", v04, (CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes()
    for app in ("openai-v2", "openinference"):
        yield app, otlp, (CAPTURES / "otel-1.45" / f"{app}_traces_1.pb").read_bytes()


if __name__ == "__main__":
    sys.exit(main())
