"""Delivery against the real `llmship intake` (a subprocess on a free port) with injected faults."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import orjson
import pytest

from harness import TEST_API_KEY, free_port
from llmship.config import load_config_text
from llmship.delivery import Delivery
from llmship.delivery.payload import Payload
from llmship.delivery.transport import make_transport
from llmship.shipping.packer import build_payloads
from llmship.sinks.intakes import ROUTES
from llmship.sinks.logs import LOGS
from llmship.telemetry import Telemetry


async def eventually(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll ``predicate`` (without blocking the loop delivery runs on) until truthy or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def config(url: str, tmp_path: Path, spool: bool = False, api_key: str = TEST_API_KEY, **delivery) -> object:
    settings = {"retry_initial_secs": 0.05, "retry_max_secs": 0.2, "max_concurrency": 2, "spool_flush_secs": 0.4}
    settings.update(delivery)
    if spool:
        settings["spool_dir"] = str(tmp_path / "spool")
    lines = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in settings.items())
    return load_config_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
[sinks.datadog]
url = "{url}"
api_key = "{api_key}"
[delivery]
{lines}
""")


def logs_payload(tag: str, n: int = 3, kind: str = "logs", encoding: str = "gzip", size: int = 0) -> Payload:
    """One logs payload built by the real packer (so it records its item boundaries)."""
    records = [{"message": f"{tag}-{i}" + "x" * size, "ddsource": "test", "service": "svc"} for i in range(n)]
    [payload] = build_payloads(replace(LOGS, kind=kind, compression=encoding, level=None, max_age_secs=None),
                               [orjson.dumps(r) for r in records])
    return payload


def messages(intake) -> list[str]:
    return [r["data"]["message"] for r in intake.records("logs")]


@pytest.fixture
async def running():
    """Start Deliveries and always shut them down (quickly) after the test."""
    started: list[Delivery] = []

    async def start(cfg, telemetry: Telemetry | None = None) -> tuple[Delivery, Telemetry]:
        telemetry = telemetry or Telemetry()
        delivery = Delivery(cfg, telemetry, make_transport)
        await delivery.start()
        started.append(delivery)
        return delivery, telemetry

    yield start
    for delivery in started:
        await delivery.shutdown(time.monotonic() + 0.5)


async def test_delivers_once_with_headers_and_counts(start_intake, tmp_path, running):
    intake = start_intake()
    delivery, tel = await running(config(intake.url, tmp_path))
    payload = logs_payload("ok")
    assert delivery.submit(payload)
    await eventually(lambda: len(messages(intake)) == 3, what="3 logs at the intake")
    [request] = intake.requests("logs")
    assert request["payload_id"] == payload.id and request["api_key_present"]
    assert request["content_encoding"] == "gzip" and request["status"] == 202
    comp = tel.component("delivery.logs")
    await eventually(lambda: comp.get("sent") == 3)
    assert comp.get("requests_sent") == 1 and comp.get("sent_bytes") == len(payload.body)
    assert comp.get("retries") == 0 and comp.get("discarded") == 0


async def test_503_then_success_delivers_exactly_once(start_intake, tmp_path, running):
    intake = start_intake("--fail-first", "2", "--fail-status", "503")
    delivery, tel = await running(config(intake.url, tmp_path, max_concurrency=1))
    delivery.submit(logs_payload("retry"))
    await eventually(lambda: len(messages(intake)) == 3, what="logs after two 503s")
    comp = tel.component("delivery.logs")
    assert [r["status"] for r in intake.requests("logs")] == [503, 503, 202]
    assert comp.get("retries") == 2 and comp.get("errors", error_type="http_503") == 2
    assert comp.get("discarded") == 0
    assert len({r["payload_id"] for r in intake.records("logs")}) == 1


async def test_429_waits_at_least_retry_after_seconds(start_intake, tmp_path, running):
    intake = start_intake("--fail-first", "1", "--fail-status", "429", "--retry-after", "1")
    delivery, tel = await running(config(intake.url, tmp_path, max_concurrency=1))
    delivery.submit(logs_payload("throttled"))
    await eventually(lambda: len(messages(intake)) == 3, what="logs after a 429")
    first, second = intake.requests("logs")
    assert first["status"] == 429 and second["status"] == 202
    # Backoff alone would retry within 0.05 s; Retry-After holds it for at least one second.
    assert second["at"] - first["at"] >= 1.0


