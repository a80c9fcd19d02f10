"""Containers nested absurdly deep in an LLM Observability event or a log record: refused at the same depth
(privacy.MAX_NESTING) whether the walkers run compiled (setup.py COMPILED_MODULES: compiled code does not
count against Python's recursion limit) or from source, the process never crashes, and the records around
them still go. The decoders stop near 1,000 levels, but the emitter takes what a source built; a subprocess
runs each case, so a crash fails the test instead of ending the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmship
from llmship.llm import policies
from llmship.transforms import privacy
from llmship.transforms.privacy import MAX_NESTING

SRC = Path(__file__).resolve().parents[2] / "src"

_PROBE = """
import json, sys
import llmship
llmship.SOURCE_TWIN.source_only = sys.argv[1] == "source"
from llmship.agent import build_processing
from llmship.config import load_config_text
from llmship.llm import policies
from llmship.telemetry import Telemetry

depth = int(sys.argv[2])

class Recorder:
    handed_over = None
    def __init__(self):
        self.events, self.samples, self.logs = [], 0, []
    def calls(self, outputs):
        self.events += [bytes(o.event).decode() for o in outputs if o.event is not None]
        self.samples += sum(len(o.samples) for o in outputs)
    def log_items(self, items):
        self.logs += items
    def __getattr__(self, name):
        return lambda *args, **kwargs: None

def nested(leaf):
    node = leaf
    for _ in range(depth):
        node = [node]
    return node

def event(span_id, content, metadata=None):
    meta = {"span": {"kind": "llm"}, "model_name": "gpt-4o-mini", "model_provider": "openai",
            "input": {"messages": [{"role": "user", "content": content}]},
            "output": {"messages": [{"role": "assistant", "content": "ok"}]}}
    if metadata is not None:
        meta["metadata"] = metadata
    return {"span_id": str(span_id), "trace_id": "7", "parent_id": "undefined", "name": "openai.request",
            "start_ns": 1, "duration": 2, "status": "ok", "tags": ["ml_app:a"], "meta": meta,
            "metrics": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}

telemetry = Telemetry()
router = Recorder()
emitter = build_processing(load_config_text(""), telemetry, router).emitter
emitter.submit_llmobs_events([event(1, "mail bob@example.com")])
emitter.submit_llmobs_events([event(2, nested("mail bob@example.com"))])
emitter.submit_llmobs_events([event(3, "mail ann@example.com")])
emitter.submit_llmobs_events([event(4, "hi", metadata=nested({"mail": "bob@example.com"}))])  # privacy's walker
emitter.submit_logs([{"message": "a"}, {"message": "b", "attributes": nested({"mail": "bob@example.com"})},
                     {"message": "c"}])
print("RESULT", json.dumps({"compiled": llmship.compiled(policies), "events": router.events, "logs": len(router.logs),
                  "log_bodies": [bytes(x).decode() for x in router.logs]}))
"""


def run(way: str, depth: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", _PROBE, way, str(depth)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))


def needs_build(way: str) -> None:
    if way == "build" and not (llmship.compiled(policies) and llmship.compiled(privacy)):
        pytest.skip("the walkers are not compiled here (no compiler, or LLMSHIP_NO_EXTENSIONS)")


@pytest.mark.parametrize("way", ["build", "source"])
def test_deep_nesting_is_refused_and_the_rest_goes(way):
    needs_build(way)
    out = run(way, 100_000)
    assert out["compiled"] is (way == "build")
    text = "".join(out["events"])
    assert "bob@example.com" not in text and "ann@example.com" not in text  # nothing raw
    assert len(out["events"]) == 2  # the deep events are dropped, the ones around them go
    assert out["logs"] == 2 and not any("bob@example.com" in body for body in out["log_bodies"])


@pytest.mark.parametrize("way", ["build", "source"])
def test_nesting_within_the_bound_is_processed(way):
    needs_build(way)
    out = run(way, MAX_NESTING - 10)
    assert out["compiled"] is (way == "build")
    assert len(out["events"]) == 4 and out["logs"] == 3
    assert "bob@example.com" not in "".join(out["events"] + out["log_bodies"])
