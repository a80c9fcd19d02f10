"""The core redesign issue's figures in one go: bench/traces.py (web and LLM-heavy mixes), bench/logs.py,
bench/contexts.py and bench/dogstatsd.py in sequence, each as it runs alone, then one markdown table of
their headline figures against the goals.

    .venv/bin/python bench/core.py            # full: about five minutes on a quiet machine
    .venv/bin/python bench/core.py --quick    # smoke run: about two minutes
    .venv/bin/python bench/core.py --only traces,logs

Each script appends its headline figures (with their goals and verdicts) to a temporary file given as
``--results``; ratios are against baselines measured in the same script run. Every script stops by
itself; this one gives each SCRIPT_TIMEOUT_SECS at most.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = {  # name: arguments, in the order they run
    "traces": ["traces.py", "--mix", "both"],
    "logs": ["logs.py"],
    "contexts": ["contexts.py"],
    "dogstatsd": ["dogstatsd.py"],
}
SCRIPT_TIMEOUT_SECS = 900


def fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    out = ["| bench | measure | value | goal | verdict |", "|---|---|---:|---|---|"]
    for r in rows:
        unit = r["unit"] if r["unit"] == "x" else " " + r["unit"]
        out.append(f"| {r['bench']} | {r['measure']} | {fmt(r['value'])}{unit} | {r['goal']} | {r['verdict']} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every script's smoke run")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCRIPTS)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCRIPTS)
    if unknown := set(names) - set(SCRIPTS):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    failed = []
    with tempfile.NamedTemporaryFile(prefix="llmship-bench-results-", suffix=".jsonl") as results:
        for name in names:
            command = [sys.executable, str(BENCH / SCRIPTS[name][0]), *SCRIPTS[name][1:],
                       "--results", results.name] + (["--quick"] if args.quick else [])
            print(f"\n######## {name}: {' '.join(command[1:])}", flush=True)
            proc = subprocess.Popen(command)
            try:
                code = proc.wait(SCRIPT_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:  # SIGINT: its finally blocks stop the agent and intake it started
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = "timed out"
            if code:
                failed.append(f"{name} ({code})")
        rows = [json.loads(line) for line in Path(results.name).read_text().splitlines()]
    print(f"\n## llmship core figures{' (--quick: smoke run, not for the README)' if args.quick else ''}\n")
    print(table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
