"""The real `datadog` DogStatsd client -> the real agent (`llmship run`) -> the local intake.

Over UDP and the unix datagram socket, with and without client-side buffering, the series, sketches,
events and service checks that reach the intake must be exactly what a Datadog Agent would ship.
"""

from __future__ import annotations

import time

import pytest
from datadog.dogstatsd import DogStatsd

from harness import wait_for

INTERVAL = 2  # flush_interval_secs: short for fast tests, and the `interval` every series must carry
RATE, GAUGE = 2, 3  # /api/v2/series types
TAGS = ["env:e2e", "model:gpt-4o-mini"]

CONFIG = f"""
[agent]
flush_interval_secs = {INTERVAL}
[sources.dogstatsd]
socket = "{{tmp}}/run/dsd.socket"
"""


def client_for(agent, transport: str, buffered: bool) -> DogStatsd:
    common = {"disable_buffering": not buffered, "disable_telemetry": True}
    if transport == "udp":
        return DogStatsd(host="127.0.0.1", port=agent.ports["dsd_port"], **common)
    # A unix datagram socket queues at most net.unix.max_dgram_qlen datagrams (10 on some hosts), and a
    # non-blocking client (datadogpy's default) drops the rest of a burst: let it wait instead, so the
    # totals below are exact. What is tested is the agent, not the host's queue length.
    return DogStatsd(socket_path=str(agent.tmp / "run" / "dsd.socket"), socket_timeout=5, **common)


def wait_for_bucket_start() -> None:
    """Wait until a flush bucket has just begun, so that everything sent next lands in one bucket and
    each context ships exactly one aggregate (buckets start at multiples of the interval, unix time)."""
    wait_for(lambda: 0.05 < time.time() % INTERVAL < 0.5, timeout=INTERVAL + 1, interval=0.01,
             what="the start of a bucket")


