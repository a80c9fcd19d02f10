"""Instructions a span of the processing plane alone (callgrind), in this process: decode a v0.4 body
(``decode_v04``), then ``Emitter.submit_spans`` (LLM stage, scrub, encode), no HTTP, no shipping. A quicker
and steadier figure than bench/instructions.py's live agent for work on the decode-to-encode path.

    .venv/bin/python bench/spans_instructions.py                 # web mix: about a minute
    .venv/bin/python bench/spans_instructions.py --mix llm --stage decode

Runs itself under callgrind with instrumentation off, warms up on a few bodies, switches instrumentation on
(`callgrind_control -i on`), processes ``--bodies`` bodies of 100 spans with fresh ids each (bench/common.py
TracePayloads), and divides. The mix repeats its tag values from span to span (and its service names, meta
keys and most meta values are the same in every body): caches keyed by value are flattered by it.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

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
    print(f"ready {payloads.spans}", flush=True)
    sys.stdin.readline()  # the parent switches instrumentation on meanwhile
    for body in bodies[WARMUP_BODIES:]:
        run(body)
    print("done", flush=True)
    sys.stdin.readline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=mixes.MIXES, default="web")
    parser.add_argument("--stage", choices=("all", "decode"), default="all")
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--keep", metavar="FILE", help="copy the callgrind dump there (for callgrind_annotate)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="llmship-spans-cg-") as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                                 "--instr-atstart=no", sys.executable, __file__, "--child", "--mix", args.mix,
                                 "--stage", args.stage, "--bodies", str(args.bodies)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            spans = int(proc.stdout.readline().split()[1])
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            dump = sorted(glob.glob(f"{out}.{proc.pid}.*"))[-1]
            total = next(int(line.split()[1]) for line in open(dump) if line.startswith(("summary:", "totals:")))
            if args.keep:
                subprocess.run(["cp", dump, args.keep], check=True)
        finally:
            proc.stdin.close()
            proc.wait(60)
    per_span = total / (spans * args.bodies)
    print(f"{args.mix} mix, {args.stage}: {per_span:,.0f} instructions a span "
          f"({args.bodies} bodies of {spans} spans)")


if __name__ == "__main__":
    main()
