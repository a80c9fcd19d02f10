"""The LLM-heavy mix (bench/mixes.py) through the agent's processing and shipping planes in one process: v0.4
decode, the LLM stage, the per-item encoders, the router, the aggregator and the packers, without HTTP or
delivery (payloads are collected). For callgrind instruction counts a call, and for comparing what two versions
produce for the same input.

    .venv/bin/python bench/llm_calls.py --requests 20                       # µs a call (timings drift)
    .venv/bin/python bench/llm_calls.py --callgrind                        # instructions a call
    .venv/bin/python bench/llm_calls.py --callgrind --annotate 60          # and where they go
    .venv/bin/python bench/llm_calls.py --config scrub --dump out.json      # every output, decoded

``--callgrind`` runs it again under callgrind (bench/callgrind.py), counting the measured requests only, after
``--warmup`` requests, and prints the instructions a call (two runs agree within about 0.1%). ``--config``: ``default`` (the bench agent's
config: zstd, gzip for LLM Observability) or ``scrub`` (user scrub rules, a field policy, text and log
sampling rules, a short max_text_chars). ``--evp``: the share of EVP proxy events among the calls.
``--dump``: the decompressed payload bodies by kind, the flushed series and sketches, and the telemetry
counters, as JSON: deterministic for a given version, so a change that must not change outputs is checked by
dumping before and after it and comparing the files (``cmp``), for each config, with and without ``--evp``:

    for c in default scrub; do for e in 0 0.3; do
      .venv/bin/python bench/llm_calls.py --config $c --evp $e --requests 12 --dump /tmp/before-$c-$e.json
    done; done        # then the same after the change, to /tmp/after-*, and cmp each pair
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import callgrind  # bench/callgrind.py
import mixes  # bench/mixes.py
from common import Workload  # bench/common.py

from llmship.agent import build_processing
from llmship.aggregation import Aggregator
from llmship.compression import decompress
from llmship.config import load_config_text
from llmship.shipping.router import Router
from llmship.sources.traces import _tracer_info, decode_evp_llmobs, decode_v04, drop_poison
from llmship.telemetry import Telemetry
from llmship.transforms.privacy import MetricScrubber

CONFIGS = {
    "default": """
[agent]
hostname = "bench-host"
env = "bench"
[sinks.datadog]
api_key = "bench"
url = "http://127.0.0.1:9"
compression = "zstd"
""",
    "scrub": """
[agent]
hostname = "bench-host"
env = "bench"
tags = ["team:llm", "region:eu"]
[sinks.datadog]
api_key = "bench"
url = "http://127.0.0.1:9"
compression = "gzip"
[llm]
max_text_chars = 24
[llm.sampling]
span_text_rate = 0.5
prompt_log_rate = 0.5
[[llm.sampling.rules]]
model = "gpt-4o*"
span_text_rate = 0.7
prompt_log_rate = 0.3
[[scrub.rules]]
name = "capital"
regex = "(?i)capital"
replacement = "[CITY-WORD]"
[[scrub.rules]]
name = "paris"
regex = "Paris"
action = "hash"
[[scrub.rules]]
name = "user_id"
regex = "user-[0-9]+"
action = "drop_field"
[[scrub.fields]]
path = "meta.metadata.user"
action = "hash"
[scrub]
hash_key = "bench-key"
""",
}
CLOCK = 1_795_416_000.0  # the aggregator's clock: every sample in one bucket


class _NoDelivery:
    def overloaded(self, lane: str) -> bool:
        return False


class Pipeline:
    """What agent.build assembles for the trace and LLM path, with payloads collected instead of delivered."""

    def __init__(self, config: str) -> None:
        cfg = load_config_text(CONFIGS[config])
        self.telemetry = Telemetry()
        self.payloads = []
        self.aggregator = Aggregator(cfg, self.telemetry, clock=lambda: CLOCK)
        self.router = Router(telemetry=self.telemetry, aggregator=self.aggregator, delivery=_NoDelivery(),
                             metrics_sink=None, trace_sink=None, llmobs_sink=None, logs_sink=None)
        self.processing = build_processing(cfg, self.telemetry, self.router, submit=self.payloads.append)
        self.router.attach_sinks(*self.processing.sinks)
        self.aggregator.scrub_tags = MetricScrubber(self.processing.scrubber).tags
        self.emitter = self.processing.emitter

    def take(self, request) -> None:
        """One request, as the trace source hands it over (decoded, poison dropped, tracer info)."""
        if request.kind == "evp":
            self.emitter.submit_llmobs_events(decode_evp_llmobs(request.body))
            return
        headers = dict(line.split(": ", 1) for line in request.head.decode().split("\r\n")[1:] if ": " in line)
        chunks = decode_v04(request.body)
        drop_poison(chunks)
        self.emitter.submit_spans(chunks, _tracer_info(headers, chunks))

    def finish(self) -> dict:
        """Every payload flushed; the outputs decoded for comparison."""
        for sink in self.processing.sinks:
            sink.flush()
        result = self.aggregator.flush(CLOCK + 3600, final=True)
        bodies: dict[str, list] = {}
        for payload in self.payloads:
            body = decompress(payload.body, payload.content_encoding, 1 << 30)
            bodies.setdefault(payload.kind, []).append(body.decode("latin-1"))
        return {
            "payloads": bodies,
            "series": sorted(repr(s) for s in result.series),
            "sketches": sorted(repr((s.metric, s.host, s.tags, [(t, k.to_plain()) for t, k in s.points]))
                               for s in result.sketches),
            "telemetry": sorted(repr(item) for item in _counters(self.telemetry)),
        }


def _counters(telemetry: Telemetry):
    for name, comp in sorted(telemetry.components.items()):
        for key, value in sorted(comp.counters.items(), key=repr):
            yield name, key, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--requests", type=int, default=10, help="measured v0.4 payloads of 50 calls (default 10)")
    parser.add_argument("--warmup", type=int, default=4, help="requests before measuring (default 4)")
    parser.add_argument("--evp", type=float, default=0.0, help="share of calls sent as EVP events (default 0)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions (run under callgrind)")
    parser.add_argument("--dump", help="write every output, decoded, to this JSON file")
    parser.add_argument("--annotate", type=int, metavar="N", default=0,
                        help="with --callgrind: show the N costliest functions (inclusive; compiled modules by name)")
    args = parser.parse_args()
    if args.callgrind and not callgrind.in_child():
        counted = callgrind.run(sys.argv[1:])
        calls = int(counted.stdout.split()[0])
        print(f"{counted.instructions / calls:,.0f} instructions a call ({counted.stdout.strip()})")
        if args.annotate:
            print(callgrind.annotate(counted, args.annotate))
        counted.cleanup()
        return 0
    pipeline = Pipeline(args.config)
    workload = Workload("llm", 100 // len(mixes.traces("llm", 1)[0]), 20, args.evp, 0)
    warmup = [workload.next() for _ in range(args.warmup)]
    measured = [workload.next() for _ in range(args.requests)]
    calls = sum(r.llmobs if r.kind == "traces" else r.spans for r in measured)
    for request in warmup:
        pipeline.take(request)
    start = time.perf_counter()
    with callgrind.measured():
        for request in measured:
            pipeline.take(request)
    elapsed = time.perf_counter() - start
    if args.callgrind:  # the parent divides what callgrind counted by this
        print(f"{calls} calls, config {args.config}")
    else:
        print(f"{elapsed / calls * 1e6:.1f} µs a call ({calls} calls, config {args.config})")
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump(pipeline.finish(), f, indent=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