def series_by_name(intake, names: set[str]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for record in intake.records("series"):
        data = record["data"]
        if data["metric"] in names:
            found.setdefault(data["metric"], []).append(data)
    return found


@pytest.mark.parametrize("transport", ["udp", "uds"])
@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_every_metric_type_event_and_service_check_arrive_exactly(intake, start_agent, transport, buffered):
    agent = start_agent(CONFIG, intake=intake)
    statsd = client_for(agent, transport, buffered)
    prefix = f"e2e.{transport}.{'buf' if buffered else 'single'}"

    wait_for_bucket_start()
    statsd.increment(f"{prefix}.requests", 3, tags=TAGS)
    statsd.increment(f"{prefix}.requests", 2, tags=TAGS)
    statsd.decrement(f"{prefix}.requests", 1, tags=TAGS)
    statsd.gauge(f"{prefix}.queue", 7, tags=TAGS)
    statsd.gauge(f"{prefix}.queue", 9, tags=TAGS)
    for value in range(1, 11):
        statsd.histogram(f"{prefix}.latency", value, tags=TAGS)
    statsd.timing(f"{prefix}.duration", 250, tags=TAGS)
    for user in ("u1", "u2", "u1", "u3"):
        statsd.set(f"{prefix}.users", user, tags=TAGS)
    for value in range(1, 101):
        statsd.distribution(f"{prefix}.tokens", value, tags=TAGS)
    statsd.event("Deploy finished", "version 1.2.3\nall green", alert_type="success", tags=TAGS,
                 aggregation_key=f"{prefix}-deploy")
    statsd.service_check(f"{prefix}.can_connect", DogStatsd.WARNING, tags=TAGS, message="slow upstream")
    statsd.flush()
    statsd.close_socket()

    expected = {f"{prefix}.{suffix}" for suffix in (
        "requests", "queue", "users", "latency.max", "latency.median", "latency.avg", "latency.count",
        "latency.95percentile", "duration.max", "duration.count")}
    series = wait_for(lambda: (s := series_by_name(intake, expected)).keys() == expected and s,
                      timeout=30, what="every series at the intake")
    tags = sorted(TAGS)

    def only(name: str) -> dict:
        """The one non-zero point of a context (idle counters keep shipping zeros, as the Agent's do)."""
        points = [(s, p) for s in series[f"{prefix}.{name}"] for p in s["points"] if p["value"] != 0]
        assert len(points) == 1, (name, series[f"{prefix}.{name}"])
        s, point = points[0]
        assert sorted(s["tags"]) == tags
        assert s["resources"] == [{"type": "host", "name": "test-host"}]
        assert point["timestamp"] % INTERVAL == 0
        return {"type": s["type"], "interval": s["interval"], "value": point["value"]}

    # counter: a RATE of sum / interval
    assert only("requests") == {"type": RATE, "interval": INTERVAL, "value": (3 + 2 - 1) / INTERVAL}
    # gauge: the last value
    assert only("queue") == {"type": GAUGE, "interval": INTERVAL, "value": 9}
    # set: the number of distinct members, as a gauge
    assert only("users")["value"] == 3 and only("users")["type"] == GAUGE
    # histogram: the Agent's default aggregates over 1..10 (median and p95 by its weighted-rank rule)
    assert only("latency.max")["value"] == 10
    assert only("latency.median")["value"] == 5
    assert only("latency.avg")["value"] == 5.5
    assert only("latency.95percentile")["value"] == 10
    assert only("latency.count") == {"type": RATE, "interval": INTERVAL, "value": 10 / INTERVAL}
    # timing (ms) is a histogram too
    assert only("duration.max") == {"type": GAUGE, "interval": INTERVAL, "value": 250}
    assert only("duration.count")["value"] == 1 / INTERVAL

    # distribution: a sketch
    sketches = intake.wait_records("sketches", where=lambda d: d["metric"] == f"{prefix}.tokens")
    sketch = sketches[0]["data"]
    assert sorted(sketch["tags"]) == tags and sketch["host"] == "test-host"
    [dogsketch] = sketch["dogsketches"]
    assert (dogsketch["cnt"], dogsketch["min"], dogsketch["max"], dogsketch["sum"]) == (100, 1, 100, 5050)
    assert dogsketch["avg"] == pytest.approx(50.5)
    assert sum(dogsketch["n"]) == 100

    [event] = [r["data"] for r in intake.wait_records(
        "events", where=lambda d: d.get("aggregation_key") == f"{prefix}-deploy")]
    assert (event["title"], event["text"], event["alert_type"]) == ("Deploy finished", "version 1.2.3\nall green",
                                                                    "success")
    assert sorted(event["tags"]) == tags and event["host"] == "test-host"
    assert abs(event["date_happened"] - time.time()) < 60

    [check] = [r["data"] for r in intake.wait_records(
        "service_checks", where=lambda d: d["check"] == f"{prefix}.can_connect")]
    assert (check["status"], check["message"], check["host_name"]) == (1, "slow upstream", "test-host")
    assert sorted(check["tags"]) == tags

    assert agent.counter("dogstatsd", "discarded") == 0
    # lines sent: 3 counter, 2 gauge, 10 histogram, 1 timing, 4 set, 100 distribution, 1 event, 1 check
    assert agent.counter("dogstatsd", "received") == 3 + 2 + 10 + 1 + 4 + 100 + 1 + 1


def test_malformed_lines_are_counted_and_their_neighbours_arrive(intake, start_agent):
    import socket

    agent = start_agent(CONFIG, intake=intake)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"e2e.good:1|g|#env:e2e\ne2e.bad:x|g\ne2e.worse:1|q\n_e{9,1}:short|x\n",
                      ("127.0.0.1", agent.ports["dsd_port"]))
    wait_for(lambda: series_by_name(intake, {"e2e.good"}), timeout=30, what="the good line's series")
    assert agent.counter("dogstatsd", "discarded", reason="invalid_value") == 1
    assert agent.counter("dogstatsd", "discarded", reason="unknown_type") == 1
    assert agent.counter("dogstatsd", "discarded", reason="bad_event") == 1
    assert agent.counter("dogstatsd", "received") == 4
    assert not series_by_name(intake, {"e2e.bad", "e2e.worse"})
    status = agent.status()["components"]["dogstatsd"]
    assert status["info"]["udp_receive_buffer_bytes"] > 0
    assert status["gauges"]["kernel_drops"] == 0
