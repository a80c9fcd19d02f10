"""Instructions a span of the processing plane alone (callgrind), in this process: decode a v0.4 body
(``decode_v04``), then ``Emitter.submit_spans`` (LLM stage, scrub, encode), no HTTP, no shipping. A quicker
and steadier figure than bench/instructions.py's live agent for work on the decode-to-encode path.

    .venv/bin/python bench/spans_instructions.py                 # web mix: about a minute
    .venv/bin/python bench/spans_instructions.py --mix llm --stage decode

Runs itself under callgrind (bench/callgrind.py), warms up on a few bodies, counts while it processes
``--bodies`` bodies of 100 spans with fresh ids each (bench/common.py TracePayloads), and divides. The mix repeats its tag values from span to span (and its service names, meta
keys and most meta values are the same in every body): caches keyed by value are flattered by it.
"""

from __future__ import annotations

import argparse
import shutil

import callgrind  # bench/callgrind.py
import mixes  # bench/mixes.py
from common import TracePayloads, in_process_topology  # bench/common.py

TRACES_PER_BODY = 10  # of 10 spans each in the web mix
WARMUP_BODIES = 5


def child(args) -> None:
    emitter = in_process_topology().emitter
    from llmship.model import TracerInfo
    from llmship.sources.traces import decode_v04

    payloads = TracePayloads(mixes.traces(args.mix, TRACES_PER_BODY), 0)
    bodies = [payloads.body(seq) for seq in range(1, WARMUP_BODIES + args.bodies + 1)]
    tracer = TracerInfo(language="python")
    stages = {"decode": lambda body: decode_v04(body),
              "all": lambda body: emitter.submit_spans(decode_v04(body), tracer)}
    run = stages[args.stage]
    for body in bodies[:WARMUP_BODIES]:
        run(body)
    with callgrind.measured():
        for body in bodies[WARMUP_BODIES:]:
            run(body)
    print(payloads.spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=mixes.MIXES, default="web")
    parser.add_argument("--stage", choices=("all", "decode"), default="all")
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--keep", metavar="FILE", help="copy the callgrind dump there (for callgrind_annotate)")
    args = parser.parse_args()
    if callgrind.in_child():
        return child(args)
    counted = callgrind.run(["--mix", args.mix, "--stage", args.stage, "--bodies", str(args.bodies)])
    if args.keep:
        shutil.copy(counted.out, args.keep)
    counted.cleanup()
    spans = int(counted.stdout.split()[0])
    print(f"{args.mix} mix, {args.stage}: {counted.instructions / (spans * args.bodies):,.0f} instructions a span "
          f"({args.bodies} bodies of {spans} spans)")


if __name__ == "__main__":
    main()
