"""Instructions a call spent inside one function of the LLM-heavy mix's path (bench/llm_calls.py's pipeline),
to see where a call's instructions go before choosing what to cut: callgrind counts only while the named
function runs (its outermost call: recursion is counted once).

    .venv/bin/python bench/llm_parts.py llmship.llm.extract:from_span llmship.llm.policies:TextPolicy.apply

Each target is ``module:attribute.path``, replaced on its owner (a module-level function must be looked up
through its module by its callers, as ``extract.from_span`` is). Switching counting on and off adds to
each counted call (a ctypes call each way): compare this tool's figures with each other, not with
``llm_calls.py --callgrind``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

import callgrind  # bench/callgrind.py
import llm_calls  # bench/llm_calls.py
import mixes  # bench/mixes.py
from common import Workload  # bench/common.py


def _count_inside(target: str) -> None:
    """Replace ``target`` by a wrapper that counts instructions while its outermost call runs."""
    module_name, path = target.split(":")
    *owner_path, name = path.split(".")
    owner = importlib.import_module(module_name)
    for part in owner_path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    depth = 0

    @functools.wraps(original)
    def counted(*args, **kwargs):
        nonlocal depth
        if depth:
            return original(*args, **kwargs)
        depth = 1
        on()
        try:
            return original(*args, **kwargs)
        finally:
            off()
            depth = 0
    on, off = callgrind.switches()

    is_static = isinstance(getattr(owner, "__dict__", {}).get(name), staticmethod)
    setattr(owner, name, staticmethod(counted) if is_static else counted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="module:attribute.path, e.g. llmship.llm.extract:from_span")
    parser.add_argument("--config", choices=sorted(llm_calls.CONFIGS), default="default")
    parser.add_argument("--requests", type=int, default=20, help="measured v0.4 payloads of 50 calls")
    args = parser.parse_args()
    if not callgrind.in_child():
        for target in args.targets:
            counted = callgrind.run([target, "--config", args.config, "--requests", str(args.requests)])
            calls = int(counted.stdout.split()[0])
            print(f"{counted.instructions / calls:>10,.0f} instructions a call in {target}")
            counted.cleanup()
        return 0
    pipeline = llm_calls.Pipeline(args.config)
    workload = Workload("llm", 100 // len(mixes.traces("llm", 1)[0]), 20, 0.0, 0)
    warmup = [workload.next() for _ in range(4)]
    measured = [workload.next() for _ in range(args.requests)]
    for request in warmup:
        pipeline.take(request)
    _count_inside(args.targets[0])
    for request in measured:
        pipeline.take(request)
    print(sum(r.llmobs for r in measured), "calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