async def test_429_waits_until_a_retry_after_http_date(start_intake, tmp_path, running):
    # HTTP-dates have whole seconds; the intake's start-up takes about one, several on a loaded machine (the
    # first request must come well before the date for the wait to show)
    not_before = int(time.time()) + 6
    intake = start_intake("--fail-first", "1", "--fail-status", "429",
                          "--retry-after", formatdate(not_before, usegmt=True))
    delivery, tel = await running(config(intake.url, tmp_path, max_concurrency=1))
    delivery.submit(logs_payload("throttled"))
    await eventually(lambda: len(messages(intake)) == 3, what="logs after a 429")
    first, second = intake.requests("logs")
    assert first["status"] == 429 and first["at"] < not_before - 0.5
    assert second["at"] >= not_before


@pytest.mark.parametrize("from_spool", [False, True])
async def test_413_splits_until_the_halves_fit(start_intake, tmp_path, running, from_spool):
    # A lane of its own ("test_json") whose payloads go to the logs route: delivery needs no table of kinds,
    # and splits at the item boundaries the packer recorded, without decoding.
    # from_spool: a first 503 sends the payload to the spool, so the 413 and the split happen on replay.
    first = ["--fail-first", "1", "--fail-status", "503"] if from_spool else []
    intake = start_intake(*first, "--max-body-bytes", "250")
    delivery, tel = await running(config(intake.url, tmp_path, spool=from_spool, max_concurrency=1))
    big = logs_payload("split", n=16, kind="test_json", encoding="identity")
    assert len(big.body) > 3 * 250  # needs two rounds of halving
    delivery.submit(big)
    await eventually(lambda: len(messages(intake)) == 16, what="16 logs in split payloads")
    assert sorted(messages(intake)) == sorted(f"split-{i}" for i in range(16))
    comp = tel.component("delivery.test_json")
    assert comp.get("splits") >= 3 and comp.get("discarded") == 0
    assert {r["status"] for r in intake.requests("logs")} == ({503, 413, 202} if from_spool else {413, 202})
    if from_spool:
        assert comp.get("spooled") == 16
        await eventually(lambda: not list((tmp_path / "spool" / "test_json").glob("*.spool")),
                         what="the split record's file deleted")

    # One item that is too large on its own cannot be split: dropped and counted, not retried forever.
    lone = logs_payload("lone", n=1, kind="test_json", encoding="identity", size=1000)
    delivery.submit(lone)
    await eventually(lambda: comp.get("discarded", reason="too_large") == 1, what="the unsplittable payload dropped")


async def test_400_is_dropped_counted_and_the_lane_carries_on(start_intake, tmp_path, running):
    intake = start_intake("--fail-first", "1", "--fail-status", "400")
    delivery, tel = await running(config(intake.url, tmp_path, max_concurrency=1))
    delivery.submit(logs_payload("rejected"))
    comp = tel.component("delivery.logs")
    await eventually(lambda: comp.get("discarded", reason="http_400") == 3, what="the 400 counted as dropped")
    delivery.submit(logs_payload("next"))
    await eventually(lambda: len(messages(intake)) == 3)
    assert set(messages(intake)) == {"next-0", "next-1", "next-2"}
    assert comp.get("retries") == 0
    assert "injected fault" in tel.component("delivery.logs").info["last_error"]["detail"]


@pytest.mark.parametrize("spool", [False, True])
async def test_403_is_kept_and_delivered_once_the_key_works(start_intake, tmp_path, running, spool, capsys):
    intake = start_intake("--fail-first", "3", "--fail-status", "403")
    delivery, tel = await running(config(intake.url, tmp_path, spool=spool, max_concurrency=1))
    delivery.submit(logs_payload("kept"))
    await eventually(lambda: len(messages(intake)) == 3, what="logs after three 403s")
    comp = tel.component("delivery.logs")
    assert comp.get("discarded") == 0 and comp.get("errors", error_type="http_403") == 3
    if spool:
        assert comp.get("spooled") >= 3  # it waited on disk, not in memory
        await eventually(lambda: not list((tmp_path / "spool" / "logs").glob("*.spool")), what="spool emptied")
    out = capsys.readouterr()
    assert "intake_rejected_api_key" in out.out + out.err
    assert TEST_API_KEY not in out.out + out.err
    assert TEST_API_KEY not in orjson.dumps(tel.snapshot()).decode()


