"""A 413 splits every kind at its item boundaries: the real sinks, packer, delivery and HTTP transport
against the real `llmship intake --max-body-bytes` (a subprocess), which decodes everything it accepts."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from harness import TEST_API_KEY
from llmship.aggregation import GAUGE, FlushResult, Series, SketchSeries
from llmship.config import load_config_text
from llmship.delivery import Delivery
from llmship.delivery.transport import make_transport
from llmship.model import Span, TracerInfo
from llmship.sinks.intakes import ROUTES
from llmship.sinks.llmobs import LLMObsSink
from llmship.sinks.logs import LogsSink
from llmship.sinks.metrics import MetricsSink
from llmship.sinks.traces import TraceSink
from llmship.sketch import Sketch
from llmship.telemetry import Telemetry

N = 120
MAX_BODY = 6000  # every payload below is several times this as sent; every item well under it


def noise(n: int = 48) -> str:
    return os.urandom(n).hex()  # barely compresses: the payloads stay large on the wire


async def eventually(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_a_413_splits_every_kind_at_item_boundaries(start_intake, tmp_path, compression):
    intake = start_intake("--max-body-bytes", str(MAX_BODY))
    cfg = load_config_text(f"""
[agent]
hostname = "host-a"
data_dir = "{tmp_path / 'data'}"
[sinks.datadog]
url = "{intake.url}"
api_key = "{TEST_API_KEY}"
compression = "{compression}"
[delivery]
retry_initial_secs = 0.05
retry_max_secs = 0.2
max_concurrency = 2
""")
    tel = Telemetry()
    delivery = Delivery(cfg, tel, make_transport, spool_routes=ROUTES)
    await delivery.start()
    try:
        metrics = MetricsSink(cfg, delivery.submit, tel)
        sketch = Sketch()
        sketch.insert(1.5)
        metrics.ship(FlushResult(
            series=[Series(f"m.{i}", GAUGE, 10, [(1_700_000_000, float(i))], (f"r:{noise()}",), "host-a")
                    for i in range(N)],
            sketches=[SketchSeries(f"d.{i}", "host-a", (f"r:{noise()}",), [(1_700_000_000, sketch)])
                      for i in range(N)]))
        for i in range(N):
            metrics.send_service_check({"check": f"c.{i}", "status": 0, "message": noise()})
        metrics.ship(FlushResult())

        logs = LogsSink(cfg, delivery.submit, tel)
        for i in range(N):
            logs.add({"message": noise(), "i": i})
        logs.flush()

        llmobs = LLMObsSink(cfg, delivery.submit, tel)
        for i in range(N):
            llmobs.add({"trace_id": "1", "span_id": str(i), "parent_id": "undefined", "name": "llm",
                        "start_ns": 1, "duration": 1, "status": "ok", "meta": {"input": {"value": noise()}},
                        "metrics": {}, "tags": ["ml_app:app"]})
        llmobs.flush()

        traces = TraceSink(cfg, delivery.submit, tel)
        for i in range(N):  # one runtime each: one TracerPayload (one item) each
            span = Span(trace_id=i + 1, span_id=1, parent_id=0, service="svc", name="op", resource="r",
                        start=1, duration=1, type="web", meta={"r": noise()},
                        metrics={"_sampling_priority_v1": 1.0})
            traces.add_chunk([span], TracerInfo(language="python", runtime_id=f"rt-{i}"))
        traces.flush()

        expected = {"series": N, "sketches": N, "service_checks": N, "logs": N, "llmobs": N, "traces": N}
        for kind, n in expected.items():
            comp = tel.component(f"delivery.{kind}")
            await eventually(lambda: len(intake.records(kind)) >= n, what=f"{n} {kind} at the intake")
            # the intake has a payload before delivery has read its answer and counted it sent
            await eventually(lambda: comp.get("sent") >= n, what=f"{n} {kind} counted sent")
        for kind, n in expected.items():
            comp = tel.component(f"delivery.{kind}")
            statuses = {r["status"] for r in intake.requests(kind)}
            assert statuses == {413, 202}, kind
            assert comp.get("splits") >= 1 and comp.get("discarded") == 0, kind
            assert len(intake.records(kind)) == n and comp.get("sent") == n, kind
            assert all(r["bytes"] <= MAX_BODY for r in intake.requests(kind) if r["status"] == 202), kind
        spans = sorted(r["data"]["trace_id"] for r in intake.records("traces"))
        assert spans == list(range(1, N + 1))
        assert sorted(r["data"]["i"] for r in intake.records("logs")) == list(range(N))
    finally:
        await delivery.shutdown(time.monotonic() + 1)
