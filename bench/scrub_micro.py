"""Micro-benchmark of scrubbing: µs per ``scrub`` call for the Hyperscan engine, the Python twin and, with
``--baseline REV``, the scrubber as it was at a git revision (default rules only).

    PYTHONPATH=src .venv/bin/python bench/scrub_micro.py [--baseline fe0c5a3] [--seconds 0.3]

Texts: (a) 2.6 kB of clean English (the Python docs' own prose), (b) the same with three secrets (an
e-mail address, an OpenAI key, an IPv4 address), (c) 100 characters of clean English. Best of five runs of
``--seconds`` each, on one thread (the machine is shared: keep it short).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydoc_data.topics import topics

from llmship.transforms.scrub import Scrubber, hyperscan

_PROSE = " ".join(t for t in topics.values() if "@" not in t and "::" not in t)
CLEAN = _PROSE[100_000:102_600]
SECRETS = (CLEAN[:600] + " mail john.doe@example.com " + CLEAN[600:1500]
           + " key sk-proj-Ab3dEfGh1jKlMn0pQr2StUvWxYz4_5aBcDeFgHiJkLmNoPqRsTu " + CLEAN[1500:2300]
           + " from 192.168.1.20 " + CLEAN[2300:])
SHORT = _PROSE[200_000:200_100]


def per_call_us(scrub, text: str, seconds: float) -> float:
    best = float("inf")
    for _ in range(5):
        n, start = 0, time.thread_time()
        while (elapsed := time.thread_time() - start) < seconds:
            for _ in range(100):
                scrub(text)
            n += 100
        best = min(best, elapsed / n)
    return best * 1e6


def baseline_scrubber(rev: str):
    """The Scrubber class of scrub.py at ``rev``, loaded beside today's package."""
    source = subprocess.run(["git", "show", f"{rev}:src/llmship/transforms/scrub.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "scrub_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("scrub_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Scrubber()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="", help="a git revision to compare with")
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    scrubbers = {"python twin": Scrubber(engine="python")}
    if hyperscan is not None:
        scrubbers["hyperscan"] = Scrubber(engine="hyperscan")
    if args.baseline:
        scrubbers[f"at {args.baseline}"] = baseline_scrubber(args.baseline)
    texts = {"(a) 2.6 kB clean": CLEAN, "(b) 2.6 kB, 3 secrets": SECRETS, "(c) 100 chars": SHORT}
    outputs = {name: [s.scrub(t) for t in texts.values()] for name, s in scrubbers.items()}
    assert len({tuple(o) for o in outputs.values()}) == 1, "the scrubbers disagree"
    assert outputs["python twin"][1].count("[REDACTED:") == 3 and outputs["python twin"][0] == CLEAN
    print(f"{'':24}" + "".join(f"{name:>16}" for name in scrubbers))
    for label, text in texts.items():
        print(f"{label:24}" + "".join(f"{per_call_us(s.scrub, text, args.seconds):13.2f} us" for s in scrubbers.values()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