async def test_connection_errors_retry_and_a_reload_moves_the_destination(start_intake, tmp_path, running):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    delivery, tel = await running(config(dead, tmp_path, max_concurrency=1))
    delivery.submit(logs_payload("moved"))
    comp = tel.component("delivery.logs")
    await eventually(lambda: comp.get("errors", error_type="connection") >= 2, what="connection errors")
    assert comp.get("discarded") == 0
    intake = start_intake()
    delivery.reload(config(intake.url, tmp_path, max_concurrency=1))
    await eventually(lambda: len(messages(intake)) == 3, what="the held payload at the new destination")
    assert tel.component("delivery").info["destination"] == intake.url


async def test_failing_intake_data_reaches_the_spool_within_flush_secs(start_intake, tmp_path, running):
    intake = start_intake("--fail-first", "100000", "--fail-status", "503")
    flush_secs = 0.4
    delivery, tel = await running(config(intake.url, tmp_path, spool=True, spool_flush_secs=flush_secs,
                                         retry_initial_secs=5, retry_max_secs=5))
    comp = tel.component("delivery.logs")
    delivery.submit(logs_payload("first"))
    await eventually(lambda: comp.get("retries") >= 1, what="the lane to start failing")
    submitted = time.monotonic()
    for i in range(5):
        delivery.submit(logs_payload(f"later{i}"))
    await eventually(lambda: comp.get("spooled") == 6 * 3, timeout=5, what="everything spooled")
    assert time.monotonic() - submitted <= flush_secs + 0.3
    gauges = tel.snapshot()["components"]["delivery.logs"]["gauges"]
    assert gauges["queue_bytes"] == 0 and gauges["spool_files"] >= 1 and gauges["spool_bytes"] > 0


async def test_drain_spools_the_rest_and_a_new_delivery_replays_it_oldest_first(start_intake, tmp_path):
    failing = start_intake("--fail-first", "100000", "--fail-status", "503")
    tel = Telemetry()
    first = Delivery(config(failing.url, tmp_path, spool=True, retry_initial_secs=30, retry_max_secs=30), tel,
                     make_transport)
    await first.start()
    for i in range(5):
        assert first.submit(logs_payload(f"batch{i}", n=2))
    started = time.monotonic()
    await first.shutdown(time.monotonic() + 2.0)
    # Every lane is backing off past the deadline, so drain does not wait for it.
    assert time.monotonic() - started < 2.5
    comp = tel.component("delivery.logs")
    assert comp.get("discarded") == 0 and comp.get("spooled") == 10
    assert not first.submit(logs_payload("too-late"))  # after shutdown: refused and counted
    assert comp.get("discarded", reason="shutdown") == 3

    healthy = start_intake()
    tel2 = Telemetry()
    second = Delivery(config(healthy.url, tmp_path, spool=True, max_concurrency=1), tel2, make_transport)
    await second.start()
    try:
        await eventually(lambda: len(messages(healthy)) == 10, what="the spooled logs replayed")
        assert messages(healthy) == [f"batch{i}-{j}" for i in range(5) for j in range(2)]
        await eventually(lambda: not list((tmp_path / "spool" / "logs").glob("*.spool")), what="spool emptied")
        assert tel2.component("delivery.logs").get("sent") == 10
    finally:
        await second.shutdown(time.monotonic() + 1)


async def test_drain_without_a_spool_counts_what_it_could_not_deliver(start_intake, tmp_path):
    failing = start_intake("--fail-first", "100000", "--fail-status", "500")
    tel = Telemetry()
    delivery = Delivery(config(failing.url, tmp_path, retry_initial_secs=0.05, retry_max_secs=0.05), tel,
                        make_transport)
    await delivery.start()
    for i in range(4):
        delivery.submit(logs_payload(f"lost{i}"))
    started = time.monotonic()
    await delivery.shutdown(time.monotonic() + 0.5)
    assert 0.4 <= time.monotonic() - started < 1.5  # it kept trying until the deadline, then stopped
    comp = tel.component("delivery.logs")
    assert comp.get("discarded", reason="shutdown") == 12
    assert comp.get("sent") == 0


async def test_spill_when_full_then_everything_accepted_arrives(start_intake, tmp_path, running):
    intake = start_intake("--latency-ms", "100")
    delivery, tel = await running(config(intake.url, tmp_path, spool=True, queue_max_bytes=300,
                                         max_concurrency=1))
    accepted = [delivery.submit(logs_payload(f"s{i}", n=2)) for i in range(20)]
    # The queue takes ~4 payloads of ~90 bytes, the spill buffer (a quarter of that) one more, and the rest
    # are refused: nothing ran the flusher in between, and submit never blocks.
    assert accepted[:5] == [True] * 5 and accepted[-1] is False
    comp = tel.component("delivery.logs")
    await eventually(lambda: len(messages(intake)) == 2 * sum(accepted), timeout=15, what="every accepted log")
    assert comp.get("spooled") >= 2  # the spilled payloads took the disk path
    assert comp.get("discarded", reason="spill_backlog") == 2 * accepted.count(False)
    assert sorted(messages(intake)) == sorted(f"s{i}-{j}" for i, ok in enumerate(accepted) if ok for j in range(2))


