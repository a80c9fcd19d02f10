"""`llmship top`'s frame: rates from two /status documents."""

from __future__ import annotations

from llmship.telemetry import Telemetry
from llmship.top import render_top


def test_rates_are_differences_over_the_interval_and_depths_are_current():
    telemetry = Telemetry()
    lane = telemetry.component("delivery.logs")
    lane.gauge("queue_items", lambda: 7)
    lane.gauge("queue_bytes", lambda: 2048)
    lane.gauge("inflight_payloads", lambda: 4)
    lane.inc("sent", 100)
    sink = telemetry.component("traces_sink")
    sink.discard("sampling_priority", 10, intentional=True)
    before = telemetry.snapshot()
    lane.inc("sent", 50)
    lane.inc("retries", 4)
    lane.discard("queue_full", 6)
    sink.discard("sampling_priority", 20, intentional=True)
    frame = render_top(before, telemetry.snapshot(), secs=2.0)
    row = next(line for line in frame.splitlines() if line.startswith("delivery.logs")).split()
    assert row[3] == "25.0"  # OUT ev/s: 50 in 2 s
    assert row[5:10] == ["3.0", "-", "-", "2.0", "4"]  # lost/s, discarded/s, errors/s, retries/s, inflight
    assert "7 / 2.0 KiB" in frame
    assert "traces_sink  sampling_priority (intended)  10.0/s" in frame
    assert "delivery.logs  queue_full  3.0/s" in frame