async def test_file_transport_writes_ndjson_and_refuses_garbage(tmp_path, running):
    cfg = load_config_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
[delivery]
retry_initial_secs = 0.05
retry_max_secs = 0.1
""")
    delivery, tel = await running(cfg)
    assert tel.component("delivery").info["destination"] == f"files in {tmp_path / 'data' / 'out'}"
    delivery.submit(logs_payload("file", n=4))
    out = tmp_path / "data" / "out" / "logs.ndjson"
    await eventually(lambda: out.exists() and len(out.read_text().splitlines()) == 4, what="4 lines")
    lines = out.read_text().splitlines()
    assert [orjson.loads(line)["message"] for line in lines] == [f"file-{i}" for i in range(4)]
    garbage = Payload(kind="logs", route=ROUTES["logs"], body=b"not json", content_type="application/json",
                      content_encoding="identity", items=2)  # no boundaries: decoded whole, and refused
    delivery.submit(garbage)
    comp = tel.component("delivery.logs")
    await eventually(lambda: comp.get("discarded", reason="http_400") == 2, what="garbage dropped as a 400")
    short = logs_payload("short", n=2)
    short.body = short.body[:len(short.body) // 2]  # shorter than the boundaries it records
    delivery.submit(short)
    await eventually(lambda: comp.get("discarded", reason="http_400") == 4, what="a truncated body dropped as a 400")
    assert len(out.read_text().splitlines()) == 4  # neither left a line


async def test_reload_lowers_concurrency_and_loses_nothing_in_flight(start_intake, tmp_path, running):
    intake = start_intake("--latency-ms", "300")
    delivery, tel = await running(config(intake.url, tmp_path, max_concurrency=3))
    for i in range(8):
        delivery.submit(logs_payload(f"r{i}"))

    def inflight() -> int:
        return tel.snapshot()["components"]["delivery.logs"]["gauges"]["inflight_payloads"]

    await eventually(lambda: inflight() == 3, what="three requests in flight")
    delivery.reload(config(intake.url, tmp_path, max_concurrency=1))
    await eventually(lambda: len(messages(intake)) == 24, timeout=15, what="all 8 payloads")
    arrivals = [r["at"] for r in intake.requests("logs")]
    assert len(arrivals) == 8  # nothing resent, nothing lost
    # After the three in flight at the reload, one at a time: each waits for the previous answer (300 ms).
    assert all(b - a >= 0.25 for a, b in zip(arrivals[-4:], arrivals[-3:]))


async def test_a_failing_intake_costs_bounded_memory_and_requests(start_intake, tmp_path, running):
    intake = start_intake("--fail-first", "100000", "--fail-status", "503")
    delivery, tel = await running(config(intake.url, tmp_path, max_concurrency=2, queue_max_bytes=1000,
                                         retry_initial_secs=0.2, retry_max_secs=0.2))
    payloads = [logs_payload(f"m{i}") for i in range(50)]
    accepted = [delivery.submit(p) for p in payloads]
    comp = tel.component("delivery.logs")
    assert comp.get("discarded", reason="queue_full") == 3 * accepted.count(False) > 0
    samples = []
    window_end = time.monotonic() + 1.5
    while time.monotonic() < window_end:  # sample the gauges while the intake keeps failing
        samples.append(tel.snapshot()["components"]["delivery.logs"]["gauges"])
        await asyncio.sleep(0.02)
    assert max(s["inflight_payloads"] for s in samples) <= 2  # retries hold their worker
    assert max(s["queue_bytes"] for s in samples) <= 1000 + max(len(p.body) for p in payloads)
    # Both workers wait out one shared window (full jitter, at most 0.2 s) per round: about 20 requests in
    # 1.5 s. Without backoff a local intake answers hundreds of requests per second.
    requests = len(intake.requests("logs"))
    assert 2 <= requests <= 60
    assert comp.get("sent") == 0 and requests - 2 <= comp.get("retries") <= requests
